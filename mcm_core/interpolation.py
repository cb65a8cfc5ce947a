"""Moved to :mod:`mcm_core.analysis.interpolation` (views, edit grids, the measured curve) and
:mod:`mcm_core.viz.interpolation` (their figures); this path re-exports them until the notebooks, tests,
benchmarks and :mod:`mcm_core.widgets` / :mod:`mcm_core.measures` are moved."""
from mcm_core.analysis.interpolation import (
    KEEP, EditGrid, Interpolation, InterpolationCurve, StatesLike, check_curve_inputs, check_mask_ratio, check_mcm,
    concept_states, decode_edited, describe_states, edit_grid, interpolate, mask_noise, measure_batch,
    measure_interpolation, nested_mask,
)
from mcm_core.viz.interpolation import plot_edit_grid, plot_interpolation, plot_interpolation_curve, ratio_label

__all__ = [
    "KEEP", "check_mask_ratio", "concept_states", "describe_states", "mask_noise", "nested_mask",
    "Interpolation", "interpolate", "EditGrid", "edit_grid", "InterpolationCurve", "measure_interpolation",
    "plot_interpolation", "plot_edit_grid", "plot_interpolation_curve",
    # helpers, importable here as before (mcm_core.measures and mcm_core.widgets use check_mcm, decode_edited)
    "StatesLike", "check_mcm", "decode_edited", "check_curve_inputs", "measure_batch", "ratio_label",
]
