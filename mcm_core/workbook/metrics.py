"""Metrics a notebook records for a lab: :func:`record_metrics` merges them into the file the lab runner names.

The lab runner (:mod:`mcm_core.workbook.labs`) sets ``MCM_METRICS_PATH`` (:data:`METRICS_ENV`) for
every notebook it executes and reads the file back into its summary; outside a lab the call is a no-op.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["METRICS_ENV", "metric_value", "record_metrics"]

METRICS_ENV = "MCM_METRICS_PATH"  # where record_metrics writes; set by the lab runner (mcm_core.workbook.labs)


def metric_value(name: str, value: Any) -> Any:
    """``value`` as JSON: numbers (one-element tensors and NumPy scalars too), str, bool, None, or a dict."""
    if isinstance(value, Mapping):
        return {str(key): metric_value(f"{name}.{key}", inner) for key, inner in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        size = value.numel() if isinstance(value, torch.Tensor) else np.size(value)
        if size != 1:
            raise ValueError(f"metric {name!r} must be one number, got an array of shape {tuple(value.shape)}; "
                             "record a summary of it (e.g. its mean) or one metric per element")
        value = value.item()
    if isinstance(value, (int, float)):
        return value if isinstance(value, int) or math.isfinite(value) else None  # nan / inf: not measured
    raise TypeError(f"metric {name!r} must be a number, str, bool, None or a dict of them, "
                    f"got {type(value).__name__}")


def record_metrics(metrics: Mapping[str, Any], path: str | Path | None = None) -> Path | None:
    """Add ``metrics`` to the JSON file a lab run collects; a no-op outside a lab.

    The lab runner (``python -m mcm_core.workbook.labs run``) sets ``MCM_METRICS_PATH`` for every
    notebook it executes; each call merges into that file (later values win), so a notebook
    may record its metrics in several places. Nested dicts become dotted column names in the
    lab's summary (``{"knn_acc": {"mae": 0.6}}`` -> ``knn_acc.mae``).

    Args:
        metrics: ``{name: value}``; values are numbers (nan / inf are stored as null), str,
            bool, None, one-element tensors or arrays, or dicts of those.
        path: the file to write (default: ``$MCM_METRICS_PATH``; nothing is written when unset).
    Returns:
        The path written, or None when there was nowhere to write.
    Raises:
        TypeError / ValueError: a name or value that cannot be stored, named in the message.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"record_metrics takes a dict of name -> value, got {type(metrics).__name__}")
    bad = [name for name in metrics if not isinstance(name, str) or not name]
    if bad:
        raise TypeError(f"metric names must be non-empty strings, got {bad!r}")
    values = {name: metric_value(name, value) for name, value in metrics.items()}
    target = path if path is not None else os.environ.get(METRICS_ENV, "").strip() or None
    if target is None:
        return None
    target = Path(target)
    recorded = json.loads(target.read_text()) if target.is_file() else {}
    recorded.update(values)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=2) + "\n")  # in recording order: the summary's column order
    tmp.replace(target)  # atomic: a run killed mid-write never leaves half a file
    return target
