"""Behaviour of Latent MIM at the tiny preset: shapes, the EMA target, the loss, monitors, training, checkpoints."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from timm.layers import Mlp

from mcm_core.checkpoint import load_checkpoint, save_checkpoint
from mcm_core.config import TrainConfig
from mcm_core.evaluate import extract_features
from mcm_core.masking import ids_from_mask, random_mask
from mcm_core.models import build_model, make_config
from mcm_core.models.backbone import gather_tokens, sincos_pos_embed
from mcm_core.models.latent_mim import (
    effective_rank, ema_momentum, gap_patches, grid_pos_embed, hidden_ids, mean_cosine_with_self,
    mean_pairwise_cosine, patch_info_nce, position_share, reference_cue_weights, similarity_target,
    standardize_tokens, visual_cue,
)
from mcm_core.optim import param_groups
from mcm_core.train import Trainer, fit

B, L, D, P = 4, 64, 128, 4  # batch, tiny patches, tiny width, patch size


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(**overrides):
    torch.manual_seed(0)
    return build_model("latent_mim", "tiny", **overrides)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=seeded(0))


@pytest.fixture(scope="module")
def mask() -> torch.Tensor:
    return random_mask(B, L, 0.75, generator=seeded(1))  # 48 hidden, 16 visible


# ---------------------------------------------------------------- building and shapes
def test_builds_at_every_preset_with_its_sizes():
    for preset, (img, patches, width) in {"tiny": (32, 64, 128), "small": (64, 64, 256),
                                          "base": (224, 196, 768)}.items():
        cfg = make_config("latent_mim", preset)
        assert (cfg.img_size, cfg.num_patches, cfg.embed_dim) == (img, patches, width)
    model = build_model("latent_mim", "small")
    assert model.target_encoder.cfg.embed_dim == 256


@pytest.mark.parametrize("decoder", ["cross", "mae"])
def test_stage_shapes(images, mask, decoder):
    model = make(decoder=decoder)
    n_vis = int((~mask[0]).sum())
    with torch.no_grad():
        encoded, visible = model.forward_encoder(images, mask)
        ids_hidden = hidden_ids(mask, n_vis)
        target = model.forward_target(images, ids_hidden)
        pred = model.forward_latent_decoder(encoded, ids_hidden)
    assert encoded.tokens.shape == (B, 1 + n_vis, D)  # projected CLS + visible latents
    assert visible.shape == (B, n_vis, D)
    assert ids_hidden.shape == (B, L - n_vis) and mask.gather(1, ids_hidden).all()
    assert target.shape == pred.shape == (B, L - n_vis, D)


def test_forward_logs_loss_and_collapse_monitors(images, mask):
    out = make()(images, mask=mask)
    expected = {"infonce", "patch_acc", "cos_target", "cos_pred", "cos_visible", "erank_target",
                "erank_visible", "pos_share_target", "momentum"}
    assert set(out.losses) == expected
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(v.ndim == 0 and not v.requires_grad for v in out.losses.values())
    assert torch.equal(out.mask, mask)
    assert set(make(loss="mse", target="online")(images, mask=mask).losses) == expected - {"infonce", "patch_acc",
                                                                                            "momentum"} | {"mse"}


def test_draws_its_own_mask_reproducibly(images):
    model = make()
    a, b = model(images, generator=seeded(3)), model(images, generator=seeded(3))
    assert a.mask.sum(dim=1).eq(48).all() and torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)


def test_bf16_autocast_gives_a_finite_float32_loss(images, mask):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make()(images, mask=mask)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


# ---------------------------------------------------------------- gradients and the EMA target
REFERENCE_HEAD = {"projector_depth": 3, "projector_dim": 96, "target_projector": True}  # the reference code's head, at tiny width


@pytest.mark.parametrize("overrides", [{}, {"decoder": "mae"}, {"target": "online"}, {"sim_reg_weight": 1.0},
                                       REFERENCE_HEAD, {**REFERENCE_HEAD, "target": "online"}, {"reference": True},
                                       {"reference": True, "sim_reg_weight": 1.0},
                                       {"reference": True, "decoder": "mae"}])
def test_every_trainable_parameter_gets_a_gradient_and_the_target_none(images, mask, overrides):
    model = make(**overrides)
    model(images, mask=mask).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for frozen in (model.target_encoder, model.target_projector):
        if frozen is not None:
            assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_reference_head_has_the_reference_shape_and_projects_the_targets_with_its_ema_copy(images, mask):
    model = make(**REFERENCE_HEAD)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [(D, 96, None), (96, 96, None), (96, D, None)]
    assert isinstance(model.projector[-1], torch.nn.LayerNorm)  # the output is normalized too
    ids_hidden = hidden_ids(mask, 16)
    with torch.no_grad():
        raw = model.target_encoder.forward_tokens(gather_tokens(model.target_encoder.embed(images), ids_hidden))
        torch.testing.assert_close(model.forward_target(images, ids_hidden), model.target_projector(raw)[:, 1:])
        for p in model.projector.parameters():  # the online head moves; the EMA follows it
            p.add_(torch.randn(p.shape, generator=seeded(3)) * 0.1)
    old, online = ([p.clone() for p in m.parameters()] for m in (model.target_projector, model.projector))
    model.after_step(0.0)  # momentum 0.99
    for before, new, o in zip(old, model.target_projector.parameters(), online):
        torch.testing.assert_close(new, 0.99 * before + 0.01 * o)
    assert make().target_projector is None and isinstance(make().projector, Mlp)  # default: timm's Mlp, targets raw


def test_target_encoder_is_not_in_the_optimizer():
    model = make()
    in_optimizer = {id(p) for group in param_groups(model, 0.05) for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in model.target_encoder.parameters())
    assert all(id(p) in in_optimizer for p in model.encoder.parameters())


def test_online_target_gets_gradient_through_the_targets_and_stopgrad_does_not(images, mask):
    ids_hidden = hidden_ids(mask, 16)
    online = make(target="online")
    assert online.target_encoder is None
    online.forward_target(images, ids_hidden).sum().backward()
    assert online.encoder.blocks[0].attn.qkv.weight.grad is not None
    stopgrad = make(target="stopgrad")
    assert stopgrad.target_encoder is None and not stopgrad.forward_target(images, ids_hidden).requires_grad


def test_momentum_schedule_is_a_cosine_from_start_to_end():
    assert ema_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert ema_momentum(0.5, 0.99) == pytest.approx(0.995)
    assert ema_momentum(1.0, 0.99) == pytest.approx(1.0)
    values = [ema_momentum(t / 10, 0.99) for t in range(11)]
    assert values == sorted(values)


def test_after_step_moves_the_target_by_the_scheduled_momentum(images, mask):
    model = make()
    with torch.no_grad():  # make online and target differ, as after some optimizer steps
        for p in model.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=seeded(5)) * 0.1)
    old = [p.clone() for p in model.target_encoder.parameters()]
    online = [p.clone() for p in model.encoder.parameters()]
    model.after_step(0.3)
    m = 1 - (1 - 0.99) * (math.cos(math.pi * 0.3) + 1) / 2
    for before, new, o in zip(old, model.target_encoder.parameters(), online):
        torch.testing.assert_close(new, m * before + (1 - m) * o)
    assert float(model.progress) == pytest.approx(0.3)
    assert float(model(images, mask=mask).losses["momentum"]) == pytest.approx(m)
    model.after_step(1.0)  # momentum 1 at the end: the target stops moving
    frozen = [p.clone() for p in model.target_encoder.parameters()]
    model.after_step(1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.target_encoder.parameters()))


def test_target_sees_only_hidden_patches_and_the_encoder_only_visible_ones(images, mask):
    model = make()
    pixel_hidden = mask.view(B, 8, 1, 8, 1).expand(B, 8, P, 8, P).reshape(B, 1, 32, 32)  # (B, 1, H, W)
    noise = torch.rand(images.shape, generator=seeded(7))
    visible_changed = torch.where(pixel_hidden, images, noise)
    hidden_changed = torch.where(pixel_hidden, noise, images)
    ids_hidden = hidden_ids(mask, 16)
    with torch.no_grad():
        target = model.forward_target(images, ids_hidden)
        torch.testing.assert_close(model.forward_target(visible_changed, ids_hidden), target)
        assert not torch.allclose(model.forward_target(hidden_changed, ids_hidden), target)
        encoded = model.forward_encoder(images, mask)[0].tokens
        torch.testing.assert_close(model.forward_encoder(hidden_changed, mask)[0].tokens, encoded)


# ---------------------------------------------------------------- loss
def test_info_nce_with_equal_targets_is_2_tau_ln_n():
    pred = torch.randn(3, 10, 16, generator=seeded(0))
    target = torch.randn(3, 1, 16, generator=seeded(1)).expand(-1, 10, -1)  # all targets of an image equal
    loss, _ = patch_info_nce(pred, target, tau=0.2)
    assert float(loss) == pytest.approx(2 * 0.2 * math.log(10), rel=1e-5)


def test_info_nce_of_identical_standardized_features_has_the_closed_form():
    # Two tokens standardized over the image are exact opposites: cosine -1 off the diagonal.
    pred = torch.randn(5, 2, 32, generator=seeded(2))
    for tau in (0.2, 1.0):
        loss, accuracy = patch_info_nce(pred, standardize_tokens(pred), tau)
        assert float(loss) == pytest.approx(2 * tau * math.log(1 + math.exp(-2 / tau)), abs=1e-6)
        assert float(accuracy) == 1.0


def test_info_nce_is_lowest_for_the_right_pairing():
    pred = torch.randn(2, 12, 32, generator=seeded(3))
    target = standardize_tokens(pred)
    right = patch_info_nce(pred, target, 0.2)[0]
    for seed in range(5):
        perm = torch.randperm(12, generator=seeded(seed))
        if torch.equal(perm, torch.arange(12)):
            continue
        assert patch_info_nce(pred, target[:, perm], 0.2)[0] > right
    # The loss is unchanged when the hidden patches are listed in another order.
    perm = torch.randperm(12, generator=seeded(9))
    torch.testing.assert_close(patch_info_nce(pred[:, perm], target[:, perm], 0.2)[0], right)


def test_standardize_tokens_gives_zero_mean_unit_variance_per_image():
    x = torch.randn(3, 20, 8, generator=seeded(4)) * 5 + 2
    z = standardize_tokens(x)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(dim=1, unbiased=False), torch.ones(3, 8), atol=1e-4, rtol=0)


def test_similarity_regularizer_target_decays_from_start_to_end(images, mask):
    assert float(similarity_target(torch.tensor(0.0), 0.75, 0.25)) == pytest.approx(0.75)
    assert float(similarity_target(torch.tensor(1.0), 0.75, 0.25)) == pytest.approx(0.25)
    model = make(sim_reg_weight=2.0)
    out = model(images, mask=mask)
    assert float(out.loss.detach()) == pytest.approx(float(out.losses["infonce"] + 2.0 * out.losses["sim_reg"]),
                                                     rel=1e-5)
    with torch.no_grad():
        expected = (mean_pairwise_cosine(model.forward_encoder(images, mask)[1]) - 0.75) ** 2
    assert float(out.losses["sim_reg"]) == pytest.approx(float(expected), rel=1e-4)


# ---------------------------------------------------------------- monitors
def test_mean_pairwise_cosine_matches_the_pairwise_matrix():
    x = torch.randn(3, 7, 5, generator=seeded(5))
    u = torch.nn.functional.normalize(x, dim=-1)
    cos = u @ u.transpose(1, 2)
    brute = (cos.sum(dim=(1, 2)) - 7) / (7 * 6)
    torch.testing.assert_close(mean_pairwise_cosine(x), brute.mean())
    assert float(mean_pairwise_cosine(torch.ones(2, 4, 3))) == pytest.approx(1.0)
    assert float(mean_pairwise_cosine(torch.eye(4)[None])) == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_is_one_for_parallel_tokens_and_d_for_orthogonal_ones():
    assert float(effective_rank(torch.ones(2, 5, 8) * torch.rand(2, 5, 1) + 0.1)) == pytest.approx(1.0)
    assert float(effective_rank(torch.eye(8)[None])) == pytest.approx(8.0)
    assert float(effective_rank(torch.eye(8)[None, :3])) == pytest.approx(3.0)


def test_position_share_is_one_for_a_position_code_and_small_for_content():
    ids = torch.stack([torch.randperm(L, generator=seeded(i))[:48] for i in range(32)])  # (32, 48) hidden patches
    code = torch.randn(L, 16, generator=seeded(10))  # one vector per position, the same in every image
    assert float(position_share(code[ids], ids, L)) == pytest.approx(1.0)
    content = torch.randn(32, 48, 16, generator=seeded(11))  # nothing to do with position
    assert float(position_share(content, ids, L)) < 0.1  # the finite-sample bias, about L / (B N) = 0.04


# ---------------------------------------------------------------- patch gaps and the visual cue
def test_patch_gaps_crop_each_patch_inside_its_own_cell():
    images = torch.rand(2, 3, 16, 16, generator=seeded(6))
    assert gap_patches(images, 4, 0) is images
    out = gap_patches(images, 4, 1, seeded(7))
    assert out.shape == images.shape
    big = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                patch = out[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                crops = [big[b, :, 5 * i + dy:5 * i + dy + 4, 5 * j + dx:5 * j + dx + 4]
                         for dy in (0, 1) for dx in (0, 1)]
                assert any(torch.equal(patch, crop) for crop in crops), (b, i, j)
    assert torch.equal(out, gap_patches(images, 4, 1, seeded(7)))
    assert not torch.equal(out, gap_patches(images, 4, 1, seeded(8)))


def test_model_with_patch_gaps_trains(images, mask):
    out = make(patch_gap=1)(images, mask=mask, generator=seeded(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_visual_cue_is_a_position_weighted_average():
    mask = random_mask(2, L, 0.75, generator=seeded(8))
    ids_keep, _ = ids_from_mask(mask)
    ids_hidden = hidden_ids(mask, ids_keep.shape[1])
    constant = torch.ones(2, ids_keep.shape[1], 6) * 3.0
    torch.testing.assert_close(visual_cue(constant, ids_keep, ids_hidden, (8, 8), 1.0), torch.full((2, 48, 6), 3.0))
    # A narrow cue copies the nearest visible latent.
    context = torch.randn(2, ids_keep.shape[1], 6, generator=seeded(9))
    cue = visual_cue(context, ids_keep, ids_hidden, (8, 8), 0.05)
    rows = lambda ids: torch.stack([ids // 8, ids % 8], -1).float()  # noqa: E731
    nearest = torch.cdist(rows(ids_hidden), rows(ids_keep)).argmin(dim=-1)  # (2, 48)
    unique = (torch.cdist(rows(ids_hidden), rows(ids_keep)) == torch.cdist(
        rows(ids_hidden), rows(ids_keep)).min(dim=-1, keepdim=True).values).sum(-1) == 1
    expected = torch.gather(context, 1, nearest[..., None].expand(-1, -1, 6))
    torch.testing.assert_close(cue[unique], expected[unique])


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("overrides, message", [
    ({"target": "frozen"}, "unknown target 'frozen'"),
    ({"loss": "l1"}, "unknown loss 'l1'"),
    ({"decoder": "conv"}, "unknown decoder 'conv'"),
    ({"mask_ratio": 0.0}, "at least 2 of the 64 patches must be hidden"),
    ({"mask_ratio": 0.01}, "mask_ratio >= 0.0312"),
    ({"tau": 0.0}, "tau must be > 0"),
    ({"momentum": 0.999, "momentum_end": 0.99}, "momentum <= momentum_end"),
    ({"patch_gap": -1}, "patch_gap must be a non-negative int"),
    ({"cue_sigma": 0.0}, "cue_sigma must be > 0"),
    ({"projector_depth": 0}, "projector_depth must be an int >= 1"),
    ({"projector_dim": -1}, "projector_dim must be an int >= 0"),
])
def test_bad_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config("latent_mim", **overrides)


def test_option_types_are_checked_by_name():
    with pytest.raises(TypeError, match="model option 'reference' of 'latent_mim' must be bool, got 'yes'"):
        make_config("latent_mim", reference="yes")


def test_bad_masks_and_images_raise_clear_errors(images):
    model = make()
    with pytest.raises(ValueError, match="at least 2 of the 64 patches"):
        model(images, mask=random_mask(B, L, 1 / 64, generator=seeded(0)))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model(images, mask=torch.zeros(B, L))
    with pytest.raises(ValueError, match="at least 2 of the 64 patches"):
        model(images, mask_ratio=0.0)
    with pytest.raises(ValueError, match="32x32 images"):
        model(torch.rand(B, 3, 16, 16))


# ---------------------------------------------------------------- training, features, checkpoints
def train_config(tmp_path, **changes) -> TrainConfig:
    values = dict(method="latent_mim", dataset="shapes", data={"size": 64, "seed": 0}, mask_ratio=0.75, steps=4,
                  batch_size=8, warmup_steps=1, seed=0, out_dir=str(tmp_path / "run"), progress=False, log_every=2)
    values.update(changes)
    return TrainConfig(**values)


def test_trains_with_the_trainer_and_logs_monitors_into_the_history(tmp_path):
    result = fit(train_config(tmp_path))
    assert len(result.history) == 4
    assert {"cos_target", "cos_pred", "cos_visible", "erank_target", "momentum"} <= set(result.history[-1])
    assert float(result.model.progress) == pytest.approx(1.0)
    assert result.history[0]["momentum"] == pytest.approx(0.99)  # progress 0 before the first step
    online, target = result.model.encoder.state_dict(), result.model.target_encoder.state_dict()
    assert not all(torch.equal(online[k], target[k]) for k in online)  # the EMA lags the online encoder


def test_checkpoint_round_trips_the_target_encoder_and_progress(tmp_path, images, mask):
    model = make()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05)
    model.after_step(0.4)
    path = save_checkpoint(tmp_path / "lmim.safetensors", model)
    loaded, info = load_checkpoint(path)
    assert info.method == "latent_mim" and info.config["target"] == "ema"
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert any(k.startswith("target_encoder.") for k in state) and "progress" in state
    assert set(state) == set(reloaded) and all(torch.equal(state[k], reloaded[k]) for k in state)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, mask=mask).loss, model.eval()(images, mask=mask).loss)


def test_without_ema_the_targets_collapse_to_a_position_code_and_with_it_they_do_not(tmp_path):
    """The paper's first trap: with the online encoder making its own targets (gradient through both),
    the within-image InfoNCE is solved by position alone. Measured by the monitor the trainer logs."""
    shares = {}
    for target in ("ema", "online"):
        cfg = train_config(tmp_path / target, steps=12, batch_size=16, data={"size": 256, "seed": 0},
                           warmup_steps=3, log_every=4, model={"target": target})
        shares[target] = fit(cfg).history[-1]["pos_share_target"]
    assert shares["online"] > 0.85, shares  # each target says where its patch is, not what it shows
    assert shares["ema"] < 0.5, shares


def test_resume_continues_exactly(tmp_path):
    full = fit(train_config(tmp_path / "a"))
    trainer = Trainer(train_config(tmp_path / "b"))
    trainer.run(until=2)
    fit(train_config(tmp_path / "b"), resume=True)
    resumed, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.safetensors")
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


def test_frozen_features_for_knn_and_probe(images):
    model = make()
    features, targets = extract_features(model, (images, torch.arange(B)), batch_size=2)
    assert features.shape == (B, D) and torch.equal(targets, torch.arange(B))
    mean, _ = extract_features(model, (images, torch.arange(B)), pool="mean")
    assert mean.shape == (B, D) and not torch.allclose(mean, features)
    assert model.patch_features(images).shape == (B, L, D)


def test_trains_from_the_command_line(tmp_path, capsys):
    from mcm_core.cli import main

    code = main(["train", "--method", "latent_mim", "--mask-ratio", "0.75", "--steps", "2", "--batch-size", "8",
                 "--set", "data.size=32", "--eval-size", "16", "--no-progress", "--out-dir", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    assert "no pixel decoder" in capsys.readouterr().out  # no reconstruction metrics for a latent predictor
    model, info = load_checkpoint(tmp_path / "cli" / "checkpoint.safetensors")
    assert info.method == "latent_mim" and float(model.progress) == pytest.approx(1.0)


# ---------------------------------------------------------------- reference mode (the reference code's computation)
def perturbed(model, seed: int = 0, scale: float = 0.05):
    """``model`` with every parameter moved off its initialisation (LayerNorms and tokens included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=seeded(seed)) * scale)
    return model


