"""Pure figure functions for MiCL (notebook 05): numbers and tensors in, a matplotlib ``Figure`` out.

Like the rest of :mod:`mcm_core.viz` (whose input checks and image rows these reuse), nothing here
trains, loads data or touches pyplot's global state.

Contents
--------
- Views: :func:`view_overlay`, :func:`show_views` (the two disjoint views of each image).
- Similarity: :func:`plot_similarity_mapping` (the heavy-tailed similarity against the cosine),
  :func:`plot_view_similarity` (view-1 x view-2 cosines of a batch).
- Training: :func:`plot_loss_vs_chance` (the loss against ``ln(B)``),
  :func:`plot_similarity_gap` (positive and negative cosines, and their gap).
- Sweeps: :func:`plot_keep_ratio_sweep` (kNN accuracy against the fraction of patches kept).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mcm_core.analysis.arrays import as_images, to_numpy
from mcm_core.viz.curves import ema
from mcm_core.viz.images import as_mask, image_rows, mask_overlay

__all__ = [
    "view_overlay", "show_views", "plot_similarity_mapping", "plot_view_similarity",
    "plot_loss_vs_chance", "plot_similarity_gap", "plot_keep_ratio_sweep",
]

VIEW_COLOURS = (np.array([1.0, 0.55, 0.0], dtype=np.float32), np.array([0.1, 0.45, 1.0], dtype=np.float32))


# --------------------------------------------------------------------------- views
def check_views(images: Any, hidden_a: Any, hidden_b: Any, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate two view masks (N, L) (True = hidden from that view); return them as bool (N, gh, gw)."""
    array = as_images(images)
    grid_a = as_mask(hidden_a, array.shape[0], array.shape[1:3], patch_size, "hidden_a")
    grid_b = as_mask(hidden_b, array.shape[0], array.shape[1:3], patch_size, "hidden_b")
    if (~grid_a & ~grid_b).any():
        raise ValueError("the two views share patches; pass the masks of two disjoint views "
                         "(model.view_masks(*model.make_views(images)))")
    return grid_a, grid_b


def view_overlay(images: Any, hidden_a: Any, hidden_b: Any, patch_size: int, grey: float = 0.5,
                 tint: float = 0.45) -> np.ndarray:
    """Both views in one picture: float (N, H, W, 3).

    View 1's patches are tinted orange, view 2's blue, patches in neither view are ``grey``.

    Args:
        images: (N, 3, H, W); hidden_a, hidden_b: bool (N, L), True = hidden from that view.
        tint: weight of the view colour mixed into the image, in [0, 1].
    """
    if not 0.0 <= tint <= 1.0:
        raise ValueError(f"tint must be in [0, 1], got {tint}")
    grid_a, grid_b = check_views(images, hidden_a, hidden_b, patch_size)
    array = as_images(images)
    out = np.full_like(array, np.float32(grey))
    for grid, colour in zip((grid_a, grid_b), VIEW_COLOURS):
        seen = (~grid).repeat(patch_size, axis=1).repeat(patch_size, axis=2)  # (N, gh, gw) -> (N, H, W)
        out = np.where(seen[..., None], (1 - tint) * array + tint * colour, out)
    return out


def show_views(images: Any, hidden_a: Any, hidden_b: Any, patch_size: int,
               titles: Sequence[str] | None = None, grey: float = 0.5) -> Figure:
    """Rows: the input, view 1, view 2 (other patches ``grey``), and both views in colour.

    Args:
        images: (N, 3, H, W); hidden_a, hidden_b: bool (N, L), True = hidden from that view.
        titles: optional N column titles (e.g. class names).
    Returns:
        A figure with ``4 * N`` axes.
    """
    array = as_images(images)
    if titles is not None and len(titles) != array.shape[0]:
        raise ValueError(f"got {len(titles)} titles for {array.shape[0]} images; pass one title per image or None")
    grid_a, _ = check_views(images, hidden_a, hidden_b, patch_size)
    per_view = int((~grid_a[0]).sum())
    rows = [("input", array),
            (f"view 1 ({per_view} patches)", mask_overlay(images, hidden_a, patch_size, grey)),
            (f"view 2 ({per_view} patches)", mask_overlay(images, hidden_b, patch_size, grey)),
            ("orange: 1, blue: 2", view_overlay(images, hidden_a, hidden_b, patch_size, grey))]
    return image_rows(rows, titles)


