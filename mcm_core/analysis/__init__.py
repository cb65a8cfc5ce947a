"""Analysis: what reads a trained model or computes the numbers a figure shows. No matplotlib here.

Sits between evaluation and the figures (``... -> evaluate -> analysis -> viz -> workbook``):
functions take models, tensors or arrays and return tensors, arrays, numbers or dataclasses;
:mod:`mcm_core.viz` turns those into figures.

Modules, in dependency order
----------------------------
- :mod:`~mcm_core.analysis.arrays` -- input checks shared with :mod:`mcm_core.viz` (:func:`to_numpy`,
  :func:`as_images`, :func:`check_names`, :func:`check_binary`).
- :mod:`~mcm_core.analysis.clustering` -- k-means over patch features, foreground purity (notebook 06).
- :mod:`~mcm_core.analysis.hierarchy` -- tree label checks, node boundaries, dendrogram layout (notebook 04).
- :mod:`~mcm_core.analysis.compare` -- per-method summaries of the comparison, the papers' directions, its table (notebook 07).
- :mod:`~mcm_core.analysis.concepts` -- MCM concept read-outs and their measures (notebook 02).
- :mod:`~mcm_core.analysis.interpolation` -- the test-time mask ratio: views, edit grids, the curve (notebook 03).
"""
from __future__ import annotations

from mcm_core.analysis.arrays import as_images, check_binary, check_names, to_numpy
from mcm_core.analysis.clustering import foreground_patches, foreground_purity, kmeans, patch_clusters
from mcm_core.analysis.hierarchy import as_grid, as_labels, boundary_segments, check_merges, dendrogram_layout
from mcm_core.analysis.compare import BASELINE, DIRECTIONS, METRICS, directions, markdown_table, summarize
from mcm_core.analysis.concepts import (
    ConceptReadout, attention_on_objects, attention_to_patches, conditional_rates, cosine_similarity_matrix,
    patch_coverage, pca_2d, read_concepts,
)
from mcm_core.analysis.interpolation import (
    EditGrid, Interpolation, InterpolationCurve, describe_states, edit_grid, interpolate, mask_noise,
    measure_interpolation, nested_mask,
)

__all__ = [
    "to_numpy", "as_images", "check_names", "check_binary",
    "kmeans", "patch_clusters", "foreground_patches", "foreground_purity",
    "as_grid", "as_labels", "check_merges", "boundary_segments", "dendrogram_layout",
    "METRICS", "BASELINE", "DIRECTIONS", "summarize", "directions", "markdown_table",
    "ConceptReadout", "read_concepts", "attention_to_patches", "patch_coverage", "attention_on_objects",
    "cosine_similarity_matrix", "pca_2d", "conditional_rates",
    "describe_states", "mask_noise", "nested_mask", "Interpolation", "interpolate", "EditGrid", "edit_grid",
    "InterpolationCurve", "measure_interpolation",
]
