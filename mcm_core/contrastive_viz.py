"""Moved to :mod:`mcm_core.viz.contrastive`; this path re-exports it until the notebooks, tests and
benchmarks are moved."""
from mcm_core.viz.contrastive import (
    VIEW_COLOURS, check_views, history_series, plot_keep_ratio_sweep, plot_loss_vs_chance, plot_similarity_gap,
    plot_similarity_mapping, plot_similarity_matrices, plot_view_similarity, show_views, smoothed, view_overlay,
)

__all__ = [
    "view_overlay", "show_views", "plot_similarity_mapping", "plot_view_similarity",
    "plot_loss_vs_chance", "plot_similarity_gap", "plot_keep_ratio_sweep",
    # the old name of plot_view_similarity (notebook 05) and helpers, importable here as before
    "plot_similarity_matrices", "VIEW_COLOURS", "check_views", "history_series", "smoothed",
]
