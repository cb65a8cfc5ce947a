"""The CPU training step of this checkout against another commit's, side by side in one run.

For each method, the trainer's full step (mask, forward, backward, clipping, fused AdamW, schedule)
on real shapes batches at the ``tiny`` preset, in fresh subprocesses that alternate between the
two code trees (``git archive`` of ``--baseline`` in a temporary folder, and this checkout), so both
see the same machine state. Optionally also ``torch.compile`` (inductor) of this checkout's model,
with the compile time a notebook pays on its first step.

One JSON line per measurement (``--out`` appends them); a markdown table at the end::

    python benchmarks/cpu_step_compare.py --baseline f9007a4 --threads 2 --out docs/data/cpu_step_compare.jsonl
    python benchmarks/cpu_step_compare.py --table docs/data/cpu_step_compare.jsonl

Run it alone: a second job on a 2-core machine makes every number meaningless.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAPER_MASK = {"mae": 0.75, "mcm": 0.5, "micl": 0.9, "latent_mim": 0.5}  # mcm: notebook 01's ratio

# Runs inside the subprocess, with the code tree under test first on sys.path.
CHILD = r"""
import json, statistics, sys, tempfile, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from mcm_core.config import TrainConfig
from mcm_core.train import Trainer
method, ratio, batch, warmup, timed, mode = sys.argv[1], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
with tempfile.TemporaryDirectory() as out:
    cfg = TrainConfig(method=method, preset="tiny", mask_ratio=ratio, steps=10_000, batch_size=batch,
                      data={"size": 4096}, progress=False, out_dir=out)
    trainer = Trainer(cfg)
    compile_s = None
    if mode == "compile":
        trainer.step_fn = torch.compile(trainer.model)
    trainer.model.train()
    times = []
    for images, targets in trainer.batches(warmup + timed):
        start = time.perf_counter()
        trainer.train_step(images, targets)
        times.append(time.perf_counter() - start)
        trainer.step += 1
    if mode == "compile":
        compile_s = times[0]
    step = statistics.median(times[warmup:])
    print(json.dumps({"step_ms": 1000 * step, "images_per_s": batch / step, "compile_s": compile_s,
                      "bf16": bool(getattr(trainer, "use_bf16", False))}))
"""


def baseline_tree(ref: str, folder: Path) -> Path:
    """``git archive`` of ``ref``'s ``mcm_core`` into ``folder``; -> the folder to put first on sys.path."""
    archive = folder / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "mcm_core"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def measure(tree: Path, method: str, args: argparse.Namespace, mode: str = "eager") -> dict[str, Any]:
    """One subprocess measurement of ``method``'s step with the code of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-c", CHILD, method, str(args.threads), str(PAPER_MASK[method]), str(args.batch_size),
           str(args.warmup if mode == "eager" else 2), str(args.timed), mode]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode:
        raise SystemExit(f"{method} ({tree}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per method, median images/s of each code tree over the repeats, and their ratio."""
    lines = ["| method | mask | baseline img/s | this checkout img/s | speed-up | compiled img/s | compile s |",
             "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        def med(tree: str, key: str = "images_per_s") -> float | None:
            vals = [r[key] for r in rows if r["method"] == method and r["tree"] == tree and r.get(key) is not None]
            return statistics.median(vals) if vals else None

        base, new, comp = med("baseline"), med("checkout"), med("checkout+compile")
        comp_s = med("checkout+compile", "compile_s")
        compiled = f"{comp:.0f} | {comp_s:.0f}" if comp else "- | -"
        lines.append(f"| {method} | {PAPER_MASK[method]} | {base:.0f} | {new:.0f} | {new / base:.2f}x | {compiled} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default="f9007a4", help="git commit of the code to compare against")
    p.add_argument("--methods", nargs="+", default=list(PAPER_MASK), choices=list(PAPER_MASK))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timed", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements of each tree")
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor) this checkout's model")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="print the table of a results file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return 0
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": baseline_tree(args.baseline, Path(tmp)), "checkout": ROOT}
        for method in args.methods:
            runs = [(name, "eager") for _ in range(args.repeats) for name in trees]
            if args.compile:
                runs.append(("checkout", "compile"))
            for name, mode in runs:
                row = {"method": method, "tree": name if mode == "eager" else f"{name}+compile",
                       "ref": args.baseline if name == "baseline" else f"{commit}+worktree",
                       "threads": args.threads, "batch_size": args.batch_size, "mask_ratio": PAPER_MASK[method],
                       "date": dt.date.today().isoformat(), **measure(trees[name], method, args, mode)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
