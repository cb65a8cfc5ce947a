"""Moved to :mod:`mcm_core.workbook.params` (parameters, smoke mode, seeding), :mod:`mcm_core.workbook.checkpoints`
(checkpoint reuse, the shipped checkpoint) and :mod:`mcm_core.workbook.metrics` (record_metrics); this path
re-exports them until the notebooks, tests and scripts are moved."""
from __future__ import annotations

from mcm_core.workbook.checkpoints import SHIPPED_CHECKPOINT, checkpoint_matches, workbook_checkpoint
from mcm_core.workbook.metrics import METRICS_ENV, metric_value, record_metrics
from mcm_core.workbook.params import (
    INJECTED_HEADER, SMOKE_ENV, Range, Spec, assigned_values, injected_parameters, notebook_params, resolve_params,
    setup, smoke_from_env, type_label, type_ok,
)

__all__ = ["Range", "resolve_params", "notebook_params", "injected_parameters", "smoke_from_env",
           "setup", "checkpoint_matches", "workbook_checkpoint", "SHIPPED_CHECKPOINT", "record_metrics",
           "METRICS_ENV", "assigned_values", "metric_value", "type_label", "type_ok", "SMOKE_ENV",
           "INJECTED_HEADER", "Spec"]
