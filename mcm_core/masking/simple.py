"""Simple masking strategies, and the mask conventions every strategy keeps.

Conventions (``docs/design.md``): a mask is a bool tensor ``(B, L)`` with
``True`` = hidden from the encoder, patches in row-major order on a ``grid = (gh, gw)``,
``L = gh * gw``. Every strategy hides exactly :func:`num_hidden` patches in every image,
so the encoder always gets a rectangular ``(B, N_vis, D)`` batch.

Here: ``"random"`` (MAE: argsort of per-sample uniform noise, :func:`random_mask`) and
``"block"`` (BEiT-style rectangles of random size and aspect, :func:`block_mask`), their
strategy objects (:class:`RandomMasker`, :class:`BlockMasker`, the :class:`MaskStrategy`
protocol), :func:`ids_from_mask` (the gather indices a model takes from any mask), and the
checks and random-number helpers that :mod:`mcm_core.masking.hierarchical` shares.

Random numbers are drawn with the given ``generator`` on the generator's device, so a
seeded generator reproduces the same masks on any output device.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from mcm_core.choices import check_mask_ratio

Grid = tuple[int, int]
DeviceLike = torch.device | str | None


# --------------------------------------------------------------------------- validation
def _check_grid(grid: Sequence[int]) -> Grid:
    """Return ``grid`` as ``(gh, gw)`` of positive ints, or raise naming the problem."""
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be two positive ints (rows, cols) of patches, got {grid!r}; "
                         "use (H // patch_size, W // patch_size)")
    return int(grid[0]), int(grid[1])


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def num_hidden(num_patches: int, mask_ratio: float) -> int:
    """Exact number of hidden patches per image that every strategy uses.

    ``round(num_patches * mask_ratio)`` clipped to ``[0, num_patches - 1]`` so the
    encoder always sees at least one patch.
    """
    if int(num_patches) != num_patches or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}")
    mask_ratio = check_mask_ratio(mask_ratio)
    return min(max(int(round(num_patches * mask_ratio)), 0), int(num_patches) - 1)


def check_mask(mask: Tensor, batch_size: int, num_patches: int) -> None:
    """Raise unless ``mask`` is a bool (B, L) tensor with B = ``batch_size`` and L = ``num_patches`` (True = hidden).

    The one check of a mask a caller hands a model (its hidden counts are checked where they are used).
    """
    expected = (batch_size, num_patches)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {expected} (True = hidden), got {got}; "
                         "build one with mcm_core.masking")


# --------------------------------------------------------------------------- random numbers
def _output_device(generator: torch.Generator | None, device: DeviceLike) -> torch.device:
    """``device`` if given, else the generator's device, else CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 of ``shape`` drawn on the generator's device, returned on ``device``."""
    # Why: drawing on the generator's device keeps a seeded run identical whatever the output device.
    draw_on = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_on).to(device)


def _hide_first(order: Tensor, n: int) -> Tensor:
    """Bool (B, L) mask hiding the patches ``order[:, :n]`` (order: (B, L) patch indices)."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :n], True)


# --------------------------------------------------------------------------- random
def random_mask(batch_size: int, num_patches: int, mask_ratio: float, *,
                generator: torch.Generator | None = None, device: DeviceLike = None,
                noise: Tensor | None = None) -> Tensor:
    """MAE's random masking: bool (B, L), ``True`` = hidden.

    Per image, uniform noise (B, L) is argsorted; the ``L - n`` patches with the lowest
    noise stay visible, the ``n = num_hidden(L, mask_ratio)`` highest are hidden.

    Args:
        noise: optional (B, L) float noise to use instead of drawing it (tests, notebooks).
    """
    batch_size = _check_batch_size(batch_size)
    n = num_hidden(num_patches, mask_ratio)
    out = _output_device(generator, device)
    if noise is None:
        noise = _uniform((batch_size, num_patches), generator, out)
    elif tuple(noise.shape) != (batch_size, num_patches):
        raise ValueError(f"noise must have shape (batch_size, num_patches) = {(batch_size, num_patches)}, "
                         f"got {tuple(noise.shape)}")
    ids_shuffle = noise.to(out).argsort(dim=1)  # ascending: keep the first L - n
    return _hide_first(ids_shuffle.flip(1), n)


