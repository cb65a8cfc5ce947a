"""Shared test set-up: quiet, deterministic, and polite to a 2-core machine."""
from __future__ import annotations

import os

import torch

# The tests run small tensor ops: one intra-op thread per process is fastest, stays fast on a
# loaded machine (two threads waiting for a busy core ran several times slower), and matches
# pytest-xdist's one worker per core.
torch.set_num_threads(1)
# The same for the processes the tests start (notebook kernels, CLI runs, torchrun workers): with
# two threads each under pytest-xdist's two workers, small ops ran 25-100x slower (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
