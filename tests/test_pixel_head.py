"""The decoder's pixel head: MAE's linear one, or the convolutional one of ``pixel_head="conv"``."""
from __future__ import annotations

import pytest
import torch

from mcm_core.models import build_model
from mcm_core.models.pixel_head import ConvPixelHead, grid_to_patches, patches_to_grid

B = 3


def make(name: str = "mcm", **overrides):
    torch.manual_seed(0)
    return build_model(name, "tiny", **overrides)


def wake(model) -> None:
    """Give the zero-initialized last convolution weights, as training would."""
    torch.nn.init.normal_(model.decoder_pred.out.weight, std=0.05)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_grid_helpers_are_patchify_and_its_inverse(images):
    model = make("mae")
    patches = model.patchify(images)
    assert torch.equal(patches_to_grid(patches, 4, (8, 8), 3), images)
    assert torch.equal(grid_to_patches(images, 4, (8, 8)), patches)


def test_linear_is_the_default_and_conv_starts_as_the_linear_head():
    assert isinstance(make("mae").decoder_pred, torch.nn.Linear)
    head = make("mcm", pixel_head="conv").decoder_pred
    assert isinstance(head, ConvPixelHead)
    tokens = torch.randn(B, 64, 64)
    assert torch.equal(head(tokens), head.linear(tokens))  # the residual starts at exactly zero


@pytest.mark.parametrize("name,context", [("mae", False), ("mcm", False), ("mcm", True)])
def test_conv_head_shapes_and_gradients(name, context, images):
    model = make(name, pixel_head="conv", pixel_head_context=context, pixel_head_layers=4)
    wake(model)
    out = model(images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (B, 64, 48)
    out.loss.backward()
    head = {n: p for n, p in model.named_parameters() if n.startswith("decoder_pred.")}
    assert len(head) == 2 + 2 + 2 * 3 + 2  # linear, expand, three body convolutions, out
    missing = [n for n, p in head.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_receptive_field_crosses_patch_borders(images):
    model = make("mae", pixel_head="conv")
    wake(model)
    head = model.decoder_pred
    tokens = torch.randn(1, 64, 64)
    changed = tokens.clone()
    changed[0, 9] += 1.0  # the patch at grid row 1, column 1
    diff = (head(changed) - head(tokens)).abs().sum(-1)[0].view(8, 8)
    assert diff[1, 2] > 0 and diff[2, 1] > 0  # neighbours see it
    assert diff[5, 5] == 0  # far patches do not


def test_context_head_cannot_see_hidden_pixels(images):
    model = make("mcm", pixel_head="conv", pixel_head_context=True, pixel_head_layers=4).eval()
    wake(model)
    mask = torch.rand(B, 64, generator=torch.Generator().manual_seed(1)).argsort(1) < 32
    noise = torch.rand(B, 64, 48, generator=torch.Generator().manual_seed(2))
    other = model.unpatchify(torch.where(mask[..., None], noise, model.patchify(images)))
    with torch.no_grad():
        encoded = model.forward_encoder(images, 0.5, mask=mask)
        assert torch.all(encoded.visible_pixels[mask] == 0)
        first = model.forward_decoder(encoded)
        second = model.forward_decoder(model.forward_encoder(other, 0.5, mask=mask))
    assert torch.equal(first, second)
    assert model.forward_encoder(images, 0.5, mask=mask).visible_pixels is not None
    assert make("mcm", pixel_head="conv").forward_encoder(images, 0.5, mask=mask).visible_pixels is None


def test_edits_reach_the_pixels_through_the_conv_head(images):
    model = make("mcm", pixel_head="conv", pixel_head_context=True).eval()
    wake(model)
    mask = torch.rand(B, 64, generator=torch.Generator().manual_seed(1)).argsort(1) < 48
    plain = model.edit(images, {3: 0}, mask=mask)
    edited = model.edit(images, {3: 1}, mask=mask)
    assert not torch.allclose(plain, edited)
    shown = ~model.unpatchify(mask[..., None].expand(-1, -1, 48).float()).bool()  # (B, 3, H, W)
    assert torch.equal(edited[shown], images[shown])  # visible pixels are the input's


@pytest.mark.parametrize("overrides,words", [
    ({"pixel_head": "unet"}, "unknown pixel_head"),
    ({"pixel_head": "conv", "pixel_head_layers": 0}, "pixel_head_layers"),
    ({"pixel_head": "conv", "pixel_head_channels": 0}, "pixel_head_channels"),
    ({"pixel_head_context": True}, "needs pixel_head='conv'"),
])
def test_bad_pixel_head_settings_get_clear_errors(overrides, words):
    with pytest.raises(ValueError, match=words):
        make("mcm", **overrides)


def test_context_head_without_visible_pixels_names_the_fix(images):
    model = make("mcm", pixel_head="conv", pixel_head_context=True).eval()
    encoded = model.forward_encoder(images, 0.5)
    encoded.visible_pixels = None  # an encoder output built by hand
    with pytest.raises(ValueError, match="forward_encoder"):
        model.forward_decoder(encoded)
