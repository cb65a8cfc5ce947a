"""Time one training step of each method at a preset, and the evolved hierarchical masker's share.

Prints one JSON line per setting. The masker's cost (EMA-encoder affinity + tree + mask) is
timed in the same process as the step it serves, so the ratio is meaningful on a noisy machine.

    python benchmarks/bench_step.py --preset tiny --batch-size 128
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from mcm_core.masking import make_masker
from mcm_core.models import build_model, has


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", nargs="*", default=[], help="model overrides key=value (ints/floats)")
    args = parser.parse_args()
    overrides = {k: (float(v) if "." in v else int(v)) for k, v in (s.split("=") for s in args.set)}
    torch.manual_seed(0)
    for name, ratio in (("mae", 0.75), ("mcm", 0.5), ("mcm", 0.25)):
        model = build_model(name, args.preset, **overrides)
        cfg = model.cfg
        images = torch.rand(args.batch_size, 3, cfg.img_size, cfg.img_size)
        concepts = torch.randint(0, 2, (args.batch_size, getattr(cfg, "num_concepts", 1))).float()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)

        def step(mask=None):
            out = model(images, mask_ratio=ratio, mask=mask, generator=gen,
                        concepts=concepts if has(model, "uses_concepts") else None)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ema = copy.deepcopy(model.encoder).requires_grad_(False).eval()
        masker = make_masker("hierarchical", cfg.grid)

        def hierarchical_mask():
            return masker(args.batch_size, ratio, generator=gen, affinity=ema.patch_affinity(images), progress=0.5)

        affinity = ema.patch_affinity(images)
        step_ms = median_ms(step, args.repeats)
        affinity_ms = median_ms(lambda: ema.patch_affinity(images), args.repeats)
        tree_ms = median_ms(lambda: masker(args.batch_size, ratio, generator=gen, affinity=affinity, progress=0.5),
                            args.repeats)
        print(json.dumps({
            "method": name, "preset": args.preset, "mask_ratio": ratio, "batch_size": args.batch_size,
            "overrides": overrides, "step_ms": round(step_ms, 1), "images_per_s": round(args.batch_size / step_ms * 1000, 1),
            "hier_affinity_ms": round(affinity_ms, 1), "hier_tree_and_mask_ms": round(tree_ms, 1),
            "hier_share_of_step": round((affinity_ms + tree_ms) / step_ms, 3),
            "tree_share_of_step": round(tree_ms / step_ms, 3),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        }), flush=True)


if __name__ == "__main__":
    main()
