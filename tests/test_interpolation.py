"""Mask-ratio interpolation (mcm_core.analysis.interpolation; its figures, mcm_core.viz.interpolation):
invariants, the widget's whole range, errors.

A small untrained MCM (16 px, 16 patches, 5 concepts) keeps every test fast; what is
checked holds for any weights: visible patches are copied, ratio 0 reproduces the input,
masks nest, the measured curve agrees with ``evaluate.edit_success_rate``.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mcm_core.analysis import interpolation as mi
from mcm_core.evaluate import edit_success_rate
from mcm_core.masking import mask_noise, nested_mask, num_hidden, random_mask
from mcm_core.models import build_model
from mcm_core.viz import interpolation as vi

N, K, L, P, S = 6, 5, 16, 4, 16
NAMES = ["red", "green", "blue", "large", "dark"]
SLIDER = [round(0.05 * i, 2) for i in range(20)]  # the widget's slider: 0 .. 0.95 in steps of 0.05


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_model(name: str = "mcm", **overrides):
    torch.manual_seed(0)
    return build_model(name, "tiny", img_size=S, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                       decoder_num_heads=2, **({"num_concepts": K, "concept_names": NAMES} if name == "mcm" else {}),
                       **overrides)


@pytest.fixture(scope="module")
def model():
    return small_model().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(N, 3, S, S, generator=seeded(0)) * 0.5 + 0.25  # in [0.25, 0.75]


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.randint(0, 2, (N, K), generator=seeded(1)).float()


def patches_where(model, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The patches (M, p*p*3) of ``images`` at the True positions of ``mask`` (N, L)."""
    return model.patchify(images)[mask]


# --------------------------------------------------------------------------- states and masks
def test_concept_states_accept_lists_dicts_and_tensors():
    assert mi.concept_states([-1, 0, 1, -1, 1], K, 2).tolist() == [[-1, 0, 1, -1, 1]] * 2
    assert mi.concept_states({2: 1, 0: 0}, K, 1).tolist() == [[0, -1, 1, -1, -1]]
    per_image = torch.tensor([[1, -1, -1, -1, -1], [-1, -1, -1, -1, 0]])
    assert torch.equal(mi.concept_states(per_image, K, 2), per_image)
    assert mi.describe_states({2: 1, 0: 0}, NAMES) == "red=0, blue=1"
    assert mi.describe_states([-1] * K, NAMES) == "no edit"


