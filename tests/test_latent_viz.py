"""Figure functions and clustering helpers (mcm_core.viz.latent, mcm_core.analysis.clustering): fast, Agg backend."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mcm_core.analysis import clustering
from mcm_core.viz import latent as latent_viz


def history(values: list[float], key: str = "cos_target") -> list[dict[str, float]]:
    return [{"step": i, key: v, "loss": 1.0 / (i + 1)} for i, v in enumerate(values)]


# --------------------------------------------------------------------------- collapse curves
def test_collapse_curves_one_panel_per_key_one_line_per_run():
    runs = {"full recipe": history([0.9, 0.8, 0.7]), "no EMA": history([0.9, 0.95, 0.99])}
    fig = latent_viz.plot_collapse_curves(runs, keys=("cos_target", "loss"), smooth=0)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    first = fig.axes[0]
    assert first.get_title() == latent_viz.MONITOR_LABELS["cos_target"] and first.get_xlabel() == "step"
    assert [line.get_label() for line in first.get_lines()] == ["full recipe", "no EMA"]
    np.testing.assert_allclose(first.get_lines()[1].get_ydata(), [0.9, 0.95, 0.99])  # raw values with smooth=0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full recipe", "no EMA"]


def test_collapse_curves_skip_runs_without_the_key_and_reject_unknown_keys():
    runs = {"ema": history([0.99, 0.995], key="momentum"), "no EMA": history([0.5, 0.4])}
    fig = latent_viz.plot_collapse_curves(runs, keys=("momentum",), smooth=0)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["ema"]
    with pytest.raises(KeyError, match="no run logged 'cos_pred'"):
        latent_viz.plot_collapse_curves(runs, keys=("cos_pred",))
    with pytest.raises(ValueError, match="histories is empty"):
        latent_viz.plot_collapse_curves({})
    with pytest.raises(ValueError, match="smooth must be in"):
        latent_viz.plot_collapse_curves(runs, keys=("momentum",), smooth=1.0)


# --------------------------------------------------------------------------- kNN bars
def test_knn_bars_are_labelled_with_their_values_and_references_drawn():
    fig = latent_viz.plot_knn_accuracy({"full": 0.72, "no EMA": 0.61}, {"untrained": 0.66})
    ax = fig.axes[0]
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == pytest.approx([0.61, 0.72])
    texts = {t.get_text() for t in ax.texts}
    assert {"0.720", "0.610"} <= texts
    assert ax.get_xlabel() == "top-1 accuracy" and ax.get_legend() is not None
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        latent_viz.plot_knn_accuracy({"full": 72.0})


# --------------------------------------------------------------------------- clustering
def two_region_features(n: int = 2) -> torch.Tensor:
    """Patch features (n, 16, 3) on a 4x4 grid: the left 4 patches point one way, the rest another."""
    feats = torch.zeros(n, 4, 4, 3)
    feats[..., 0] = 1.0
    feats[:, :, :1] = torch.tensor([0.0, 1.0, 0.0])
    return feats.reshape(n, 16, 3) + 0.01 * torch.randn(n, 16, 3, generator=torch.Generator().manual_seed(0))


def test_kmeans_separates_well_apart_blobs_in_every_set_at_once():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(30) % 3
    points = centres[truth] + 0.1 * torch.randn(5, 30, 2, generator=g)  # 5 sets of 30 points
    labels = clustering.kmeans(points, k=3, seed=0)
    assert labels.shape == (5, 30)
    for row in labels:  # each true blob is exactly one cluster (up to renaming)
        assert all(len(row[truth == c].unique()) == 1 for c in range(3)) and len(row.unique()) == 3


def test_patch_clusters_find_the_regions_and_number_them_by_size():
    labels = clustering.patch_clusters(two_region_features(), (4, 4), k=2)
    assert labels.shape == (2, 4, 4) and labels.dtype == np.int64
    assert (labels[:, :, 0] == 1).all() and (labels[:, :, 1:] == 0).all()  # 12 patches: cluster 0, 4: cluster 1
    np.testing.assert_array_equal(labels, clustering.patch_clusters(two_region_features(), (4, 4), k=2))


def test_patch_clusters_reject_bad_input():
    with pytest.raises(ValueError, match="does not hold the 16 patches"):
        clustering.patch_clusters(two_region_features(), (3, 4))
    with pytest.raises(ValueError, match="k must be an int in \\[2, 16\\]"):
        clustering.patch_clusters(two_region_features(), (4, 4), k=1)
    with pytest.raises(ValueError, match="shape \\(N, L, D\\)"):
        clustering.patch_clusters(torch.zeros(16, 3), (4, 4))


def test_foreground_patches_and_purity():
    images = torch.zeros(1, 3, 8, 8)
    images[..., :4, :4] = 1.0  # the top-left 2x2 patches (of 4x4 px) are the object
    fg = clustering.foreground_patches(images, patch_size=4)
    np.testing.assert_array_equal(fg, [[[True, False], [False, False]]])
    assert clustering.foreground_purity(np.array([[[1, 0], [0, 0]]]), fg) == pytest.approx([1.0])
    # Clusters cut by column: the object patch shares a cluster with a background patch.
    assert clustering.foreground_purity(np.array([[[0, 1], [0, 1]]]), fg) == pytest.approx([0.75])
    with pytest.raises(ValueError, match="must both be"):
        clustering.foreground_purity(np.zeros((1, 2, 2), int), np.zeros((1, 4), bool))


# --------------------------------------------------------------------------- segmentation figure
def test_segmentations_image_then_one_map_per_source_with_a_colour_bar():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = clustering.patch_clusters(two_region_features(), (4, 4), k=2)
    fig = latent_viz.plot_segmentations(images, {"model": labels, "pixels": labels}, k=2,
                                        scores={"model": [1.0, 0.5]})
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == 2 * 3  # 2 images x (image + 2 maps)
    assert [ax.get_title() for ax in image_axes[:3]] == ["image", "model", "pixels"]
    np.testing.assert_array_equal(image_axes[1].images[0].get_array(), labels[0])
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert "purity 0.50" in {t.get_text() for ax in fig.axes for t in ax.texts}
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        latent_viz.plot_segmentations(images, {"model": labels + 1}, k=2)
    with pytest.raises(ValueError, match="N=2 images"):
        latent_viz.plot_segmentations(images, {"model": labels[:1]}, k=2)
