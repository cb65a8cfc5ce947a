"""Behaviour of the backbone, MAE and MCM at the tiny preset."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mcm_core.models import build_model, make_config, model_names
from mcm_core.models.backbone import check_images, sincos_pos_embed
from mcm_core.models.mcm import concept_map

B, K = 4, 13


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.randint(0, 2, (B, K), generator=torch.Generator().manual_seed(1)).float()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, "tiny", **overrides)


# ---------------------------------------------------------------- registry and presets
def test_registry_lists_methods_and_rejects_unknown_names():
    assert {"mae", "mcm"} <= set(model_names())
    with pytest.raises(ValueError, match="valid names"):
        build_model("maee")
    with pytest.raises(ValueError, match="valid presets"):
        build_model("mae", "huge")
    with pytest.raises(TypeError, match="unknown option"):
        build_model("mae", mask_ration=0.5)


def test_presets_have_the_documented_sizes():
    tiny = make_config("mae", "tiny")
    assert (tiny.img_size, tiny.patch_size, tiny.num_patches) == (32, 4, 64)
    base = make_config("mae", "base")
    assert (base.img_size, base.patch_size, base.embed_dim, base.depth, base.decoder_depth) == (224, 16, 768, 12, 8)
    assert make_config("mcm", "base").decoder_depth == 6  # MCM's decoder is half as deep
    large = make_config("mae", "large")  # ViT-L/16 with MAE-L's 8 x 512 decoder
    assert (large.img_size, large.patch_size, large.embed_dim, large.depth, large.num_heads) == (224, 16, 1024, 24, 16)
    assert (large.decoder_embed_dim, large.decoder_depth, large.decoder_num_heads) == (512, 8, 16)
    assert make_config("mcm", "large").decoder_depth == 12


def test_large_preset_is_vit_l16():
    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_model("mae", "large")
    # timm's vit_large_patch16_224 has 304,326,632 parameters: minus its 1000-class head and its
    # learned position embedding (ours is a fixed sin-cos buffer), the same encoder.
    assert sum(p.numel() for p in model.encoder.parameters()) == 304_326_632 - (1024 * 1000 + 1000) - 197 * 1024


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        make_config("mae", img_size=30)
    with pytest.raises(ValueError, match="half as deep"):
        make_config("mcm", decoder_depth=2)
    with pytest.raises(ValueError, match="unknown pairing"):
        make_config("mcm", pairing="zigzag")


def test_sincos_pos_embed_is_fixed_and_distinct():
    emb = sincos_pos_embed(64, (8, 8))
    assert emb.shape == (65, 64)
    assert torch.all(emb[0] == 0)
    assert torch.unique(emb[1:], dim=0).shape[0] == 64


# ---------------------------------------------------------------- patches and shapes
@pytest.mark.parametrize("name", ["mae", "mcm"])
def test_patchify_round_trip_and_layout(name, images):
    model = make(name)
    patches = model.patchify(images)
    assert patches.shape == (B, 64, 4 * 4 * 3)
    assert torch.equal(model.unpatchify(patches), images)
    # patch 1 is the second patch of the first row: pixels [0:4, 4:8]
    assert torch.equal(patches[0, 1].reshape(4, 4, 3), images[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_mae_shapes(images):
    model = make("mae")
    enc = model.forward_encoder(images, 0.75, generator=seeded())
    assert enc.tokens.shape == (B, 1 + 16, 128)
    assert enc.mask.dtype == torch.bool and enc.mask.shape == (B, 64)
    assert torch.all(enc.mask.sum(1) == 48)
    assert enc.ids_restore.shape == (B, 64)
    assert model.forward_decoder(enc).shape == (B, 64, 48)
    out = model(images, mask_ratio=0.75, generator=seeded())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.losses) == {"recon"}


def test_mcm_shapes(images, labels):
    model = make("mcm")
    enc = model.forward_encoder(images, 0.5, generator=seeded())
    assert len(enc.concepts) == 6
    assert all(c.shape == (B, K, 128) for c in enc.concepts)
    out = model(images, mask_ratio=0.5, concepts=labels, generator=seeded())
    assert out.pred.shape == (B, 64, 48)
    assert out.concept_logits.shape == (B, K)
    assert set(out.losses) == {"recon", "concept"}
    assert model.concept_tokens.shape == (K, 128)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,overrides", [
    ("mae", {}),
    ("mcm", {}),
    ("mcm", {"concept_head": "linear", "merge": "mean", "pairing": "sequential"}),
    ("mcm", {"disentangle_weight": 0.5}),
])
def test_every_parameter_receives_a_gradient(name, overrides, images, labels):
    model = make(name, **overrides)
    out = model(images, mask_ratio=0.5, concepts=labels, generator=seeded())
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_reconstruction_loss_ignores_visible_patches(images):
    model = make("mae")
    mask = torch.zeros(B, 64, dtype=torch.bool)
    mask[:, ::2] = True
    pred = torch.rand(B, 64, 48, requires_grad=True)
    loss = model.forward_loss(images, pred, mask)
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0)
    assert torch.all(pred.grad[mask].abs().sum(-1) > 0)
    changed = pred.detach().clone()
    changed[~mask] = 123.0
    assert torch.equal(model.forward_loss(images, changed, mask), loss.detach())


def test_mask_ratio_zero_scores_every_patch(images):
    model = make("mae")
    mask = torch.zeros(B, 64, dtype=torch.bool)
    pred = torch.rand(B, 64, 48)
    expected = ((pred - model.patchify(images)) ** 2).mean()
    assert torch.allclose(model.forward_loss(images, pred, mask), expected)
    out = model(images, mask_ratio=0.0)
    assert not out.mask.any()


def test_norm_pix_loss_uses_normalized_targets(images):
    model = make("mae", norm_pix_loss=True)
    target = model.loss_target(images)
    assert torch.allclose(target.mean(-1), torch.zeros(B, 64), atol=1e-5)


def test_concept_tokens_learn_from_reconstruction_alone(images):
    model = make("mcm")
    out = model(images, mask_ratio=0.5, generator=seeded())  # no concept labels
    assert set(out.losses) == {"recon"}
    out.loss.backward()
    assert model.concept_tokens.grad is not None and model.concept_tokens.grad.abs().sum() > 0
    assert model.state_embed.grad is None  # the concept head was not involved


def test_concept_snapshots_do_not_depend_on_other_concepts(images):
    model = make("mcm").eval()
    mask = model.make_mask(images, 0.5, seeded())
    before = model.forward_encoder(images, mask=mask).concepts
    with torch.no_grad():
        model.concept_tokens[3] += 5.0
    after = model.forward_encoder(images, mask=mask).concepts
    others = [k for k in range(K) if k != 3]
    for a, b in zip(before, after):
        assert torch.allclose(a[:, others], b[:, others], atol=1e-6)
        assert not torch.allclose(a[:, 3], b[:, 3])


# ---------------------------------------------------------------- masks
def test_masks_reproducible_with_generator_and_fresh_without(images):
    model = make("mae")
    a = model.forward_encoder(images, 0.75, generator=seeded(7)).mask
    b = model.forward_encoder(images, 0.75, generator=seeded(7)).mask
    c = model.forward_encoder(images, 0.75).mask
    d = model.forward_encoder(images, 0.75).mask
    assert torch.equal(a, b)
    assert not torch.equal(c, d)


def test_external_mask_replaces_random_one(images):
    model = make("mcm")
    mask = torch.zeros(B, 64, dtype=torch.bool)
    mask[:, 32:] = True  # bottom half hidden
    enc = model.forward_encoder(images, mask=mask)
    assert torch.equal(enc.mask, mask)
    assert torch.equal(enc.ids_keep, torch.arange(32).expand(B, -1))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model.forward_encoder(images, mask=mask.float())


def test_bad_images_get_clear_errors():
    model = make("mae")
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["mae", "mcm", "micl", "latent_mim", "supervised"])
def test_cpu_models_check_image_values(name, images, labels):
    """On a CPU every model call checks pixel values, as it checks concept values; never off the CPU."""
    model = make(name)
    pixels = images * 255  # 0..255, not divided
    normalised = (images - 0.45) / 0.225  # ImageNet-style mean / std
    broken = images.clone()
    broken[1, 2, 3, 4] = float("nan")
    infinite = images.clone()
    infinite[0, 0, 0, 0] = float("inf")
    calls = [model.features]
    if name in ("mae", "mcm"):
        calls.append(lambda x: model(x, mask_ratio=0.5, concepts=labels if name == "mcm" else None))
    for call in calls:
        with pytest.raises(ValueError, match=r"images must be in \[0, 1\], got values in \[0\.\d+, 25.*"
                                             r"images\.float\(\) / 255"):
            call(pixels)
        with pytest.raises(ValueError, match=r"got values in \[-2.*images \* std \+ mean"):
            call(normalised)
        for bad in (broken, infinite):
            with pytest.raises(ValueError, match="1 NaN or infinite values"):
                call(bad)
    rounded = images.clone()
    rounded[0, 0, 0, :2] = torch.tensor([-5e-4, 1 + 5e-4])  # float rounding of an un-normalisation passes
    model.features(rounded)
    model.features(images.to(torch.bfloat16).float())
    with pytest.raises(ValueError, match=r"got values in \[0.*, 2\]; scale them into \[0, 1\]"):
        model.features(images * 2)
    check_images(torch.empty(B, 3, 32, 32, device="meta"), model.cfg)  # off the CPU: nothing is read back


def count_flops(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["mae", "mcm"])
def test_encoder_flops_fall_with_mask_ratio(name, images):
    model = make(name)
    flops = [count_flops(lambda r=r: model.forward_encoder(images, r, generator=seeded())) for r in (0.0, 0.25, 0.5, 0.75)]
    assert all(a > b for a, b in zip(flops, flops[1:])), flops
    assert flops[-1] < 0.4 * flops[0]


# ---------------------------------------------------------------- MCM specifics
def test_concept_map_pairings():
    assert concept_map(6, "mirror") == [(4, 5), (2, 3), (0, 1)]
    assert concept_map(6, "sequential") == [(0, 1), (2, 3), (4, 5)]
    assert make("mcm").concept_map == [(4, 5), (2, 3), (0, 1)]


def test_attention_maps_are_available(images):
    model = make("mcm").eval()
    enc = model.forward_encoder(images, 0.5, generator=seeded(), return_attention=True)
    assert len(enc.attention) == 6
    assert enc.attention[0].shape == (B, 4, K, 32)  # concept -> visible patch
    assert torch.allclose(enc.attention[0].sum(-1), torch.ones(B, 4, K), atol=1e-5)
    pred, dec_attn = model.decode(enc, return_attention=True)
    assert len(dec_attn) == 3 and dec_attn[0].shape == (B, 2, 64, 2 * K)  # patch -> concept
    assert torch.allclose(pred, model.forward_decoder(enc), atol=1e-5)
    # the attention-returning path computes the same tokens as the fused one
    fused = model.forward_encoder(images, mask=enc.mask)
    assert torch.allclose(fused.concepts[-1], enc.concepts[-1], atol=1e-5)


def test_editing_a_concept_changes_the_reconstruction(images):
    model = make("mcm").eval()
    mask = model.make_mask(images, 0.75, seeded())
    plain = model.edit(images, {}, mask=mask)
    on = model.edit(images, {0: 1}, mask=mask)
    off = model.edit(images, {0: 0}, mask=mask)
    assert on.shape == images.shape
    assert not torch.allclose(on, off)
    visible = ~mask
    # visible patches come from the input in every case
    assert torch.equal(model.patchify(on)[visible], model.patchify(images)[visible])
    assert torch.equal(model.patchify(plain)[visible], model.patchify(images)[visible])


def test_edit_rejects_bad_requests(images):
    model = make("mcm")
    with pytest.raises(ValueError, match="out of range"):
        model.edit(images, {99: 1})
    with pytest.raises(ValueError, match="0 or 1"):
        model.edit(images, {0: 2})


def test_concept_targets_are_checked(images):
    model = make("mcm")
    with pytest.raises(ValueError, match="num_concepts=13"):
        model(images, concepts=torch.zeros(B, 5))


def test_frequency_weights_favour_rare_concepts():
    freq = [0.1] + [0.5] * (K - 1)
    model = make("mcm", concept_freq=freq)
    assert model.pos_weight[0] > model.pos_weight[1]
    assert torch.allclose(model.concept_bias[0, 0], torch.logit(torch.tensor(0.1)), atol=1e-5)


def test_features_and_affinity(images):
    model = make("mae")
    assert model.features(images).shape == (B, 128)
    assert model.features(images, pool="mean").shape == (B, 128)
    affinity = model.encoder.patch_affinity(images, kind="attention")
    assert affinity.shape == (B, 64, 64)
    # rows of each softmax sum to 1 over 65 tokens; dropping CLS leaves at most depth*heads
    assert torch.all(affinity.sum(-1) <= 6 * 4 + 1e-4)
    cosine = model.encoder.patch_affinity(images)  # default: cosine of the final patch tokens
    tokens = torch.nn.functional.normalize(model.encoder.forward_features(images)[:, 1:], dim=-1)
    assert cosine.shape == (B, 64, 64) and torch.allclose(cosine, tokens @ tokens.mT, atol=1e-5)
    assert torch.allclose(cosine, cosine.mT, atol=1e-6) and torch.allclose(cosine.diagonal(dim1=1, dim2=2),
                                                                           torch.ones(B, 64), atol=1e-5)
    with pytest.raises(ValueError, match="unknown affinity kind 'pixels'; choose one of tokens, attention"):
        model.encoder.patch_affinity(images, kind="pixels")


def test_block_with_attention_matches_the_fused_block(images):
    from mcm_core.models.backbone import block_with_attention
    model = make("mae").eval()
    x = model.encoder.prepend_cls(model.encoder.embed(images))
    block = model.encoder.blocks[0]
    out, probs = block_with_attention(block, x)
    assert torch.allclose(out, block(x), atol=1e-5)
    assert probs.shape == (B, 4, 65, 65) and torch.allclose(probs.sum(-1), torch.ones(B, 4, 65), atol=1e-5)


def test_supervised_reference_model(images, labels):
    model = make("supervised")
    out = model(images, concepts=labels)
    assert out.concept_logits.shape == (B, K) and out.loss.ndim == 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="needs concept labels"):
        model(images)


@pytest.mark.parametrize("head", ["states", "linear"])
def test_predict_concepts_reads_the_final_snapshot_with_the_final_layers_head(head):
    """Training scores snapshot l with head l; prediction must use the last head, not head 0."""
    torch.manual_seed(0)
    model = build_model("mcm", "tiny", concept_head=head).eval()
    with torch.no_grad():
        model.state_embed.normal_()  # make every layer's head different
        model.concept_bias.normal_()
        images = torch.rand(3, 3, 32, 32)
        every_layer = model.layer_logits(model.forward_encoder(images, 0.0).concepts)  # (depth, B, K)
        torch.testing.assert_close(model.predict_concepts(images), every_layer[-1])
        assert not torch.allclose(every_layer[0], every_layer[-1])
    with pytest.raises(ValueError, match="encoder has 6 layers"):
        model.layer_logits([torch.zeros(3, 13, 128)] * 2, first_layer=5)
