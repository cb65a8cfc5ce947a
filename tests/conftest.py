"""Shared test set-up: quiet, deterministic, and polite to a 2-core machine."""
from __future__ import annotations

import os

import torch

# pytest-xdist runs one worker per core: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
