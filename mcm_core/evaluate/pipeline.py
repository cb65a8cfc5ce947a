"""What ``mcm eval`` and the end-of-training evaluation compute, as plain dicts a notebook can reuse.

Each function takes a model and a data set and returns numbers (dicts, a dataclass): no
printing, no argparse. :mod:`mcm_core.cli` prints them and writes them as JSON;
:class:`RunEvaluator` is the ``eval_fn`` that ``mcm train`` hands to ``fit``.

- :func:`concept_report` (+ :func:`concept_metrics_dict`): MCM's concept metrics on full images;
- :func:`reconstruction_over`: MSE / PSNR on hidden patches over a whole data set;
- :func:`shapes_measures`: :mod:`mcm_core.evaluate.measures` over its mask-ratio curve (shapes data);
- :func:`features_metrics` (-> :class:`FeatureMetrics`): kNN / linear-probe accuracy of frozen features;
- :class:`RunEvaluator`: all of the above that applies, on a training config's validation split.

Data sets yield ``(image (3, H, W), target)``; the functions batch them by :data:`EVAL_BATCH`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from mcm_core.config import TrainConfig
from mcm_core.evaluate.inputs import model_device
from mcm_core.evaluate.metrics import class_accuracy, concept_metrics, predict_concepts, prior_thresholds
from mcm_core.evaluate.probes import extract_features, knn_accuracy, linear_probe
from mcm_core.evaluate.reconstruction import reconstruction_metrics
from mcm_core.models.outputs import has, pixel_problem

EVAL_BATCH = 256


# =========================================================================== data and models
def limit(dataset: Any, n: int) -> Any:
    """The first ``n`` items of ``dataset`` (the data set itself when it is not longer)."""
    return dataset if n >= len(dataset) else Subset(dataset, range(n))


def first_batch(dataset: Any, n: int) -> tuple[Any, Any]:
    """Images (n, 3, H, W) and targets of the first ``n`` items, in one batch."""
    return next(iter(DataLoader(limit(dataset, n), batch_size=min(n, len(dataset)), shuffle=False)))


def labelled(dataset: Any) -> bool:
    return hasattr(dataset, "concept_names") or hasattr(dataset, "classes")


def concept_names(model: Any) -> list[str]:
    names = getattr(model.cfg, "concept_names", None)
    return list(names) if names else [f"concept_{i}" for i in range(model.cfg.num_concepts)]


def has_capability(model: Any, capability: str) -> bool:
    """Whether ``model`` has ``capability`` (``mcm_core.models.outputs``)."""
    return has(model, capability)


def no_reconstruction(model: Any) -> str | None:
    """Why reconstruction metrics do not apply to ``model``, or None when they do."""
    why = pixel_problem(model)
    return None if why is None else f"no reconstruction metrics: {why}"


# =========================================================================== metrics
def reconstruction_over(model: Any, dataset: Any, mask_ratio: float, seed: int) -> dict[str, float]:
    """MSE / PSNR on hidden patches over a data set, batch by batch (bounded memory).

    Every image hides the same number of patches, so the pooled MSE is the image-weighted
    mean of the batch MSEs.
    """
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    total, count = 0.0, 0
    for images, _ in DataLoader(dataset, batch_size=EVAL_BATCH, shuffle=False):
        result = reconstruction_metrics(model, images, mask_ratio, generator=generator, batch_size=EVAL_BATCH)
        total, count = total + result["mse"] * images.shape[0], count + images.shape[0]
    mse = total / count
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf"), "mask_ratio": mask_ratio}


def shapes_measures(model: Any, dataset: Any, size: int, seed: int) -> list[dict[str, float]] | None:
    """``mcm_core.evaluate.measures`` over the curve's mask ratios on the first ``size`` images, or None where
    they do not apply (not an MCM decoding pixels, or not the one-object shapes data)."""
    from mcm_core.evaluate.measures import measure_dataset  # the shapes palette: loaded only when asked

    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not has(model, "can_edit") or pixel_problem(model) is not None or not getattr(base, "one_object", False):
        return None
    return [m.to_dict() for m in measure_dataset(model, base, num_images=min(size, len(base)), seed=seed)]


def concept_report(model: Any, dataset: Any, prior_threshold: bool = False) -> tuple[Any, float | None]:
    """MCM's concept metrics on full images, named after the model's concepts, and the class accuracy.

    The class accuracy (top-1: the argmax of the concept logits against the one positive) is
    given when every target row has exactly one positive, i.e. on class data such as
    Fashion-MNIST, whose classes are trained as one-hot concepts; otherwise None.
    ``prior_threshold``: per-concept thresholds that undo the loss's frequency weighting
    (``evaluate.prior_thresholds``) instead of logit 0.
    """
    logits, targets = predict_concepts(model, dataset, batch_size=EVAL_BATCH)
    if targets.shape[1] != model.cfg.num_concepts:
        raise ValueError(f"the data have {targets.shape[1]} concepts but the model has "
                         f"{model.cfg.num_concepts}; evaluate on the data set it was trained on")
    threshold = prior_thresholds(model) if prior_threshold else 0.0
    report = concept_metrics(logits, targets, names=concept_names(model), threshold=threshold)
    return report, class_accuracy(logits, targets)


def concept_metrics_dict(report: Any, class_accuracy: float | None) -> dict[str, Any]:
    """The report's dict, plus ``class_accuracy`` on class data."""
    out = report.to_dict()
    if class_accuracy is not None:
        out["class_accuracy"] = class_accuracy
    return out


