"""MiCL's figure functions (mcm_core.viz.contrastive): fast, Agg backend."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mcm_core.viz import contrastive as cviz

PATCH = 4  # 16x16 images -> a 4x4 grid, L = 16


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def views() -> tuple[torch.Tensor, torch.Tensor]:
    hidden_a = torch.ones(3, 16, dtype=torch.bool)
    hidden_b = torch.ones(3, 16, dtype=torch.bool)
    hidden_a[:, :4] = False  # view 1: the top patch row
    hidden_b[:, 12:] = False  # view 2: the bottom patch row
    return hidden_a, hidden_b


def history(steps: int = 30) -> list[dict[str, float]]:
    rows = []
    for s in range(steps):
        pos, neg = 0.9 + 0.002 * s, 0.9 - 0.02 * s
        rows.append({"step": s, "loss": math.log(64) - 0.05 * s, "pos_sim": pos, "neg_sim": neg, "sim_gap": pos - neg})
    return rows


# --------------------------------------------------------------------------- views
def test_view_overlay_colours_each_view_and_greys_the_rest(images, views):
    out = cviz.view_overlay(images, *views, PATCH, grey=0.5, tint=1.0)
    assert out.shape == (3, 16, 16, 3)
    assert np.allclose(out[:, :4], cviz.VIEW_COLOURS[0])  # top patch row: pure view-1 colour at tint 1
    assert np.allclose(out[:, 12:], cviz.VIEW_COLOURS[1])
    assert (out[:, 4:12] == 0.5).all()  # in neither view


def test_show_views_draws_four_rows(images, views):
    fig = cviz.show_views(images, *views, PATCH, titles=["a", "b", "c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 12
    assert fig.axes[0].get_title() == "a"
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "view 1 (4 patches)" in labels and "view 2 (4 patches)" in labels


def test_overlapping_views_are_rejected(images, views):
    hidden_a, _ = views
    with pytest.raises(ValueError, match="share patches"):
        cviz.show_views(images, hidden_a, hidden_a, PATCH)
    with pytest.raises(ValueError, match="hidden_b must be a bool array"):
        cviz.view_overlay(images, hidden_a, torch.zeros(3, 9, dtype=torch.bool), PATCH)
    with pytest.raises(ValueError, match="tint"):
        cviz.view_overlay(images, *views, PATCH, tint=2.0)


# --------------------------------------------------------------------------- similarity
def test_similarity_mapping_one_line_per_curve():
    s = torch.linspace(-1, 1, 11)
    fig = cviz.plot_similarity_mapping(s, {"a": s / 0.07, "b": (1 + s) / 2 / 0.07})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and np.allclose(lines[0].get_ydata(), (s / 0.07).numpy())
    with pytest.raises(ValueError, match="has shape"):
        cviz.plot_similarity_mapping(s, {"bad": s[:3]})
    with pytest.raises(ValueError, match="non-empty"):
        cviz.plot_similarity_mapping(s, {})


def test_similarity_matrices_report_the_gap_and_share_a_colour_bar():
    eye = torch.eye(4)
    fig = cviz.plot_view_similarity({"untrained": torch.full((4, 4), 0.9), "trained": eye})
    assert len(fig.axes) == 3  # two heatmaps + one colour bar
    assert "0.000" in fig.axes[0].get_title() and "1.000" in fig.axes[1].get_title()
    assert fig.axes[2].get_ylabel() == "cosine similarity"
    with pytest.raises(ValueError, match="square"):
        cviz.plot_view_similarity({"bad": torch.zeros(3, 4)})


# --------------------------------------------------------------------------- training
def test_loss_vs_chance_draws_ln_batch():
    fig = cviz.plot_loss_vs_chance(history(), batch_size=64)
    ax = fig.axes[0]
    chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(math.log(64))
    assert any("ln(64)" in t.get_text() for t in ax.get_legend().get_texts())
    with pytest.raises(ValueError, match="batch_size"):
        cviz.plot_loss_vs_chance(history(), batch_size=1)
    with pytest.raises(KeyError, match="no metric 'infonce'"):
        cviz.plot_loss_vs_chance(history(), batch_size=8, key="infonce")


def test_similarity_gap_plots_both_similarities_and_the_gap():
    fig = cviz.plot_similarity_gap(history(), smooth=0.0)
    left, right = fig.axes
    assert len(left.get_lines()) == 4  # raw + smoothed for positives and negatives
    gap_line = right.get_lines()[0]
    assert np.allclose(gap_line.get_ydata(), [r["sim_gap"] for r in history()])
    with pytest.raises(ValueError, match="history is empty"):
        cviz.plot_similarity_gap([])


# --------------------------------------------------------------------------- sweeps
def test_keep_ratio_sweep_plots_sorted_points_and_baseline():
    fig = cviz.plot_keep_ratio_sweep([0.5, 0.125, 0.25], [0.70, 0.62, 0.71], baseline=0.60, per_view=[16, 4, 8])
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [0.125, 0.25, 0.5]
    assert list(line.get_ydata()) == [0.62, 0.71, 0.70]
    assert ax.get_lines()[1].get_ydata()[0] == pytest.approx(0.60)
    assert len(fig.legends) == 1 and ax.get_legend() is None  # legend outside the axes
    assert "8/view" in " ".join(t.get_text() for t in ax.get_xticklabels())
    with pytest.raises(ValueError, match="same non-zero length"):
        cviz.plot_keep_ratio_sweep([0.25], [0.5, 0.6])
    with pytest.raises(ValueError, match="per_view"):
        cviz.plot_keep_ratio_sweep([0.25], [0.5], per_view=[1, 2])
