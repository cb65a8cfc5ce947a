"""Shared test set-up: quiet, deterministic, and polite to a 2-core machine."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The tests run small tensor ops: one intra-op thread per process is fastest, stays fast on a
# loaded machine (two threads waiting for a busy core ran several times slower), and matches
# pytest-xdist's one worker per core.
torch.set_num_threads(1)
# The same for the processes the tests start (notebook kernels, CLI runs, torchrun workers): with
# two threads each under pytest-xdist's two workers, small ops ran 25-100x slower (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` executed as a fresh module (the scripts are not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """``benchmark_script("bench_train")`` -> the script as a module, to call its functions and ``main``."""
    return load_benchmark
