"""Figures for Latent MIM (notebook 06): collapse curves, nearest-neighbour accuracy, patch clusterings.

Every ``plot_*`` function takes numbers (histories, floats, arrays or tensors) and returns a
fresh :class:`matplotlib.figure.Figure`; nothing here trains or reads a model. The clusterings
the segmentation figure shows come from :mod:`mcm_core.analysis.clustering`
(:func:`~mcm_core.analysis.clustering.patch_clusters`, :func:`~mcm_core.analysis.clustering.foreground_purity`).

Shapes: N images, L patches in row-major order on a ``grid = (gh, gw)``, D feature width.

Contents
--------
- Training: :func:`plot_collapse_curves` (one panel per monitor, one line per run).
- Features: :func:`plot_knn_accuracy`.
- Segmentation: :func:`plot_segmentations`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from mcm_core.analysis.arrays import as_images, to_numpy
from mcm_core.viz.curves import curve_keys, ema
from mcm_core.viz.images import CELL_INCHES, image_axes

__all__ = ["MONITOR_LABELS", "plot_collapse_curves", "plot_knn_accuracy", "plot_segmentations"]

# What each logged monitor is, for panel titles and axis labels.
MONITOR_LABELS: dict[str, str] = {
    "loss": "training loss",
    "infonce": "patch InfoNCE",
    "mse": "latent MSE",
    "patch_acc": "predictions that pick their own target",
    "cos_target": "mean pairwise cosine: target tokens",
    "cos_pred": "mean pairwise cosine: predictions",
    "cos_visible": "mean pairwise cosine: visible tokens",
    "erank_target": "effective rank: target tokens",
    "erank_visible": "effective rank: visible tokens",
    "pos_share_target": "target variance explained by position",
    "momentum": "EMA momentum",
}


# --------------------------------------------------------------------------- training
def history_rows(history: Any) -> list[Mapping[str, float]]:
    """Per-step dicts from a ``TrainResult``, a list of dicts, or anything with ``.history``."""
    rows = list(getattr(history, "history", history))
    if not rows or not all(isinstance(r, Mapping) and "step" in r for r in rows):
        raise ValueError("each history must be a non-empty list of per-step dicts with a 'step' key "
                         "(TrainResult.history or a run's history.jsonl rows)")
    return rows


def plot_collapse_curves(histories: Mapping[str, Any], keys: Sequence[str] = ("cos_target", "erank_target"),
                         smooth: float = 0.6, ncols: int = 3) -> Figure:
    """Monitors against the step: one panel per key, one line (colour) per run.

    Args:
        histories: ``{run name: history}`` (``TrainResult.history`` or its rows).
        keys: logged quantities to draw (see :data:`MONITOR_LABELS`); a run that did not log a
            key (e.g. ``momentum`` without an EMA) is left out of that panel.
        smooth: EMA weight in [0, 1) applied to each curve (0 = raw values).
        ncols: panels per row.
    """
    if not histories:
        raise ValueError("histories is empty; pass {run name: history}, e.g. {'full recipe': result.history}")
    keys = curve_keys(keys, smooth, example="keys=('cos_target',)", what="monitor")
    runs = {name: history_rows(h) for name, h in histories.items()}
    logged = sorted({k for rows in runs.values() for r in rows for k in r} - {"step"})
    for key in keys:
        if key not in logged:
            raise KeyError(f"no run logged {key!r}; logged keys are {logged}")
    ncols = max(1, min(int(ncols), len(keys)))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(3.9 * ncols, 2.9 * nrows + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).flat
    for i, ax in enumerate(axes):
        if i >= len(keys):
            fig.delaxes(ax)
            continue
        key = keys[i]
        for colour, (name, rows) in enumerate(runs.items()):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if not points:
                continue
            steps, values = (np.asarray(v, dtype=float) for v in zip(*points))
            ax.plot(steps, ema(values, smooth) if smooth > 0 else values, color=f"C{colour}", label=name)
        ax.set(title=MONITOR_LABELS.get(key, key), xlabel="step", ylabel=key)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(runs), fontsize=9)
    return fig


# --------------------------------------------------------------------------- features
def plot_knn_accuracy(accuracies: Mapping[str, float], references: Mapping[str, float] | None = None,
                      title: str = "weighted kNN accuracy of frozen features") -> Figure:
    """Horizontal bars of kNN accuracy per run, each labelled with its value; references as dashed lines.

    Args:
        accuracies: ``{run name: accuracy in [0, 1]}``.
        references: optional ``{name: accuracy}`` drawn as vertical lines (e.g. the untrained
            encoder, raw pixels).
    """
    if not accuracies:
        raise ValueError("accuracies is empty; pass {run name: accuracy}")
    values = {name: float(v) for name, v in {**accuracies, **(references or {})}.items()}
    bad = {name: v for name, v in values.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"accuracies must be in [0, 1], got {bad}")
    names = list(accuracies)
    fig = Figure(figsize=(6.4, 0.5 * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]  # first run on top
    bars = ax.barh(y, [values[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{values[n]:.3f}" for n in names], padding=3, fontsize=9)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axvline(value, color="0.3", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2,
                   label=f"{name}: {value:.3f}")
    ax.set_yticks(y, names)
    ax.set(xlim=(0, 1.08), xlabel="top-1 accuracy", title=title)
    ax.grid(axis="x", alpha=0.3)
    if references:
        ax.legend(fontsize=8, loc="lower right")
    return fig


# --------------------------------------------------------------------------- segmentation
def plot_segmentations(images: Any, label_maps: Mapping[str, Any], k: int,
                       scores: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Each image next to its patch clusterings: one row per image, one column per feature source.

    Args:
        images: (N, 3, H, W) in [0, 1].
        label_maps: ``{source name: int (N, gh, gw) labels in [0, k)}`` (see :func:`patch_clusters`).
        k: number of clusters (sets the colour scale and the colour bar).
        scores: optional ``{source name: N per-image values}`` written under each map
            (e.g. :func:`foreground_purity`).
    """
    array = as_images(images)
    n = array.shape[0]
    maps = {name: to_numpy(m) for name, m in label_maps.items()}
    if not maps:
        raise ValueError("label_maps is empty; pass {name: (N, gh, gw) labels}")
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"label map {name!r} must be (N, gh, gw) with N={n} images, got {m.shape}")
        if m.min() < 0 or m.max() >= k:
            raise ValueError(f"label map {name!r} has labels outside [0, {k}); pass the k used for clustering")
    cmap = ListedColormap(colormaps["tab10"].colors[:k]) if k <= 10 else colormaps["tab20"].resampled(k)
    norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
    fig = Figure(figsize=(CELL_INCHES * (len(maps) + 1) + 0.9, (CELL_INCHES + (0.25 if scores else 0.05)) * n + 0.7),
                 layout="constrained")
    axes = image_axes(fig, n, len(maps) + 1)
    for row in range(n):
        axes[row, 0].imshow(array[row], interpolation="nearest")
        for col, (name, m) in enumerate(maps.items(), start=1):
            shown = axes[row, col].imshow(m[row], cmap=cmap, norm=norm, interpolation="nearest")
            if scores and name in scores:
                axes[row, col].text(0.5, -0.04, f"purity {float(scores[name][row]):.2f}", fontsize=7,
                                    ha="center", va="top", transform=axes[row, col].transAxes)
    axes[0, 0].set_title("image", fontsize=9)
    for col, name in enumerate(maps, start=1):
        axes[0, col].set_title(name, fontsize=9)
    bar = fig.colorbar(shown, ax=axes[:, -1], ticks=np.arange(k), shrink=0.6)
    bar.set_label("cluster (0 = largest)")
    fig.suptitle(f"k-means (k={k}) over each image's own patch features", fontsize=10)
    return fig
