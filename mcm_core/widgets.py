"""Moved to :mod:`mcm_core.workbook.widgets`; this path re-exports it until the notebooks and tests are moved."""
from __future__ import annotations

from mcm_core.workbook.widgets import STATE_OPTIONS, InterpolationWidget, figure_png, show_figure, show_text

__all__ = ["InterpolationWidget", "figure_png", "show_figure", "show_text", "STATE_OPTIONS"]