# --------------------------------------------------------------------------- similarity
def plot_similarity_mapping(cosine: Any, curves: Mapping[str, Any]) -> Figure:
    """Similarity logits against the cosine, one line per named curve; one axes.

    Args:
        cosine: (M,) cosine values, e.g. ``torch.linspace(-1, 1, 201)``.
        curves: ``{label: (M,) logits}``, e.g. the heavy-tailed similarity for several kappas.
    """
    x = to_numpy(cosine).astype(float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"cosine must be a 1-D array of at least 2 values, got shape {x.shape}")
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {label: (M,) logits}")
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.subplots()
    for label, values in curves.items():
        y = to_numpy(values).astype(float)
        if y.shape != x.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape}, but cosine has {x.shape}")
        ax.plot(x, y, label=str(label), linewidth=2)
    ax.set(xlabel="cosine similarity s of two CLS vectors", ylabel="logit (similarity / tau)",
           title="similarity fed to the InfoNCE softmax")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_view_similarity(matrices: Mapping[str, Any], vmin: float | None = None,
                         vmax: float | None = None) -> Figure:
    """Heatmaps of (B, B) cosine matrices side by side, one shared colour bar.

    Entry ``(i, j)`` compares view 1 of image ``i`` with view 2 of image ``j``: positives lie
    on the diagonal, negatives off it.

    Args:
        matrices: ``{title: (B, B)}``, e.g. ``{"untrained": ..., "trained": ...}``.
        vmin, vmax: colour range (default: the range of all matrices).
    """
    if not isinstance(matrices, Mapping) or not matrices:
        raise ValueError("matrices must be a non-empty dict {title: (B, B) cosine matrix}")
    arrays = {str(k): to_numpy(v).astype(float) for k, v in matrices.items()}
    for title, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 2:
            raise ValueError(f"matrix {title!r} must be square (B, B) with B >= 2, got shape {array.shape}")
    low = min(a.min() for a in arrays.values()) if vmin is None else vmin
    high = max(a.max() for a in arrays.values()) if vmax is None else vmax
    fig = Figure(figsize=(3.3 * len(arrays) + 0.9, 3.4), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(arrays), squeeze=False)).flat
    for ax, (title, array) in zip(axes, arrays.items()):
        image = ax.imshow(array, vmin=low, vmax=high, cmap="viridis", interpolation="nearest")
        gap = array.diagonal().mean() - array[~np.eye(len(array), dtype=bool)].mean()
        ax.set(title=f"{title}\n(diagonal - off-diagonal: {gap:.3f})", xlabel="view 2 of image j",
               ylabel="view 1 of image i")
        ax.title.set_fontsize(9)
    fig.colorbar(image, ax=list(fig.axes), label="cosine similarity", shrink=0.9)
    return fig




