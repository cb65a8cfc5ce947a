"""The methods side by side: one backbone, one budget, the same evaluation (notebook 07, ``benchmarks/compare_methods.py``).

Trains MAE (random masks), MAE with evolved hierarchical masks, MCM, MiCL and Latent MIM on the
same ``tiny`` backbone for the same steps x batch with the one trainer, twice each: on the
features data (Fashion-MNIST or digits), scored by kNN and linear-probe accuracy of frozen CLS
features, and on the built-in shapes data, scored by concept macro-F1 (a model that
``uses_concepts``: its own concept head; the others: one linear probe per concept on frozen
features). Counted training FLOPs and the training loop's wall-clock come with every run.

One JSON row per run (a method on one data set), appended to a log as soon as the run ends::

    {"key": "mae", "label": "MAE, random masks", "dataset": "shapes", "method": "mae", "masking": "random",
     "mask_ratio": 0.75, "wall_s": 29.0, "train_tflop": 1.2, "final_loss": 0.04, "concept_f1": 0.64,
     "head": "linear probe per concept", "settings": {...}}

A method whose model cannot be built is a row with ``"skipped": "<why>"``. The rows' summaries and
the papers' directions are :mod:`mcm_core.analysis.compare`; the figure is :mod:`mcm_core.viz.compare`.
"""
from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning

from mcm_core.batches import training_data
from mcm_core.config import TrainConfig
from mcm_core.data import load_dataset
from mcm_core.evaluate.flops import training_flops_per_step
from mcm_core.evaluate.metrics import concept_metrics, predict_concepts
from mcm_core.evaluate.probes import extract_features, knn_accuracy, linear_probe
from mcm_core.models import build_model, has
from mcm_core.models.backbone import PRESETS
from mcm_core.train import Trainer

__all__ = ["SHAPES", "FEATURE_DATASETS", "METHODS", "ComparisonSettings", "train_config", "run_one", "run_all",
           "load_rows"]

SHAPES = "shapes"
FEATURE_DATASETS = ("fashion_mnist", "digits")
METHODS: list[tuple[str, str, dict[str, Any]]] = [  # (key, label, TrainConfig fields); mask_ratio "mcm" = MCM's own
    ("mae", "MAE, random masks", dict(method="mae", masking="random", mask_ratio=None)),
    ("mae_evolved", "MAE, evolved hierarchical masks", dict(method="mae", masking="hierarchical", mask_ratio=None)),
    ("mcm", "MCM", dict(method="mcm", masking="random", mask_ratio="mcm")),
    ("micl", "MiCL", dict(method="micl", masking="random", mask_ratio=None)),
    ("latent_mim", "Latent MIM", dict(method="latent_mim", masking="random", mask_ratio=None)),
]