@pytest.mark.parametrize("states, message", [
    ([-1] * (K - 1), "got 4 concept states but the model has 5 concepts"),
    ([-1] * (K + 1), "got 6 concept states but the model has 5 concepts"),
    ([2, -1, -1, -1, -1], "must be -1 \\(leave the concept alone\\), 0 or 1"),
    ({K: 1}, "concept index 5 out of range"),
    (torch.zeros(3, K), "shape"),
])
def test_concept_states_reject_bad_input(states, message):
    with pytest.raises(ValueError, match=message):
        mi.concept_states(states, K, 2)


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), True, "0.5", None])
def test_mask_ratio_outside_zero_one_is_an_error(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        mi.check_mask_ratio(ratio)


def test_nested_masks_grow_with_the_ratio_over_the_slider_range():
    noise = mask_noise(N, L, seeded(3))
    masks = [nested_mask(noise, r) for r in SLIDER]
    for r, mask in zip(SLIDER, masks):
        assert mask.dtype == torch.bool and mask.shape == (N, L)
        assert (mask.sum(1) == num_hidden(L, r)).all()
    for low, high in zip(masks, masks[1:]):
        assert not (low & ~high).any()  # every patch hidden at a lower ratio stays hidden


def test_mask_noise_draws_like_random_mask():
    assert torch.equal(nested_mask(mask_noise(N, L, seeded(5)), 0.5), random_mask(N, L, 0.5, generator=seeded(5)))


# --------------------------------------------------------------------------- one view
def test_interpolate_shapes_and_what_it_may_change(model, images):
    noise = mask_noise(N, L, seeded(0))
    view = mi.interpolate(model, images, 0.5, {0: 1, 3: 0}, noise)
    assert view.reconstruction.shape == view.edited.shape == images.shape
    assert view.mask.shape == (N, L) and view.states.shape == (N, K) and view.mask_ratio == 0.5
    visible = ~view.mask
    assert torch.equal(patches_where(model, view.edited, visible), patches_where(model, images, visible))
    assert torch.equal(patches_where(model, view.reconstruction, visible), patches_where(model, images, visible))
    assert not torch.equal(view.edited, view.reconstruction)  # the edit reaches the hidden patches


def test_decode_edited_is_model_edit(model, images):
    noise = mask_noise(N, L, seeded(0))
    view = mi.interpolate(model, images, 0.75, [1, -1, 0, -1, 1], noise)
    expected = model.edit(images, {0: 1, 2: 0, 4: 1}, mask=view.mask)
    torch.testing.assert_close(view.edited, expected)


@pytest.mark.parametrize("ratio", SLIDER)
def test_every_slider_value_gives_a_consistent_view_and_figure(model, images, ratio):
    noise = mask_noise(2, L, seeded(1))
    view = mi.interpolate(model, images[:2], ratio, [-1] * K, noise)
    assert (view.mask.sum(1) == num_hidden(L, ratio)).all()
    torch.testing.assert_close(view.edited, view.reconstruction)  # all kept: the edit is the reconstruction
    if ratio == 0:
        assert torch.equal(view.reconstruction, images[:2])  # nothing hidden: the input itself
    fig = vi.plot_interpolation(view, P, NAMES, titles=["a", "b"])
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 2  # input, visible, reconstruction, edited
    assert f"{num_hidden(L, ratio)}/{L} hidden" in fig.get_suptitle()


@pytest.mark.parametrize("concept", range(K))
def test_every_toggle_state_of_every_concept(model, images, concept):
    noise = mask_noise(2, L, seeded(2))
    outputs = {}
    for state in (mi.KEEP, 0, 1):
        states = [mi.KEEP] * K
        states[concept] = state
        view = mi.interpolate(model, images[:2], 0.75, states, noise)
        assert view.states[:, concept].tolist() == [state, state]
        fig = vi.plot_interpolation(view, P, NAMES)
        assert ("no edit" if state == mi.KEEP else f"{NAMES[concept]}={state}") in fig.get_suptitle()
        outputs[state] = view.edited
    assert not torch.equal(outputs[0], outputs[1])  # the two states write different tokens


def test_interpolate_is_deterministic_given_the_noise(model, images):
    a = mi.interpolate(model, images, 0.5, {1: 1}, mask_noise(N, L, seeded(7)))
    b = mi.interpolate(model, images, 0.5, {1: 1}, mask_noise(N, L, seeded(7)))
    c = mi.interpolate(model, images, 0.5, {1: 1}, mask_noise(N, L, seeded(8)))
    assert torch.equal(a.edited, b.edited) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)


def test_interpolate_restores_train_mode(images):
    model = small_model().train()
    mi.interpolate(model, images, 0.5, {}, mask_noise(N, L, seeded()))
    assert model.training


def test_interpolate_errors_name_the_problem(model, images):
    noise = mask_noise(N, L, seeded())
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        mi.interpolate(model, images, 1.0, {}, noise)
    with pytest.raises(ValueError, match="got 4 concept states but the model has 5 concepts"):
        mi.interpolate(model, images, 0.5, [1, 0, 1, 0], noise)
    with pytest.raises(ValueError, match=r"noise must have shape \(B, L\) = \(6, 16\)"):
        mi.interpolate(model, images, 0.5, {}, noise[:2])
    with pytest.raises(TypeError, match="concept edits need"):
        mi.interpolate(small_model("mae"), images, 0.5, {}, noise)
    with pytest.raises(ValueError, match="norm_pix_loss"):
        mi.interpolate(small_model(norm_pix_loss=True), images, 0.5, {}, noise)
    view = mi.interpolate(model, images, 0.5, {}, noise)
    with pytest.raises(ValueError, match="got 2 concept names for 5 concept states"):
        vi.plot_interpolation(view, P, NAMES[:2])


# --------------------------------------------------------------------------- the grid
def test_edit_grid_rows_nest_and_ratio_zero_is_the_input(model, images):
    ratios = [0.0, 0.25, 0.5, 0.9]
    edits = {"no edit": {}, "red on": {0: 1}, "large off": {3: 0}}
    grid = mi.edit_grid(model, images[0], ratios, edits, mask_noise(1, L, seeded(4)))
    assert grid.outputs.shape == (4, 3, 3, S, S) and grid.masks.shape == (4, L)
    assert grid.labels == list(edits) and grid.states.shape == (3, K)
    assert all(torch.equal(grid.outputs[0, j], images[0]) for j in range(3))
    assert not (grid.masks[:-1] & ~grid.masks[1:]).any()
    no_edit = mi.interpolate(model, images[:1], 0.5, {}, mask_noise(1, L, seeded(4)))
    torch.testing.assert_close(grid.outputs[2, 0], no_edit.reconstruction[0])  # a cell is one interpolate call
    fig = vi.plot_edit_grid(grid, P)
    assert len(fig.axes) == 4 * 4  # a visible column + 3 edits, 4 ratios
    assert [fig.axes[j].get_title() for j in range(4)] == ["visible", "no edit", "red on", "large off"]


