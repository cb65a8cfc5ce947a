"""The five methods side by side: one backbone, one budget, the same evaluation.

Trains MAE (random masks), MAE with evolved hierarchical masks, MCM, MiCL and Latent MIM on the
same ``tiny`` backbone for the same steps x batch with the one trainer, twice each: on the
features data (Fashion-MNIST), scored by kNN and linear-probe accuracy of frozen CLS features,
and on the built-in shapes data, scored by concept macro-F1 (MCM: its own concept head; the
others: one linear probe per concept on frozen features). Training FLOPs (counted) and
wall-clock (training loop only) come with every run.

Appends one JSON line per run to ``<out>/compare.jsonl`` as soon as it ends, and writes a
markdown table, with whether each paper's direction holds at this scale, into the
``compare_methods`` section of ``--report`` (default ``docs/results.md``; the rest of the page is kept).
A method whose model cannot be built (e.g. not importable yet) is reported as skipped, with why.

    python benchmarks/compare_methods.py                        # the full comparison
    python benchmarks/compare_methods.py --steps 2 --quick      # a smoke run of the pipeline
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks.results`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import replace_section  # noqa: E402
from benchmarks.results import flops_per_step, fmt, machine  # noqa: E402
from mcm_core.compare_viz import summarize  # noqa: E402
from mcm_core.config import TrainConfig  # noqa: E402
from mcm_core.data import load_dataset  # noqa: E402
from mcm_core.evaluate import (  # noqa: E402
    concept_metrics, extract_features, knn_accuracy, linear_probe, predict_concepts,
)
from mcm_core.models import build_model, has  # noqa: E402
from mcm_core.models.backbone import PRESETS  # noqa: E402
from mcm_core.train import Trainer, training_data  # noqa: E402

SHAPES = "shapes"
METHODS = [  # (key, label, TrainConfig fields); mask_ratio None = --mask-ratio
    ("mae", "MAE, random masks", dict(method="mae", masking="random", mask_ratio=None)),
    ("mae_evolved", "MAE, evolved hierarchical masks", dict(method="mae", masking="hierarchical", mask_ratio=None)),
    ("mcm", "MCM", dict(method="mcm", masking="random", mask_ratio="mcm")),
    ("micl", "MiCL", dict(method="micl", masking="random", mask_ratio=None)),
    ("latent_mim", "Latent MIM", dict(method="latent_mim", masking="random", mask_ratio=None)),
]
BASELINE = "mae"
DIRECTIONS = {  # key: (metric that must beat the baseline's, the paper's claim in words)
    "mae_evolved": ("probe_acc", "evolved hierarchical masks beat random masks on linear-probe accuracy (paper 003)"),
    "mcm": ("concept_f1", "MCM's concept head beats a linear probe on MAE features in concept macro-F1 (paper 000)"),
    "micl": ("knn_acc", "MiCL beats MAE on kNN accuracy of frozen features (paper 001)"),
    "latent_mim": ("knn_acc", "Latent MIM beats MAE on kNN accuracy of frozen features (paper 002)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step of every run")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="MAE, MiCL and Latent MIM")
    parser.add_argument("--mcm-mask-ratio", type=float, default=0.25, help="MCM (its paper's main ratio)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"],
                        help="features data: kNN and linear probe")
    parser.add_argument("--train-size", type=int, default=20000, help="shapes training images")
    parser.add_argument("--eval-train", type=int, default=10000, help="images the kNN / probes are fitted on")
    parser.add_argument("--eval-test", type=int, default=10000, help="at most this many test images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small evaluation sets (smoke runs)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the runs already in <out>/compare.jsonl with the same settings")
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    parser.add_argument("--report", default=str(ROOT / "docs" / "results.md"),
                        help="markdown page whose 'compare_methods' section the table replaces")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.eval_train, args.eval_test = min(args.train_size, 512), \
            min(args.eval_train, 160), min(args.eval_test, 80)
    for name in ("steps", "batch_size", "train_size", "eval_train", "eval_test"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two comparisons comparable (stored in every row; the notebook matches on it)."""
    names = ("steps", "batch_size", "lr", "seed", "mask_ratio", "mcm_mask_ratio", "dataset", "train_size",
             "eval_train", "eval_test", "quick")
    return {"preset": "tiny", **{n: getattr(args, n) for n in names}}


def unavailable(method: str) -> str | None:
    """Why ``build_model(method)`` fails (e.g. not importable or registered yet), or None when it builds."""
    try:
        build_model(method, "tiny")
    except Exception as error:  # noqa: BLE001  any failure means: skip the method and say why
        return f"{type(error).__name__}: {error}"
    return None


