"""Losses shared between methods: the frequency-weighted concept loss of MCM and the supervised reference.

Positives of concept k are weighted by 0.5 / f_k and negatives by 0.5 / (1 - f_k), so a
rare concept counts as much as a common one (MCM weights rare concepts).

Method-specific losses stay with their method (MiCL's symmetric InfoNCE in :mod:`~mcm_core.models.micl`,
Latent MIM's patch InfoNCE in :mod:`~mcm_core.models.latent_mim_losses`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def concept_prior(concept_freq: list[float] | None, num_concepts: int) -> torch.Tensor:
    """Prior frequency of each concept (K,), clamped to [0.01, 0.99]; 0.5 each when unknown."""
    freq = concept_freq if concept_freq is not None else [0.5] * num_concepts
    return torch.tensor(freq, dtype=torch.float32).clamp(0.01, 0.99)


def register_concept_weights(module: nn.Module, prior: torch.Tensor) -> None:
    """Give ``module`` the buffers ``pos_weight`` and ``neg_weight`` (K,) derived from ``prior``."""
    module.register_buffer("pos_weight", 0.5 / prior, persistent=False)
    module.register_buffer("neg_weight", 0.5 / (1 - prior), persistent=False)


def weighted_concept_bce(logits: torch.Tensor, concepts: torch.Tensor, pos_weight: torch.Tensor,
                         neg_weight: torch.Tensor) -> torch.Tensor:
    """Mean frequency-weighted logistic loss of ``logits`` (B, K) against 0/1 ``concepts`` (B, K)."""
    weights = concepts * pos_weight + (1 - concepts) * neg_weight
    return (F.binary_cross_entropy_with_logits(logits, concepts, reduction="none") * weights).mean()


__all__ = ["concept_prior", "register_concept_weights", "weighted_concept_bce"]
