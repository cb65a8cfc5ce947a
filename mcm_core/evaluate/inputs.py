"""Shared plumbing of the evaluation modules: model mode and device, batches, input checks.

Every function of :mod:`mcm_core.evaluate` that runs a model does so under :func:`eval_mode`
on :func:`model_device`, reads its data through :func:`iterate_batches` (a ``Dataset``, a
``DataLoader``, any iterable of batches or an ``(images, targets)`` pair of tensors), and
checks its inputs with the validators here, so every module raises the same messages.
Images ``(B, 3, H, W)`` float in ``[0, 1]``; 0/1 concept labels ``(N, K)``; class indices ``(N,)``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

DataSource = Dataset | DataLoader | Iterable | tuple[Tensor, Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with gradients off; restore its previous mode on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU for none)."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def iterate_batches(source: DataSource, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images (B, 3, H, W), targets (B, ...))`` from any of the accepted sources.

    Accepted: a map-style ``Dataset`` of ``(image, target)`` (batched here, in order, no
    workers), a ``DataLoader`` or any iterable of ``(images, targets)`` batches (used as is),
    or a pair of tensors ``(images (N, 3, H, W), targets (N, ...))``.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(t, Tensor) for t in source):
        images, targets = source
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"images and targets differ in length: {images.shape[0]} vs {targets.shape[0]}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size], targets[start:start + batch_size]
        return
    if isinstance(source, Dataset):  # map-style or iterable: let a DataLoader batch it
        source = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=0)
    if not isinstance(source, Iterable):
        raise TypeError(f"expected a Dataset, a DataLoader or an (images, targets) pair of tensors, "
                        f"got {type(source).__name__}")
    for batch in source:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError("each batch must be an (images, targets) pair; wrap the data in a Dataset "
                            "that returns (image, target)")
        yield torch.as_tensor(batch[0]), torch.as_tensor(batch[1])


def check_image_batch(images: Tensor, what: str = "images") -> None:
    """Raise unless ``images`` is a float (N, 3, H, W) tensor with at least one image."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a float tensor (N, 3, H, W) in [0, 1], got {got}; "
                         "stack a dataset's images with torch.stack([img for img, _ in dataset])")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty; pass at least one image")


def binary_targets(targets: Tensor, what: str = "targets") -> Tensor:
    """Validate 0/1 multi-label targets (N, K) and return them as float."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 2:
        raise ValueError(f"{what} must be 0/1 concept labels of shape (N, K), got shape {tuple(targets.shape)}; "
                         "class-index targets (N,) go to knn_accuracy or linear_probe instead")
    if targets.numel() and not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError(f"{what} must contain only 0 and 1; threshold soft labels first, e.g. (targets > 0.5)")
    return targets.float()


def class_targets(targets: Tensor, what: str = "targets") -> Tensor:
    """Validate integer class targets (N,) and return them as long."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 1:
        raise ValueError(f"{what} must be class indices of shape (N,), got shape {tuple(targets.shape)}; "
                         "for 0/1 concept labels (N, K) use linear_probe")
    if targets.is_floating_point() and not bool((targets == targets.round()).all()):
        raise ValueError(f"{what} must be integer class indices, got non-integer values")
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"{what} must be non-negative class indices, got a minimum of {int(targets.min())}")
    return targets.long()


def safe_ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return float(num) / float(den) if den else 0.0
