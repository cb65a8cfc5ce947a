"""What training costs: FLOPs counted by ``torch.utils.flop_counter``, and a run's time and throughput.

:func:`flop_counting` / :func:`count_flops` count any block (attention on the MATH SDPA
backend, so it is counted); :func:`training_flops_per_image` counts one forward + backward
training step per image, :func:`training_flops_per_step` a trainer's whole step; :class:`RunCost` holds a run's wall time, FLOPs and images seen and
derives TFLOP/s, FLOPs per image and images per second.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mcm_core.evaluate.inputs import check_image_batch

if TYPE_CHECKING:
    from mcm_core.train import Trainer


@contextmanager
def flop_counting() -> Iterator[FlopCounterMode]:
    """``torch.utils.flop_counter`` around a block, attention on the MATH SDPA backend.

    The fused CPU attention kernel is not counted (METHODS.md section 6), so counts would
    otherwise miss attention. The counter's ``get_total_flops()`` is the total;
    ``get_flop_counts()`` splits it by module (forward passes attribute reliably; backward
    passes of interleaved modules, such as MCM's encoder and concept blocks, do not).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()`` once, counted by ``torch.utils.flop_counter`` (see ``flop_counting``)."""
    with flop_counting() as counter:
        fn()
    return int(counter.get_total_flops())


def training_flops_per_image(model: nn.Module, images: Tensor, mask_ratio: float,
                             concepts: Tensor | None = None, generator: torch.Generator | None = None) -> float:
    """FLOPs of one training step (forward + backward of ``model(images, ...)``) per image.

    Args:
        images: (B, 3, H, W); concepts: optional (B, K) 0/1 labels (MCM's concept loss).
    Returns:
        total FLOPs / B. The model's gradients are zeroed (set to None) afterwards.
        Optimizer FLOPs are not included.
    """
    check_image_batch(images)

    def step() -> None:
        model(images, mask_ratio=mask_ratio, concepts=concepts, generator=generator).loss.backward()

    try:
        flops = count_flops(step)
    finally:
        model.zero_grad(set_to_none=True)
    return flops / images.shape[0]


def training_flops_per_step(trainer: Trainer, sample: int = 8) -> float:
    """Counted FLOPs of one training step of ``trainer`` at its batch size: forward + backward on
    ``sample`` of its training images, scaled to ``cfg.batch_size``, plus the EMA encoder's patch
    affinity pass when it masks hierarchically. Optimizer FLOPs are not included."""
    images, targets = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=sample)))
    model, cfg = trainer.model, trainer.cfg
    concepts = targets.float() if trainer.uses_concepts else None
    per_image = training_flops_per_image(model, images, cfg.mask_ratio, concepts=concepts)
    if trainer.ema is not None:
        ema = trainer.ema
        per_image += count_flops(lambda: ema.patch_affinity(images, kind=cfg.hierarchy_affinity)) / images.shape[0]
    return per_image * cfg.batch_size


@dataclass
class RunCost:
    """What a training run cost.

    Attributes:
        wall_seconds: wall-clock training time.
        train_flops: total training FLOPs (e.g. ``training_flops_per_image(...) * images_seen``).
        images_seen: images processed (steps x batch size).
    """

    wall_seconds: float
    train_flops: float
    images_seen: int

    @property
    def tflops_per_second(self) -> float:
        """Achieved throughput in TFLOP/s (nan when no time was measured)."""
        return self.train_flops / self.wall_seconds / 1e12 if self.wall_seconds > 0 else float("nan")

    @property
    def flops_per_image(self) -> float:
        """Training FLOPs per image seen (nan when no image was seen)."""
        return self.train_flops / self.images_seen if self.images_seen > 0 else float("nan")

    @property
    def images_per_second(self) -> float:
        """Training throughput in images per second (nan when no time was measured)."""
        return self.images_seen / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the derived rates."""
        return {**asdict(self), "tflops_per_second": self.tflops_per_second,
                "flops_per_image": self.flops_per_image, "images_per_second": self.images_per_second}
