"""Moved to :mod:`mcm_core.models.losses`; this path re-exports its names until the notebooks, tests and
benchmarks are moved."""
from mcm_core.models.losses import concept_prior, register_concept_weights, weighted_concept_bce

__all__ = ["concept_prior", "register_concept_weights", "weighted_concept_bce"]
