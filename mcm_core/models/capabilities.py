"""Moved to :mod:`mcm_core.models.outputs` (the output types and the capability protocol); this path
re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.models.outputs import (
    CAPABILITIES, IMPLIED, LACKING, METHODS, NORM_PIX_PROBLEM, ImageModel, declared_capabilities, has, is_model,
    pixel_problem, require,
)

__all__ = ["CAPABILITIES", "ImageModel", "declared_capabilities", "has", "is_model", "require", "pixel_problem",
           "NORM_PIX_PROBLEM", "LACKING", "IMPLIED", "METHODS"]
