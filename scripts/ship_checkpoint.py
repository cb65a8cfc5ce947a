"""Shrink a finished training run into the reference checkpoint shipped with mcm_core.

Notebooks 02 and 03 use it by default for their figures, notebook 01 shows it next to the student's
run. The shipped file holds the model weights only, stored as float16
(half the size; loading casts them back to float32), with the run's config, final step, metrics and
training command in its metadata. Also measures it on the held-out **test** split (concept macro-F1,
``mcm_core.evaluate.measures`` at the curve's mask ratios, edit success at 0.75, in float32 and in float16) and
writes ``mcm_core/assets/README.md`` so the numbers travel with the file.

Usage (the command that made the shipped checkpoint is in mcm_core/assets/README.md):

    python -m mcm_core train ... --out-dir runs/reference
    python scripts/ship_checkpoint.py runs/reference

Another seed of the same command is measured without shipping it (the targets table of
docs/results.md reports both seeds):

    python scripts/ship_checkpoint.py runs/reference_seed1 --record docs/data/reference_seed1.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

from mcm_core.checkpoint import load_checkpoint, save_checkpoint
from mcm_core.workbook import SHIPPED_CHECKPOINT


def train_command(cfg: dict, out_dir: str = "runs/reference") -> str:
    """The CLI command that reproduces the run of ``cfg`` (a TrainConfig dict)."""
    keys = ("method", "preset", "dataset", "masking", "mask_ratio", "mask_ratio_max", "steps", "batch_size", "lr",
            "seed", "eval_every", "eval_size")
    flags = " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(cfg[k]))}" for k in keys if k in cfg)
    model = " ".join(f"--set model.{k}={shlex.quote(str(v))}" for k, v in sorted(cfg.get("model", {}).items())
                     if k not in ("concept_names", "concept_freq", "num_concepts", "img_size", "mask_ratio"))
    return f"python -m mcm_core train {flags} {model} --out-dir {out_dir}".replace("  ", " ")


def test_measures(model: torch.nn.Module, num_images: int = 600) -> dict:
    """Macro-F1 on 2,000 test images, the measures curve and edit success at 0.75 on the first ``num_images``."""
    from mcm_core.data import load_dataset
    from mcm_core.evaluate import concept_metrics, edit_success_rate, predict_concepts
    from mcm_core.evaluate.measures import measure_dataset

    test = load_dataset("shapes", split="test")
    logits, targets = predict_concepts(model, test, batch_size=200)
    batch = test.batch(range(num_images))
    edit = edit_success_rate(model, batch.images, batch.concepts, 0.75, torch.Generator().manual_seed(0))
    return {"macro_f1": concept_metrics(logits, targets).macro["f1"], "edit_success_075": edit["rate"],
            "curve": [m.to_dict() for m in measure_dataset(model, test, num_images=num_images, seed=0)]}


def measures_table(name: str, result: dict) -> list[str]:
    """Markdown lines of one ``test_measures`` result."""
    lines = [f"{name}: macro-F1 {result['macro_f1']:.3f} (2,000 test images, logit > 0), `mcm eval --edit` "
             f"edit success {result['edit_success_075']:.3f} at mask 0.75 (600 images).", "",
             "| test-time mask ratio | hidden-pixel PSNR (dB) | colour fidelity | colour-edit following |",
             "|---|---|---|---|"]
    lines += [f"| {r['mask_ratio']} | {r['psnr']:.2f} | {r['colour_fidelity']:.3f} | {r['edit_following']:.3f} |"
              for r in result["curve"]]
    return lines


def curve_table(evaluations: list[dict]) -> list[str]:
    """Markdown lines of the run's evaluations during training (val split), one row per evaluated step."""
    rows = [e for e in evaluations if "psnr_05" in e]
    if not rows:
        return []
    lines = ["| step | macro-F1 | PSNR@0.5 (dB) | colour fidelity@0.5 | edit following@0.5 | PSNR@0.9 (dB) "
             "| colour fidelity@0.9 | edit following@0.9 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e['step']:,} | {e['concept_f1']:.3f} | {e['psnr_05']:.2f} | {e['colour_fidelity_05']:.3f} "
              f"| {e['edit_following_05']:.3f} | {e['psnr_09']:.2f} | {e['colour_fidelity_09']:.3f} "
              f"| {e['edit_following_09']:.3f} |" for e in rows]
    return lines


