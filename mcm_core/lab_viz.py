"""Moved to :mod:`mcm_core.viz.labs`; this path re-exports it until the notebooks, tests and benchmarks
are moved."""
from mcm_core.viz.labs import (
    FAILED_COLOR, draw_bars, draw_lines, metric_label, number, plot_lab_summary, positions, series_label,
)

__all__ = [
    "plot_lab_summary", "series_label", "metric_label",
    "FAILED_COLOR", "number", "positions", "draw_lines", "draw_bars",  # helpers, importable here as before
]
