"""Moved to :mod:`mcm_core.viz.hierarchy` (the figures) and :mod:`mcm_core.analysis.hierarchy` (label checks,
tree geometry); this path re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.analysis.hierarchy import as_grid, as_labels, boundary_segments, check_merges, dendrogram_layout
from mcm_core.viz.hierarchy import (
    CUT_GREY, GOLDEN, check_snapshot, draw_boundaries, draw_curves, draw_scores, image_grid, node_palette,
    plot_cut_level, plot_dendrogram, plot_mask_evolution, plot_run_comparison, plot_tree_levels, plot_tree_quality,
    segment_overlay,
)

__all__ = [
    "node_palette", "segment_overlay", "boundary_segments", "dendrogram_layout",
    "plot_tree_levels", "plot_dendrogram", "plot_mask_evolution", "plot_cut_level",
    "plot_tree_quality", "plot_run_comparison",
    # helpers, importable here as before
    "GOLDEN", "CUT_GREY", "as_grid", "as_labels", "image_grid", "check_merges", "draw_boundaries", "check_snapshot",
    "draw_curves", "draw_scores",
]
