"""Moved to :mod:`mcm_core.models.layers` (the cosine schedule and the EMA update); this path re-exports
them until the notebooks, tests and benchmarks are moved."""
from mcm_core.models.layers import cosine_schedule, ema_update

__all__ = ["cosine_schedule", "ema_update"]