def test_reference_mode_adds_a_trained_cls_query_and_per_layer_context_norms_and_the_default_has_neither(images, mask):
    model = make(reference=True)
    assert model.decoder_cls_token.shape == (1, 1, 64) and len(model.context_norms) == 3
    assert not hasattr(model, "context_norm") and float(model.mask_token.detach().abs().max()) == 0  # zero, as the reference
    model(images, mask=mask).loss.backward()
    assert float(model.decoder_cls_token.grad.abs().max()) > 0  # the CLS query is trained
    with torch.no_grad():  # and the hidden queries attend to it
        encoded = model.forward_encoder(images, mask)[0]
        before = model.forward_latent_decoder(encoded, hidden_ids(mask, 16))
        model.decoder_cls_token.add_(1.0)
        assert not torch.allclose(model.forward_latent_decoder(encoded, hidden_ids(mask, 16)), before)
    default = make()
    assert default.cfg.reference is False and default.decoder_cls_token is None
    names = set(default.state_dict())
    assert not any("decoder_cls_token" in n or "context_norms" in n for n in names) and "context_norm.weight" in names
    assert make(reference=False).state_dict().keys() == names


def test_reference_positions_are_i_g_over_g_minus_1_in_every_encoder_and_the_decoder():
    def expected(dim: int) -> torch.Tensor:  # grid 8: patch k at row k // 8, column k % 8, both times 8 / 7
        k = torch.arange(L, dtype=torch.float64)
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
        code = lambda pos: torch.cat([(pos[:, None] * omega).sin(), (pos[:, None] * omega).cos()], 1)  # noqa: E731
        return torch.cat([torch.zeros(1, dim), torch.cat([code(k % 8 * 8 / 7), code(k // 8 * 8 / 7)], 1).float()])

    model = make(reference=True)
    for pos, dim in ((model.encoder.pos_embed, D), (model.target_encoder.pos_embed, D), (model.decoder_pos_embed, 64)):
        torch.testing.assert_close(pos[0], expected(dim), atol=1e-6, rtol=0)
    assert float(grid_pos_embed(D, (8, 8), scaled=True)[1 + 7, D // 2 - D // 4]) == pytest.approx(math.cos(8.0))
    default = make()  # the backbone's integer positions
    for pos, dim in ((default.encoder.pos_embed, D), (default.target_encoder.pos_embed, D),
                     (default.decoder_pos_embed, 64)):
        assert torch.equal(pos[0], sincos_pos_embed(dim, (8, 8)))
    assert "encoder.pos_embed" not in model.state_dict()  # rebuilt from the config, never saved


def test_reference_mode_implies_the_reference_head_with_layernorm_eps_1e_5():
    model = make(reference=True)
    assert (model.cfg.projector_depth, model.cfg.target_projector) == (3, True)
    for projector in (model.projector, model.target_projector):
        norms = [m for m in projector if isinstance(m, torch.nn.LayerNorm)]
        assert len(norms) == 3 and all(m.eps == 1e-5 for m in norms)
    assert make(reference=True, projector_depth=2, projector_dim=96).cfg.projector_depth == 2  # an explicit head stays
    ours = make(**REFERENCE_HEAD)
    assert all(m.eps == 1e-6 for m in ours.projector if isinstance(m, torch.nn.LayerNorm))


def test_reference_visual_cue_is_a_softmax_of_position_embedding_products():
    pos = grid_pos_embed(64, (8, 8), scaled=True)[1:]
    mask = random_mask(2, L, 0.75, generator=seeded(8))
    ids_keep, _ = ids_from_mask(mask)
    ids_hidden = hidden_ids(mask, ids_keep.shape[1])
    weights = reference_cue_weights(pos[ids_hidden], pos[ids_keep])  # (2, 48, 16)
    assert weights.shape == (2, 48, 16) and bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 48))
    products = pos[ids_hidden] @ pos[ids_keep].transpose(1, 2) / 8.0  # sqrt(64)
    torch.testing.assert_close(weights, torch.softmax(products, dim=-1))


def test_reference_decoder_is_cls_query_plus_cued_mask_tokens_through_per_layer_context_norms(images, mask):
    model = perturbed(make(reference=True)).eval()
    ids_hidden = hidden_ids(mask, 16)
    with torch.no_grad():
        encoded = model.forward_encoder(images, mask)[0]
        pe, x = model.decoder_pos_embed[0], model.decoder_embed(encoded.tokens)  # (1 + L, 64), (B, 17, 64)
        pe_v, pe_h = pe[1:][encoded.ids_keep], pe[1:][ids_hidden]
        cue = torch.softmax(pe_h @ pe_v.transpose(1, 2) / 8.0, dim=-1) @ x[:, 1:]  # latents without positions
        zero = torch.zeros(B, 1, 64)
        q = torch.cat([model.decoder_cls_token.expand(B, -1, -1), model.mask_token + cue], 1)
        q = q + torch.cat([zero, pe_h], 1)
        kv = x + torch.cat([zero, pe_v], 1)
        for block, norm in zip(model.decoder_blocks, model.context_norms):
            q = q + block.attn(block.norm1(q))
            q = q + block.cross(block.norm_cross(q), norm(kv))[0]
            q = q + block.mlp(block.norm2(q))
        expected = model.decoder_pred(model.decoder_norm(q))[:, 1:]  # the CLS query's output is dropped
        torch.testing.assert_close(model.forward_latent_decoder(encoded, ids_hidden), expected)


def test_reference_standardization_divides_by_the_unbiased_std_plus_1e_4():
    x = torch.randn(3, 20, 8, generator=seeded(4)) * 5 + 2
    expected = (x - x.mean(1, keepdim=True)) / (x.std(1, unbiased=True, keepdim=True) + 1e-4)
    torch.testing.assert_close(standardize_tokens(x, reference=True), expected)
    small, target = x * 1e-3, torch.randn(3, 20, 8, generator=seeded(5))  # where the two eps differ
    ours, theirs = patch_info_nce(small, target, 0.2)[0], patch_info_nce(small, target, 0.2, reference=True)[0]
    assert abs(float(ours - theirs)) > 1e-5


def test_reference_similarity_regularizer_reads_predictions_and_projected_tokens_self_pairs_included(images, mask):
    x = torch.randn(3, 7, 5, generator=seeded(5))
    u = torch.nn.functional.normalize(x, dim=-1)
    torch.testing.assert_close(mean_cosine_with_self(x), (u @ u.transpose(1, 2)).mean())
    model = make(reference=True, sim_reg_weight=2.0)
    out = model(images, mask=mask)
    with torch.no_grad():
        encoded = model.forward_encoder(images, mask)[0]
        pred = model.forward_latent_decoder(encoded, hidden_ids(mask, 16))
        expected = sum((mean_cosine_with_self(t) - 0.75) ** 2 for t in (pred, encoded.tokens[:, 1:]))
    assert float(out.losses["sim_reg"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(out.losses["infonce"] + 2.0 * expected), rel=1e-5)


def test_reference_checkpoint_round_trips_and_configs_saved_before_the_switch_load_in_default_mode(tmp_path, images,
                                                                                                    mask):
    from mcm_core.models import build_from_dict, config_to_dict

    model = perturbed(make(reference=True)).eval()
    loaded, info = load_checkpoint(save_checkpoint(tmp_path / "ref.safetensors", model))
    assert info.config["reference"] is True and loaded.decoder_cls_token is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, mask=mask).loss, model(images, mask=mask).loss)
    old = config_to_dict(make())
    del old["config"]["reference"]  # a checkpoint written before the switch existed
    assert build_from_dict(old).cfg.reference is False


def test_reference_mode_matches_the_official_code_when_its_path_is_given(benchmark_script):
    """Local check only: ``LATENT_MIM_OFFICIAL=/path/to/LatentMIM`` (a copy of the public reference code)."""
    path = os.environ.get("LATENT_MIM_OFFICIAL")
    if not path or not (Path(path) / "models_lmim.py").is_file():
        pytest.skip("set LATENT_MIM_OFFICIAL to a local copy of github.com/yibingwei-1/LatentMIM")
    check = benchmark_script("latent_mim_reference_check")
    module = check.load_official(path)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        row = check.compare(module, "tiny", dtype)
        assert row["loss_diff"] < tol and row["grad_diff"] < tol and row["ema_diff"] < tol, row
    assert check.compare(module, "tiny", torch.float32, sim_coeff=0.5)["loss_diff"] < 1e-5