def train_config(spec: dict[str, Any], dataset: str, args: argparse.Namespace, out_dir: Path) -> TrainConfig:
    """The run's TrainConfig: the same backbone, steps, batch, lr and seed for every method."""
    ratio = {None: args.mask_ratio, "mcm": args.mcm_mask_ratio}[spec["mask_ratio"]]
    data = {"image_size": PRESETS["tiny"]["img_size"]}
    if dataset == SHAPES:
        data["size"] = args.train_size
    return TrainConfig(method=spec["method"], preset="tiny", dataset=dataset, data=data, masking=spec["masking"],
                       mask_ratio=ratio, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=min(30, args.steps // 5 + 1), log_every=25, progress=False,
                       seed=args.seed, device=args.device, out_dir=str(out_dir))


def subset(dataset: torch.utils.data.Dataset, n: int) -> torch.utils.data.Dataset:
    """The first ``n`` items (all when there are fewer)."""
    return torch.utils.data.Subset(dataset, range(min(n, len(dataset))))


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, split: str, image_size: int) -> torch.utils.data.Dataset:
    """The features data with class labels, loaded once per process (the IDX decode takes seconds)."""
    return load_dataset(name, split=split, image_size=image_size)


def features_metrics(model: torch.nn.Module, cfg: TrainConfig, args: argparse.Namespace) -> dict[str, float]:
    """kNN (k=20) and linear-probe top-1 accuracy of frozen CLS features (N, D) on the features data."""
    train, test = (cached_dataset(cfg.dataset, split, cfg.data["image_size"]) for split in ("train", "test"))
    train_x, train_y = extract_features(model, subset(train, args.eval_train))  # (N, D), (N,)
    test_x, test_y = extract_features(model, subset(test, args.eval_test))
    with warnings.catch_warnings():  # quick runs stop lbfgs early on purpose
        warnings.simplefilter("ignore" if args.quick else "default", ConvergenceWarning)
        probe = linear_probe(train_x, train_y, test_x, test_y, max_iter=200 if args.quick else 1000)
    return {"knn_acc": knn_accuracy(train_x, train_y, test_x, test_y), "probe_acc": probe["accuracy"]}


