"""Input checks shared by the analysis and the figures: tensors or arrays in, validated numpy arrays out.

The lowest module of :mod:`mcm_core.analysis`; :mod:`mcm_core.viz` reuses it (analysis -> viz, never
back). It imports neither torch nor matplotlib: :func:`to_numpy` recognises a torch tensor by its
``detach`` method.

Conventions (``docs/design.md``): images float ``(N, 3, H, W)`` in ``[0, 1]`` (torch tensors or numpy
arrays; 1 channel is repeated to 3); concept labels 0/1 ``(N, K)``.

Contents
--------
- Arrays: :func:`to_numpy`, :func:`as_images`.
- Concepts: :func:`check_names`, :func:`check_binary`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["to_numpy", "as_images", "check_names", "check_binary"]


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # bf16 has no numpy dtype; bool stays bool
    return np.asarray(x)


def as_images(images: Any, what: str = "images") -> np.ndarray:
    """Validate images (N, C, H, W) with C in {1, 3} and return float (N, H, W, 3) clipped to [0, 1]."""
    array = to_numpy(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, 3, H, W) (or (N, 1, H, W)), got {array.shape}; "
                         "add a batch dimension with images[None] for a single image")
    if array.shape[0] == 0:
        raise ValueError(f"{what} is empty; pass at least one image")
    array = np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return array.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C) for imshow


def check_names(names: Sequence[str], count: int, what: str = "concept_names") -> list[str]:
    """``names`` as a list of ``count`` strings, or a ValueError saying how many are needed."""
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"got {len(names)} {what} for {count} columns; pass one name per concept")
    return names


def check_binary(labels: Any, shape: tuple[int, ...], what: str = "labels") -> np.ndarray:
    """Validate 0/1 labels of ``shape`` and return them as bool."""
    array = to_numpy(labels)
    if array.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {array.shape}")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{what} must hold only 0 and 1 (concept off / on); threshold soft labels first")
    return array.astype(bool)
