"""Shrink a finished training run into the checkpoint shipped with mcm_core (notebooks 02-04 start from it).

The shipped file holds the model weights only, stored as float16 (half the size; loading casts them
back to float32), with the run's config, final step, metrics and training command in its metadata.
Also writes ``mcm_core/assets/README.md`` so the numbers travel with the file.

Usage (the documented command that made the shipped checkpoint):

    python -m mcm_core train --method mcm --preset tiny --mask-ratio 0.5 --steps 400 --batch-size 64 \\
        --lr 0.002 --out-dir runs/shipped
    python scripts/ship_checkpoint.py runs/shipped
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from mcm_core.checkpoint import load_checkpoint, save_checkpoint
from mcm_core.notebook import SHIPPED_CHECKPOINT


def train_command(cfg: dict) -> str:
    """The CLI command that reproduces the run of ``cfg`` (a TrainConfig dict)."""
    keys = ("method", "preset", "dataset", "masking", "mask_ratio", "steps", "batch_size", "lr", "seed")
    flags = " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(cfg[k]))}" for k in keys)
    return f"python -m mcm_core train {flags} --out-dir runs/shipped"


def readme(cfg: dict, metrics: dict, size_mb: float) -> str:
    """The assets README: how the shipped checkpoint was made and how good it is."""
    lines = [
        "# The shipped checkpoint",
        "",
        "`mcm_tiny_shapes.safetensors` lets notebooks 02-04 run without notebook 01 "
        "(`mcm_core.notebook.workbook_checkpoint` falls back to it). Weights only, stored as float16 "
        f"({size_mb:.1f} MB); loading casts them back to float32.",
        "",
        "Made by:",
        "",
        "```bash",
        train_command(cfg),
        "python scripts/ship_checkpoint.py runs/shipped",
        "```",
    ]
    concepts, recon = metrics.get("concepts"), metrics.get("reconstruction")
    if concepts:
        macro = concepts["macro"]
        lines += ["", f"Held-out metrics of that run in float32 ({concepts['num_samples']} validation images, "
                  "from its `metrics.json`): macro accuracy "
                  f"{macro['accuracy']:.3f}, macro-F1 {macro['f1']:.3f}, macro AUC {macro['auc']:.3f}.", "",
                  "| concept | F1 | AUC |", "|---|---|---|"]
        lines += [f"| {row['name']} | {row['f1']:.3f} | {row['auc']:.3f} |" for row in concepts["per_concept"]]
    if recon:
        lines += ["", "Reconstruction of hidden patches: " + ", ".join(f"{k} {v:.4g}" for k, v in recon.items()
                                                                       if isinstance(v, (int, float))) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder of `python -m mcm_core train`")
    parser.add_argument("--out", type=Path, default=SHIPPED_CHECKPOINT)
    args = parser.parse_args(argv)
    model, info = load_checkpoint(args.run / "checkpoint.safetensors")
    cfg = info.train.get("config", {})
    if info.train.get("step") != cfg.get("steps"):
        parser.error(f"{args.run} is not a finished run (step {info.train.get('step')} of {cfg.get('steps')})")
    metrics_file = args.run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    train = {"step": info.train["step"], "config": cfg, "metrics": metrics, "command": train_command(cfg)}
    path = save_checkpoint(args.out, model, train=train, dtype=torch.float16)
    size_mb = path.stat().st_size / 2**20
    (path.parent / "README.md").write_text(readme(cfg, metrics, size_mb))
    print(f"wrote {path} ({size_mb:.1f} MB) and {path.parent / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
