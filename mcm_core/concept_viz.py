"""Moved to :mod:`mcm_core.viz.concepts` (the figures) and :mod:`mcm_core.analysis.concepts` (reading the
model, the numbers); this path re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.analysis.arrays import check_binary, check_names
from mcm_core.analysis.concepts import (
    ConceptReadout, attention_on_objects, attention_to_patches, conditional_rates, cosine_similarity_matrix,
    patch_coverage, pca_2d, read_concepts,
)
from mcm_core.viz.concepts import (
    OFF_COLOUR, ON_COLOUR, attention_overlay, check_concept_map, draw_concept_map, drop_spare_axes, grid_figure,
    grid_shape, plot_attention_grid, plot_co_prediction, plot_concept_heatmap, plot_concept_map, plot_confusion_grid,
    plot_similarity_matrices, plot_token_projection,
)

__all__ = [
    "ConceptReadout", "read_concepts", "attention_to_patches",
    "plot_attention_grid", "patch_coverage", "attention_on_objects",
    "cosine_similarity_matrix", "plot_similarity_matrices", "pca_2d", "plot_token_projection",
    "plot_concept_heatmap", "plot_confusion_grid", "conditional_rates", "plot_co_prediction",
    "plot_concept_map",
    # helpers, importable here as before
    "ON_COLOUR", "OFF_COLOUR", "check_names", "check_binary", "grid_shape", "drop_spare_axes", "attention_overlay",
    "grid_figure", "check_concept_map", "draw_concept_map",
]
