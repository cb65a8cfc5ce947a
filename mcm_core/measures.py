"""Moved to :mod:`mcm_core.evaluate.measures`; this path re-exports it until the notebooks, tests and
benchmarks are moved."""
from mcm_core.evaluate.measures import (  # noqa: F401
    CURVE_RATIOS, EDITABLE, PALETTE, ShapesMeasures, check_shapes_inputs, colour_edit_states, measure_dataset,
    measure_shapes, measure_shapes_curve, nearest_palette, pixel_mask, summary,
)

__all__ = ["CURVE_RATIOS", "PALETTE", "ShapesMeasures", "colour_edit_states", "nearest_palette",
           "measure_shapes", "measure_shapes_curve", "measure_dataset", "summary"]
