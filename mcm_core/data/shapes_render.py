"""Vectorized renderer of the built-in shapes data (factors -> pixels, any device).

All lengths are in units of the image side, so one set of factors draws at any size.
Pixel centres sit at ``(j + 0.5) / S``. For each object, a *level* ``q`` grows away
from its centre (circle: squared distance; square: Chebyshev distance; triangle: the
largest signed distance to its three sides, times sqrt(5)); ``hi`` is the level of the
outline and ``lo`` the level one stroke width (``STROKE``) inside it. Then

- footprint = ``q <= hi``; outline = footprint and ``q > lo``;
- painted = outline, plus the interior for ``solid``, plus the interior of every other
  horizontal band (period ``STRIPE_PERIOD``, phase from the object centre) for
  ``striped``; ``hollow`` objects paint only the outline.

The object mask keeps the top-most painted slot; colours come from it, then the noise
texture is added to background pixels. Images are built as uint8 (exactly ``k / 255``).
Only plain elementwise IEEE operations are used (no fused kernels), so CPU and CUDA agree.
Loops run over object slots and chunks of images, never over single images or pixels.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mcm_core.data.shapes_factors import (
    BACKGROUND_U8, NOISE_GRID, PALETTE_U8, STRIPE_PERIOD, STROKE, radius_of, select,
)

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
_CHUNK_PIXELS = 1 << 19  # pixels rendered at once; bounds the temporaries (~10 MB)
# Intra-op threads while rendering on the CPU. The work per op is small and memory-bound:
# extra threads barely help, and on a loaded machine (more runnable threads than cores)
# they make rendering 10-100x slower. None keeps torch's setting.
RENDER_THREADS: int | None = 1
_SQRT5 = math.sqrt(5.0)
_Outline = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_image_size(image_size: int) -> None:
    """Raise ValueError unless ``image_size`` is an int in [32, 224]."""
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px, got "
            f"{image_size!r}; pick a size in that range (resize the result for other sizes)")


def pixel_centres(image_size: int, device: torch.device | str | None) -> torch.Tensor:
    """Float ``(S,)``: pixel-centre coordinates ``(j + 0.5) / S`` in units of the side."""
    grid = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
    return grid.to(device)


def _circle(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> _Outline:
    """Circle of radius r: squared distance to the centre."""
    return dx * dx + dy * dy, r * r, (r - STROKE) * (r - STROKE)


def _square(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> _Outline:
    """Square of half-side r: Chebyshev distance to the centre."""
    return torch.maximum(dx.abs(), dy.abs()), r, r - STROKE


def _triangle(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> _Outline:
    """Triangle with apex (0, -r) and base corners (+-r, r): sqrt(5) x the largest signed
    distance to its sides (base: dy - r; slanted sides: (2|dx| - dy - r) / sqrt(5))."""
    q = torch.maximum(_SQRT5 * (dy - r), 2.0 * dx.abs() - (dy + r))
    return q, torch.zeros_like(r), torch.full_like(r, -_SQRT5 * STROKE)


def paint_objects(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor,
                 filled: torch.Tensor) -> torch.Tensor:
    """Bool ``(n, H, W)``: pixels painted by one object per image.

    shape: long ``(n,)``, -1 for no object; dx: ``(n, 1, W)`` and dy: ``(n, H, 1)`` pixel
    offsets from the centre; r: ``(n, 1, 1)`` half-extent; filled: bool ``(n, H, 1)``, rows
    whose interior is painted. A pixel is painted if ``q <= hi`` and (its row is filled or
    ``q > lo``), with the level ``q`` and ``hi``/``lo`` of the shape (module docstring).
    """
    n, h, w = dx.shape[0], dy.shape[1], dx.shape[2]
    new = torch.zeros if bool((shape < 0).any()) else torch.empty
    painted = new((n, h, w), dtype=torch.bool, device=dx.device)
    for kind, outline in enumerate((_circle, _square, _triangle)):
        ids = (shape == kind).nonzero().squeeze(1)
        if ids.numel():
            q, hi, lo = outline(dx[ids], dy[ids], r[ids])
            lo = torch.where(filled[ids], -math.inf, lo)  # (k, H, 1)
            painted[ids] = (q <= hi) & (q > lo)
    return painted


def painted_pixels(slot: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    """Bool ``(n, H, W)``: pixels painted by one object slot (all keys ``(n,)``).

    xs: float ``(S,)`` pixel centres on the render device. Absent objects paint nothing.
    """
    dx = xs[None, None, :] - slot["cx"][:, None, None]
    dy = xs[None, :, None] - slot["cy"][:, None, None]
    r = radius_of(slot["large"])[:, None, None]
    band = torch.floor(dy * (2.0 / STRIPE_PERIOD)).long()  # half-period index, (n, H, 1)
    fill = slot["fill"][:, None, None]
    filled = (fill == 0) | ((fill == 2) & ((band & 1) == 0))  # (n, H, 1)
    shape = torch.where(slot["present"], slot["shape"], -1)
    return paint_objects(shape, dx, dy, r, filled)


_SLOT_KEYS = ("present", "shape", "large", "cx", "cy", "fill")


def _composite(mask: torch.Tensor, factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """uint8 images ``(n, 3, S, S)`` from a uint8 object mask ``(n, S, S)``.

    Plain uint8 arithmetic (wrapping mod 256 is exact here): ``bg + [mask == i] (c_i - bg)``.
    """
    dev = mask.device
    grey = torch.tensor(BACKGROUND_U8, dtype=torch.uint8)[factors["dark"].long()]
    background = grey[:, None].expand(-1, 3).to(dev)[:, :, None, None]  # (n, 3, 1, 1)
    palette = torch.tensor(PALETTE_U8, dtype=torch.uint8)
    images = background.expand(-1, -1, mask.shape[1], mask.shape[2]).contiguous()
    for i in range(factors["colour"].shape[1]):
        step = (palette[factors["colour"][:, i]].to(dev)[:, :, None, None] - background)
        images += (mask == i + 1).to(torch.uint8)[:, None] * step
    return images


def _add_noise(images: torch.Tensor, mask: torch.Tensor, factors: dict[str, torch.Tensor]) -> None:
    """Add the background texture in place to uint8 ``images (n, 3, S, S)``.

    The int8 offsets are added as uint8 (mod 256); greys stay inside [0, 255] by design.
    """
    ids = factors["noisy"].nonzero().squeeze(1)
    if not ids.numel():
        return
    size, dev = images.shape[-1], images.device
    grid = factors["noise"][ids].view(torch.uint8).to(dev)  # (k, G, G)
    if size != NOISE_GRID:
        cells = ((torch.arange(size) * 2 + 1) * NOISE_GRID // (2 * size)).to(dev)  # nearest
        grid = grid[:, cells][:, :, cells]
    ids = ids.to(dev)
    offset = grid * (mask[ids] == 0).to(torch.uint8)  # background pixels only
    images[ids] += offset[:, None]


def render_u8(factors: dict[str, torch.Tensor], image_size: int,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render without chunking: uint8 images ``(n, 3, S, S)`` and uint8 masks ``(n, S, S)``."""
    xs = pixel_centres(image_size, device)
    n, m = factors["present"].shape
    mask = torch.zeros((n, image_size, image_size), dtype=torch.uint8, device=xs.device)
    for i in range(m):  # slots are drawn in order, so the top one has the largest index
        slot = {k: factors[k][:, i].to(xs.device) for k in _SLOT_KEYS}
        mask = torch.maximum(mask, painted_pixels(slot, xs).to(torch.uint8) * (i + 1))
    images = _composite(mask, factors)
    _add_noise(images, mask, factors)
    return images, mask