def readme(cfg: dict, metrics: dict, size_mb: float, measured: dict, wall_s: float | None,
           evaluations: list[dict] | None = None) -> str:
    """The assets README: how the reference checkpoint was made and how good it is."""
    lines = [
        "# The reference checkpoint",
        "",
        "`mcm_tiny_shapes.safetensors` is the reference MCM of the workbook: notebook 01's model and losses, "
        "trained longer (the command below). Notebooks 02 and 03 use it by default (`use_reference=False` switches them to your run), "
        "and fall back to it when notebook 01's run is missing (`mcm_core.workbook.workbook_checkpoint`); "
        "notebook 01 shows it next to your run. Weights only, stored as float16 "
        f"({size_mb:.1f} MB); loading casts them back to float32.",
        "",
        "Made by (2 CPU cores, bf16 autocast" + (f"; the training loop took {wall_s / 60:.1f} minutes" if wall_s else "")
        + "):",
        "",
        "```bash",
        train_command(cfg),
        "python scripts/ship_checkpoint.py runs/reference",
        "```",
        "",
        "## Held-out test split (measured by `scripts/ship_checkpoint.py`)",
        "",
        *measures_table("In float32 (the trained weights)", measured["float32"]),
        "",
        *measures_table("As shipped (float16 weights, loaded as float32)", measured["float16"]),
    ]
    concepts, recon = metrics.get("concepts"), metrics.get("reconstruction")
    if concepts:
        macro = concepts["macro"]
        lines += ["", "## Validation split, at the end of training", "",
                  f"Metrics of that run in float32 ({concepts['num_samples']} validation images, "
                  "from its `metrics.json`): macro accuracy "
                  f"{macro['accuracy']:.3f}, macro-F1 {macro['f1']:.3f}, macro AUC {macro['auc']:.3f}.", "",
                  "| concept | F1 | AUC |", "|---|---|---|"]
        lines += [f"| {row['name']} | {row['f1']:.3f} | {row['auc']:.3f} |" for row in concepts["per_concept"]]
    if recon:
        lines += ["", "Reconstruction of hidden patches: " + ", ".join(f"{k} {v:.4g}" for k, v in recon.items()
                                                                       if isinstance(v, (int, float))) + "."]
    curve = curve_table(evaluations or [])
    if curve:
        lines += ["", "## Learning curve (validation split, evaluated during training)", "",
                  f"{cfg.get('eval_size', 600)} validation images at every evaluation; test-time masks 0.5 and 0.9.",
                  "", *curve]
    return "\n".join(lines) + "\n"


def record(run: Path, info, measured: dict, wall_s: float | None) -> dict:
    """What ``--record`` writes: the run's config, its evaluations during training and its test measures."""
    cfg = info.train.get("config", {})
    return {"run": run.name, "seed": cfg.get("seed"), "steps": info.train.get("step"), "config": cfg,
            "train_wall_s": wall_s, "evaluations": info.train.get("evaluations", []),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "test": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder of `python -m mcm_core train`")
    parser.add_argument("--out", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--record", type=Path, default=None,
                        help="measure the run on the test split and write this JSON file instead of shipping it")
    args = parser.parse_args(argv)
    model, info = load_checkpoint(args.run / "checkpoint.safetensors")
    cfg = info.train.get("config", {})
    if info.train.get("step") != cfg.get("steps"):
        parser.error(f"{args.run} is not a finished run (step {info.train.get('step')} of {cfg.get('steps')})")
    metrics_file = args.run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    history = info.train.get("history", [])
    wall_s = history[-1].get("elapsed_s") if history else None
    measured = {"float32": test_measures(model)}
    evaluations = info.train.get("evaluations", [])  # val measures during training, for the learning curve
    if args.record:
        args.record.write_text(json.dumps(record(args.run, info, measured["float32"], wall_s), indent=1) + "\n")
        print(f"wrote {args.record}")
        return 0
    train = {"step": info.train["step"], "config": cfg, "metrics": metrics, "command": train_command(cfg),
             "test_measures": measured["float32"], "train_wall_s": wall_s,
             "evaluations": evaluations}
    path = save_checkpoint(args.out, model, train=train, dtype=torch.float16)
    shipped, _ = load_checkpoint(path)
    measured["float16"] = test_measures(shipped)
    size_mb = path.stat().st_size / 2**20
    (path.parent / "README.md").write_text(readme(cfg, metrics, size_mb, measured, wall_s, evaluations))
    print(f"wrote {path} ({size_mb:.1f} MB) and {path.parent / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
