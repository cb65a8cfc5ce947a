"""Pure figure functions for evolved hierarchical masking (notebook 04).

Numbers and tensors in, a fresh matplotlib ``Figure`` out; nothing here trains, builds
trees or touches pyplot's global state. Label checks and tree geometry come from
:mod:`mcm_core.analysis.hierarchy`.

Conventions (``docs/design.md``): images float ``(3, H, W)`` / ``(N, 3, H, W)`` in
``[0, 1]``; patches in row-major order on a ``grid = (gh, gw)`` with ``L = gh * gw``;
node labels long ``(L,)`` / ``(N, L)`` with ids ``0..K-1`` (``HierarchyTree.labels_at(K)``);
masks bool ``(N, L)``, ``True`` = hidden; tree merges long ``(L - 1, 2)`` of node ids
(leaves ``0..L-1``, merge ``m`` makes node ``L + m``), as in :class:`mcm_core.masking.HierarchyTree`.

Contents
--------
- Colours: :func:`node_palette`, :func:`segment_overlay`.
- Trees: :func:`plot_tree_levels` (nested cuts over one image), :func:`plot_dendrogram`
  (the tree next to the image coloured by node).
- Training: :func:`plot_mask_evolution`, :func:`plot_cut_level`, :func:`plot_tree_quality`,
  :func:`plot_run_comparison`.
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from mcm_core.analysis.arrays import as_images, to_numpy
from mcm_core.analysis.hierarchy import as_labels, boundary_segments, check_merges, dendrogram_layout
from mcm_core.viz.curves import ema
from mcm_core.viz.images import CELL_INCHES, image_axes, mask_overlay

__all__ = [
    "node_palette", "segment_overlay", "plot_tree_levels", "plot_dendrogram", "plot_mask_evolution",
    "plot_cut_level", "plot_tree_quality", "plot_run_comparison",
]

GOLDEN = 0.618033988749895  # hue step: consecutive node ids get well-separated hues
CUT_GREY = (0.6, 0.6, 0.6)  # links above the cut


# --------------------------------------------------------------------------- input checks
def image_grid(image: Any, patch_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image (3, H, W) -> float (H, W, 3) and its patch grid; checks the patch size divides it."""
    array = as_images(to_numpy(image)[None], "image")[0]
    h, w = array.shape[:2]
    if int(patch_size) != patch_size or patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int dividing the image size {h}x{w}; "
                         "use model.cfg.patch_size")
    return array, (h // int(patch_size), w // int(patch_size))


# --------------------------------------------------------------------------- colours
def node_palette(num_nodes: int) -> np.ndarray:
    """Distinct colours for node ids ``0..K-1``: float (K, 3) in [0, 1].

    Hues step by the golden ratio, so nodes with consecutive ids (often neighbours, since
    ids follow each node's first patch) differ clearly; lightness alternates in three bands.
    """
    if int(num_nodes) != num_nodes or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive int, got {num_nodes!r}")
    return np.array([colorsys.hls_to_rgb((0.05 + i * GOLDEN) % 1.0, (0.45, 0.6, 0.35)[i % 3], 0.85)
                     for i in range(int(num_nodes))])


def segment_overlay(image: Any, labels: Any, patch_size: int, alpha: float = 0.55) -> np.ndarray:
    """The image tinted by node colour: float (H, W, 3).

    Args:
        image: (3, H, W) in [0, 1]; labels: (L,) node ids of its patches.
        alpha: weight of the node colour (0 = image only, 1 = colours only).
    """
    array, (gh, gw) = image_grid(image, patch_size)
    ids = as_labels(labels, gh * gw).reshape(gh, gw)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = node_palette(int(ids.max()) + 1)[ids]  # (gh, gw, 3)
    # Why: repeat each patch colour p times along rows and columns -> (H, W, 3).
    pixels = colours.repeat(patch_size, axis=0).repeat(patch_size, axis=1)
    return (1 - alpha) * array + alpha * pixels


def draw_boundaries(ax: Axes, labels: np.ndarray, grid: tuple[int, int], patch_size: int,
                    colour: str = "white", width: float = 1.2) -> None:
    """Draw node boundaries of (L,) labels over an image axes (pixel coordinates)."""
    segments = boundary_segments(labels, grid) * patch_size - 0.5
    # Why: a dark halo under a white line keeps boundaries visible on light and dark backgrounds.
    halo = [patheffects.Stroke(linewidth=width + 1.5, foreground="black"), patheffects.Normal()]
    ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, path_effects=halo))


