"""Figures for Latent MIM (notebook 06): collapse curves, nearest-neighbour accuracy, patch clusterings.

Like :mod:`mcm_core.viz`, every ``plot_*`` function takes numbers (histories, floats,
arrays or tensors) and returns a fresh :class:`matplotlib.figure.Figure`; nothing here
trains or reads a model. Two small numeric helpers compute what the segmentation
figure shows: :func:`patch_clusters` (k-means over one image's patch features) and
:func:`foreground_purity` (how well those clusters follow the object).

Shapes: N images, L patches in row-major order on a ``grid = (gh, gw)``, D feature width.

Contents
--------
- Training: :func:`plot_collapse_curves` (one panel per monitor, one line per run).
- Features: :func:`plot_knn_accuracy`.
- Segmentation: :func:`kmeans`, :func:`patch_clusters`, :func:`foreground_patches`, :func:`foreground_purity`,
  :func:`plot_segmentations`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from mcm_core.viz import CELL_INCHES, as_images, ema, image_axes, to_numpy

__all__ = [
    "MONITOR_LABELS", "plot_collapse_curves", "plot_knn_accuracy", "kmeans", "patch_clusters", "foreground_patches",
    "foreground_purity", "plot_segmentations",
]

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
    if isinstance(keys, str):
        keys = (keys,)
    if not keys:
        raise ValueError("keys is empty; pass at least one monitor, e.g. keys=('cos_target',)")
    if not 0.0 <= float(smooth) < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}; e.g. 0.6 (0 = no smoothing)")
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
def kmeans(points: torch.Tensor, k: int, iters: int = 25, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Batched k-means (k-means++ seeding, Lloyd steps), one independent clustering per set.

    Args:
        points: float (N, M, D), N sets of M points.
        restarts: seedings tried per set; the one with the lowest within-cluster sum of squares wins.
    Returns:
        long (N, M) cluster labels in [0, k).
    """
    generator = torch.Generator().manual_seed(seed)
    n, m, d = points.shape
    x = points.double().repeat_interleave(restarts, dim=0)  # (N R, M, D): restarts run side by side
    rows = torch.arange(x.shape[0])
    centres = x[rows, torch.randint(m, (x.shape[0],), generator=generator)][:, None]  # (N R, 1, D)
    for _ in range(k - 1):  # k-means++: next centre drawn with probability ~ squared distance
        dist = torch.cdist(x, centres).min(dim=-1).values.pow(2)  # (N R, M)
        pick = torch.multinomial(dist + 1e-12, 1, generator=generator)[:, 0]
        centres = torch.cat([centres, x[rows, pick][:, None]], dim=1)
    for _ in range(iters):
        labels = torch.cdist(x, centres).argmin(dim=-1)  # (N R, M)
        onehot = torch.nn.functional.one_hot(labels, k).double()  # (N R, M, k)
        counts = onehot.sum(dim=1)[..., None]  # (N R, k, 1)
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp(min=1), centres)
    labels = torch.cdist(x, centres).argmin(dim=-1)
    inertia = (x - torch.gather(centres, 1, labels[..., None].expand(-1, -1, d))).pow(2).sum(dim=(1, 2))
    best = inertia.view(n, restarts).argmin(dim=1)  # (N,)
    return labels.view(n, restarts, m)[torch.arange(n), best]


def patch_clusters(features: Any, grid: tuple[int, int], k: int = 4, seed: int = 0) -> np.ndarray:
    """k-means over each image's own patch features, as label maps on the patch grid.

    Features are L2-normalized first (k-means on directions, as cosine similarity compares
    them). Labels are renumbered by cluster size, largest first, so colours are comparable
    between images and models (the background is usually cluster 0).

    Args:
        features: (N, L, D) patch features (e.g. ``model.patch_features(images)``) or raw patch
            pixels (N, L, p*p*3).
        grid: (gh, gw) with ``gh * gw == L``.
        k: clusters per image, 2 <= k <= L.
        seed: seed of the k-means++ seeding.
    Returns:
        int (N, gh, gw) cluster labels in [0, k).
    """
    x = torch.as_tensor(to_numpy(features), dtype=torch.float64)
    if x.ndim != 3:
        raise ValueError(f"features must have shape (N, L, D), got {tuple(x.shape)}; one row of features per patch")
    n, num_patches, _ = x.shape
    if len(grid) != 2 or grid[0] * grid[1] != num_patches:
        raise ValueError(f"grid {tuple(grid)} does not hold the {num_patches} patches of the features; "
                         "use the model's cfg.grid")
    if int(k) != k or not 2 <= k <= num_patches:
        raise ValueError(f"k must be an int in [2, {num_patches}] (clusters per image), got {k!r}")
    raw = kmeans(torch.nn.functional.normalize(x, dim=-1), int(k), seed=seed)  # (N, L)
    sizes = torch.nn.functional.one_hot(raw, int(k)).sum(dim=1)  # (N, k)
    order = torch.sort(-sizes, dim=1, stable=True).indices  # largest cluster first
    rank = torch.argsort(order, dim=1)  # old label -> new label
    return torch.gather(rank, 1, raw).numpy().astype(np.int64).reshape(n, grid[0], grid[1])


def foreground_patches(images: Any, patch_size: int, threshold: float = 0.1) -> np.ndarray:
    """Patches whose mean intensity exceeds ``threshold``: (N, 3, H, W) -> bool (N, gh, gw).

    For data on a black background (Fashion-MNIST, digits) this is the object's patch mask.
    """
    array = as_images(images)  # (N, H, W, 3)
    n, h, w, _ = array.shape
    if int(patch_size) != patch_size or patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int dividing the image size {h}x{w}")
    p = int(patch_size)
    means = array.mean(axis=-1).reshape(n, h // p, p, w // p, p).mean(axis=(2, 4))  # (N, gh, gw)
    return means > threshold


def foreground_purity(labels: Any, foreground: Any) -> np.ndarray:
    """Per image: fraction of patches whose cluster's majority (object or background) they share.

    1.0 means every cluster lies inside the object or inside the background; clusters cut
    by position instead of content score lower.

    Args:
        labels: int (N, gh, gw) cluster labels; foreground: bool (N, gh, gw).
    Returns:
        float (N,) in [0.5, 1].
    """
    labels, foreground = to_numpy(labels), to_numpy(foreground).astype(bool)
    if labels.shape != foreground.shape or labels.ndim != 3:
        raise ValueError(f"labels and foreground must both be (N, gh, gw), got {labels.shape} and {foreground.shape}")
    purity = np.empty(labels.shape[0])
    for i, (lab, fg) in enumerate(zip(labels.reshape(len(labels), -1), foreground.reshape(len(labels), -1))):
        inside = np.bincount(lab, weights=fg.astype(float))  # object patches per cluster
        total = np.bincount(lab)
        purity[i] = np.maximum(inside, total - inside).sum() / lab.size
    return purity


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
