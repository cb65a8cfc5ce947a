"""Endurance: a long ``tiny`` run keeps its resident memory flat and its step time steady.

Trains with the real ``Trainer`` (data loading, masks, logging and periodic checkpoints
included) and samples, every ``--sample-every`` steps, the process's resident memory (VmRSS
from ``/proc/self/status``) and the mean wall time per step since the previous sample.
Prints one JSON object (and writes it to ``--output``):

- ``rss_growth``: (last RSS - RSS at the end of warm-up) / RSS at the end of warm-up, plus
  the largest post-warm-up sample; the issue's bar is growth under 5%.
- ``step_time_drift``: median ms/step of the last tenth of the post-warm-up samples over the
  median of the first tenth, minus 1 (0.1 = 10% slower at the end).

The long run the issue asks for (at least 10,000 steps, minutes to hours on a CPU)::

    python benchmarks/endurance.py --steps 10000 --output outputs/endurance.json

A quick check that the script works: ``--steps 300 --sample-every 10``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mcm_core.checkpoint import atomic_write_text, package_versions
from mcm_core.config import TrainConfig
from mcm_core.train import Trainer


def resident_mib() -> float:
    """Current resident memory of this process in MiB (peak RSS where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # the line reads "VmRSS:  123456 kB"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class SampledTrainer(Trainer):
    """The training loop, plus a (step, RSS, ms per step) sample every ``sample_every`` steps."""

    def __init__(self, cfg: TrainConfig, sample_every: int) -> None:
        super().__init__(cfg)
        self.sample_every = sample_every
        self.samples: list[dict[str, float]] = []
        self.last_time = time.perf_counter()

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        metrics = super().train_step(images, targets)
        done = self.step + 1  # steps finished, this one included
        if done % self.sample_every == 0:
            now = time.perf_counter()
            self.samples.append({"step": done, "rss_mib": round(resident_mib(), 2),
                                 "ms_per_step": round((now - self.last_time) / self.sample_every * 1000, 3)})
            self.last_time = now
        return metrics


def summarize(samples: list[dict[str, float]], warmup_steps: int, rss_before: float) -> dict[str, Any]:
    """Memory growth and step-time drift after warm-up (see the module docstring); RSS in MiB."""
    after = [s for s in samples if s["step"] > warmup_steps]
    if len(after) < 2:
        raise ValueError(f"only {len(after)} samples after the warm-up of {warmup_steps} steps; "
                         "run more steps, sample more often or shorten --warmup-steps")
    base, last = after[0]["rss_mib"], after[-1]["rss_mib"]
    peak = max(s["rss_mib"] for s in after)
    tenth = max(1, len(after) // 10)
    early = statistics.median(s["ms_per_step"] for s in after[:tenth])
    late = statistics.median(s["ms_per_step"] for s in after[-tenth:])
    return {
        "warmup_steps": warmup_steps, "samples_after_warmup": len(after),
        "rss_mib": {"after_warmup": base, "last": last, "peak_after_warmup": peak,
                    "before_training": round(rss_before, 2)},
        "rss_growth": round((last - base) / base, 4), "rss_peak_growth": round((peak - base) / base, 4),
        "ms_per_step": {"first_tenth_median": early, "last_tenth_median": late,
                        "all_median": statistics.median(s["ms_per_step"] for s in after)},
        "step_time_drift": round(late / early - 1, 4),
        "rss_growth_under_5_percent": (last - base) / base < 0.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000, help="training steps (default: 10000)")
    parser.add_argument("--method", default="mcm", help="model name (default: mcm)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="training mask ratio (default: 0.5)")
    parser.add_argument("--sample-every", type=int, default=50, help="steps between samples (default: 50)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps excluded from the summary (default: a tenth of --steps)")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="checkpoint period, to include saving in the run (default: 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out-dir", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warmup = args.steps // 10 if args.warmup_steps is None else args.warmup_steps
    with tempfile.TemporaryDirectory(prefix="mcm-endurance-") as scratch:
        cfg = TrainConfig(method=args.method, preset="tiny", steps=args.steps, batch_size=args.batch_size,
                          mask_ratio=args.mask_ratio, lr=2e-3, warmup_steps=min(50, args.steps // 10),
                          checkpoint_every=args.checkpoint_every, log_every=50, progress=False, device="cpu",
                          out_dir=args.out_dir or str(Path(scratch) / "run"))
        trainer = SampledTrainer(cfg, args.sample_every)
        getattr(trainer.dataset, "materialize", lambda: None)()  # the data cache is full before the clock starts
        before = resident_mib()
        started = time.perf_counter()
        result = trainer.run()
        wall = time.perf_counter() - started
    report = {
        "benchmark": "endurance", "method": cfg.method, "preset": cfg.preset, "steps": cfg.steps,
        "batch_size": cfg.batch_size, "mask_ratio": cfg.mask_ratio, "checkpoint_every": cfg.checkpoint_every,
        "threads": torch.get_num_threads(), "wall_seconds": round(wall, 1),
        "final_loss": result.history[-1]["loss"], "summary": summarize(trainer.samples, warmup, before),
        "machine": platform.processor() or platform.machine(), "versions": package_versions(),
        "samples": trainer.samples,
    }
    text = json.dumps(report, indent=2)
    if args.output:
        atomic_write_text(Path(args.output), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
