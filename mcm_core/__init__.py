"""mcm_core: learning concepts from masked images.

The library behind the MCM workbook: a shared ViT backbone, the MAE baseline,
MCM (Multi-layer Concept Map) concept tokens, masking strategies, the training
loop and the analysis tools, packaged by role. Each layer imports only the ones
before it (``docs/design.md`` draws the house)::

    choices -> data/ -> masking/ -> models/ -> train (+ batches, optim, devices, distributed,
    checkpoint, export, config, runs) -> evaluate/ -> analysis/ -> viz/ -> workbook/

``cli/`` (the ``mcm`` command) parses arguments and prints what ``train`` and ``evaluate``
compute; ``workbook/`` is the course tooling (notebook helpers, widgets, labs, handouts).

The common entry points are available at the top level (imported on first use,
so ``import mcm_core`` stays fast): ``build_model``, ``load_dataset``, ``fit``,
``TrainConfig``, ``save_checkpoint``, ``load_checkpoint``, ``export_timm``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "mcm_core.models",
    "load_dataset": "mcm_core.data",
    "fit": "mcm_core.train",
    "TrainConfig": "mcm_core.config",
    "load_config": "mcm_core.config",
    "save_checkpoint": "mcm_core.checkpoint",
    "load_checkpoint": "mcm_core.checkpoint",
    "export_timm": "mcm_core.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcm_core' has no attribute {name!r}")