def mask_noise(batch_size: int, num_patches: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform noise (B, L) on the generator's device; :func:`nested_mask` turns it into masks.

    Drawn exactly as ``random_mask`` draws its own, so ``nested_mask(mask_noise(B, L, g), r)``
    equals ``random_mask(B, L, r, generator=g)`` for a generator in the same state.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand((batch_size, num_patches), generator=generator, device=device)


def nested_mask(noise: Tensor, mask_ratio: float) -> Tensor:
    """Bool (B, L), True = hidden: the ``num_hidden(L, mask_ratio)`` highest-noise patches of each image.

    With one ``noise`` (B, L), the hidden set at a higher ratio contains the one at a lower ratio.
    """
    if noise.ndim != 2:
        raise ValueError(f"noise must be (B, L), got shape {tuple(noise.shape)}; draw it with mask_noise")
    ratio = check_mask_ratio(mask_ratio)
    return random_mask(noise.shape[0], noise.shape[1], ratio, noise=noise, device=noise.device)


# --------------------------------------------------------------------------- block
def _grow_blocks(hidden: Tensor, grid: Grid, n: int, min_block: int, max_block: int | None,
                 aspect_range: tuple[float, float], max_rounds: int,
                 generator: torch.Generator | None) -> Tensor:
    """Place one random rectangle per image per round (in place on ``hidden`` (B, L) bool).

    A rectangle is accepted only if it adds between 1 and ``remaining`` new patches
    (BEiT's rule), so an image never exceeds ``n`` hidden patches.
    """
    (gh, gw), (B, L), device = grid, hidden.shape, hidden.device
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    count = torch.zeros(B, 1, dtype=torch.long, device=device)
    for _ in range(max_rounds):
        remaining = n - count  # (B, 1)
        u = _uniform((B, 4), generator, device).split(1, dim=1)  # area, aspect, top, left: (B, 1) each
        hi = remaining.clamp(min=min_block).float()
        if max_block is not None:
            hi = hi.clamp(max=max(max_block, min_block))
        area = min_block + (hi - min_block) * u[0]
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])  # log-uniform, as BEiT
        h = torch.sqrt(area * aspect).round().clamp(1, gh)
        w = torch.sqrt(area / aspect).round().clamp(1, gw)
        top = (u[2] * (gh - h + 1)).floor()  # uniform over the positions that fit
        left = (u[3] * (gw - w + 1)).floor()
        # Why: a rectangle is the outer AND of a row band (B, gh) and a column band (B, gw).
        in_rows = (rows >= top) & (rows < top + h)
        in_cols = (cols >= left) & (cols < left + w)
        new = (in_rows[:, :, None] & in_cols[:, None, :]).view(B, L) & ~hidden
        delta = new.sum(dim=1, keepdim=True)
        accept = (delta > 0) & (delta <= remaining)
        hidden |= new & accept
        count += delta * accept
    return hidden


def _has_hidden_neighbour(hidden: Tensor, grid: Grid) -> Tensor:
    """Bool (B, L): patch has a 4-neighbour that is hidden."""
    gh, gw = grid
    h = hidden.view(-1, 1, gh, gw).float()
    # Why: a cross-shaped 3x3 convolution counts hidden 4-neighbours (zero padding = visible).
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=hidden.device)
    return (torch.nn.functional.conv2d(h, kernel.view(1, 1, 3, 3), padding=1) > 0).view(hidden.shape)


def block_mask(batch_size: int, grid: Sequence[int], mask_ratio: float, *,
               generator: torch.Generator | None = None, device: DeviceLike = None,
               min_block: int = 4, max_block: int | None = None,
               aspect_range: tuple[float, float] = (0.3, 1 / 0.3), max_rounds: int = 8) -> Tensor:
    """BEiT-style blockwise masking: bool (B, L), ``True`` = hidden.

    Rounds of one rectangle per image, all images at once: area uniform in
    ``[min_block, min(remaining, max_block)]`` patches, aspect ratio log-uniform in
    ``aspect_range``, position uniform; a rectangle is kept only if it adds at most the
    remaining count (so no image overshoots). After ``max_rounds`` rounds (default 8:
    on 8x8 and 14x14 grids more rounds do not make the masks blockier, measured as
    hidden 4-neighbour pairs) any shortfall is topped up with visible patches next to hidden
    ones first, then anywhere, so exactly ``num_hidden(L, mask_ratio)`` are hidden.
    Cost: about 25 small tensor ops per round, no loop over images or patches
    (B=256 on an 8x8 grid: a few ms on a 2-core CPU).
    """
    batch_size = _check_batch_size(batch_size)
    grid = _check_grid(grid)
    L = grid[0] * grid[1]
    n = num_hidden(L, mask_ratio)
    if int(min_block) != min_block or min_block < 1:
        raise ValueError(f"min_block must be a positive int (patches), got {min_block!r}")
    lo, hi = aspect_range
    if not (0 < lo <= hi):
        raise ValueError(f"aspect_range must be (low, high) with 0 < low <= high, got {aspect_range!r}; "
                         "BEiT uses (0.3, 1 / 0.3)")
    if int(max_rounds) != max_rounds or max_rounds < 0:
        raise ValueError(f"max_rounds must be a non-negative int, got {max_rounds!r}")
    out = _output_device(generator, device)
    hidden = torch.zeros(batch_size, L, dtype=torch.bool, device=out)
    if n == 0:
        return hidden
    hidden = _grow_blocks(hidden, grid, n, int(min_block), max_block, (lo, hi), int(max_rounds), generator)
    # Top-up: key 0 = already hidden, 1 = next to a hidden patch, 2 = elsewhere; random within.
    level = torch.where(hidden, 0.0, torch.where(_has_hidden_neighbour(hidden, grid), 1.0, 2.0))
    keys = level + _uniform((batch_size, L), generator, out)
    return _hide_first(keys.argsort(dim=1), n)


