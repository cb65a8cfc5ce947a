"""Built-in concept dataset: procedurally drawn shapes with exact concept labels.

Each image holds ``min_objects..max_objects`` objects (uniform count). Per object,
independently: shape (circle/square/triangle, uniform), colour (red/green/blue/yellow,
uniform), size (large/small, p = 1/2), centre (uniform, the object stays inside), fill
(solid/hollow/striped with p = 0.5/0.25/0.25). Per image: dark or light background
(p = 1/2) and a background noise texture (p = 0.2). The 13 binary concepts are
:data:`CONCEPT_NAMES`; an object concept is on if ANY object has it.

Factors are drawn on the CPU (or on the generator's device, then moved to the CPU),
so a seed gives the same images whatever the render ``device``.

>>> batch = generate_shapes(4, seed=0)
>>> batch.images.shape, batch.concepts.shape, batch.object_masks.shape
(torch.Size([4, 3, 32, 32]), torch.Size([4, 13]), torch.Size([4, 32, 32]))
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from mcm_core.data.shapes_factors import (
    COLOUR_NAMES, CONCEPT_NAMES, FILL_NAMES, PIXEL_COLOURS_U8, SHAPE_NAMES, check_object_counts,
    concept_frequencies, concepts_from_factors, counterfactual_factors, sample_factors, select,
)
from mcm_core.data.shapes_render import (
    check_image_size, render_shapes, render_shapes_u8, u8_to_float,
)

__all__ = [
    "CONCEPT_NAMES", "SHAPE_NAMES", "COLOUR_NAMES", "FILL_NAMES", "ShapesBatch",
    "generate_shapes", "render_shapes", "concept_frequencies", "concepts_from_factors",
    "ShapesDataset", "SPLIT_SIZES",
]

SPLIT_SIZES: dict[str, int] = {"train": 20000, "val": 2000, "test": 2000}
Index = int | slice | Sequence[int] | torch.Tensor


@dataclass
class ShapesBatch:
    """A batch of shapes images.

    images: float ``(n, 3, S, S)`` in [0, 1]; concepts: float ``(n, K)`` in {0, 1};
    object_masks: long ``(n, S, S)`` (0 = background, ``i`` = object slot ``i - 1``);
    factors: dict of CPU tensors that redraws the batch (``None`` if not requested).
    """

    images: torch.Tensor
    concepts: torch.Tensor
    object_masks: torch.Tensor
    factors: dict[str, torch.Tensor] | None = None
    concept_names: list[str] = field(default_factory=lambda: list(CONCEPT_NAMES))

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "ShapesBatch":
        """Images, concepts and masks on ``device`` (factors stay on the CPU)."""
        return ShapesBatch(self.images.to(device), self.concepts.to(device),
                           self.object_masks.to(device), self.factors, list(self.concept_names))


def _resolve_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator to draw factors from: ``generator``, a fresh one from ``seed``, or torch's
    global CPU generator (so ``torch.manual_seed`` makes unseeded calls reproducible)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed= or generator=, not both; "
                         "seed=s is the same as generator=torch.Generator().manual_seed(s)")
    if generator is not None:
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return torch.default_generator


def _check_count(n: int, what: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{what} must be a non-negative int, got {n!r}; e.g. {what}=256")


def generate_shapes(
    n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
    image_size: int = 32, min_objects: int = 1, max_objects: int = 1,
    device: torch.device | str | None = None, return_factors: bool = True,
) -> ShapesBatch:
    """Draw ``n`` shapes images.

    Returns a :class:`ShapesBatch`: images float ``(n, 3, S, S)``, concepts float
    ``(n, 13)``, object_masks long ``(n, S, S)`` on ``device`` (default CPU), and the factors
    (CPU) when ``return_factors``. ``S = image_size`` in [32, 224]. Same seed, same data.
    """
    _check_count(n)
    check_image_size(image_size)
    check_object_counts(min_objects, max_objects)
    gen = _resolve_generator(seed, generator)
    factors = sample_factors(n, gen, min_objects=min_objects, max_objects=max_objects)
    images, masks = render_shapes(factors, image_size, device)
    concepts = concepts_from_factors(factors).to(images.device)
    return ShapesBatch(images, concepts, masks, factors if return_factors else None)


def split_seed(seed: int, split: str) -> int:
    """A 63-bit seed derived from ``(seed, split)``: different splits never share data."""
    digest = hashlib.sha256(f"mcm-shapes/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShapesDataset(Dataset):
    """Torch dataset of ``(image float (3, S, S) in [0, 1], target float (13,) in {0, 1})``.

    Factors and targets are drawn at construction (cheap); pixels are rendered lazily in
    chunks and cached as uint8 when the cache fits in ``cache_limit_mb`` (lossless: every
    pixel is a multiple of 1/255). Bigger datasets (e.g. 20000 images at 224 px) render
    each item on demand instead. ``batch(indices)`` gives fast batched access.
    """

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0,
                 image_size: int = 32, min_objects: int = 1, max_objects: int = 1,
                 cache_limit_mb: float = 512) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"unknown split {split!r} for the shapes data; "
                             f"use one of {sorted(SPLIT_SIZES)}")
        size = SPLIT_SIZES[split] if size is None else size
        _check_count(size, "size")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}; e.g. seed=0")
        check_image_size(image_size)
        check_object_counts(min_objects, max_objects)
        self.split, self.seed, self.image_size = split, seed, image_size
        self.concept_names: list[str] = list(CONCEPT_NAMES)
        # Every pixel colour before the texture, in [0, 1] (a model's pixel_palette, pixel_loss="palette").
        self.pixel_palette: list[list[float]] = [[c / 255 for c in rgb] for rgb in PIXEL_COLOURS_U8]
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        self.factors = sample_factors(size, gen, min_objects=min_objects, max_objects=max_objects)
        self.targets = concepts_from_factors(self.factors)  # (N, K)
        self._chunk = max(1, (1 << 20) // (image_size * image_size))
        bytes_needed = size * 4 * image_size * image_size  # 3 image channels + 1 mask
        self.cached = bytes_needed <= cache_limit_mb * 2**20
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._done = [False] * -(-size // self._chunk)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._check_index(idx)
        if self.cached:
            self._ensure_chunk(i // self._chunk)
            return u8_to_float(self._images[i]), self.targets[i].clone()
        images, _ = render_shapes_u8(select(self.factors, slice(i, i + 1)), self.image_size)
        return u8_to_float(images[0]), self.targets[i].clone()

    def _check_index(self, idx: int) -> int:
        n = len(self)
        if not -n <= int(idx) < n:
            raise IndexError(f"index {idx} out of range for a ShapesDataset of {n} images")
        return int(idx) % n

    def _ensure_chunk(self, c: int) -> None:
        """Render chunk ``c`` into the uint8 cache unless it is there already."""
        if self._done[c]:
            return
        if self._images is None:  # allocated once; pages are touched only when rendered
            n, s = len(self), self.image_size
            self._images = torch.empty((n, 3, s, s), dtype=torch.uint8)
            self._masks = torch.empty((n, s, s), dtype=torch.uint8)
        part = slice(c * self._chunk, (c + 1) * self._chunk)
        self._images[part], self._masks[part] = render_shapes_u8(
            select(self.factors, part), self.image_size)
        self._done[c] = True

    def _ensure(self, ids: torch.Tensor) -> None:
        """Render (into the uint8 cache) every chunk that holds one of ``ids``."""
        for c in torch.unique(ids // self._chunk).tolist():
            self._ensure_chunk(c)

    def device_tensors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image as uint8 ``(N, 3, S, S)`` and every target ``(N, K)``, on ``device``.

        For training straight from a GPU: the whole split is rendered there once (the renderer
        gives the same pixels on every device), so a batch is an index into device memory and
        ``u8_to_float`` of it equals the CPU batch bit for bit.
        """
        if torch.device(device).type == "cpu" and self.cached:
            self.materialize()
            return self._images, self.targets
        images, _ = render_shapes_u8(self.factors, self.image_size, device)
        return images, self.targets.to(device)

    def materialize(self) -> "ShapesDataset":
        """Render the whole cache now (e.g. before forking DataLoader workers)."""
        if self.cached:
            self._ensure(torch.arange(len(self)))
        return self

    def _ids(self, indices: Index) -> torch.Tensor:
        if isinstance(indices, slice):
            return torch.arange(len(self))[indices]
        ids = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if ids.numel() and (ids.min() < -len(self) or ids.max() >= len(self)):
            raise IndexError(f"indices out of range for a ShapesDataset of {len(self)} images")
        return ids % max(len(self), 1)

    def _render_u8(self, ids: torch.Tensor,
                   device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cached:
            self._ensure(ids)
            return self._images[ids].to(device), self._masks[ids].to(device)
        return render_shapes_u8(select(self.factors, ids), self.image_size, device)

    def batch(self, indices: Index, device: torch.device | str | None = None) -> ShapesBatch:
        """Images ``(B, 3, S, S)``, concepts ``(B, K)``, masks ``(B, S, S)`` and factors
        of ``indices`` (ints, a slice or a long tensor), on ``device``."""
        ids = self._ids(indices)
        images, masks = self._render_u8(ids, device)
        concepts = self.targets[ids].to(images.device)
        return ShapesBatch(u8_to_float(images), concepts, masks.long(), select(self.factors, ids))

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch used by ``DataLoader`` (one render call per batch)."""
        batch = self.batch(indices)
        return list(zip(batch.images.unbind(0), batch.concepts.unbind(0)))

    @property
    def one_object(self) -> bool:
        """Whether every image holds exactly one object (colour edits and counterfactuals need it)."""
        return int(self.factors["present"].sum(dim=1).max()) <= 1

    def counterfactuals(self, indices: Index, generator: torch.Generator,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of ``indices`` with one factor group changed each (``counterfactual_factors``).

        Returns:
            float images ``(B, 3, S, S)`` in [0, 1] and long concept states ``(B, K)``: the
            counterfactual's value of every concept that changed, -1 (keep) for the others, the
            edit that turns each image into its counterfactual (``MultiLayerConceptMap.edit``'s
            convention). On ``device``.
        """
        ids = self._ids(indices)
        factors = select(self.factors, ids)
        if not self.one_object:
            raise ValueError("counterfactuals change one object's factors, which is ambiguous with several objects "
                             "per image (a concept is on when ANY object has it); use max_objects=1, or set "
                             "model.counterfactual_weight=0")
        changed = counterfactual_factors(factors, generator)
        images, _ = render_shapes_u8(changed, self.image_size, device)
        before, after = self.targets[ids], concepts_from_factors(changed)
        states = torch.where(before != after, after.long(), torch.full_like(after, -1, dtype=torch.long))
        return u8_to_float(images), states.to(images.device)

    def object_masks(self, indices: Index) -> torch.Tensor:
        """Long object masks: ``(S, S)`` for an int index, ``(B, S, S)`` otherwise."""
        scalar = not isinstance(indices, (slice, Sequence)) and torch.as_tensor(indices).ndim == 0
        masks = self._render_u8(self._ids(indices), None)[1].long()
        return masks[0] if scalar else masks

    def concept_frequencies(self) -> torch.Tensor:
        """Empirical frequency of each concept in this dataset, float ``(K,)``."""
        return self.targets.mean(dim=0)

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, size={len(self)}, seed={self.seed}, "
                f"image_size={self.image_size}, cached={self.cached})")
