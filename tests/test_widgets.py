"""The interpolation widget (mcm_core.workbook.widgets): its callbacks re-render, it shows as a widget.

No kernel is needed: setting a control's ``.value`` runs its observers synchronously, and
the figure is written into the ``Output`` widget's ``outputs`` as one PNG item.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import base64

import pytest
import torch

from mcm_core.analysis import interpolation as mi
from mcm_core.masking import num_hidden
from mcm_core.models import build_model
from mcm_core.viz.interpolation import plot_interpolation
from mcm_core.workbook.widgets import InterpolationWidget, figure_png

K, L, S = 4, 16, 16
NAMES = ["red", "blue", "large", "dark"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("mcm", "tiny", img_size=S, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                       decoder_num_heads=2, num_concepts=K, concept_names=NAMES).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(0))


def shown_png(widget: InterpolationWidget) -> bytes:
    """The PNG the output area shows now (exactly one item)."""
    (item,) = widget.output.outputs
    return base64.b64decode(item["data"]["image/png"])


def test_first_render_shows_one_png_of_the_view(model, images):
    w = InterpolationWidget(model, images, mask_ratio=0.5, seed=3)
    assert w.renders == 1 and w.error is None
    assert shown_png(w) == figure_png(w.figure)
    assert w.view.mask_ratio == 0.5 and w.states == [mi.KEEP] * K
    assert [t.description for t in w.toggles] == NAMES  # one toggle per concept, named from the model


def test_slider_callback_re_renders_over_its_whole_range(model, images):
    w = InterpolationWidget(model, images, mask_ratio=0.0, max_ratio=0.95, ratio_step=0.05)
    values = [round(w.slider.min + i * w.slider.step, 2) for i in range(20)]
    assert values[-1] == w.slider.max
    previous = shown_png(w)
    for i, value in enumerate(values[1:], start=2):
        w.slider.value = value  # runs the observer, as a drag in the browser does
        assert w.renders == i and len(w.output.outputs) == 1  # replaced, not appended
        assert (w.view.mask.sum(1) == num_hidden(L, value)).all()
        png = shown_png(w)
        if num_hidden(L, value) != num_hidden(L, values[i - 2]):
            assert png != previous  # more hidden patches: a different picture
        previous = png


def test_every_toggle_state_re_renders_the_edit(model, images):
    w = InterpolationWidget(model, images, mask_ratio=0.75)
    for k, toggle in enumerate(w.toggles):
        before = shown_png(w)
        for state in (0, 1):
            toggle.value = state
            assert w.states[k] == state and (w.view.states[:, k] == state).all()
            assert f"{NAMES[k]}={state}" in w.figure.get_suptitle()
            assert shown_png(w) != before
            before = shown_png(w)
        toggle.value = mi.KEEP
        assert torch.equal(w.view.edited, w.view.reconstruction)  # all kept again: no edit
    assert w.renders == 1 + 3 * K and w.error is None


def test_the_view_is_the_pure_function_of_the_controls(model, images):
    w = InterpolationWidget(model, images, mask_ratio=0.6, seed=4)
    w.toggles[1].value = 1
    expected = mi.interpolate(model, images, 0.6, [mi.KEEP, 1, mi.KEEP, mi.KEEP], w.noise)
    assert torch.equal(w.view.edited, expected.edited)
    assert figure_png(w.figure) == figure_png(plot_interpolation(expected, model.cfg.patch_size, NAMES))


def test_resample_button_draws_a_new_mask_deterministically(model, images):
    a = InterpolationWidget(model, images, mask_ratio=0.5, seed=1)
    b = InterpolationWidget(model, images, mask_ratio=0.5, seed=1)
    assert shown_png(a) == shown_png(b)  # same seed, same picture
    first_mask = a.view.mask.clone()
    a.resample.click()  # runs the on_click handler
    assert a.resamples == 1 and a.renders == 2
    assert not torch.equal(a.view.mask, first_mask) and shown_png(a) != shown_png(b)
    assert (a.view.mask.sum(1) == num_hidden(L, 0.5)).all()
    b.resample.click()
    assert torch.equal(a.view.mask, b.view.mask) and shown_png(a) == shown_png(b)


def test_shows_as_a_widget_not_text(model, images):
    w = InterpolationWidget(model, images)
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == w.widget.model_id
    assert w.output in w.widget.children and w.slider in w.widget.children[0].children


def test_a_failing_callback_shows_its_error(model, images):
    w = InterpolationWidget(model, images)
    w.noise = torch.rand(1, 5)  # a broken state: the next render cannot work
    w.slider.value = 0.25
    assert w.error is not None and "noise must have shape" in w.error
    (item,) = w.output.outputs
    assert item["output_type"] == "stream" and "noise must have shape" in item["text"]
    w.noise = w.draw_noise()
    w.slider.value = 0.3
    assert w.error is None and shown_png(w) == figure_png(w.figure)


def test_bad_arguments_name_the_problem(model, images):
    with pytest.raises(ValueError, match="above the slider's max_ratio"):
        InterpolationWidget(model, images, mask_ratio=0.9, max_ratio=0.8)
    with pytest.raises(ValueError, match=r"max_ratio must be in \[0, 1\)"):
        InterpolationWidget(model, images, max_ratio=1.0)
    with pytest.raises(ValueError, match="got 2 concept names but the model has 4 concepts"):
        InterpolationWidget(model, images, concept_names=["a", "b"])
    with pytest.raises(TypeError, match="concept edits need"):
        InterpolationWidget(build_model("mae", "tiny", img_size=S), images)