# --------------------------------------------------------------------------- ids
def ids_from_mask(mask: Tensor, hidden: int | None = None) -> tuple[Tensor, Tensor]:
    """Index tensors that gather the visible patches and restore image order.

    Args:
        mask: bool (B, L), ``True`` = hidden; every row must hide the same number.
        hidden: that number, when the caller knows it (e.g. ``num_hidden(L, mask_ratio)`` of the
            ratio the mask was drawn at). Then nothing is read back to the host (no GPU
            synchronization) and the counts are trusted, not checked. None: counted and checked.
    Returns:
        ids_keep: long (B, N_vis), visible patch indices in ascending order.
        ids_restore: long (B, L), ``argsort(ids_shuffle)`` where ``ids_shuffle`` lists the
            visible patches then the hidden ones (each ascending): position of patch ``l``
            in the ``[visible, hidden]`` sequence.
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool tensor (B, L) with True = hidden, got {mask.dtype} "
                         f"{tuple(mask.shape)}; convert with mask.bool()")
    B, L = mask.shape
    if hidden is None:
        counts = mask.sum(dim=1)
        if B > 0 and bool((counts != counts[0]).any()):
            raise ValueError(f"every image must hide the same number of patches, got counts "
                             f"{counts.unique().tolist()}; build masks with mcm_core.masking (exact counts)")
        hidden = int(counts[0]) if B > 0 else 0
    elif not 0 <= hidden < L:
        raise ValueError(f"hidden must be in [0, {L - 1}] for {L} patches, got {hidden}")
    n_vis = L - hidden
    # Why: cumsums give each patch its slot in [visible..., hidden...] without a sort.
    visible_slot = (~mask).long().cumsum(1) - 1
    hidden_slot = n_vis + mask.long().cumsum(1) - 1
    ids_restore = torch.where(mask, hidden_slot, visible_slot)
    ids_shuffle = torch.empty_like(ids_restore).scatter_(
        1, ids_restore, torch.arange(L, device=mask.device).expand(B, L))  # inverse permutation
    return ids_shuffle[:, :n_vis], ids_restore


# --------------------------------------------------------------------------- strategy objects
@runtime_checkable
class MaskStrategy(Protocol):
    """A masking strategy: ``masker(batch_size, mask_ratio, ...) -> bool (B, L)``."""

    grid: Grid

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None,
                 progress: float = 0.0) -> Tensor: ...


class RandomMasker:
    """MAE random masking as a strategy object (ignores ``affinity`` and ``progress``)."""

    name = "random"

    def __init__(self, grid: Sequence[int]) -> None:
        self.grid = _check_grid(grid)

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None, progress: float = 0.0) -> Tensor:
        return random_mask(batch_size, self.grid[0] * self.grid[1], mask_ratio,
                           generator=generator, device=device)


class BlockMasker:
    """BEiT-style block masking as a strategy object; options as :func:`block_mask`."""

    name = "block"

    def __init__(self, grid: Sequence[int], min_block: int = 4, max_block: int | None = None,
                 aspect_range: tuple[float, float] = (0.3, 1 / 0.3), max_rounds: int = 8) -> None:
        self.grid = _check_grid(grid)
        self.options: dict[str, Any] = dict(min_block=min_block, max_block=max_block,
                                            aspect_range=aspect_range, max_rounds=max_rounds)

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None, progress: float = 0.0) -> Tensor:
        return block_mask(batch_size, self.grid, mask_ratio, generator=generator, device=device, **self.options)