@dataclass
class FeatureMetrics:
    """kNN and linear-probe results on frozen CLS features (what ``mcm eval --knn --probe`` reports).

    Attributes:
        knn: ``{"accuracy", "k", "train_images"}``, or None (not asked for, or no class labels).
        probe: :func:`~mcm_core.evaluate.probes.linear_probe`'s dict plus ``train_images`` (on concept
            data ``per_concept_f1`` maps concept names to F1), or None when not asked for.
        notes: why something asked for was not computed.
        train_images, test_images: feature rows of the train split and of the evaluated images
            (0 when the data have no labels and nothing was extracted).
        classes: whether the targets are class indices (else 0/1 concept labels).
    """

    knn: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    train_images: int = 0
    test_images: int = 0
    classes: bool = False


def features_metrics(model: Any, name: str, dataset: Any, data: Any, options: dict[str, Any], train_size: int,
                     knn: bool = False, probe: bool = False) -> FeatureMetrics:
    """kNN and/or linear-probe accuracy of frozen features: train split (limited) vs the evaluated images.

    Args:
        name, options: the data set's name and ``load_dataset`` options (its train split is loaded).
        dataset: the evaluated split (labels are read from it); data: its images to score.
        train_size: training images (the first ``train_size`` of the train split).
        knn, probe: which of the two to compute.
    """
    from mcm_core.data import load_dataset

    if not labelled(dataset):
        return FeatureMetrics(notes=[f"no kNN / probe: {name} has no labels"])
    train = limit(load_dataset(name, split="train", **options), train_size)
    train_x, train_y = extract_features(model, train, batch_size=EVAL_BATCH)
    test_x, test_y = extract_features(model, data, batch_size=EVAL_BATCH)
    classes = train_y.ndim == 1
    out = FeatureMetrics(train_images=train_x.shape[0], test_images=test_x.shape[0], classes=classes)
    if knn:
        if classes:
            out.knn = {"accuracy": knn_accuracy(train_x, train_y, test_x, test_y), "k": 20,
                       "train_images": train_x.shape[0]}
        else:
            out.notes.append(f"no kNN: {name} has concept labels, kNN needs classes (use --probe)")
    if probe:
        result = linear_probe(train_x, train_y, test_x, test_y)
        if not classes:
            names = list(dataset.concept_names)
            result["per_concept_f1"] = dict(zip(names, result["per_concept_f1"]))
        out.probe = {**result, "train_images": train_x.shape[0]}
    return out


# =========================================================================== end of training
class RunEvaluator:
    """``eval_fn`` for ``fit``: validation metrics, remembered so the final evaluation is not repeated."""

    SPLITS = ("val", "test", "train")  # the first split a data set has

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self._data: Any = None
        self.split = ""
        self.last: tuple[int, dict[str, Any]] | None = None

    def data(self) -> Any:
        if self._data is None:
            from mcm_core.batches import training_data

            for split in self.SPLITS:
                try:
                    dataset = training_data(self.cfg, split)
                except ValueError as error:
                    if "split" in str(error) and split != self.SPLITS[-1]:
                        continue
                    raise
                self.split, self._data = split, limit(dataset, self.cfg.eval_size)
                break
        return self._data

    def full(self, model: Any) -> dict[str, Any]:
        data = self.data()
        metrics: dict[str, Any] = {"split": self.split, "num_images": len(data), "notes": []}
        if self.split != "val":
            metrics["notes"].append(f"{self.cfg.dataset} has no val split; evaluated on {self.split}")
        if has_capability(model, "uses_concepts"):
            metrics["concepts"] = concept_metrics_dict(*concept_report(model, data))
        if (why := no_reconstruction(model)) is not None:
            metrics["notes"].append(why)
        else:
            metrics["reconstruction"] = reconstruction_over(model, data, self.cfg.mask_ratio, self.cfg.seed)
        if (rows := shapes_measures(model, data, len(data), self.cfg.seed)) is not None:
            metrics["measures"] = rows
        return metrics

    def __call__(self, model: Any, step: int) -> dict[str, float]:
        metrics = self.full(model)
        self.last = (step, metrics)
        flat = {}
        if "concepts" in metrics:
            flat.update({f"concept_{k}": v for k, v in metrics["concepts"]["macro"].items()})
        if "reconstruction" in metrics:
            rec = metrics["reconstruction"]
            flat.update({"recon_mse": rec["mse"], "recon_psnr": rec["psnr"]})
        for row in metrics.get("measures", []):
            if row["mask_ratio"] in (0.5, 0.9):
                ratio = f"{row['mask_ratio']:g}".replace(".", "")
                flat.update({f"psnr_{ratio}": row["psnr"], f"colour_fidelity_{ratio}": row["colour_fidelity"],
                             f"edit_following_{ratio}": row["edit_following"]})
        return flat

    def final(self, model: Any, step: int) -> dict[str, Any]:
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        return self.full(model)
