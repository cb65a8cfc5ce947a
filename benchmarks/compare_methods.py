"""The five methods side by side: one backbone, one budget, the same evaluation (the report's script).

The comparison itself is :mod:`mcm_core.evaluate.comparison` (notebook 07 calls the same code): MAE
(random masks), MAE with evolved hierarchical masks, MCM, MiCL and Latent MIM on the same ``tiny``
backbone for the same steps x batch, each trained on the features data (kNN and linear-probe
accuracy of frozen CLS features) and on the built-in shapes data (concept macro-F1), with counted
training FLOPs and wall-clock.

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
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks.results`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import replace_section  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from mcm_core.analysis.compare import directions, markdown_table, summarize  # noqa: E402
from mcm_core.evaluate.comparison import FEATURE_DATASETS, ComparisonSettings, run_all  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``args.settings`` (a checked :class:`ComparisonSettings`), ``out``, ``report``, ``resume``."""
    default = ComparisonSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=default.steps, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=default.batch_size, help="images per step of every run")
    parser.add_argument("--lr", type=float, default=default.lr, help="peak learning rate of every run")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--mask-ratio", type=float, default=default.mask_ratio, help="MAE, MiCL and Latent MIM")
    parser.add_argument("--mcm-mask-ratio", type=float, default=default.mcm_mask_ratio,
                        help="MCM (its paper's main ratio)")
    parser.add_argument("--dataset", default=default.dataset, choices=FEATURE_DATASETS,
                        help="features data: kNN and linear probe")
    parser.add_argument("--train-size", type=int, default=default.train_size, help="shapes training images")
    parser.add_argument("--eval-train", type=int, default=default.eval_train,
                        help="images the kNN / probes are fitted on")
    parser.add_argument("--eval-test", type=int, default=default.eval_test, help="at most this many test images")
    parser.add_argument("--device", default=default.device)
    parser.add_argument("--quick", action="store_true", help="small evaluation sets (smoke runs)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the runs already in <out>/compare.jsonl with the same settings")
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    parser.add_argument("--report", default=str(ROOT / "docs" / "results.md"),
                        help="markdown page whose 'compare_methods' section the table replaces")
    args = parser.parse_args(argv)
    names = ("steps", "batch_size", "lr", "seed", "mask_ratio", "mcm_mask_ratio", "dataset", "train_size",
             "eval_train", "eval_test", "quick", "device")
    try:
        args.settings = ComparisonSettings(**{n: getattr(args, n) for n in names}).checked()
    except ValueError as error:  # "<field> must be ...": name the flag
        field, _, problem = str(error).partition(" ")
        parser.error(f"--{field.replace('_', '-')} {problem}")
    return args


def write_report(rows: list[dict], settings: ComparisonSettings, command: str, path: Path) -> None:
    """Replace the ``compare_methods`` section of ``path`` with the table and the papers' directions."""
    s = settings
    summary = summarize(rows)
    lines = [
        "## The methods side by side",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()}, on {machine()} (torch {torch.__version__}). "
        f"Every run: `tiny` preset (32 px, patch 4), {s.steps} steps of batch {s.batch_size}, lr {s.lr}, "
        f"seed {s.seed}; mask ratio {s.mask_ratio} (MCM: {s.mcm_mask_ratio}). Each method is trained "
        f"twice with the one trainer: on {s.dataset} (kNN, k=20, and linear-probe accuracy of frozen CLS "
        f"features, fitted on {s.eval_train} training images, scored on up to {s.eval_test} test images) "
        f"and on the shapes data ({s.train_size} images; concept macro-F1 on up to {s.eval_test} test "
        "images: MCM's own concept head, a linear probe per concept for the others). MCM trains with the "
        "labels as concepts, so its features are supervised. Training TFLOP: counted forward + backward of "
        f"the {s.dataset} run (math attention backend; plus the EMA pass of hierarchical masking). "
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run_all(args.settings, Path(args.out) / "compare.jsonl", resume=args.resume)
    command = "python benchmarks/compare_methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(rows, args.settings, command.strip(), Path(args.report))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
