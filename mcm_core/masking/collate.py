"""Masks drawn in the data loader: :class:`MaskingCollator`, a ``collate_fn`` for ``"random"`` and ``"block"``.

Each batch's generator is seeded from ``(seed, epoch, worker id, call counter)``, so masks
differ across steps, epochs and workers and a run reproduces them. The hierarchical strategy
needs the model, so the training loop draws it instead.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mcm_core.masking.registry import make_masker
from mcm_core.masking.simple import num_hidden


def _mix_seed(*parts: int) -> int:
    """One 64-bit seed from several non-negative ints (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0])


class MaskingCollator:
    """DataLoader ``collate_fn`` that also draws the masks: returns ``(images, targets, mask)``.

    The mask (bool (B, L), CPU) comes from a generator seeded by
    ``(seed, epoch, worker id, call counter)``: masks differ across steps, epochs and
    workers, and a run with the same seed reproduces them. Call :meth:`set_epoch` at the
    start of every epoch (workers are re-created with a copy of this object each epoch;
    with ``persistent_workers=True`` they keep their counter, so masks still differ).

    Only ``"random"`` and ``"block"``: the hierarchical strategy needs the model's
    affinity, so it is generated in the training loop (:class:`HierarchicalMasker`).
    """

    def __init__(self, strategy: str, grid: Sequence[int], mask_ratio: float, seed: int, **options: Any) -> None:
        if strategy == "hierarchical":
            raise ValueError("the hierarchical strategy needs the model's affinity; generate it in the "
                             "training loop with HierarchicalMasker, and use a plain collate_fn")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.masker = make_masker(strategy, grid, **options)
        self.grid = self.masker.grid
        num_hidden(self.grid[0] * self.grid[1], mask_ratio)
        self.strategy, self.mask_ratio, self.seed = strategy, float(mask_ratio), int(seed)
        self.epoch = 0
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a new stream of masks for this epoch."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """The generator for the next batch in this process (advances the call counter)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id + 1 if info is not None else 0  # 0 = main process
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, worker, self._calls))
        self._calls += 1
        return gen

    def __call__(self, batch: list[Any]) -> tuple[Tensor, Any, Tensor]:
        fields = torch.utils.data.default_collate(batch)
        if not isinstance(fields, (list, tuple)) or len(fields) != 2:
            raise ValueError("MaskingCollator expects dataset items (image, target)")
        images, targets = fields
        mask = self.masker(images.shape[0], self.mask_ratio, generator=self.generator())
        return images, targets, mask