# --------------------------------------------------------------------------- trees
def plot_tree_levels(image: Any, levels: Mapping[int, Any], patch_size: int) -> Figure:
    """One image and its tree cut at several levels: nested segmentations, one panel per K.

    Args:
        image: (3, H, W) in [0, 1].
        levels: ``{K: (L,) node ids}`` (``tree.labels_at(K)[i]``), drawn in the given order;
            each panel tints the patches by node and draws node boundaries in white.
    """
    array, grid = image_grid(image, patch_size)
    if not isinstance(levels, Mapping) or not levels:
        raise ValueError("levels must be a non-empty dict {K: (L,) node ids}, e.g. {16: tree.labels_at(16)[0]}")
    fig = Figure(figsize=(1.9 * (1 + len(levels)), 2.3), layout="constrained")
    axes = image_axes(fig, 1, 1 + len(levels))[0]
    axes[0].imshow(array, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    for ax, (k, labels) in zip(axes[1:], levels.items()):
        ids = as_labels(labels, grid[0] * grid[1], f"levels[{k}]")
        ax.imshow(segment_overlay(array.transpose(2, 0, 1), ids, patch_size), interpolation="nearest")
        draw_boundaries(ax, ids, grid, patch_size)
        ax.set_title(f"K = {len(np.unique(ids))} nodes", fontsize=9)
    fig.suptitle("one tree, cut at several levels (merging only adjacent patches)", fontsize=10)
    return fig


def plot_dendrogram(image: Any, merges: Any, labels: Any, patch_size: int) -> Figure:
    """The binary tree over one image's patches next to the image coloured by node at a cut.

    Links below the cut take the colour of the node they belong to, links above it are
    grey; the dashed line marks the cut (``L - K`` merges done). Leaves are labelled with
    their patch index (row-major).

    Args:
        image: (3, H, W); merges: int (L - 1, 2), one image's ``tree.merges``;
        labels: (L,) node ids at the cut, ``tree.labels_at(K)`` of the same image.
    """
    array, grid = image_grid(image, patch_size)
    L = grid[0] * grid[1]
    ids = as_labels(labels, L)
    order, x, y = dendrogram_layout(merges, L)
    k = len(np.unique(ids))
    colours = node_palette(int(ids.max()) + 1)
    first_leaf = np.concatenate([np.arange(L), np.zeros(L - 1, dtype=np.int64)])
    merges_np = check_merges(merges, L)
    for m, (a, _) in enumerate(merges_np):
        first_leaf[L + m] = first_leaf[a]  # any leaf below a node gives its node at the cut
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    tree_ax, image_ax = fig.subplots(1, 2, width_ratios=[3.2, 1])
    segments, seg_colours = [], []
    for m, (a, b) in enumerate(merges_np):
        colour = colours[ids[first_leaf[L + m]]] if m < L - k else CUT_GREY
        top = y[L + m]
        segments += [((x[a], y[a]), (x[a], top)), ((x[b], y[b]), (x[b], top)), ((x[a], top), (x[b], top))]
        seg_colours += [colour] * 3
    tree_ax.add_collection(LineCollection(segments, colors=seg_colours, linewidths=1.2))
    tree_ax.axhline(L - k + 0.5, color="black", linestyle="--", linewidth=1, label=f"cut: K = {k} nodes")
    tree_ax.scatter(np.arange(L), np.zeros(L), c=colours[ids[order]], s=14, zorder=3)
    tree_ax.set_xticks(np.arange(L), [str(p) for p in order], fontsize=5, rotation=90)
    tree_ax.set(xlim=(-1, L), ylim=(-1, L), xlabel="patch index (row-major), leaves in tree order",
                ylabel="merge step (0 = single patches)", title="binary tree over the patches")
    tree_ax.legend(loc="upper left", fontsize=8)
    image_ax.imshow(segment_overlay(array.transpose(2, 0, 1), ids, patch_size), interpolation="nearest")
    draw_boundaries(image_ax, ids, grid, patch_size)
    image_ax.set_axis_off()
    image_ax.set_title(f"patches coloured by node (K = {k})", fontsize=9)
    return fig


# --------------------------------------------------------------------------- training
def check_snapshot(snapshot: Mapping[str, Any], n: int, L: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one snapshot dict: -> labels int (N, L), mask bool (N, L)."""
    missing = {"step", "num_nodes", "labels", "mask"} - set(snapshot)
    if missing:
        raise ValueError(f"snapshot {index} lacks {sorted(missing)}; each needs step, num_nodes, "
                         "labels (N, L) and mask (N, L)")
    labels = as_labels(snapshot["labels"], L, f"snapshot {index} labels")
    mask = to_numpy(snapshot["mask"])
    if labels.shape != (n, L) or mask.shape != (n, L) or mask.dtype != np.bool_:
        raise ValueError(f"snapshot {index}: labels and mask must be (N, L) = ({n}, {L}) (mask bool, "
                         f"True = hidden), got {labels.shape} and {mask.dtype} {mask.shape}")
    return labels, mask


def plot_mask_evolution(images: Any, snapshots: Sequence[Mapping[str, Any]], patch_size: int) -> Figure:
    """The same images' hierarchical masks at several points of training.

    One row per snapshot (its step and cut level K on the left), one column per image;
    hidden patches are grey and node boundaries white, so whole hidden nodes are visible.

    Args:
        images: (N, 3, H, W) in [0, 1].
        snapshots: dicts with ``step`` (int), ``num_nodes`` (K), ``labels`` (N, L) node ids
            and ``mask`` bool (N, L), ``True`` = hidden.
    """
    array = as_images(images)
    n, h, w = array.shape[:3]
    if not snapshots:
        raise ValueError("snapshots is empty; record at least one (e.g. at step 0)")
    grid = (h // patch_size, w // patch_size)
    L = grid[0] * grid[1]
    fig = Figure(figsize=(CELL_INCHES * (n + 1) + 0.4, CELL_INCHES * (len(snapshots) + 1) + 0.4),
                 layout="constrained")
    axes = image_axes(fig, len(snapshots) + 1, n)
    for c in range(n):
        axes[0, c].imshow(array[c], interpolation="nearest")
    axes[0, 0].text(-0.08, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90,
                    ha="right", va="center", fontsize=8)
    for r, snap in enumerate(snapshots, start=1):
        labels, mask = check_snapshot(snap, n, L, r - 1)
        shown = mask_overlay(images, mask, patch_size)
        for c in range(n):
            axes[r, c].imshow(shown[c], interpolation="nearest")
            draw_boundaries(axes[r, c], labels[c], grid, patch_size, width=0.8)
        axes[r, 0].text(-0.08, 0.5, f"step {int(snap['step'])}\nK = {int(snap['num_nodes'])}",
                        transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
    fig.suptitle(f"evolved hierarchical masks over training ({mask.mean():.0%} hidden, grey)", fontsize=10)
    return fig


def plot_cut_level(schedule_steps: Sequence[int], schedule_nodes: Sequence[int], num_patches: int,
                   snapshot_steps: Sequence[int] = (), snapshot_nodes: Sequence[int] = ()) -> Figure:
    """The cut level K over training: the schedule as a line, recorded snapshots as dots.

    Each dot is labelled with the mean node size ``L / K`` in patches.

    Args:
        schedule_steps, schedule_nodes: K at every step (``masker.num_nodes(step / steps)``).
        num_patches: L.
        snapshot_steps, snapshot_nodes: the K actually used where masks were recorded.
    """
    steps, nodes = np.asarray(schedule_steps, dtype=float), np.asarray(schedule_nodes, dtype=float)
    if steps.ndim != 1 or steps.shape != nodes.shape or steps.size == 0:
        raise ValueError(f"schedule_steps and schedule_nodes must be equal-length non-empty 1-D sequences, "
                         f"got shapes {steps.shape} and {nodes.shape}")
    if len(snapshot_steps) != len(snapshot_nodes):
        raise ValueError(f"got {len(snapshot_steps)} snapshot steps but {len(snapshot_nodes)} snapshot levels")
    if (nodes < 1).any() or (nodes > num_patches).any():
        raise ValueError(f"every K must be in [1, {num_patches}] (the number of patches)")
    fig = Figure(figsize=(5.6, 3.2), layout="constrained")
    ax: Axes = fig.subplots()
    ax.plot(steps, nodes, color="C0", linewidth=2, label="schedule K(t)")
    if len(snapshot_steps):
        ax.scatter(snapshot_steps, snapshot_nodes, color="C3", zorder=3, label="recorded snapshots")
        for step, k in zip(snapshot_steps, snapshot_nodes):
            ax.annotate(f"{num_patches / k:.1f}", (step, k), textcoords="offset points", xytext=(4, 5),
                        fontsize=7, color="C3")
    ax.set(xlabel="training step", ylabel="nodes K in the cut", ylim=(0, nodes.max() * 1.15),
           title="cut level over training (red: mean node size L / K, patches)")
    ax.title.set_fontsize(9)
    ax.margins(x=0.08)  # room for the last dot's label
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw_curves(ax: Axes, steps: np.ndarray, curves: Mapping[str, Sequence[float]],
                baselines: Mapping[str, float]) -> None:
    """Lines with markers over ``steps`` plus dashed horizontal baselines, on one axes."""
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        if values.shape != steps.shape:
            raise ValueError(f"curve {name!r} has {values.size} values for {steps.size} steps")
        ax.plot(steps, values, marker="o", markersize=4, color=f"C{i}", label=name)
    for j, (name, value) in enumerate(baselines.items()):
        ax.axhline(float(value), color=f"C{len(curves) + j}", linestyle="--", linewidth=1.2, label=name)
    ax.grid(alpha=0.3)


def plot_tree_quality(steps: Sequence[int], metrics: Mapping[str, Mapping[str, Sequence[float]]],
                      baselines: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """Tree quality over training: one axes per metric, one line per curve, dashed baselines.

    Curves and baselines with the same name share a colour across panels (pass them in the same
    order); one legend below the panels names them.

    Args:
        steps: training steps of the measurements (S,).
        metrics: ``{metric name: {curve name: S values}}``, e.g.
            ``{"node purity": {"K = 4": [...], "K = 8": [...]}}``; the metric name is the y label.
        baselines: ``{metric name: {baseline name: value}}`` drawn as dashed lines.
    """
    x = np.asarray(steps, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D sequence, got shape {x.shape}")
    if not isinstance(metrics, Mapping) or not metrics or not all(metrics.values()):
        raise ValueError("metrics must be a non-empty dict {metric: {curve: values}}, e.g. "
                         "{'node purity': {'K = 4': [0.9, 0.92]}}")
    baselines = baselines or {}
    unknown = sorted(set(baselines) - set(metrics))
    if unknown:
        raise KeyError(f"baselines for unknown metric(s) {unknown}; metrics are {sorted(metrics)}")
    fig = Figure(figsize=(max(4.6 * len(metrics), 7.0), 4.0), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(metrics), squeeze=False)).flat
    legend: dict[str, Any] = {}
    for ax, (metric, curves) in zip(axes, metrics.items()):
        draw_curves(ax, x, curves, baselines.get(metric, {}))
        ax.set(xlabel="training step", ylabel=metric, title=metric)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)  # one shared legend below the panels, each name once
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("tree quality against the shapes data's object masks", fontsize=10)
    return fig


def draw_scores(ax: Axes, scores: Mapping[str, Mapping[str, float]]) -> None:
    """Grouped bars: metrics on the x axis, one bar per run, the value written on top."""
    runs = list(scores)
    metrics = list(next(iter(scores.values())))
    for run in runs:
        if list(scores[run]) != metrics:
            raise ValueError(f"every run needs the same metrics {metrics}; run {run!r} has {list(scores[run])}")
    x, width = np.arange(len(metrics)), 0.8 / len(runs)
    for i, run in enumerate(runs):
        values = [float(scores[run][m]) for m in metrics]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, color=f"C{i}", label=run)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, metrics, fontsize=8, rotation=20, ha="right")
    ax.set(ylim=(0, 1.12), ylabel="score", title="frozen features (test split)")
    ax.grid(axis="y", alpha=0.3)


def plot_run_comparison(curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                        scores: Mapping[str, Mapping[str, float]], smooth: float = 0.0,
                        log_y: bool = False) -> Figure:
    """Runs side by side: one axes per curve panel, then grouped bars of final scores.

    Args:
        curves: ``{panel title: {run name: (steps, values)}}``, e.g. training loss and held-out
            reconstruction error; the run names give the colours (same order in every panel).
        scores: ``{run name: {metric: value in [0, 1]}}``, e.g. kNN and linear-probe accuracy.
        smooth: EMA weight in [0, 1) for curves of 20 points or more (the raw curve is drawn faint).
        log_y: logarithmic y axes for the curve panels (losses that drop by orders of magnitude).
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {panel title: {run: (steps, values)}}")
    if not isinstance(scores, Mapping) or not scores or not all(scores.values()):
        raise ValueError("scores must be a non-empty dict {run: {metric: value}}")
    if not 0.0 <= float(smooth) < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    runs = list(scores)
    fig = Figure(figsize=(4.3 * (len(curves) + 1), 3.4), layout="constrained")
    axes = list(np.asarray(fig.subplots(1, len(curves) + 1, squeeze=False)).flat)
    for ax, (title, per_run) in zip(axes, curves.items()):
        for name, (steps, values) in per_run.items():
            colour = f"C{runs.index(name)}" if name in runs else None
            steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
            if steps.shape != values.shape or steps.ndim != 1:
                raise ValueError(f"panel {title!r}, run {name!r}: steps and values must be equal-length 1-D")
            if smooth > 0 and values.size >= 20:  # few points (evaluations): drawn raw
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
                values = ema(values, smooth)
            ax.plot(steps, values, color=colour, linewidth=2, label=name,
                    marker="o" if values.size < 20 else None, markersize=4)
        ax.set(xlabel="training step", ylabel=title, title=title, yscale="log" if log_y else "linear")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    draw_scores(axes[-1], scores)
    axes[-1].legend(fontsize=7, loc="upper right")
    return fig
