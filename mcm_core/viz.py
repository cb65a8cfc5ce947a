"""Pure figure functions: numbers and tensors in, a matplotlib ``Figure`` out.

Nothing here trains, loads data or touches pyplot's global state: every function
builds a fresh :class:`matplotlib.figure.Figure` (shown by Jupyter when it is the
last value of a cell, written by :func:`save_figure`), so figures never pile up in
memory and the functions run the same under the Agg backend in tests.

Conventions (``docs/design.md``): images float ``(N, 3, H, W)`` in ``[0, 1]``
(torch tensors or numpy arrays; 1 channel is repeated to 3), masks bool ``(N, L)``
with ``True`` = hidden, patches in row-major order on an ``(H // p, W // p)`` grid.

Contents
--------
- Images: :func:`show_images`, :func:`mask_overlay`, :func:`show_masked`, :func:`compare_masks`.
- Training: :func:`plot_history`.
- Concepts: :func:`plot_concept_metrics`.
- Files: :func:`figures_dir`, :func:`save_figure`.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "show_images", "mask_overlay", "show_masked", "compare_masks", "plot_history",
    "plot_concept_metrics", "figures_dir", "save_figure",
]

FIGURES_ENV = "MCM_FIGURES_DIR"
FIGURES_DEFAULT = "figures"  # under the current directory
CELL_INCHES = 1.3  # side of one image panel


# --------------------------------------------------------------------------- input checks
def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # bf16 has no numpy dtype; bool stays bool
    return np.asarray(x)


def as_images(images: Any, what: str = "images") -> np.ndarray:
    """Validate images (N, C, H, W) with C in {1, 3} and return float (N, H, W, 3) clipped to [0, 1]."""
    array = to_numpy(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, 3, H, W) (or (N, 1, H, W)), got {array.shape}; "
                         "add a batch dimension with images[None] for a single image")
    if array.shape[0] == 0:
        raise ValueError(f"{what} is empty; pass at least one image")
    array = np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return array.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C) for imshow


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


# --------------------------------------------------------------------------- training
def ema(values: Sequence[float], smooth: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard-style), ``smooth`` in [0, 1)."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = smooth * avg + (1 - smooth) * v
        out[i] = avg / (1 - smooth ** (i + 1))  # Why: divides out the bias of starting at 0
    return out


def plot_history(history: Sequence[Mapping[str, float]] | Any, keys: Sequence[str] = ("loss",),
                 smooth: float = 0.6, log_y: bool = False) -> Figure:
    """Metric curves against the step, one axes per key.

    Args:
        history: per-step dicts with ``step`` and metric keys (``TrainResult.history``, a run's
            ``history.jsonl`` rows, or anything with a ``.history`` list of them).
        keys: metrics to plot, e.g. ``("loss", "recon", "concept")``.
        smooth: EMA weight in [0, 1): the raw curve is drawn faint and the smoothed one on top
            (0 = raw only).
        log_y: logarithmic y axis.
    """
    rows = list(getattr(history, "history", history))
    if not rows:
        raise ValueError("history is empty; train for at least one step (fit(...).history)")
    if isinstance(keys, str):
        keys = (keys,)
    if not keys:
        raise ValueError("keys is empty; pass at least one metric name, e.g. keys=('loss',)")
    if not 0.0 <= float(smooth) < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}; e.g. 0.6 (0 = no smoothing)")
    available = sorted({k for r in rows for k in r} - {"step"})
    for key in keys:
        if not any(key in r for r in rows):
            raise KeyError(f"no metric {key!r} in the history; available keys are {available}")
    fig = Figure(figsize=(4.2 * len(keys), 3.0), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(keys), squeeze=False)).flat
    for ax, key in zip(axes, keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        steps, values = (np.asarray(v, dtype=float) for v in zip(*points))
        if smooth > 0 and len(values) > 1:
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1, label="raw")
            ax.plot(steps, ema(values, smooth), color="C0", linewidth=2, label=f"EMA {smooth:g}")
            ax.legend(fontsize=8)
        else:
            ax.plot(steps, values, color="C0", marker="o" if len(values) < 20 else None)
        ax.set(title=key, xlabel="step", yscale="log" if log_y else "linear")
        ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- concepts
def concept_rows(report: Any) -> list[Mapping[str, Any]]:
    """Per-concept dicts (with ``name``) from a ``ConceptReport`` or a list of such dicts."""
    rows = getattr(report, "per_concept", report)
    if not isinstance(rows, Sequence) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("report must be an evaluate.ConceptReport or a non-empty list of per-concept dicts "
                         "(keys: name, f1, precision, recall)")
    return list(rows)


def plot_concept_metrics(report: Any, metrics: Sequence[str] = ("f1", "precision", "recall")) -> Figure:
    """Grouped bars of per-concept metrics, concept names on the x axis; one axes.

    Args:
        report: ``evaluate.concept_metrics(...)`` (a ``ConceptReport``) or its ``per_concept`` list.
        metrics: which per-concept values to draw (any of accuracy, precision, recall, f1, auc).
    """
    rows = concept_rows(report)
    if isinstance(metrics, str):
        metrics = (metrics,)
    for metric in metrics:
        if metric not in rows[0]:
            raise KeyError(f"unknown metric {metric!r}; the rows have {sorted(rows[0])}")
    names = [str(r.get("name", i)) for i, r in enumerate(rows)]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig = Figure(figsize=(max(5.0, 0.5 * len(rows) + 1.5), 3.4), layout="constrained")
    ax: Axes = fig.subplots()
    for i, metric in enumerate(metrics):
        values = np.asarray([float(r[metric]) for r in rows])
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(values), width,
               label=f"{metric} (mean {np.nanmean(values):.2f})")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="per-concept metrics")
    ax.grid(axis="y", alpha=0.3)
    # Above the axes, in one row: inside, it covered the last concepts' bars.
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=len(metrics), frameon=False)
    return fig


def plot_measures_curve(curves: Mapping[str, Sequence[Any]], targets: Mapping[str, float] | None = None) -> Figure:
    """Hidden-pixel PSNR (left) and colour fidelity / colour-edit following (right) against the test-time
    mask ratio, one line style per model; two axes.

    Args:
        curves: model label -> ``mcm_core.measures.measure_shapes_curve(...)`` (objects with
            ``mask_ratio``, ``psnr``, ``colour_fidelity``, ``edit_following``).
        targets: optional horizontal guides, e.g. ``{"psnr": 24, "share": 0.9}``.
    """
    if not curves:
        raise ValueError("curves is empty; pass {label: measure_shapes_curve(...)} for at least one model")
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for (label, curve), style in zip(curves.items(), ("-", "--", ":", "-.")):
        ratios = [m.mask_ratio for m in curve]
        left.plot(ratios, [m.psnr for m in curve], style, marker="o", color="k", label=label)
        right.plot(ratios, [m.colour_fidelity for m in curve], style, marker="o", color="tab:blue",
                   label=f"colour fidelity ({label})")
        right.plot(ratios, [m.edit_following for m in curve], style, marker="s", color="tab:red",
                   label=f"colour-edit following ({label})")
    for ax, key in ((left, "psnr"), (right, "share")):
        if targets and key in targets:
            ax.axhline(targets[key], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("test-time mask ratio")
        ax.grid(alpha=0.3)
    left.set(ylabel="dB", title="hidden-pixel PSNR")
    right.set(ylim=(0, 1.02), ylabel="share of hidden object pixels", title="colours of the hidden object pixels")
    left.legend(fontsize=8)
    right.legend(fontsize=7, loc="lower right")
    return fig


# --------------------------------------------------------------------------- files
def figures_dir(folder: str | Path | None = None) -> Path:
    """Where figures go: ``folder`` if given, else ``$MCM_FIGURES_DIR`` if set, else ``figures/`` under the
    current directory (never the package's location)."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(FIGURES_ENV) or Path.cwd() / FIGURES_DEFAULT)


def save_figure(fig: Figure, name: str, dpi: int = 120, folder: str | Path | None = None) -> Path:
    """Write ``fig`` as ``<figures_dir(folder)>/<name>.png`` (creating the folder) and return the path.

    Args:
        name: a file name without folders, e.g. ``"01_masks"`` (``.png`` is added).
        folder: the folder (None: ``$MCM_FIGURES_DIR``, else ``./figures``).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or name.strip(".") == "":
        raise ValueError(f"figure name must be a plain file name of letters, digits, _ . -, got {name!r}; "
                         "e.g. '01_masks' (the folder comes from folder=, $MCM_FIGURES_DIR or ./figures)")
    folder = figures_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=dpi)
    return path