@dataclass(frozen=True)
class ComparisonSettings:
    """What every run of one comparison shares; two comparisons are comparable when these are equal.

    ``quick`` shrinks the shapes training set and the evaluation sets (smoke runs), see :meth:`checked`.
    """

    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    mask_ratio: float = 0.75  # MAE, evolved MAE, MiCL, Latent MIM
    mcm_mask_ratio: float = 0.25  # MCM (its paper's main ratio)
    dataset: str = "fashion_mnist"  # the features data: kNN and linear probe
    train_size: int = 20000  # shapes training images
    eval_train: int = 10000  # images the kNN / probes are fitted on
    eval_test: int = 10000  # at most this many test images
    quick: bool = False
    device: str = "auto"

    def checked(self) -> ComparisonSettings:
        """These settings validated, with ``quick``'s smaller sets applied; -> a new instance.

        Raises:
            ValueError: a size below 1, or a features data set other than ``FEATURE_DATASETS``.
        """
        for name in ("steps", "batch_size", "train_size", "eval_train", "eval_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dataset not in FEATURE_DATASETS:
            raise ValueError(f"dataset must be one of {FEATURE_DATASETS} (the features data), got {self.dataset!r}")
        if not self.quick:
            return self
        return replace(self, train_size=min(self.train_size, 512), eval_train=min(self.eval_train, 160),
                       eval_test=min(self.eval_test, 80))

    def row(self) -> dict[str, Any]:
        """The settings stored in every row (the device is not a setting of the result)."""
        return {"preset": "tiny", **{k: v for k, v in asdict(self).items() if k != "device"}}


def unavailable(method: str) -> str | None:
    """Why ``build_model(method)`` fails (e.g. not registered), or None when it builds."""
    try:
        build_model(method, "tiny")
    except Exception as error:  # noqa: BLE001  any failure means: skip the method and say why
        return f"{type(error).__name__}: {error}"
    return None


def train_config(spec: dict[str, Any], dataset: str, settings: ComparisonSettings, out_dir: Path) -> TrainConfig:
    """The run's TrainConfig: the same backbone, steps, batch, lr and seed for every method."""
    ratio = settings.mcm_mask_ratio if spec["mask_ratio"] == "mcm" else settings.mask_ratio
    data: dict[str, Any] = {"image_size": PRESETS["tiny"]["img_size"]}
    if dataset == SHAPES:
        data["size"] = settings.train_size
    return TrainConfig(method=spec["method"], preset="tiny", dataset=dataset, data=data, masking=spec["masking"],
                       mask_ratio=ratio, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                       warmup_steps=min(30, settings.steps // 5 + 1), log_every=25, progress=False,
                       seed=settings.seed, device=settings.device, out_dir=str(out_dir))


def subset(dataset: torch.utils.data.Dataset, n: int) -> torch.utils.data.Dataset:
    """The first ``n`` items (all when there are fewer)."""
    return torch.utils.data.Subset(dataset, range(min(n, len(dataset))))


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, split: str, image_size: int) -> torch.utils.data.Dataset:
    """The features data with class labels, loaded once per process (the IDX decode takes seconds)."""
    return load_dataset(name, split=split, image_size=image_size)


def probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
          quick: bool) -> dict[str, Any]:
    """A linear probe on frozen features (N, D); quick runs stop lbfgs early, on purpose and quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quick else "default", ConvergenceWarning)
        return linear_probe(train_x, train_y, test_x, test_y, max_iter=200 if quick else 1000)


def features_metrics(model: torch.nn.Module, cfg: TrainConfig, settings: ComparisonSettings) -> dict[str, float]:
    """kNN (k=20) and linear-probe top-1 accuracy of frozen CLS features (N, D) on the features data."""
    train, test = (cached_dataset(cfg.dataset, split, cfg.data["image_size"]) for split in ("train", "test"))
    train_x, train_y = extract_features(model, subset(train, settings.eval_train))  # (N, D), (N,)
    test_x, test_y = extract_features(model, subset(test, settings.eval_test))
    accuracy = probe(train_x, train_y, test_x, test_y, settings.quick)["accuracy"]
    return {"knn_acc": knn_accuracy(train_x, train_y, test_x, test_y), "probe_acc": accuracy}


def concept_f1(model: torch.nn.Module, cfg: TrainConfig, settings: ComparisonSettings) -> dict[str, Any]:
    """Concept macro-F1 on held-out shapes: the model's own head if it has one, else a linear probe per concept."""
    test = subset(training_data(cfg, "test"), settings.eval_test)
    if has(model, "uses_concepts"):
        logits, targets = predict_concepts(model, test)
        return {"concept_f1": concept_metrics(logits, targets).macro["f1"], "head": "own concept head"}
    train_x, train_y = extract_features(model, subset(training_data(cfg, "train"), settings.eval_train))
    test_x, test_y = extract_features(model, test)
    return {"concept_f1": probe(train_x, train_y, test_x, test_y, settings.quick)["macro_f1"],
            "head": "linear probe per concept"}


def run_one(key: str, label: str, spec: dict[str, Any], dataset: str, settings: ComparisonSettings,
            out: Path) -> dict[str, Any]:
    """Train one method on one data set with the trainer, count its FLOPs, evaluate it: -> the JSON row."""
    cfg = train_config(spec, dataset, settings, out / dataset / key)
    trainer = Trainer(cfg)
    step_flops = training_flops_per_step(trainer)
    result = trainer.run()
    metrics = (concept_f1 if dataset == SHAPES else features_metrics)(result.model, cfg, settings)
    return {"key": key, "label": label, "dataset": dataset, "method": cfg.method, "masking": cfg.masking,
            "mask_ratio": cfg.mask_ratio, "wall_s": round(result.wall_seconds, 1),
            "train_tflop": step_flops * cfg.steps / 1e12, "final_loss": result.history[-1]["loss"],
            **metrics, "settings": settings.row()}


def read_log(log: Path, settings: ComparisonSettings) -> list[dict[str, Any]]:
    """The rows of ``log`` run with these settings, oldest first (none when there is no log)."""
    if not Path(log).exists():
        return []
    wanted = settings.row()
    return [r for r in map(json.loads, Path(log).read_text().splitlines()) if r.get("settings") == wanted]


def run_all(settings: ComparisonSettings, log: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Every method of :data:`METHODS` on both data sets; each row appended to ``log`` as soon as its run ends.

    Run folders go next to ``log`` (``<log folder>/<data set>/<key>``). With ``resume``, runs already in
    ``log`` with the same settings are reused, not trained again (an interrupted comparison continues).
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["key"], r["dataset"]): r for r in read_log(log, settings) if not r.get("skipped")} if resume else {}
    rows = []
    for key, label, spec in METHODS:
        reason = unavailable(spec["method"])
        if reason:
            runs: Any = [({"key": key, "label": label, "skipped": reason, "settings": settings.row()}, True)]
        else:
            runs = ((done[(key, d)], False) if (key, d) in done else
                    (run_one(key, label, spec, d, settings, log.parent), True) for d in (settings.dataset, SHAPES))
        for row, new in runs:
            if new:
                print(json.dumps(row), flush=True)
                with open(log, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def load_rows(log: Path, settings: ComparisonSettings) -> list[dict[str, Any]] | None:
    """The latest rows of ``log`` run with these settings when every method is there (run or skipped); else None."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_log(log, settings):
        latest[(row["key"], row.get("dataset", "skipped"))] = row
    for key, _, _ in METHODS:
        done = {d for k, d in latest if k == key}
        if "skipped" not in done and not {settings.dataset, SHAPES} <= done:
            return None
    return list(latest.values())