@contextmanager
def _render_threads(device: torch.device | str | None) -> Iterator[None]:
    """Limit torch's intra-op threads to RENDER_THREADS while rendering on the CPU."""
    before = torch.get_num_threads()
    cpu = device is None or torch.device(device).type == "cpu"
    limit = RENDER_THREADS if cpu and RENDER_THREADS else before
    if limit < before:
        torch.set_num_threads(limit)
    try:
        yield
    finally:
        if limit < before:
            torch.set_num_threads(before)


def _chunks(n: int, image_size: int) -> list[slice]:
    """Slices of at most ``_CHUNK_PIXELS`` pixels (at least one image each)."""
    step = max(1, _CHUNK_PIXELS // (image_size * image_size))
    return [slice(s, s + step) for s in range(0, n, step)]


def render_shapes_u8(factors: dict[str, torch.Tensor], image_size: int = 32,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked render: uint8 images ``(n, 3, S, S)`` (value k means k / 255) and uint8
    object masks ``(n, S, S)``, on ``device``."""
    check_image_size(image_size)
    n, s = factors["present"].shape[0], image_size
    images = torch.empty((n, 3, s, s), dtype=torch.uint8, device=device)
    masks = torch.empty((n, s, s), dtype=torch.uint8, device=device)
    with _render_threads(device):
        for part in _chunks(n, s):
            images[part], masks[part] = render_u8(select(factors, part), s, device)
    return images, masks


def u8_to_float(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (``k / 255``, correctly rounded), the one conversion used everywhere.

    The divisor is a tensor on the images' device, not a Python number: CUDA divides by a number
    as a multiplication by its reciprocal, which differs from ``k / 255`` in the last bit for 126
    of the 256 values, so CPU and GPU data would not agree.
    """
    return torch.div(images, torch.full((), 255.0, device=images.device), out=out)


def render_shapes(factors: dict[str, torch.Tensor], image_size: int = 32,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw images from factors (see :mod:`mcm_core.data.shapes_factors`).

    Returns float images ``(n, 3, S, S)`` in [0, 1] (multiples of 1/255) and long object
    masks ``(n, S, S)`` (0 = background, ``i`` = object slot ``i - 1``; later slots drawn on
    top), on ``device``. Renders in chunks, so memory stays at the size of the outputs.
    """
    check_image_size(image_size)
    n, s = factors["present"].shape[0], image_size
    images = torch.empty((n, 3, s, s), dtype=torch.float32, device=device)
    masks = torch.empty((n, s, s), dtype=torch.long, device=device)
    with _render_threads(device):
        for part in _chunks(n, s):
            images_u8, masks[part] = render_u8(select(factors, part), s, device)
            u8_to_float(images_u8, out=images[part])
    return images, masks