def concept_f1(model: torch.nn.Module, cfg: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Concept macro-F1 on held-out shapes: MCM's own head, else a linear probe per concept."""
    test = subset(training_data(cfg, "test"), args.eval_test)
    if has(model, "uses_concepts"):
        logits, targets = predict_concepts(model, test)
        return {"concept_f1": concept_metrics(logits, targets).macro["f1"], "head": "own concept head"}
    train_x, train_y = extract_features(model, subset(training_data(cfg, "train"), args.eval_train))
    test_x, test_y = extract_features(model, test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if args.quick else "default", ConvergenceWarning)
        probe = linear_probe(train_x, train_y, test_x, test_y, max_iter=200 if args.quick else 1000)
    return {"concept_f1": probe["macro_f1"], "head": "linear probe per concept"}


def run_one(key: str, label: str, spec: dict[str, Any], dataset: str, args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    """Train one method on one data set with the trainer, count its FLOPs, evaluate it: -> the JSON row."""
    cfg = train_config(spec, dataset, args, out / dataset / key)
    trainer = Trainer(cfg)
    step_flops = flops_per_step(trainer, cfg.batch_size)
    result = trainer.run()
    metrics = features_metrics(result.model, cfg, args) if dataset != SHAPES else concept_f1(result.model, cfg, args)
    return {"key": key, "label": label, "dataset": dataset, "method": cfg.method, "masking": cfg.masking,
            "mask_ratio": cfg.mask_ratio, "wall_s": round(result.wall_seconds, 1),
            "train_tflop": step_flops * cfg.steps / 1e12, "final_loss": result.history[-1]["loss"],
            **metrics, "settings": settings(args)}


def directions(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each method with a paper claim: its metric, the baseline's, and whether the claim holds here."""
    by_key = {s["key"]: s for s in summary}
    base = by_key.get(BASELINE)
    out = []
    for key, (metric, claim) in DIRECTIONS.items():
        entry = by_key.get(key)
        if entry is None:
            continue
        mine, theirs = entry.get(metric), (base or {}).get(metric)
        if entry.get("skipped") or mine is None or theirs is None:
            verdict = f"not measured ({entry.get('skipped') or 'baseline missing'})"
        else:
            verdict = "holds" if mine > theirs else "does not hold"
        out.append({"key": key, "label": entry["label"], "claim": claim, "metric": metric, "value": mine,
                    "baseline": theirs, "verdict": verdict})
    return out


def markdown_table(summary: list[dict[str, Any]]) -> list[str]:
    """The comparison table as markdown lines, one row per method."""
    verdicts = {d["key"]: d["verdict"] for d in directions(summary)}
    lines = ["| method | kNN acc | linear-probe acc | concept macro-F1 | training TFLOP | wall-clock (s) | "
             "paper's direction |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["skipped"]:
            lines.append(f"| {s['label']} | skipped: {s['skipped']} | | | | | |")
            continue
        tflop = "-" if s["train_tflop"] is None else f"{s['train_tflop']:.3f}"
        lines.append(f"| {s['label']} | {fmt(s['knn_acc'])} | {fmt(s['probe_acc'])} | {fmt(s['concept_f1'])} | "
                     f"{tflop} | {s['wall_s']} | {verdicts.get(s['key'], 'baseline')} |")
    return lines


def write_report(rows: list[dict[str, Any]], args: argparse.Namespace, command: str, path: Path) -> None:
    summary = summarize(rows)
    lines = [
        "## The methods side by side",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()}, on {machine()} (torch {torch.__version__}). "
        f"Every run: `tiny` preset (32 px, patch 4), {args.steps} steps of batch {args.batch_size}, lr {args.lr}, "
        f"seed {args.seed}; mask ratio {args.mask_ratio} (MCM: {args.mcm_mask_ratio}). Each method is trained "
        f"twice with the one trainer: on {args.dataset} (kNN, k=20, and linear-probe accuracy of frozen CLS "
        f"features, fitted on {args.eval_train} training images, scored on up to {args.eval_test} test images) "
        f"and on the shapes data ({args.train_size} images; concept macro-F1 on up to {args.eval_test} test "
        "images: MCM's own concept head, a linear probe per concept for the others). MCM trains with the "
        "labels as concepts, so its features are supervised. Training TFLOP: counted forward + backward of "
        f"the {args.dataset} run (math attention backend; plus the EMA pass of hierarchical masking). "
        "Wall-clock: the training loops of both runs.",
        "",
        *markdown_table(summary),
        "",
        "### Does each paper's direction hold at this scale?",
        "",
    ]
    for d in directions(summary):
        numbers = "" if d["value"] is None or d["baseline"] is None else \
            f": {d['metric']} {d['value']:.3f} vs MAE {d['baseline']:.3f}"
        lines.append(f"- {d['label']}: {d['claim']} -> **{d['verdict']}**{numbers}.")
    replace_section(path, "compare_methods", lines)


def finished_runs(log: Path, wanted: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Trained rows of ``log`` with settings ``wanted``, by (method key, data set); the latest wins."""
    if not Path(log).exists():
        return {}
    rows = [r for r in map(json.loads, Path(log).read_text().splitlines()) if r.get("settings") == wanted]
    return {(r["key"], r["dataset"]): r for r in rows if not r.get("skipped")}


def run_all(args: argparse.Namespace, log: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Every method on both data sets; each row appended to ``log`` as soon as its run ends.

    With ``resume``, runs already in ``log`` with the same settings are reused, not trained again
    (an interrupted comparison continues where it stopped).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    done = finished_runs(log, settings(args)) if resume else {}
    rows = []
    for key, label, spec in METHODS:
        reason = unavailable(spec["method"])
        if reason:
            runs: list[tuple[dict[str, Any], bool]] = [
                ({"key": key, "label": label, "skipped": reason, "settings": settings(args)}, True)]
        else:
            runs = ((done[(key, d)], False) if (key, d) in done else
                    (run_one(key, label, spec, d, args, log.parent), True) for d in (args.dataset, SHAPES))
        for row, new in runs:
            if new:
                print(json.dumps(row), flush=True)
                with open(log, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def load_rows(log: Path, wanted: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The latest rows of ``log`` run with settings ``wanted``, when every method is there; else None."""
    if not Path(log).exists():
        return None
    rows = [r for r in map(json.loads, Path(log).read_text().splitlines()) if r.get("settings") == wanted]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[(row["key"], row.get("dataset", "skipped"))] = row
    for key, _, _ in METHODS:
        done = {d for k, d in latest if k == key}
        if "skipped" not in done and not {wanted["dataset"], SHAPES} <= done:
            return None
    return list(latest.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run_all(args, Path(args.out) / "compare.jsonl", resume=args.resume)
    command = "python benchmarks/compare_methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(rows, args, command.strip(), Path(args.report))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
