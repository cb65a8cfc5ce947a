"""Figures of evolved hierarchical masking (mcm_core.viz.hierarchy, mcm_core.analysis.hierarchy): fast, Agg backend.

Trees come from the real clustering (``masking.build_tree``) on small grids, so the
figures are driven by the same data structures the notebook draws.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from mcm_core.analysis import hierarchy as ah
from mcm_core.masking import build_tree, mask_whole_nodes
from mcm_core.viz import hierarchy as hv

PATCH, GRID = 4, (4, 4)  # 16x16 images, 16 patches
L = GRID[0] * GRID[1]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tree():
    affinity = torch.rand(3, L, L, generator=torch.Generator().manual_seed(1))
    return build_tree(affinity, GRID)


def halves() -> torch.Tensor:
    """Labels (L,) of a 4x4 grid split into a left (0) and a right (1) half."""
    return torch.tensor([0, 0, 1, 1] * 4)


# --------------------------------------------------------------------------- arrays
def test_node_palette_distinct_colours():
    colours = hv.node_palette(32)
    assert colours.shape == (32, 3) and (colours >= 0).all() and (colours <= 1).all()
    assert len({tuple(np.round(c, 3)) for c in colours}) == 32
    assert np.abs(np.diff(colours, axis=0)).sum(axis=1).min() > 0.1  # consecutive ids differ visibly


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_node_palette_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="num_nodes"):
        hv.node_palette(bad)


def test_segment_overlay_tints_each_node_with_its_colour(images):
    labels = halves()
    colours = hv.node_palette(2)
    out = hv.segment_overlay(images[0], labels, PATCH, alpha=1.0)
    assert out.shape == (16, 16, 3)
    assert np.allclose(out[:, :8], colours[0]) and np.allclose(out[:, 8:], colours[1])
    assert np.allclose(hv.segment_overlay(images[0], labels, PATCH, alpha=0.0), images[0].permute(1, 2, 0).numpy())


def test_segment_overlay_rejects_labels_of_the_wrong_length(images):
    with pytest.raises(ValueError, match="L = 16"):
        hv.segment_overlay(images[0], torch.zeros(15, dtype=torch.long), PATCH)
    with pytest.raises(ValueError, match="patch_size"):
        hv.segment_overlay(images[0], halves(), 5)


def test_boundary_segments_counts_edges_between_nodes():
    assert ah.boundary_segments(torch.zeros(L, dtype=torch.long), GRID).shape == (0, 2, 2)
    every = ah.boundary_segments(torch.arange(L), GRID)  # every patch its own node
    assert every.shape == (GRID[0] * (GRID[1] - 1) + (GRID[0] - 1) * GRID[1], 2, 2)
    split = ah.boundary_segments(halves(), GRID)  # one vertical line at x = 2 through all 4 rows
    assert split.shape == (4, 2, 2)
    assert np.all(split[:, :, 0] == 2) and sorted(split[:, 0, 1]) == [0, 1, 2, 3]


def test_dendrogram_layout_places_every_subtree_contiguously(tree):
    merges = tree.merges[0]
    order, x, y = ah.dendrogram_layout(merges, L)
    assert sorted(order.tolist()) == list(range(L))  # a permutation of the patches
    assert np.array_equal(x[order], np.arange(L)) and np.all(y[:L] == 0)
    assert np.array_equal(y[L:], np.arange(1, L))  # merge rank: monotone
    for m, (a, b) in enumerate(merges.tolist()):
        assert y[L + m] > max(y[a], y[b])  # a parent sits above its children
        assert x[L + m] == pytest.approx((x[a] + x[b]) / 2)
    # the leaves of the nodes at any cut occupy contiguous x ranges
    labels = tree.labels_at(4)[0].numpy()
    in_order = labels[order]
    assert sum(in_order[1:] != in_order[:-1]) == 3


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(L - 2, 2, dtype=torch.long), r"\(L - 1, 2\)"),
    (torch.zeros(L - 1, 2, dtype=torch.long), "binary tree"),
    (torch.zeros(L - 1, 2), "integer"),
])
def test_dendrogram_layout_rejects_broken_merges(bad, message):
    with pytest.raises(ValueError, match=message):
        ah.dendrogram_layout(bad, L)


# --------------------------------------------------------------------------- trees
def line_collections(fig: Figure) -> list[LineCollection]:
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)]


def test_plot_tree_levels_one_panel_per_level(images, tree):
    levels = {k: tree.labels_at(k)[0] for k in (8, 4, 2)}
    fig = hv.plot_tree_levels(images[0], levels, PATCH)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["input", "K = 8 nodes", "K = 4 nodes", "K = 2 nodes"]
    # boundary lines: more nodes, more edges between them
    counts = [len(c.get_segments()) for c in line_collections(fig)]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0


def test_plot_tree_levels_needs_levels(images):
    with pytest.raises(ValueError, match="non-empty dict"):
        hv.plot_tree_levels(images[0], {}, PATCH)


def test_plot_dendrogram_colours_links_below_the_cut(images, tree):
    k = 3
    labels = tree.labels_at(k)[0]
    fig = hv.plot_dendrogram(images[0], tree.merges[0], labels, PATCH)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == f"patches coloured by node (K = {k})"
    links = fig.axes[0].collections[0]
    assert len(links.get_segments()) == 3 * (L - 1)  # two legs and a bar per merge
    colours = links.get_colors()[:, :3]
    grey = np.all(np.isclose(colours, hv.CUT_GREY), axis=1)
    assert grey.sum() == 3 * (k - 1)  # the last K - 1 merges are above the cut
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == f"cut: K = {k} nodes"


def test_plot_dendrogram_rejects_mismatched_labels(images, tree):
    with pytest.raises(ValueError, match="L = 16"):
        hv.plot_dendrogram(images[0], tree.merges[0], torch.zeros(8, dtype=torch.long), PATCH)


# --------------------------------------------------------------------------- training
def snapshots(tree, steps=(0, 10, 20)) -> list[dict]:
    out = []
    for step, k in zip(steps, (8, 4, 2)):
        labels = tree.labels_at(k)
        mask, _ = mask_whole_nodes(labels, k, 0.5, torch.Generator().manual_seed(0))
        out.append({"step": step, "num_nodes": k, "labels": labels, "mask": mask})
    return out


def test_plot_mask_evolution_rows_of_snapshots(images, tree):
    snaps = snapshots(tree)
    fig = hv.plot_mask_evolution(images, snaps, PATCH)
    assert len(fig.axes) == (len(snaps) + 1) * 3  # input row + one row per snapshot
    row_labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert row_labels == ["input", "step 0\nK = 8", "step 10\nK = 4", "step 20\nK = 2"]
    assert "50% hidden" in fig.get_suptitle()


def test_plot_mask_evolution_rejects_incomplete_snapshots(images, tree):
    snap = snapshots(tree)[0]
    with pytest.raises(ValueError, match="lacks \\['mask'\\]"):
        hv.plot_mask_evolution(images, [{k: v for k, v in snap.items() if k != "mask"}], PATCH)
    with pytest.raises(ValueError, match="bool"):
        hv.plot_mask_evolution(images, [{**snap, "mask": snap["mask"].long()}], PATCH)
    with pytest.raises(ValueError, match="empty"):
        hv.plot_mask_evolution(images, [], PATCH)


def test_plot_cut_level_draws_schedule_and_snapshots():
    steps = np.arange(100)
    nodes = np.linspace(32, 4, 100).round()
    fig = hv.plot_cut_level(steps, nodes, 64, snapshot_steps=[0, 50], snapshot_nodes=[32, 18])
    ax = fig.axes[0]
    assert np.array_equal(ax.lines[0].get_ydata(), nodes)
    assert ax.collections[0].get_offsets().shape == (2, 2)
    assert [t.get_text() for t in ax.texts] == ["2.0", "3.6"]  # mean node size L / K at each snapshot
    assert ax.get_ylabel() == "nodes K in the cut"


def test_plot_cut_level_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        hv.plot_cut_level([0, 1], [4], 64)
    with pytest.raises(ValueError, match=r"\[1, 64\]"):
        hv.plot_cut_level([0, 1], [4, 65], 64)


def test_plot_tree_quality_one_axes_per_metric():
    metrics = {"node purity": {"K = 4": [0.8, 0.9], "K = 8": [0.85, 0.95]}, "object IoU": {"K = 4": [0.2, 0.4]}}
    fig = hv.plot_tree_quality([0, 10], metrics, {"node purity": {"random regions": 0.7}})
    assert len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["node purity", "object IoU"]
    assert len(fig.axes[0].lines) == 3  # two curves and the baseline
    assert np.array_equal(fig.axes[1].lines[0].get_ydata(), [0.2, 0.4])
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == ["K = 4", "K = 8", "random regions"]  # one shared legend, each name once


def test_plot_tree_quality_rejects_mismatches():
    with pytest.raises(ValueError, match="2 values for 3 steps"):
        hv.plot_tree_quality([0, 1, 2], {"purity": {"K = 4": [0.1, 0.2]}})
    with pytest.raises(KeyError, match="unknown metric"):
        hv.plot_tree_quality([0, 1], {"purity": {"K = 4": [0.1, 0.2]}}, {"iou": {"x": 0.1}})


def test_plot_run_comparison_curves_then_scores():
    curves = {"training loss": {"random": ([0, 1, 2], [1.0, 0.5, 0.4]), "evolved": ([0, 1, 2], [1.0, 0.6, 0.5])},
              "held-out MSE": {"random": ([1, 2], [0.1, 0.05]), "evolved": ([1, 2], [0.1, 0.04])}}
    scores = {"random": {"kNN shape": 0.5, "probe F1": 0.6}, "evolved": {"kNN shape": 0.55, "probe F1": 0.62}}
    fig = hv.plot_run_comparison(curves, scores, smooth=0.5, log_y=True)
    assert len(fig.axes) == 3
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log", "linear"]  # the score bars stay linear
    bars = fig.axes[2].patches
    assert len(bars) == 4 and bars[0].get_height() == pytest.approx(0.5)
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == ["kNN shape", "probe F1"]
    assert fig.axes[0].get_legend().get_texts()[1].get_text() == "evolved"
    assert len(fig.axes[0].lines) == 2  # short curves are drawn raw, not smoothed


def test_plot_run_comparison_smooths_long_curves_with_one_colour_per_run():
    steps = list(range(30))
    curves = {"loss": {"random": (steps, [1.0 / (s + 1) for s in steps]), "evolved": (steps, [0.5] * 30)}}
    fig = hv.plot_run_comparison(curves, {"random": {"x": 0.1}, "evolved": {"x": 0.2}}, smooth=0.6)
    lines = fig.axes[0].lines
    assert len(lines) == 4  # raw (faint) + smoothed per run
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_alpha() == 0.25 and lines[1].get_ydata()[0] == pytest.approx(1.0)


def test_plot_run_comparison_rejects_uneven_scores():
    with pytest.raises(ValueError, match="same metrics"):
        hv.plot_run_comparison({"loss": {"a": ([0], [1.0])}}, {"a": {"x": 0.1}, "b": {"y": 0.2}})
    with pytest.raises(ValueError, match="smooth"):
        hv.plot_run_comparison({"loss": {"a": ([0], [1.0])}}, {"a": {"x": 0.1}}, smooth=1.0)
