"""Figures of what MCM's concept tokens learned (notebook 02): attention maps, token similarity and
projections, per-concept metrics, the concept map.

Every ``plot_*`` function takes tensors or arrays and returns a fresh
:class:`matplotlib.figure.Figure` (no pyplot state, runs under Agg). The numbers they show
come from :mod:`mcm_core.analysis.concepts` (:func:`~mcm_core.analysis.concepts.read_concepts`,
:func:`~mcm_core.analysis.concepts.cosine_similarity_matrix`, :func:`~mcm_core.analysis.concepts.pca_2d`,
:func:`~mcm_core.analysis.concepts.conditional_rates`, ...).

Shapes: N images, K concepts, L patches (row-major on the ``(H // p, W // p)`` grid),
D token width, ``depth`` encoder layers.

Contents
--------
- Attention: :func:`plot_attention_grid`.
- Tokens: :func:`plot_similarity_matrices`, :func:`plot_token_projection`.
- Metrics: :func:`plot_concept_heatmap`, :func:`plot_confusion_grid`, :func:`plot_co_prediction`.
- Architecture: :func:`plot_concept_map`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from mcm_core.analysis.arrays import as_images, check_binary, check_names, to_numpy
from mcm_core.analysis.concepts import pca_2d
from mcm_core.viz.images import image_axes

__all__ = [
    "plot_attention_grid", "plot_similarity_matrices", "plot_token_projection",
    "plot_concept_heatmap", "plot_confusion_grid", "plot_co_prediction", "plot_concept_map",
]

ON_COLOUR, OFF_COLOUR = "tab:orange", "tab:blue"


# =========================================================================== panel grids
def grid_shape(count: int, ncols: int) -> tuple[int, int]:
    """(rows, cols) of a panel grid holding ``count`` panels, at most ``ncols`` per row."""
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    cols = min(int(ncols), count)
    return math.ceil(count / cols), cols


def drop_spare_axes(fig: Figure, axes: np.ndarray, used: int) -> list[Axes]:
    """Remove the panels after the first ``used`` and return those kept."""
    flat = list(axes.flat)
    for ax in flat[used:]:
        fig.delaxes(ax)
    return flat[:used]


# =========================================================================== attention
def attention_overlay(image: np.ndarray, attention: np.ndarray, norm: Normalize, alpha: float = 0.75) -> np.ndarray:
    """One RGB picture of an attention map over its image.

    Args:
        image: float (H, W, 3) in [0, 1]; attention: (gh, gw) values (nan = hidden patch).
        norm: maps attention values to [0, 1] for the colour map.
    Returns:
        float (H, W, 3): the faded grey image under the ``magma`` colours at ``alpha``; hidden
        patches show the faded image alone.
    """
    h, w, _ = image.shape
    ph, pw = h // attention.shape[0], w // attention.shape[1]
    pixels = attention.repeat(ph, axis=0).repeat(pw, axis=1)  # (gh, gw) -> (H, W): one value per patch
    faded = np.repeat(0.5 + 0.5 * image.mean(axis=-1, keepdims=True), 3, axis=-1)  # grey at half contrast
    colours = colormaps["magma"](norm(np.nan_to_num(pixels)))[..., :3]
    blended = (1 - alpha) * faded + alpha * colours
    return np.where(np.isnan(pixels)[..., None], faded, blended)


def grid_figure(nrows: int, ncols: int, panel: float, margins: tuple[float, float, float, float],
                gap: float = 0.06) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` square image panels laid out by hand (no layout engine, which is slow
    for large grids); margins ``(left, right, top, bottom)`` and ``gap`` in inches."""
    left, right, top, bottom = margins
    width = left + ncols * panel + (ncols - 1) * gap + right
    height = top + nrows * panel + (nrows - 1) * gap + bottom
    fig = Figure(figsize=(width, height))
    axes = image_axes(fig, nrows, ncols)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=gap / panel, hspace=gap / panel)
    return fig, axes


