"""``pixel_loss="palette"``: per-pixel logits over a colour codebook, cross-entropy, expected colour as pixels."""
from __future__ import annotations

import math

import pytest
import torch

from mcm_core.batches import model_for_data
from mcm_core.checkpoint import load_checkpoint, save_checkpoint
from mcm_core.config import TrainConfig
from mcm_core.data import load_dataset
from mcm_core.evaluate.measures import PALETTE
from mcm_core.models import build_model
from mcm_core.models.pixel_head import palette_cross_entropy, palette_labels, palette_pixels

B, K = 3, PALETTE.shape[0]
COLOURS = PALETTE.tolist()


def make(name: str = "mcm", **overrides):
    torch.manual_seed(0)
    return build_model(name, "tiny", pixel_loss="palette", pixel_palette=COLOURS, **overrides)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("shapes", split="val", size=B).batch(range(B)).images


def test_labels_pick_the_nearest_colour_and_pixels_are_expected_colours():
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    pixels = torch.tensor([[0.1, 0.0, 0.0], [0.8, 0.1, 0.1], [0.9, 0.8, 0.9], [0.4, 0.0, 0.0]])  # 4 pixels
    patches = pixels.reshape(1, 1, 12)  # one patch of 2 x 2 pixels
    assert palette_labels(patches, palette).tolist() == [[[0, 1, 2, 0]]]
    sure = torch.full((1, 1, 4, 3), -30.0).scatter(-1, torch.tensor([2, 1, 0, 1]).view(1, 1, 4, 1), 30.0)
    assert torch.allclose(palette_pixels(sure.reshape(1, 1, 12), palette),
                          palette[[2, 1, 0, 1]].reshape(1, 1, 12))
    even = palette_pixels(torch.zeros(1, 1, 12), palette)  # uniform belief: the palette's mean colour
    assert torch.allclose(even, palette.mean(0).repeat(4).view(1, 1, 12))


def test_cross_entropy_is_log_k_when_unsure_and_falls_with_the_right_colour():
    palette = PALETTE
    patches = palette[torch.arange(16) % K].reshape(1, 1, 48)
    unsure = palette_cross_entropy(torch.zeros(1, 1, 16 * K), patches, palette)
    assert unsure.shape == (1, 1) and math.isclose(float(unsure), math.log(K), rel_tol=1e-6)
    right = torch.nn.functional.one_hot(torch.arange(16) % K, K).float().mul(10).reshape(1, 1, 16 * K)
    assert float(palette_cross_entropy(right, patches, palette)) < 1e-3


@pytest.mark.parametrize("name", ["mae", "mcm"])
def test_shapes_range_and_gradients(name, images):
    model = make(name)
    assert model.decoder_pred.out_features == 16 * K
    out = model(images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0),
                **({"concepts": torch.zeros(B, 13)} if name == "mcm" else {}))
    assert out.pred.shape == (B, 64, 48)
    assert out.pred.min() >= PALETTE.min() - 1e-6 and out.pred.max() <= PALETTE.max() + 1e-6  # inside the palette
    assert torch.isfinite(out.loss) and float(out.losses["recon"]) > 0
    out.loss.backward()
    assert torch.any(model.decoder_pred.weight.grad != 0)
    encoded = model.forward_encoder(images, 0.5, generator=torch.Generator().manual_seed(0))
    assert model.forward_decoder(encoded, raw=True).shape == (B, 64, 16 * K)
    assert torch.allclose(model.forward_decoder(encoded), model.to_pixels(model.forward_decoder(encoded, raw=True)))


def test_hidden_pixels_do_not_reach_the_prediction(images):
    model = make("mcm").eval()
    mask = torch.rand(B, 64, generator=torch.Generator().manual_seed(1)).argsort(1) < 32
    noise = torch.rand(B, 64, 48, generator=torch.Generator().manual_seed(2))
    other = model.unpatchify(torch.where(mask[..., None], noise, model.patchify(images)))
    with torch.no_grad():
        first = model.forward_decoder(model.forward_encoder(images, 0.5, mask=mask))
        second = model.forward_decoder(model.forward_encoder(other, 0.5, mask=mask))
    assert torch.equal(first, second)


def test_counterfactual_loss_is_a_cross_entropy(images):
    model = make("mcm", counterfactual_weight=1.0)
    encoded = model.forward_encoder(images, 0.5, generator=torch.Generator().manual_seed(0))
    states = torch.full((B, 13), -1, dtype=torch.long)
    with torch.no_grad():
        loss = model.counterfactual_loss(encoded, (images, states))
        plain = model.forward_loss(images, model.forward_decoder(encoded, raw=True), encoded.mask)
    assert math.isclose(float(loss), float(plain), rel_tol=1e-5)  # no edit: the reconstruction's own loss
    assert 0.5 * math.log(K) < float(loss) < 3 * math.log(K)  # nats per pixel at initialization


def test_scoring_pixels_instead_of_logits_names_the_fix(images):
    model = make("mae")
    encoded = model.forward_encoder(images, 0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="raw=True"):
        model.forward_loss(images, model.forward_decoder(encoded), encoded.mask)


def test_checkpoint_round_trip(tmp_path, images):
    model = make("mcm").eval()
    save_checkpoint(tmp_path / "palette.safetensors", model)
    loaded = load_checkpoint(tmp_path / "palette.safetensors")[0]
    assert loaded.cfg.pixel_loss == "palette" and torch.equal(loaded.palette, model.palette)
    mask = torch.rand(B, 64, generator=torch.Generator().manual_seed(1)).argsort(1) < 32
    with torch.no_grad():
        assert torch.equal(model.reconstruct(images, mask=mask)[0], loaded.reconstruct(images, mask=mask)[0])


def test_training_takes_the_palette_from_the_data():
    cfg = TrainConfig(method="mcm", steps=1, model={"pixel_loss": "palette"}, progress=False)
    model = model_for_data(cfg, load_dataset("shapes", split="val", size=4))
    assert model.palette.shape == (K, 3) and torch.allclose(model.palette, PALETTE)


def test_data_without_a_palette_names_the_fix():
    class Plain(torch.utils.data.Dataset):
        concept_names = ["a"]

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return torch.zeros(3, 32, 32), torch.zeros(1)

    cfg = TrainConfig(method="mae", steps=1, model={"pixel_loss": "palette"}, progress=False)
    with pytest.raises(ValueError, match="model.pixel_palette"):
        model_for_data(cfg, Plain())


@pytest.mark.parametrize("overrides,words", [
    ({"pixel_loss": "l1"}, "unknown pixel_loss"),
    ({"pixel_loss": "palette"}, "needs pixel_palette"),
    ({"pixel_loss": "palette", "pixel_palette": [[0.5, 0.5, 0.5]]}, "at least 2 colours"),
    ({"pixel_loss": "palette", "pixel_palette": [[0, 0, 2], [0, 0, 0]]}, r"in \[0, 1\]"),
    ({"pixel_loss": "palette", "pixel_palette": [[0, 0], [1, 1]]}, "3 values"),
    ({"pixel_loss": "palette", "pixel_palette": COLOURS, "pixel_head": "conv"}, "pixel_head='linear'"),
    ({"pixel_loss": "palette", "pixel_palette": COLOURS, "norm_pix_loss": True}, "norm_pix_loss=False"),
])
def test_bad_palette_settings_get_clear_errors(overrides, words):
    with pytest.raises(ValueError, match=words):
        build_model("mae", "tiny", **overrides)
