"""The cosine schedule and the EMA update, written once for the trainer and the models.

- :func:`cosine_schedule`: the learning-rate decay after warm-up (``mcm_core.train.lr_lambda``),
  Latent MIM's EMA momentum (``ema_momentum``, ``LatentMIM.scheduled_momentum``) and its
  similarity target (``similarity_target``).
- :func:`ema_update`: the hierarchical masker's EMA encoder (the trainer) and Latent MIM's
  EMA target encoder and projector (``LatentMIM.after_step``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


def cosine_schedule(progress: float | torch.Tensor, start: float, end: float) -> float | torch.Tensor:
    """Half a cosine from ``start`` at progress 0 to ``end`` at progress 1: ``end + (start - end) (1 + cos(pi t)) / 2``.

    ``progress`` is clipped to [0, 1]. A float gives a float; a tensor (any shape) gives a tensor
    of its shape, computed on its device without reading anything back.
    """
    if isinstance(progress, torch.Tensor):
        return end + (start - end) * 0.5 * (1 + torch.cos(math.pi * progress.clamp(0, 1)))
    progress = min(max(float(progress), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_update(ema: nn.Module | Sequence[nn.Module], online: nn.Module | Sequence[nn.Module],
               momentum: float) -> None:
    """``ema <- momentum * ema + (1 - momentum) * online`` for every parameter, in place, one fused call.

    Args:
        ema, online: a module each, or matching sequences of modules (their parameters in order).
    """
    def params(modules: nn.Module | Sequence[nn.Module]) -> list[torch.Tensor]:
        modules = [modules] if isinstance(modules, nn.Module) else modules
        return [p for module in modules for p in module.parameters()]

    with torch.no_grad():
        torch._foreach_lerp_(params(ema), params(online), 1 - momentum)


__all__ = ["cosine_schedule", "ema_update"]
