"""Figures of the test-time mask ratio (notebook 03): one view, the ratio x edit grid, the measured curve.

Numbers in, a fresh :class:`matplotlib.figure.Figure` out, no pyplot state. The views, grids
and curves come from :mod:`mcm_core.analysis.interpolation` (:func:`~mcm_core.analysis.interpolation.interpolate`,
:func:`~mcm_core.analysis.interpolation.edit_grid`, :func:`~mcm_core.analysis.interpolation.measure_interpolation`).

Contents
--------
:func:`plot_interpolation`, :func:`plot_edit_grid`, :func:`plot_interpolation_curve`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mcm_core.analysis.arrays import as_images
from mcm_core.analysis.interpolation import EditGrid, Interpolation, InterpolationCurve, describe_states
from mcm_core.masking import num_hidden
from mcm_core.viz.images import CELL_INCHES, image_axes, mask_overlay, show_masked

__all__ = ["plot_interpolation", "plot_edit_grid", "plot_interpolation_curve"]


def ratio_label(mask_ratio: float, num_patches: int) -> str:
    """``"ratio 0.75 (48/64 hidden)"``."""
    return f"ratio {mask_ratio:.2f} ({num_hidden(num_patches, mask_ratio)}/{num_patches} hidden)"


def plot_interpolation(view: Interpolation, patch_size: int, concept_names: Sequence[str],
                       titles: Sequence[str] | None = None) -> Figure:
    """Rows: input, visible patches, reconstruction, edited reconstruction; one column per image.

    Args:
        view: from :func:`interpolate`; patch_size: the model's ``cfg.patch_size``.
        concept_names: K names (for the title that lists the edit).
        titles: optional B column titles.
    """
    k = view.states.shape[1]
    if len(concept_names) != k:
        raise ValueError(f"got {len(concept_names)} concept names for {k} concept states; pass model.cfg.concept_names")
    same = bool((view.states == view.states[:1]).all())
    edit = describe_states(view.states[0], concept_names) if same else "a different edit per image"
    fig = show_masked(view.images, view.mask, patch_size, titles=titles,
                      reconstructions={"reconstruction": view.reconstruction, "edited": view.edited})
    fig.suptitle(f"{ratio_label(view.mask_ratio, view.mask.shape[1])}\nedit: {edit}", fontsize=9)
    return fig


def plot_edit_grid(grid: EditGrid, patch_size: int, title: str | None = None) -> Figure:
    """Rows: mask ratios; columns: the visible patches, then one reconstruction per concept edit."""
    r, e = grid.outputs.shape[:2]
    visible = mask_overlay(grid.image[None].expand(r, -1, -1, -1), grid.masks, patch_size)  # (R, H, W, 3)
    outputs = as_images(grid.outputs.reshape(r * e, *grid.outputs.shape[2:]), "grid outputs")
    fig = Figure(figsize=(CELL_INCHES * (e + 1) + 1.0, CELL_INCHES * r + 0.9), layout="constrained")
    axes = image_axes(fig, r, e + 1)
    for i in range(r):
        axes[i, 0].imshow(visible[i], interpolation="nearest")
        axes[i, 0].text(-0.08, 0.5, ratio_label(grid.ratios[i], grid.masks.shape[1]).replace(" (", "\n("),
                        transform=axes[i, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
        for j in range(e):
            axes[i, j + 1].imshow(outputs[i * e + j], interpolation="nearest")
    for j, label in enumerate(["visible"] + grid.labels):
        axes[0, j].set_title(label, fontsize=8)
    fig.suptitle(title or "mask ratio (rows) x concept edit (columns)", fontsize=10)
    return fig


def plot_interpolation_curve(curve: InterpolationCurve, concept_names: Sequence[str]) -> Figure:
    """Two axes against the mask ratio: pixel distances, and edit success / concepts kept.

    Args:
        curve: from :func:`measure_interpolation`; concept_names: all K names.
    """
    if max(curve.concept_indices) >= len(concept_names):
        raise ValueError(f"got {len(concept_names)} concept names but the curve edits concept "
                         f"{max(curve.concept_indices)}; pass all K names (model.cfg.concept_names)")
    x = np.asarray(curve.ratios)
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(x, curve.input_distance, "o-", color="C0", label="reconstruction vs input")
    left.plot(x, curve.edit_distance, "s-", color="C3", label="edited vs reconstruction")
    left.set(xlabel="test-time mask ratio", ylabel="mean |difference| per pixel value",
             title="how far the output moves", ylim=(0, None))
    left.legend(fontsize=8, loc="upper left")
    for c, index in enumerate(curve.concept_indices):
        right.plot(x, curve.edit_success_per_concept[:, c], color=f"C{c % 10}", alpha=0.45, linewidth=1,
                   label=concept_names[index])
    right.plot(x, curve.edit_success, "o-", color="black", linewidth=2.5, label="edit success (mean)")
    right.plot(x, curve.concepts_kept, "s--", color="grey", linewidth=1.5, label="concepts kept (no edit)")
    right.set(xlabel="test-time mask ratio", ylabel="rate (of edits, of true labels)", ylim=(0, 1.02),
              title="edit success and concepts kept")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"MCM at test time, {curve.num_images} test images; edits flip one concept to its opposite state",
                 fontsize=10)
    return fig