def plot_attention_grid(images: Any, attention: Any, patch_size: int, col_labels: Sequence[str],
                        row_labels: Sequence[str] | None = None, highlight: Any | None = None,
                        title: str = "concept -> patch attention") -> Figure:
    """Attention maps over images: one row per image, the image then one map per column.

    Each map shows the image faded with the attention drawn on top, scaled by L so that
    1 means "as much as a uniform spread"; hidden patches (nan) show the faded image only.

    Args:
        images: (R, 3, H, W) in [0, 1], one per row (repeat one image to show several layers of it).
        attention: (R, C, L) attention over the L patches of each row's image (e.g. per concept).
        patch_size: side of a patch in pixels.
        col_labels: C column titles (e.g. concept names).
        row_labels: optional R row labels (e.g. "layer 3").
        highlight: optional 0/1 (R, C); 1 draws an orange frame (e.g. the concept is on in that image).
    """
    array = as_images(images)
    r, h, w, _ = array.shape
    att = to_numpy(attention).astype(np.float32)
    if int(patch_size) != patch_size or patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int dividing the image size {h}x{w}; "
                         "use the model's cfg.patch_size")
    gh, gw = h // patch_size, w // patch_size
    if att.ndim != 3 or att.shape[0] != r or att.shape[2] != gh * gw:
        raise ValueError(f"attention must have shape (R, C, L) = ({r}, C, {gh * gw}) for {r} images of "
                         f"{h}x{w} with patch_size={patch_size}, got {att.shape}")
    cols = check_names(col_labels, att.shape[1], "col_labels")
    rows = None if row_labels is None else check_names(row_labels, r, "row_labels")
    frames = None if highlight is None else check_binary(highlight, att.shape[:2], "highlight")
    scaled = att.reshape(r, len(cols), gh, gw) * (gh * gw)  # (R, C, L) -> (R, C, gh, gw); 1 = uniform
    norm = Normalize(0.0, max(float(np.nanpercentile(scaled, 99)), 1.0) if np.isfinite(scaled).any() else 1.0)
    fig, axes = grid_figure(r, len(cols) + 1, panel=0.9, margins=(0.35, 1.0, 0.85, 0.1))
    for i in range(r):
        axes[i, 0].imshow(array[i], interpolation="nearest")
        if rows is not None:
            axes[i, 0].text(-0.08, 0.5, rows[i], transform=axes[i, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=8)
        for j in range(len(cols)):
            axes[i, j + 1].imshow(attention_overlay(array[i], scaled[i, j], norm), interpolation="nearest")
            if frames is not None and frames[i, j]:
                axes[i, j + 1].add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=ON_COLOUR, linewidth=3))
    axes[0, 0].set_title("image", fontsize=8)
    for j, label in enumerate(cols):
        axes[0, j + 1].set_title(label.replace("_", "\n"), fontsize=8)  # long names on two lines
    top, bottom = axes[0, -1].get_position().y1, axes[-1, -1].get_position().y0
    cax = fig.add_axes((axes[0, -1].get_position().x1 + 0.25 / fig.get_figwidth(), bottom,
                        0.15 / fig.get_figwidth(), top - bottom))
    fig.colorbar(ScalarMappable(norm, "magma"), cax=cax, label="attention x L (1 = uniform)")
    fig.suptitle(title + ("  (orange frame: concept on)" if frames is not None else ""), y=0.995, va="top")
    return fig


# =========================================================================== tokens
def plot_similarity_matrices(matrices: Any, concept_names: Sequence[str], panel_titles: Sequence[str],
                             title: str = "cosine similarity between concept tokens", ncols: int = 4) -> Figure:
    """K x K similarity heatmaps, ``ncols`` per row, with one shared colour bar in [-1, 1].

    Args:
        matrices: (M, K, K), e.g. from :func:`cosine_similarity_matrix`.
        concept_names: K names (rows and columns).
        panel_titles: M titles (e.g. "layer 0").
        ncols: panels per row.
    """
    mats = to_numpy(matrices).astype(np.float32)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2] or mats.shape[0] == 0:
        raise ValueError(f"matrices must have shape (M, K, K) with M >= 1, got {mats.shape}; "
                         "add a leading axis with matrix[None] for a single one")
    names = check_names(concept_names, mats.shape[1])
    panels = check_names(panel_titles, mats.shape[0], "panel_titles")
    nrows, cols = grid_shape(len(panels), ncols)
    fig = Figure(figsize=(3.0 * cols + 1.2, 3.1 * nrows + 0.4), layout="constrained")
    axes = drop_spare_axes(fig, np.asarray(fig.subplots(nrows, cols, squeeze=False)), len(panels))
    ticks = np.arange(len(names))
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        image = ax.imshow(mats[i], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(panel, fontsize=9)
        ax.set_xticks(ticks, names if i + cols >= len(panels) else [],  # names under the lowest panels
                      rotation=90, fontsize=6)
        ax.set_yticks(ticks, names if i % cols == 0 else [], fontsize=6)
    fig.supxlabel("concept", fontsize=9)
    fig.supylabel("concept", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity")
    fig.suptitle(title)
    return fig


def plot_token_projection(tokens: Any, labels: Any, concept_names: Sequence[str], ncols: int = 5,
                          title: str = "concept tokens per image, 2-D PCA per concept") -> Figure:
    """For each concept, its token in every image projected to 2-D, coloured by the label.

    If a concept's token encodes the concept, the orange (on) and blue (off) points separate.

    Args:
        tokens: (N, K, D), one token per image and concept (e.g. the last snapshot).
        labels: 0/1 (N, K), the true state of each concept in each image.
        concept_names: K names.
        ncols: panels per row.
    """
    x = to_numpy(tokens).astype(np.float32)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"tokens must have shape (N, K, D) with N >= 2 images, got {x.shape}")
    on = check_binary(labels, x.shape[:2])
    names = check_names(concept_names, x.shape[1])
    nrows, cols = grid_shape(len(names), ncols)
    fig = Figure(figsize=(2.5 * cols, 2.4 * nrows + 0.5), layout="constrained")
    axes = drop_spare_axes(fig, np.asarray(fig.subplots(nrows, cols, squeeze=False)), len(names))
    for k, ax in enumerate(axes):
        xy, explained = (t.numpy() for t in pca_2d(x[:, k]))
        for state, colour, label in ((False, OFF_COLOUR, "off"), (True, ON_COLOUR, "on")):
            points = xy[on[:, k] == state]
            ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5, color=colour, label=label, linewidths=0)
        ax.set_title(f"{names[k]} ({on[:, k].mean():.0%} on)", fontsize=9)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize=7)
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(title)
    return fig


