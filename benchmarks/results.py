"""The MCM paper's claim, measured: do masked images give concepts as good as full images, for less compute?

Trains every configuration below at the same step budget on this machine, evaluates it
on held-out images, appends one JSON line per run to ``<out>/results.jsonl`` as soon as the
run ends (nothing is lost if a later run fails), and writes the tables into their generated
section of ``docs/results.md`` (the page's hand-written analysis is kept; ``benchmarks/report.py``).

    python benchmarks/results.py                       # the full study (about 30 min on 2 cores)
    python benchmarks/results.py --steps 3 --quick     # a smoke run of the whole pipeline
    python benchmarks/results.py --only shapes         # one part
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks.report`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import replace_section  # noqa: E402
from mcm_core.checkpoint import package_versions  # noqa: E402
from mcm_core.batches import training_data  # noqa: E402
from mcm_core.config import TrainConfig  # noqa: E402
from mcm_core.data import load_dataset  # noqa: E402
from mcm_core.evaluate import (  # noqa: E402
    class_accuracy, concept_metrics, edit_success_rate, extract_features, linear_probe,
    predict_concepts, training_flops_per_step,
)
from mcm_core.models import has  # noqa: E402
from mcm_core.train import Trainer  # noqa: E402

SHAPES_RUNS = [
    ("MCM, mask 0", dict(method="mcm", mask_ratio=0.0)),
    ("MCM, mask 0.25", dict(method="mcm", mask_ratio=0.25)),
    ("MCM, mask 0.5", dict(method="mcm", mask_ratio=0.5)),
    ("MCM, mask 0.75", dict(method="mcm", mask_ratio=0.75)),
    ("MCM, mask 0.5, evolved hierarchical", dict(method="mcm", mask_ratio=0.5, masking="hierarchical")),
    ("supervised encoder, full images", dict(method="supervised", mask_ratio=0.0)),
    ("MAE, mask 0.75 + linear concept head", dict(method="mae", mask_ratio=0.75)),
]
FASHION_RUNS = [
    ("MCM, mask 0", dict(method="mcm", mask_ratio=0.0)),
    ("MCM, mask 0.5", dict(method="mcm", mask_ratio=0.5)),
    ("supervised encoder, full images", dict(method="supervised", mask_ratio=0.0)),
]


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"




def evaluate_run(model, cfg: TrainConfig, dataset_name: str, test_size: int, quick: bool) -> dict:
    """Held-out metrics: concept macro-F1 (and accuracy for class data), edit success for MCM."""
    test = training_data(cfg, split="test")
    if test_size < len(test):
        test = torch.utils.data.Subset(test, range(test_size))
    if not has(model, "uses_concepts"):  # no concept head: a linear probe on frozen features
        train = training_data(cfg, "train")
        train = torch.utils.data.Subset(train, range(min(len(train), 500 if quick else 5000)))
        train_x, train_y = extract_features(model, train)
        test_x, test_y = extract_features(model, test)
        probe = linear_probe(train_x, train_y, test_x, test_y)
        return {"macro_f1": probe.get("macro_f1"), "accuracy": probe.get("accuracy"), "head": "linear probe"}
    logits, targets = predict_concepts(model, test)
    report = concept_metrics(logits, targets)
    out = {"macro_f1": report.macro["f1"], "concept_accuracy": report.macro["accuracy"]}
    if dataset_name == "fashion_mnist":
        out["accuracy"] = class_accuracy(logits, targets)
    if has(model, "can_edit") and dataset_name == "shapes":
        n = 64 if quick else 500
        images = torch.stack([test[i][0] for i in range(n)])
        concepts = torch.stack([test[i][1] for i in range(n)])
        edit = edit_success_rate(model, images, concepts, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
        out["edit_success"] = edit["rate"]
    return out


def run_one(label: str, spec: dict, dataset: str, args: argparse.Namespace, out_dir: Path) -> dict:
    data = {"size": args.train_size} if dataset == "shapes" else {}
    cfg = TrainConfig(dataset=dataset, data=data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(30, args.steps // 5 + 1), log_every=25, progress=False, seed=args.seed,
                      out_dir=str(out_dir / dataset / label.replace(" ", "_").replace(",", "")), **spec)
    trainer = Trainer(cfg)
    step_flops = training_flops_per_step(trainer)
    start = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - start
    metrics = evaluate_run(result.model, cfg, dataset, args.test_size, args.quick)
    row = {"dataset": dataset, "run": label, **spec, "masking": cfg.masking, "steps": cfg.steps,
           "batch_size": cfg.batch_size, "wall_s": round(wall, 1), "train_tflop": step_flops * cfg.steps / 1e12,
           "final_loss": result.history[-1]["loss"], **metrics}
    print(json.dumps(row), flush=True)
    return row


def fashion_floor(quick: bool) -> dict:
    """Raw-pixel logistic regression on Fashion-MNIST: the floor any representation must beat."""
    from sklearn.linear_model import LogisticRegression

    def arrays(split: str, n: int | None):
        ds = load_dataset("fashion_mnist", split=split)
        n = len(ds) if n is None else n
        x = torch.stack([ds[i][0][0] for i in range(n)]).flatten(1).numpy()
        y = [int(ds[i][1]) for i in range(n)]
        return x, y

    start = time.perf_counter()
    train_x, train_y = arrays("train", 2000 if quick else 20000)
    test_x, test_y = arrays("test", 1000 if quick else None)
    clf = LogisticRegression(max_iter=200 if quick else 1000, C=0.1).fit(train_x, train_y)
    acc = float((clf.predict(test_x) == test_y).mean())
    row = {"dataset": "fashion_mnist", "run": "raw-pixel logistic regression (floor)", "accuracy": acc,
           "wall_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(row), flush=True)
    return row


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def write_report(rows: list[dict], args: argparse.Namespace, command: str, path: Path) -> None:
    shapes = [r for r in rows if r["dataset"] == "shapes"]
    fashion = [r for r in rows if r["dataset"] == "fashion_mnist"]
    base = next((r for r in shapes if r["run"] == "MCM, mask 0"), None)
    lines = [
        "## The MCM claim: tables",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()}, on {machine()} "
        f"(torch {torch.__version__}). Every run: `tiny` preset (32 px, patch 4, width 128, depth 6, "
        f"decoder width 64), {args.steps} steps of batch {args.batch_size}, lr {args.lr}, seed {args.seed}. "
        "FLOPs are counted with `torch.utils.flop_counter` (math attention backend), forward + backward, "
        "plus the EMA-encoder pass of the hierarchical masker. Wall-clock is the training loop only; "
        "step times on this machine vary by about 15% between identical runs.",
        "",
        "### Built-in shapes data (13 concepts, held-out test split)",
        "",
        "| run | macro-F1 | edit success (mask 0.75) | wall-clock (s) | training TFLOP | FLOPs vs MCM mask 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in shapes:
        ratio = r["train_tflop"] / base["train_tflop"] if base else None
        lines.append(f"| {r['run']} | {fmt(r.get('macro_f1'))} | {fmt(r.get('edit_success'))} | {r['wall_s']} | "
                     f"{r['train_tflop']:.2f} | {fmt(ratio, 2)} |")
    lines += ["", "MAE's macro-F1 is a linear probe (one logistic regression per concept) on its frozen CLS "
              "features from 5,000 training images.", "",
              "### Fashion-MNIST (10 classes as one-hot concepts, 10,000 test images)", "",
              "| run | test accuracy | macro-F1 | wall-clock (s) | training TFLOP |", "|---|---|---|---|---|"]
    for r in fashion:
        tflop = f"{r['train_tflop']:.2f}" if "train_tflop" in r else "-"
        lines.append(f"| {r['run']} | {fmt(r.get('accuracy'))} | {fmt(r.get('macro_f1'))} | {r['wall_s']} | {tflop} |")
    lines += ["", "### Targets", "", *targets_section(shapes, fashion, base), ""]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items() if k != "platform")]
    replace_section(path, "results", lines)


def targets_section(shapes: list[dict], fashion: list[dict], base: dict | None) -> list[str]:
    """Each target of the issue next to its measured figure (met or missed, never adjusted)."""
    out = []
    half = next((r for r in shapes if r["run"] == "MCM, mask 0.5"), None)
    if half and base:
        ratio = half["train_tflop"] / base["train_tflop"]
        out.append(f"- MCM at mask 0.5: macro-F1 {half['macro_f1']:.3f} (target >= 0.95: "
                   f"{'met' if half['macro_f1'] >= 0.95 else 'missed'}), {ratio:.2f}x the FLOPs of mask 0 "
                   f"(target <= 0.7x: {'met' if ratio <= 0.7 else 'missed'}).")
    edits = [r["edit_success"] for r in shapes if "edit_success" in r]
    if edits:
        out.append(f"- Edit success rate: best {max(edits):.3f} (target >= 0.8: {'met' if max(edits) >= 0.8 else 'missed'}).")
    acc = [r["accuracy"] for r in fashion if "train_tflop" in r and r.get("accuracy") is not None]
    if acc:
        out.append(f"- Fashion-MNIST test accuracy: best {max(acc):.3f} (target >= 0.88: "
                   f"{'met' if max(acc) >= 0.88 else 'missed'}).")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=20000, help="shapes training images")
    parser.add_argument("--test-size", type=int, default=10000, help="at most this many test images")
    parser.add_argument("--only", choices=["shapes", "fashion_mnist"])
    parser.add_argument("--quick", action="store_true", help="small evaluation sets (for the smoke test)")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--report", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the rows already in <out>/results.jsonl "
                             "(e.g. after an interrupted study; the rows that are there, in their order)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    log = out / "results.jsonl"
    command = "python benchmarks/results.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if args.report_only:
        if not log.is_file():
            raise SystemExit(f"--report-only: no {log}; run the study first (without --report-only)")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        write_report(rows, args, command.strip(), Path(args.report))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = [("shapes", SHAPES_RUNS), ("fashion_mnist", FASHION_RUNS)]
    for dataset, runs in plan:
        if args.only and dataset != args.only:
            continue
        for label, spec in runs:
            rows.append(run_one(label, spec, dataset, args, out))
            with open(log, "a") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
        if dataset == "fashion_mnist":
            rows.append(fashion_floor(args.quick))
    write_report(rows, args, command.strip(), Path(args.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
