"""Throughput of the built-in shapes data: ``generate_shapes`` end to end.

Times factor sampling + rendering + float conversion of ``--n`` images and prints ONE JSON
line: images per second (median and best of ``--repeats``), image size, threads, torch
version and the machine. Example (the figure quoted in docs/benchmarks.md)::

    .venv/bin/python benchmarks/bench_data.py --image-size 32 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from mcm_core.data import generate_shapes
from mcm_core.data import shapes_render


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "nproc": usable, "platform": platform.platform(),
            "python": platform.python_version()}


def measure(n: int, image_size: int, repeats: int, max_objects: int, device: str) -> list[float]:
    """Seconds per call of ``generate_shapes(n, ...)``, after one warm-up call."""
    generate_shapes(min(n, 64), seed=0, image_size=image_size, max_objects=max_objects,
                    device=device)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        batch = generate_shapes(n, seed=r + 1, image_size=image_size, max_objects=max_objects,
                                device=device)
        if batch.images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=None,
                        help="images per call (default: 10000 at 32 px, fewer when larger)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-objects", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or max(100, 10000 * 32 * 32 // args.image_size**2)
    times = measure(n, args.image_size, args.repeats, args.max_objects, args.device)
    print(json.dumps({
        "benchmark": "generate_shapes",
        "images_per_s": round(n / statistics.median(times), 1),
        "images_per_s_best": round(n / min(times), 1),
        "n": n, "repeats": args.repeats, "image_size": args.image_size,
        "max_objects": args.max_objects, "device": args.device,
        "threads": torch.get_num_threads(), "render_threads": shapes_render.RENDER_THREADS,
        "torch": torch.__version__, "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
