"""Time mask generation: random, block, and the hierarchical tree + mask.

Usage: ``python benchmarks/bench_masking.py [--threads N] [--device cpu|cuda] [--repeats R]``.
Prints the median and the minimum over repeats (step times on shared machines vary
by ~15%: quote medians, compare numbers from one run).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from mcm_core.masking import HierarchicalMasker, block_mask, build_tree, random_mask

CASES = [(128, (8, 8)), (256, (14, 14))]


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """(median, min) wall time in ms over ``repeats`` calls after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    for batch, grid in CASES:
        L = grid[0] * grid[1]
        g = torch.Generator(device=device).manual_seed(0)
        affinity = torch.rand(batch, L, L, generator=g, device=device)
        masker = HierarchicalMasker(grid)
        repeats = args.repeats if L <= 64 or device.type == "cuda" else max(3, args.repeats // 5)
        rows = {
            "random_mask": lambda: random_mask(batch, L, 0.75, generator=g),
            "block_mask": lambda: block_mask(batch, grid, 0.75, generator=g),
            "build_tree": lambda: build_tree(affinity, grid),
            "build_tree (no adjacency)": lambda: build_tree(affinity, grid, adjacency=False),
            "hierarchical sample (tree + cut + mask)": lambda: masker.sample(affinity, 0.75, 1.0, g),
        }
        for name, fn in rows.items():
            if name.endswith("(no adjacency)") and L > 64 and device.type == "cpu":
                continue  # O(L^2) candidates per step: minutes on a 2-core CPU
            med, best = timed(fn, repeats, device)
            print(f"B={batch:4d} grid={grid[0]}x{grid[1]:<3d} {name:42s} median {med:8.2f} ms  min {best:8.2f} ms")


if __name__ == "__main__":
    main()