# =========================================================================== metrics
def plot_concept_heatmap(values: Any, row_labels: Sequence[str], concept_names: Sequence[str], title: str,
                         colorbar_label: str, cmap: str = "viridis", vmin: float | None = None,
                         vmax: float | None = None, row_axis: str = "encoder layer", fmt: str = "{:.2f}") -> Figure:
    """A rows x concepts heatmap with every value written in its cell (nan cells left blank).

    Args:
        values: (R, K), e.g. per-layer AUC of every concept.
        row_labels: R labels; concept_names: K labels.
        title, colorbar_label: texts; cmap, vmin, vmax: colour scale; fmt: number format.
    """
    grid = to_numpy(values).astype(np.float64)
    if grid.ndim != 2 or 0 in grid.shape:
        raise ValueError(f"values must have shape (R, K) with R, K >= 1, got {grid.shape}")
    rows = check_names(row_labels, grid.shape[0], "row_labels")
    names = check_names(concept_names, grid.shape[1])
    fig = Figure(figsize=(0.55 * len(names) + 2.6, 0.4 * len(rows) + 1.9), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    lo, hi = image.norm.vmin, image.norm.vmax
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            dark = (value - lo) / ((hi - lo) or 1.0) < 0.5
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=6,
                    color="white" if dark else "black")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=8)
    ax.set(xlabel="concept", ylabel=row_axis, title=title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig


def plot_confusion_grid(confusion: Any, concept_names: Sequence[str], ncols: int = 7,
                        title: str = "per-concept confusion on the test split") -> Figure:
    """One 2x2 confusion matrix per concept, coloured by the fraction of the true class.

    Args:
        confusion: counts (K, 4) with columns ``tp, fp, fn, tn`` (``ConceptReport.confusion``).
        concept_names: K names.
        ncols: panels per row.
    """
    counts = to_numpy(confusion)
    if counts.ndim != 2 or counts.shape[1] != 4 or counts.shape[0] == 0 or (counts < 0).any():
        raise ValueError(f"confusion must be non-negative counts (K, 4) with columns tp, fp, fn, tn "
                         f"(ConceptReport.confusion), got shape {counts.shape}")
    names = check_names(concept_names, counts.shape[0])
    nrows, cols = grid_shape(len(names), ncols)
    fig = Figure(figsize=(1.75 * cols + 1.0, 1.85 * nrows + 0.5), layout="constrained")
    axes = drop_spare_axes(fig, np.asarray(fig.subplots(nrows, cols, squeeze=False)), len(names))
    for k, ax in enumerate(axes):
        tp, fp, fn, tn = (int(c) for c in counts[k])
        table = np.array([[tn, fp], [fn, tp]])  # rows: true off / on; columns: predicted off / on
        rates = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(table):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["off", "on"], fontsize=7)
        ax.set_yticks([0, 1], ["off", "on"], fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(names[k], fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    fig.suptitle(title)
    return fig


def plot_co_prediction(predicted: Any, true: Any, concept_names: Sequence[str],
                       title: str = "which concepts are predicted when another is present") -> Figure:
    """Two K x K panels: P(predicted j | i on), and its difference from P(true j | i on).

    The second panel removes what the data already explains (concepts that truly co-occur):
    red cells are concepts predicted too often next to concept i, blue ones missed.

    Args:
        predicted, true: (K, K) from :func:`conditional_rates` (rows: the concept that is on).
        concept_names: K names.
    """
    pred, truth = to_numpy(predicted).astype(np.float64), to_numpy(true).astype(np.float64)
    if pred.ndim != 2 or pred.shape[0] != pred.shape[1] or pred.shape != truth.shape:
        raise ValueError(f"predicted and true must both be (K, K), got {pred.shape} and {truth.shape}")
    names = check_names(concept_names, pred.shape[0])
    diff = pred - truth
    limit = max(float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0, 0.05)
    fig = Figure(figsize=(0.84 * len(names) + 3.2, 0.4 * len(names) + 1.3), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = ((pred, "P(predicted j | true i on)", "Blues", 0.0, 1.0, "rate"),
              (diff, "minus P(true j | true i on)", "RdBu_r", -limit, limit, "difference"))
    ticks = np.arange(len(names))
    for ax, (grid, panel, cmap, lo, hi, label) in zip(axes, panels):
        image = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
        ax.set(xlabel="concept j", ylabel="concept i (on)", title=panel)
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    fig.suptitle(title)
    return fig


# =========================================================================== architecture
def check_concept_map(concept_map: Sequence[tuple[int, int]], depth: int) -> list[tuple[int, int]]:
    """Validate a concept map (per decoder layer, the encoder layers it reads) against ``depth``."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive int (the encoder's layers), got {depth!r}")
    pairs = [tuple(int(i) for i in pair) for pair in concept_map]
    if not pairs:
        raise ValueError("the concept map is empty; pass model.concept_map (one pair per decoder layer)")
    for j, pair in enumerate(pairs):
        if len(pair) == 0 or any(not 0 <= i < depth for i in pair):
            raise ValueError(f"decoder layer {j} reads encoder layers {pair}, but the encoder has layers "
                             f"0..{depth - 1}; pass the map and depth of the same model (model.cfg.depth)")
    return pairs


def draw_concept_map(ax: Axes, pairs: list[tuple[int, int]], depth: int, title: str) -> None:
    """One panel: encoder layers (left column, first at the bottom), decoder layers (right), an arrow
    from every encoder layer to each decoder layer that reads its snapshot (gid ``enc{i}->dec{j}``)."""
    box = dict(boxstyle="round,pad=0.02", linewidth=1)
    dec_y = np.linspace(0, depth - 1, len(pairs)) if len(pairs) > 1 else np.array([(depth - 1) / 2])
    for i in range(depth):
        ax.add_patch(FancyBboxPatch((-0.45, i - 0.3), 0.9, 0.6, facecolor="#dbe9f6", edgecolor="tab:blue", **box))
        ax.text(0, i, f"encoder {i}", ha="center", va="center", fontsize=8)
    for j, y in enumerate(dec_y):
        ax.add_patch(FancyBboxPatch((2.55, y - 0.3), 0.9, 0.6, facecolor="#fde3cc", edgecolor=ON_COLOUR, **box))
        ax.text(3, y, f"decoder {j}", ha="center", va="center", fontsize=8)
        for i in pairs[j]:
            arrow = ax.annotate("", xy=(2.53, y), xytext=(0.47, i),
                                arrowprops=dict(arrowstyle="->", color=f"C{j % 10}", linewidth=1.6))
            arrow.set_gid(f"enc{i}->dec{j}")
    ax.annotate("", xy=(-0.75, depth - 0.7), xytext=(-0.75, -0.3), arrowprops=dict(arrowstyle="->", color="grey"))
    ax.text(-0.85, (depth - 1) / 2, "patches flow up", rotation=90, ha="right", va="center", fontsize=7, color="grey")
    ax.set(xlim=(-1.2, 3.6), ylim=(-0.8, depth - 0.2), title=title)
    ax.set_xticks([0, 3], ["encoder layer\n(concept snapshot)", "decoder layer\n(reads two snapshots)"], fontsize=8)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def plot_concept_map(concept_maps: Mapping[str, Sequence[tuple[int, int]]], depth: int,
                     title: str = "multi-layer concept map: which encoder layers feed which decoder layer") -> Figure:
    """Draw one or more concept maps side by side.

    Args:
        concept_maps: ``{panel title: model.concept_map}``, each a list with, per decoder layer j,
            the encoder layers whose concept snapshots it cross-attends to.
        depth: the encoder's number of layers (``model.cfg.depth``).
    Returns:
        A figure with one axes per map; each arrow carries the gid ``"enc{i}->dec{j}"``.
    """
    if not isinstance(concept_maps, Mapping) or not concept_maps:
        raise ValueError("concept_maps must be a non-empty dict {title: model.concept_map}")
    checked = {str(name): check_concept_map(pairs, depth) for name, pairs in concept_maps.items()}
    fig = Figure(figsize=(4.4 * len(checked), 0.55 * depth + 1.8), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(checked), squeeze=False))[0]
    for ax, (name, pairs) in zip(axes, checked.items()):
        draw_concept_map(ax, pairs, int(depth), name)
    fig.suptitle(title)
    return fig
