"""MCM concept read-outs (mcm_core.analysis.concepts) and notebook 02's figures (mcm_core.viz.concepts), Agg backend."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mcm_core.analysis import concepts as ac
from mcm_core.evaluate import concept_metrics
from mcm_core.models import build_model
from mcm_core.models.mcm import concept_map
from mcm_core.viz import concepts as cv

K, PATCH = 3, 4
NAMES = ["red", "square", "large"]


def small_mcm(pairing: str = "mirror", depth: int = 4):
    """An untrained MCM small enough for unit tests: 16 px images, 4x4 patches, K = 3."""
    torch.manual_seed(0)
    return build_model("mcm", "tiny", img_size=16, embed_dim=32, depth=depth, num_heads=2,
                       decoder_embed_dim=16, decoder_num_heads=2, num_concepts=K, pairing=pairing)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def gids(fig: Figure) -> set[str]:
    return {a.get_gid() for ax in fig.axes for a in ax.texts if a.get_gid()}


def titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


# --------------------------------------------------------------------------- reading the model
def test_attention_to_patches_scatters_to_image_order_with_nan_at_hidden():
    att = torch.tensor([[0.25, 0.75], [0.5, 0.5]])[None, :, None, :]  # (B=1, heads=2, K=1, N_vis=2)
    out = ac.attention_to_patches(att, torch.tensor([[3, 1]]), num_patches=4)
    assert out.shape == (1, 1, 4)
    assert torch.isnan(out[0, 0, [0, 2]]).all()  # hidden patches
    assert out[0, 0, 3] == pytest.approx(0.375) and out[0, 0, 1] == pytest.approx(0.625)  # head mean


def test_attention_to_patches_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="N_vis"):
        ac.attention_to_patches(torch.rand(1, 2, 3, 5), torch.zeros(1, 4, dtype=torch.long), 8)


def test_read_concepts_shapes_and_attention_sums(images):
    model = small_mcm()
    out = ac.read_concepts(model, images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0), batch_size=2)
    depth, n, L, D = 4, 5, 16, 32
    assert out.attention.shape == (depth, n, K, L)
    assert out.snapshots.shape == (depth, n, K, D)
    assert out.layer_logits.shape == (depth, n, K)
    assert out.mask.shape == (n, L) and out.mask.dtype == torch.bool
    hidden = torch.isnan(out.attention)
    assert torch.equal(hidden, out.mask[None, :, None, :].expand_as(hidden))  # nan exactly where hidden
    sums = torch.nan_to_num(out.attention).sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)  # a distribution over visible patches
    assert model.training  # mode restored


def test_read_concepts_matches_the_model_and_is_batch_independent(images):
    model = small_mcm().eval()
    out = ac.read_concepts(model, images, batch_size=2)
    one = ac.read_concepts(model, images, batch_size=5)
    assert torch.allclose(out.snapshots, one.snapshots, atol=1e-5)
    with torch.no_grad():
        logits = model.layer_logits(model.forward_encoder(images, 0.0).concepts)  # (depth, N, K)
    assert torch.allclose(out.layer_logits, logits, atol=1e-5)  # each snapshot read by its own layer's head


def test_read_concepts_rejects_non_mcm_and_bad_images(images):
    with pytest.raises(TypeError, match="MCM"):
        ac.read_concepts(build_model("mae", "tiny", img_size=16, embed_dim=32, depth=2, num_heads=2,
                                     decoder_embed_dim=16, decoder_num_heads=2), images)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ac.read_concepts(small_mcm(), images[0])


# --------------------------------------------------------------------------- attention figures
def test_plot_attention_grid_panels_titles_and_frames(images):
    att = torch.softmax(torch.randn(5, K, 16), dim=-1)
    highlight = torch.tensor([[1, 0, 0]] * 5)
    fig = cv.plot_attention_grid(images, att, PATCH, NAMES, row_labels=[f"layer {i}" for i in range(5)],
                                 highlight=highlight)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5 * (1 + K) + 1  # image + K maps per row, one colour bar
    assert titles(fig)[:1 + K] == ["image", *NAMES]
    assert "attention" in fig.axes[-1].get_ylabel()  # the colour bar is labelled
    frames = [p for ax in fig.axes for p in ax.patches]
    assert len(frames) == 5  # one orange frame per highlighted (row, concept)
    assert fig.get_suptitle()


@pytest.mark.parametrize("kwargs, match", [
    ({"attention": torch.rand(5, K, 15)}, r"\(R, C, L\)"),
    ({"attention": torch.rand(4, K, 16)}, r"\(R, C, L\)"),
    ({"patch_size": 5}, "patch_size"),
    ({"col_labels": ["a"]}, "1 col_labels for 3"),
    ({"highlight": torch.full((5, K), 0.5)}, "only 0 and 1"),
])
def test_plot_attention_grid_bad_input(images, kwargs, match):
    args = {"images": images, "attention": torch.rand(5, K, 16), "patch_size": PATCH, "col_labels": NAMES, **kwargs}
    with pytest.raises(ValueError, match=match):
        cv.plot_attention_grid(**args)


def test_patch_coverage_pools_object_pixels_per_patch():
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, :4, :4] = 1  # top-left patch fully covered
    masks[0, 4:6, 4:8] = 2  # bottom-right patch half covered
    cov = ac.patch_coverage(masks, 4)
    assert cov.shape == (1, 4)
    assert cov.tolist() == [[1.0, 0.0, 0.0, 0.5]]
    with pytest.raises(ValueError, match="dividing"):
        ac.patch_coverage(masks, 3)


def test_attention_on_objects_is_one_for_uniform_and_above_one_on_the_object():
    cov = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # object on patch 0: a quarter of the image
    uniform = torch.full((2, 1, K, 4), 0.25)
    assert torch.allclose(ac.attention_on_objects(uniform, cov), torch.ones(2, K))
    focused = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(2, 1, K, 4)
    assert torch.allclose(ac.attention_on_objects(focused, cov), torch.full((2, K), 4.0))
    with pytest.raises(ValueError, match="same N and L"):
        ac.attention_on_objects(uniform, torch.ones(2, 4))


# --------------------------------------------------------------------------- tokens
def test_cosine_similarity_matrix_batched():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    sim = ac.cosine_similarity_matrix(torch.stack([vectors, vectors]))
    assert sim.shape == (2, 3, 3)
    assert torch.allclose(sim[0], torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]))
    with pytest.raises(ValueError, match=r"\(\.\.\., K, D\)"):
        ac.cosine_similarity_matrix(torch.ones(3))


def test_plot_similarity_matrices_one_panel_each_and_a_colour_bar():
    mats = ac.cosine_similarity_matrix(torch.randn(4, K, 8))
    fig = cv.plot_similarity_matrices(mats, NAMES, [f"layer {i}" for i in range(4)])
    assert len(fig.axes) == 4 + 1
    assert titles(fig)[:4] == [f"layer {i}" for i in range(4)]
    assert fig.axes[-1].get_ylabel() == "cosine similarity"
    with pytest.raises(ValueError, match=r"\(M, K, K\)"):
        cv.plot_similarity_matrices(mats[0], NAMES, ["x"])
    with pytest.raises(ValueError, match="panel_titles"):
        cv.plot_similarity_matrices(mats, NAMES, ["x"])


def test_pca_2d_finds_the_spread_direction_deterministically():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([10.0, 0.1, 3.0, 0.1, 0.1])
    xy, explained = ac.pca_2d(x)
    assert xy.shape == (200, 2) and explained.shape == (2,)
    assert explained[0] > explained[1] > 0 and float(explained.sum()) <= 1.0 + 1e-6
    assert abs(torch.corrcoef(torch.stack([xy[:, 0], x[:, 0]]))[0, 1]) > 0.99  # PC1 = the widest axis
    again, _ = ac.pca_2d(x.numpy())
    assert torch.equal(xy, again)
    with pytest.raises(ValueError, match="N >= 2"):
        ac.pca_2d(torch.ones(1, 4))


def test_pca_2d_one_dimensional_data_pads_the_second_component():
    xy, explained = ac.pca_2d(torch.arange(6.0)[:, None])
    assert xy.shape == (6, 2) and torch.all(xy[:, 1] == 0) and explained.tolist() == pytest.approx([1.0, 0.0])


def test_plot_token_projection_one_panel_per_concept_coloured_by_label():
    tokens, labels = torch.randn(40, K, 8), (torch.rand(40, K) > 0.5).float()
    fig = cv.plot_token_projection(tokens, labels, NAMES, ncols=2)
    assert len(fig.axes) == K  # the spare fourth panel is removed
    assert all(ax.get_xlabel().startswith("PC1") and ax.get_ylabel().startswith("PC2") for ax in fig.axes)
    first = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in first.collections) == 40  # every image drawn once
    assert [c.get_label() for c in first.collections] == ["off", "on"]
    with pytest.raises(ValueError, match=r"shape \(40, 3\)"):
        cv.plot_token_projection(tokens, labels[:, :2], NAMES)
    with pytest.raises(ValueError, match="concept_names"):
        cv.plot_token_projection(tokens, labels, NAMES[:2])


# --------------------------------------------------------------------------- metrics
def test_plot_concept_heatmap_writes_values_and_labels():
    values = torch.tensor([[0.5, 1.0, float("nan")], [0.25, 0.75, 0.9]])
    fig = cv.plot_concept_heatmap(values, ["layer 0", "layer 1"], NAMES, "AUC per layer", "AUC")
    ax = fig.axes[0]
    assert ax.get_title() == "AUC per layer" and ax.get_xlabel() == "concept" and ax.get_ylabel() == "encoder layer"
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.50", "1.00", "0.25", "0.75", "0.90"])  # nan blank
    assert fig.axes[1].get_ylabel() == "AUC"
    with pytest.raises(ValueError, match="row_labels"):
        cv.plot_concept_heatmap(values, ["layer 0"], NAMES, "t", "c")


def test_plot_confusion_grid_from_a_concept_report():
    logits = torch.tensor([[2.0, -1.0, 1.0], [-2.0, 1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    report = concept_metrics(logits, targets, NAMES)
    fig = cv.plot_confusion_grid(report.confusion, NAMES, ncols=2)
    assert len(fig.axes) == K + 1  # three 2x2 panels and the colour bar
    assert titles(fig)[:K] == NAMES
    first = fig.axes[0]  # red: tp=1, fp=1, fn=0, tn=2 -> [[tn, fp], [fn, tp]]
    assert [t.get_text() for t in first.texts] == ["2", "1", "0", "1"]
    assert first.get_xlabel() == "predicted" and first.get_ylabel() == "true"
    with pytest.raises(ValueError, match="tp, fp, fn, tn"):
        cv.plot_confusion_grid(torch.ones(K, 3), NAMES)


def test_conditional_rates_rows_condition_on_the_given_concept():
    given = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]])
    outcome = torch.tensor([[1, 1], [0, 1], [0, 0], [1, 0]])
    rates = ac.conditional_rates(given, outcome)
    assert rates.tolist() == [[pytest.approx(2 / 3), pytest.approx(2 / 3)], [0.0, 0.5]]
    never = ac.conditional_rates(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]))
    assert torch.isnan(never[1]).all()
    with pytest.raises(ValueError, match="only 0 and 1"):
        ac.conditional_rates(given * 2, outcome)
    with pytest.raises(ValueError, match=r"both be \(N, K\)"):
        ac.conditional_rates(given, outcome[:3])


def test_plot_co_prediction_two_panels_with_colour_bars():
    labels = (torch.rand(50, K, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    fig = cv.plot_co_prediction(ac.conditional_rates(labels, labels.flip(1)), ac.conditional_rates(labels, labels),
                                NAMES)
    assert len(fig.axes) == 4  # two heatmaps, two colour bars
    assert all(ax.get_xlabel() == "concept j" for ax in fig.axes[:2])
    with pytest.raises(ValueError, match=r"\(K, K\)"):
        cv.plot_co_prediction(torch.zeros(K, K), torch.zeros(K, 2), NAMES)


# --------------------------------------------------------------------------- concept map
@pytest.mark.parametrize("pairing", ["mirror", "sequential"])
def test_plot_concept_map_draws_the_models_pairing(pairing):
    model = small_mcm(pairing, depth=6)
    fig = cv.plot_concept_map({pairing: model.concept_map}, model.cfg.depth)
    expected = {f"enc{i}->dec{j}" for j, pair in enumerate(model.concept_map) for i in pair}
    assert gids(fig) == expected
    assert fig.axes[0].get_title() == pairing


def test_plot_concept_map_mirror_and_sequential_differ():
    mirror = cv.plot_concept_map({"m": small_mcm("mirror").concept_map}, 4)
    sequential = cv.plot_concept_map({"s": small_mcm("sequential").concept_map}, 4)
    assert "enc3->dec0" in gids(mirror) and "enc0->dec0" in gids(sequential)
    assert gids(mirror) != gids(sequential)
    both = cv.plot_concept_map({"mirror": concept_map(4, "mirror"), "sequential": concept_map(4, "sequential")}, 4)
    assert titles(both) == ["mirror", "sequential"]


def test_plot_concept_map_bad_input():
    with pytest.raises(ValueError, match="encoder has layers 0..3"):
        cv.plot_concept_map({"x": [(4, 5)]}, 4)
    with pytest.raises(ValueError, match="non-empty dict"):
        cv.plot_concept_map({}, 4)
    with pytest.raises(ValueError, match="depth"):
        cv.plot_concept_map({"x": [(0, 1)]}, 0)


def test_every_figure_is_a_fresh_figure_with_a_title(images):
    figs = [
        cv.plot_attention_grid(images[:1], torch.rand(1, K, 16), PATCH, NAMES),
        cv.plot_similarity_matrices(np.eye(K)[None], NAMES, ["tokens"]),
        cv.plot_token_projection(torch.randn(6, K, 4), torch.ones(6, K), NAMES),
        cv.plot_concept_heatmap(np.ones((1, K)), ["layer 0"], NAMES, "t", "c"),
        cv.plot_confusion_grid(np.ones((K, 4), dtype=int), NAMES),
        cv.plot_co_prediction(np.eye(K), np.eye(K), NAMES),
        cv.plot_concept_map({"m": [(2, 3), (0, 1)]}, 4),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes)
