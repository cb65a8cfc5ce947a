"""Exporting the encoder to a timm VisionTransformer."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcm_core.export import export_timm
from mcm_core.models import build_model



@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def make(name: str):
    torch.manual_seed(0)
    return build_model(name, "tiny").eval()


@pytest.mark.parametrize("name", ["mae", "mcm"])
def test_export_reproduces_the_encoder(name, images):
    model = make(name)
    vit = export_timm(model).eval()
    assert isinstance(vit, VisionTransformer)
    with torch.no_grad():
        ours = model.encoder.forward_features(images)
        theirs = vit.forward_features(images)
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        pooled = vit.forward_head(theirs, pre_logits=True)
        torch.testing.assert_close(pooled, model.features(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(vit(images), model.features(images), atol=1e-5, rtol=0)


def test_export_has_the_encoder_sizes_and_fixed_positions():
    model = make("mcm")
    vit = export_timm(model)
    assert vit.num_classes == 0 and vit.global_pool == "token" and vit.cls_token is not None
    assert len(vit.blocks) == model.cfg.depth and vit.embed_dim == model.cfg.embed_dim
    torch.testing.assert_close(vit.pos_embed.detach(), model.encoder.pos_embed)
    assert not any("concept" in key for key in vit.state_dict())  # concept blocks are not exported


def test_export_copies_current_weights_and_does_not_share_them(images):
    model = make("mae")
    with torch.no_grad():
        model.encoder.blocks[2].mlp.fc1.weight[0, 0] += 1.0
    vit = export_timm(model).eval()
    torch.testing.assert_close(vit.blocks[2].mlp.fc1.weight, model.encoder.blocks[2].mlp.fc1.weight)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(images), model.encoder.forward_features(images),
                                   atol=1e-5, rtol=0)
        vit.blocks[0].attn.qkv.weight.zero_()
    assert model.encoder.blocks[0].attn.qkv.weight.abs().sum() > 0  # a copy, not a view


def test_export_rejects_models_without_an_encoder():
    with pytest.raises(TypeError, match="no ViTEncoder"):
        export_timm(torch.nn.Linear(2, 2))
