"""Image figures: the images, their masks and their reconstructions in grids of panels.

The common image helpers of :mod:`mcm_core.viz`, which the topic modules reuse: mask checks
(:func:`as_mask`), axes without frames (:func:`image_axes`), labelled rows of images
(:func:`image_rows`) and hidden patches in grey (:func:`mask_overlay`). Image checks come
from :mod:`mcm_core.analysis.arrays` (:func:`to_numpy`, :func:`as_images`).

Conventions (``docs/design.md``): images float ``(N, 3, H, W)`` in ``[0, 1]``
(torch tensors or numpy arrays; 1 channel is repeated to 3), masks bool ``(N, L)``
with ``True`` = hidden, patches in row-major order on an ``(H // p, W // p)`` grid.

Contents
--------
:func:`show_images`, :func:`mask_overlay`, :func:`show_masked`, :func:`compare_masks`, :func:`image_rows`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mcm_core.analysis.arrays import as_images, to_numpy

__all__ = [
    "CELL_INCHES", "to_numpy", "as_images", "as_mask", "image_axes", "show_images", "mask_overlay", "show_masked",
    "compare_masks", "image_rows",
]

CELL_INCHES = 1.3  # side of one image panel


# --------------------------------------------------------------------------- input checks
def as_mask(mask: Any, num_images: int, image_hw: tuple[int, int], patch_size: int,
            what: str = "mask") -> np.ndarray:
    """Validate a bool (N, L) mask against the images and the patch size; return bool (N, gh, gw)."""
    array = to_numpy(mask)
    if int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    h, w = image_hw
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the image size {h}x{w}; "
                         "use the model's cfg.patch_size")
    gh, gw = h // patch_size, w // patch_size
    if array.dtype != np.bool_ or array.shape != (num_images, gh * gw):
        raise ValueError(f"{what} must be a bool array (N, L) = ({num_images}, {gh * gw}) with True = hidden, "
                         f"got {array.dtype} {array.shape}; for {h}x{w} images and patch_size={patch_size} "
                         f"L = {gh} x {gw}")
    return array.reshape(num_images, gh, gw)  # (N, L) -> (N, gh, gw), row-major patches


def image_axes(fig: Figure, nrows: int, ncols: int) -> np.ndarray:
    """A (nrows, ncols) grid of axes without ticks or frames."""
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return axes


# --------------------------------------------------------------------------- images
def show_images(images: Any, titles: Sequence[str] | None = None, ncols: int = 8,
                suptitle: str | None = None) -> Figure:
    """A grid of images, ``ncols`` per row, one axes per image.

    Args:
        images: (N, 3, H, W) in [0, 1].
        titles: optional N titles (e.g. concept names), drawn small above each image.
        ncols: images per row.
    """
    array = as_images(images)
    n = array.shape[0]
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images; pass one title per image or None")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    lines = max((str(t).count("\n") + 1 for t in titles), default=1) if titles is not None else 0
    extra = 0.17 * lines + 0.2 if titles is not None else 0.0  # room for multi-line titles
    fig = Figure(figsize=(CELL_INCHES * ncols, (CELL_INCHES + extra) * nrows + (0.4 if suptitle else 0)),
                 layout="constrained")
    axes = image_axes(fig, nrows, ncols).flat
    for i, ax in enumerate(axes):
        if i >= n:
            fig.delaxes(ax)  # one axes per image: no empty panels
            continue
        ax.imshow(array[i], interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def mask_overlay(images: Any, mask: Any, patch_size: int, grey: float = 0.5) -> np.ndarray:
    """The images with hidden patches filled with ``grey``: float (N, H, W, 3).

    Args:
        images: (N, 3, H, W); mask: bool (N, L), True = hidden; patch_size: side of a patch.
    """
    array = as_images(images)
    n, h, w, _ = array.shape
    grid = as_mask(mask, n, (h, w), patch_size)
    # Why: np.kron-style upsampling: repeat each patch flag p times along rows and columns.
    pixels = grid.repeat(patch_size, axis=1).repeat(patch_size, axis=2)  # (N, gh, gw) -> (N, H, W)
    return np.where(pixels[..., None], np.float32(grey), array)


def show_masked(images: Any, mask: Any, patch_size: int,
                reconstructions: Any | Mapping[str, Any] | None = None,
                titles: Sequence[str] | None = None, grey: float = 0.5) -> Figure:
    """Rows: the input, what the encoder sees (hidden patches grey), then optional reconstructions.

    Args:
        images: (N, 3, H, W); mask: bool (N, L), True = hidden.
        reconstructions: one (N, 3, H, W) tensor, or ``{row name: (N, 3, H, W)}`` for several rows.
        titles: optional N column titles (e.g. concept names).
    Returns:
        A figure with ``N * (2 + rows of reconstructions)`` axes.
    """
    array = as_images(images)
    n = array.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images; pass one title per image or None")
    hidden = as_mask(mask, n, array.shape[1:3], patch_size)
    ratio = hidden.reshape(n, -1).mean()
    rows: list[tuple[str, np.ndarray]] = [("input", array),
                                          (f"visible ({1 - ratio:.0%})", mask_overlay(images, mask, patch_size, grey))]
    if reconstructions is not None:
        named = reconstructions if isinstance(reconstructions, Mapping) else {"reconstruction": reconstructions}
        for name, recon in named.items():
            recon_array = as_images(recon, f"reconstruction {name!r}")
            if recon_array.shape != array.shape:
                raise ValueError(f"reconstruction {name!r} has shape {to_numpy(recon).shape} but the images "
                                 f"have {to_numpy(images).shape}; pass one (3, H, W) reconstruction per image")
            rows.append((str(name), recon_array))
    return image_rows(rows, titles)


def compare_masks(images: Any, masks: Mapping[str, Any], patch_size: int, grey: float = 0.5) -> Figure:
    """The same images under several masks: the input row, then one row per named mask (N, L).

    Returns:
        A figure with ``N * (1 + len(masks))`` axes.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty dict {name: bool (N, L) mask}, e.g. {'random': mask}")
    array = as_images(images)
    rows = [("input", array)] + [(str(name), mask_overlay(images, mask, patch_size, grey))
                                 for name, mask in masks.items()]
    return image_rows(rows)


def image_rows(rows: list[tuple[str, np.ndarray]], titles: Sequence[str] | None = None) -> Figure:
    """One row of N images per ``(label, (N, H, W, 3))`` entry, the label on the left."""
    n = rows[0][1].shape[0]
    fig = Figure(figsize=(CELL_INCHES * n + 0.8, CELL_INCHES * len(rows) + (0.3 if titles else 0)),
                 layout="constrained")
    axes = image_axes(fig, len(rows), n)
    for r, (label, array) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(array[c], interpolation="nearest")
        # Axis off hides the ylabel, so the row label is text placed left of the first panel.
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
    if titles is not None:
        for c, title in enumerate(titles):
            axes[0, c].set_title(str(title), fontsize=7)
    return fig
