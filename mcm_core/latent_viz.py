"""Moved to :mod:`mcm_core.viz.latent` (the figures) and :mod:`mcm_core.analysis.clustering` (k-means, purity);
this path re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.analysis.clustering import foreground_patches, foreground_purity, kmeans, patch_clusters
from mcm_core.viz.latent import (
    MONITOR_LABELS, history_rows, plot_collapse_curves, plot_knn_accuracy, plot_segmentations,
)

__all__ = [
    "MONITOR_LABELS", "plot_collapse_curves", "plot_knn_accuracy", "kmeans", "patch_clusters", "foreground_patches",
    "foreground_purity", "plot_segmentations",
    "history_rows",  # a helper, importable here as before
]