def test_edit_grid_errors(model, images):
    noise = mask_noise(1, L, seeded())
    with pytest.raises(ValueError, match="one image"):
        mi.edit_grid(model, images[:2], [0.5], {"x": {}}, noise)
    with pytest.raises(ValueError, match="ratios is empty"):
        mi.edit_grid(model, images[0], [], {"x": {}}, noise)
    with pytest.raises(ValueError, match="edits must be a non-empty dict"):
        mi.edit_grid(model, images[0], [0.5], {}, noise)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        mi.edit_grid(model, images[0], [0.5, 1.0], {"x": {}}, noise)


# --------------------------------------------------------------------------- the curve
def test_curve_matches_edit_success_rate(model, images, labels):
    curve = mi.measure_interpolation(model, images, labels, [0.5], concept_indices=[0, 2, 4], generator=seeded(9))
    reference = edit_success_rate(model, images, labels, mask_ratio=0.5, generator=seeded(9), concept_indices=[0, 2, 4])
    np.testing.assert_allclose(curve.edit_success_per_concept[0], reference["per_concept"])
    assert curve.edit_success[0] == pytest.approx(reference["rate"])


def test_curve_shapes_and_ratio_zero(model, images, labels):
    ratios = [0.0, 0.3, 0.6, 0.9]
    curve = mi.measure_interpolation(model, images, labels, ratios, generator=seeded(0))
    assert curve.ratios == ratios and curve.concept_indices == list(range(K)) and curve.num_images == N
    assert curve.edit_success_per_concept.shape == (4, K)
    for values in (curve.input_distance, curve.edit_distance, curve.edit_success, curve.concepts_kept):
        assert values.shape == (4,) and ((values >= 0) & (values <= 1)).all()
    assert curve.input_distance[0] == 0 and curve.edit_distance[0] == 0  # nothing hidden, nothing generated
    assert (curve.input_distance[1:] > 0).all()
    # At ratio 0 an edit cannot change the image: success = the model misreading the input.
    logits = model.predict_concepts(images)
    misread = ((logits > 0).float() != labels).double().mean(0).numpy()
    np.testing.assert_allclose(curve.edit_success_per_concept[0], misread)
    np.testing.assert_allclose(curve.concepts_kept[0], 1 - misread.mean())


def test_curve_is_deterministic_and_independent_of_batch_size(model, images, labels):
    a = mi.measure_interpolation(model, images, labels, [0.25, 0.75], [1, 3], generator=seeded(4), batch_size=256)
    b = mi.measure_interpolation(model, images, labels, [0.25, 0.75], [1, 3], generator=seeded(4), batch_size=4)
    for field in ("input_distance", "edit_distance", "edit_success_per_concept", "concepts_kept"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-7)
    c = mi.measure_interpolation(model, images, labels, [0.25, 0.75], [1, 3], generator=seeded(5))
    assert not np.allclose(a.input_distance, c.input_distance)  # another seed, other masks


def test_curve_errors_name_the_problem(model, images, labels):
    with pytest.raises(ValueError, match=r"labels must have shape \(N, K\) = \(6, 5\)"):
        mi.measure_interpolation(model, images, labels[:, :4], [0.5])
    with pytest.raises(ValueError, match="ratios is empty"):
        mi.measure_interpolation(model, images, labels, [])
    with pytest.raises(ValueError, match=r"each ratio must be in \[0, 1\), got 1.0"):
        mi.measure_interpolation(model, images, labels, [0.5, 1.0])
    with pytest.raises(ValueError, match="concept_indices"):
        mi.measure_interpolation(model, images, labels, [0.5], concept_indices=[K])
    with pytest.raises(ValueError, match="only 0 and 1"):
        mi.measure_interpolation(model, images, labels * 0.5, [0.5])
    with pytest.raises(ValueError, match="batch_size"):
        mi.measure_interpolation(model, images, labels, [0.5], batch_size=0)


def test_plot_curve(model, images, labels):
    curve = mi.measure_interpolation(model, images, labels, [0.0, 0.5, 0.9], [0, 3], generator=seeded())
    fig = vi.plot_interpolation_curve(curve, NAMES)
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == "test-time mask ratio"
    np.testing.assert_allclose(left.lines[0].get_ydata(), curve.input_distance)
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert legend[:2] == ["red", "large"] and "edit success (mean)" in legend
    with pytest.raises(ValueError, match="pass all K names"):
        vi.plot_interpolation_curve(curve, NAMES[:2])