# --------------------------------------------------------------------------- training
def history_series(history: Sequence[Mapping[str, float]] | Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` from per-step history rows (or anything with ``.history``)."""
    rows = list(getattr(history, "history", history))
    if not rows:
        raise ValueError("history is empty; train for at least one step (fit(...).history)")
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
        available = sorted({k for r in rows for k in r} - {"step"})
        raise KeyError(f"no metric {key!r} in the history; available keys are {available}")
    steps, values = zip(*points)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def smoothed(values: np.ndarray, smooth: float) -> np.ndarray:
    """``values`` smoothed by a debiased EMA (``smooth`` in [0, 1); 0 = unchanged)."""
    if not 0.0 <= float(smooth) < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}; e.g. 0.6 (0 = no smoothing)")
    return ema(values, smooth) if smooth > 0 else values


def plot_loss_vs_chance(history: Sequence[Mapping[str, float]] | Any, batch_size: int, key: str = "loss",
                        smooth: float = 0.6) -> Figure:
    """The contrastive loss against the step, with chance level ``ln(batch_size)`` as a dashed line.

    Args:
        history: per-step rows with ``step`` and ``key`` (``TrainResult.history``).
        batch_size: B, the number of images whose views compete in the softmax.
        smooth: EMA weight of the bold curve (the raw curve is drawn faint).
    """
    if int(batch_size) != batch_size or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (InfoNCE needs negatives), got {batch_size!r}")
    steps, values = history_series(history, key)
    chance = math.log(batch_size)
    fig = Figure(figsize=(5.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1, label="raw")
    ax.plot(steps, smoothed(values, smooth), color="C0", linewidth=2, label=f"EMA {smooth:g}")
    ax.axhline(chance, color="C3", linestyle="--", label=f"chance: ln({int(batch_size)}) = {chance:.3f}")
    ax.plot(steps[:1], values[:1], "o", color="C3", label=f"step {int(steps[0])}: {values[0]:.3f}")
    ax.set(xlabel="step", ylabel=f"{key} (symmetric InfoNCE)", title="MiCL loss against chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_similarity_gap(history: Sequence[Mapping[str, float]] | Any, smooth: float = 0.6) -> Figure:
    """Left: mean cosine of positive pairs (two views of one image) and negative pairs; right: the gap.

    Reads the monitors ``pos_sim``, ``neg_sim`` and ``sim_gap`` that MiCL logs every step.
    """
    fig = Figure(figsize=(9.0, 3.3), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, label, colour in (("pos_sim", "positive pairs (same image)", "C2"),
                               ("neg_sim", "negative pairs (other images)", "C3")):
        steps, values = history_series(history, key)
        left.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
        left.plot(steps, smoothed(values, smooth), color=colour, linewidth=2, label=label)
    left.set(xlabel="step", ylabel="mean cosine of CLS vectors", title="similarity of the two views")
    left.legend(fontsize=8, loc="lower left")
    steps, gap = history_series(history, "sim_gap")
    right.plot(steps, gap, color="C0", alpha=0.3, linewidth=1)
    right.plot(steps, smoothed(gap, smooth), color="C0", linewidth=2, label=f"EMA {smooth:g}")
    right.axhline(0.0, color="grey", linewidth=1)
    right.set(xlabel="step", ylabel="positive - negative cosine", title="the gap opens")
    right.legend(fontsize=8, loc="upper left")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- sweeps
def plot_keep_ratio_sweep(keep_ratios: Sequence[float], accuracies: Sequence[float],
                          baseline: float | None = None, per_view: Sequence[int] | None = None,
                          metric: str = "kNN accuracy") -> Figure:
    """Accuracy of frozen features against the fraction of patches kept; one axes.

    Args:
        keep_ratios: fraction of patches kept for the two views together (1 - mask ratio).
        accuracies: one accuracy per keep ratio, in [0, 1].
        baseline: optional accuracy of the untrained encoder, drawn as a dashed line.
        per_view: optional patches per view, written under each tick.
    """
    x, y = np.asarray(keep_ratios, dtype=float), np.asarray(accuracies, dtype=float)
    if x.ndim != 1 or x.size == 0 or x.shape != y.shape:
        raise ValueError(f"keep_ratios and accuracies must be 1-D of the same non-zero length, got "
                         f"{x.shape} and {y.shape}")
    if per_view is not None and len(per_view) != x.size:
        raise ValueError(f"per_view has {len(per_view)} entries for {x.size} keep ratios")
    order = np.argsort(x)
    fig = Figure(figsize=(5.4, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(x[order], y[order], "o-", color="C0", linewidth=2, label="MiCL, trained")
    for xi, yi in zip(x, y):
        ax.annotate(f"{yi:.3f}", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label=f"untrained encoder: {baseline:.3f}")
    labels = [f"{100 * v:g}%" + (f"\n{per_view[i]}/view" if per_view is not None else "") for i, v in enumerate(x)]
    ax.set_xticks(x, labels, fontsize=8)
    low = min(y.min(), baseline if baseline is not None else y.min())
    high = max(y.max(), baseline if baseline is not None else y.max())
    pad = max(0.02, 0.15 * (high - low))
    ax.set(xlabel="fraction of patches kept (both views together)", ylabel=metric,
           title=f"keep-ratio sweep: {metric}", ylim=(low - pad, high + 2 * pad))
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)  # below the axes: never over a point
    return fig
