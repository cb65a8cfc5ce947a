"""The demonstration measures (mcm_core.evaluate.measures) and the counterfactual edit loss they motivated.

A small untrained MCM on 32 px shapes keeps every test fast. Decoders are replaced by ones whose
answer is known (the true patches, a flat grey, the counterfactual), so each measure is checked
against the value it must give, not just for its type.
"""
from __future__ import annotations

import math

import pytest
import torch

from mcm_core.config import TrainConfig
from mcm_core.data import load_dataset
from mcm_core.data.shapes_factors import (
    COLOUR_NAMES, COUNTERFACTUAL_GROUPS, concepts_from_factors, counterfactual_factors,
)
from mcm_core.evaluate import measures, reconstruction_metrics
from mcm_core.masking import mask_noise, nested_mask
from mcm_core.models import build_model
from mcm_core.train import Trainer

N = 24


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", split="val", size=N, seed=0)


@pytest.fixture(scope="module")
def batch(data):
    return data.batch(range(N))


def small_mcm(**overrides):
    torch.manual_seed(0)
    return build_model("mcm", "tiny", embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                       decoder_num_heads=2, num_concepts=13, concept_names=list(load_dataset("shapes", size=1)
                                                                                .concept_names), **overrides).eval()


def with_decoder(model, fn):
    """The model with ``forward_decoder`` replaced by ``fn(encoded) -> (B, L, p*p*3)``."""
    model.forward_decoder = fn
    return model


def test_perfect_decoder_scores_perfect_fidelity_and_no_edit(batch):
    model = small_mcm()
    truth = model.patchify(batch.images)
    with_decoder(model, lambda encoded: truth[: encoded.mask.shape[0]])
    curve = measures.measure_shapes_curve(model, batch.images, batch.object_masks, batch.factors["colour"],
                                          (0.5,), torch.Generator().manual_seed(0))
    assert curve[0].psnr == math.inf and curve[0].colour_fidelity == 1.0
    assert curve[0].edit_following == 0.0  # the decoder ignores the concept tokens: no edit takes


def test_grey_decoder_scores_zero_fidelity(batch):
    model = small_mcm()
    grey = torch.full((N, model.cfg.num_patches, 48), 225 / 255)  # the light background everywhere
    with_decoder(model, lambda encoded: grey)
    result = measures.measure_shapes_curve(model, batch.images, batch.object_masks, batch.factors["colour"],
                                           (0.75,), torch.Generator().manual_seed(0))[0]
    assert result.object_pixels > 0 and result.colour_fidelity == 0.0 and result.edit_following == 0.0


def test_decoder_that_follows_the_edit_scores_one():
    """A decoder that paints every object pixel in the colour the concept states ask for follows every edit."""
    data = load_dataset("shapes", split="val", size=N, seed=0)
    batch = data.batch(range(N))
    model = small_mcm()
    names = model.cfg.concept_names
    palette = measures.PALETTE

    def decode(encoded):
        # Recover which colour the (possibly edited) tokens ask for by comparing them to the state vectors.
        vectors = torch.nn.functional.normalize(model.state_vectors()[-1], dim=-1)  # (K, 2, D)
        final = torch.nn.functional.normalize(encoded.concepts[-1], dim=-1)  # (B, K, D)
        images = batch.images.clone()
        for i in range(N):
            colour = int(batch.factors["colour"][i, 0])
            for c in ("red", "green", "blue"):
                k = names.index(c)
                for state in (0, 1):
                    if torch.allclose(final[i, k], vectors[k, state], atol=1e-5):
                        colour = COLOUR_NAMES.index(c) if state == 1 else colour
            images[i][:, batch.object_masks[i] > 0] = palette[colour][:, None]
        return model.patchify(images)

    with_decoder(model, decode)
    result = measures.measure_shapes_curve(model, batch.images, batch.object_masks, batch.factors["colour"],
                                           (0.5,), torch.Generator().manual_seed(0))[0]
    assert result.colour_fidelity == 1.0 and result.edit_following == 1.0


def test_psnr_agrees_with_reconstruction_metrics(batch):
    model = small_mcm()
    noise = mask_noise(N, model.cfg.num_patches, torch.Generator().manual_seed(3))
    mask = nested_mask(noise, 0.5)
    ours = measures.measure_shapes(model, batch.images, batch.object_masks, batch.factors["colour"], mask, 0.5)
    theirs = reconstruction_metrics(model, batch.images, 0.5, generator=torch.Generator().manual_seed(3))
    assert ours.psnr == pytest.approx(theirs["psnr"], rel=1e-5)


def test_colour_edit_states_ask_for_every_other_primary_colour():
    colours = torch.tensor([COLOUR_NAMES.index(c) for c in ("red", "yellow")])
    edits = measures.colour_edit_states(colours, 13)
    names = list(load_dataset("shapes", size=1).concept_names)
    asked = [[COLOUR_NAMES[int(t)] if t >= 0 else None for t in target] for _, target in edits]
    assert [row[0] for row in asked] == ["green", "blue", None]  # red: two targets
    assert [row[1] for row in asked] == ["red", "green", "blue"]  # yellow: three
    states, _ = edits[0]
    assert states[0, names.index("green")] == 1 and states[0, names.index("red")] == 0
    assert (states[0] >= 0).sum() == 2 and (states[1] >= 0).sum() == 1  # yellow has no own colour token


def test_curve_masks_nest_and_edit_scores_are_shares(batch):
    model = small_mcm()
    curve = measures.measure_shapes_curve(model, batch.images, batch.object_masks, batch.factors["colour"],
                                          measures.CURVE_RATIOS, torch.Generator().manual_seed(0))
    assert [m.mask_ratio for m in curve] == list(measures.CURVE_RATIOS)
    hidden = [m.object_pixels for m in curve]
    assert hidden == sorted(hidden)  # nested masks: more hidden object pixels at every higher ratio
    for m in curve:
        assert 0 <= m.colour_fidelity <= 1 and 0 <= m.edit_following <= 1


def test_measures_refuse_what_they_cannot_score(batch):
    with pytest.raises(TypeError, match="MCM"):
        measures.measure_shapes_curve(build_model("mae", "tiny"), batch.images, batch.object_masks,
                                      batch.factors["colour"])
    with pytest.raises(ValueError, match="object_masks"):
        measures.measure_shapes_curve(small_mcm(), batch.images, batch.object_masks[:, :8],
                                      batch.factors["colour"])
    with pytest.raises(TypeError, match="shapes data"):
        measures.measure_dataset(small_mcm(), [(batch.images[0], batch.concepts[0])])


# ---------------------------------------------------------------------------- counterfactuals
def test_counterfactual_changes_exactly_one_group(data):
    factors = data.factors
    for group in COUNTERFACTUAL_GROUPS:
        changed = counterfactual_factors(factors, torch.Generator().manual_seed(1), groups=(group,))
        before, after = concepts_from_factors(factors), concepts_from_factors(changed)
        differs = (before != after).any(dim=0).nonzero().flatten().tolist()
        names = [data.concept_names[k] for k in differs]
        expected = {"shape": {"circle", "square", "triangle"}, "colour": {"red", "green", "blue"},
                    "fill": {"hollow", "striped"}, "size": {"large"}, "horizontal": {"left"}, "vertical": {"top"},
                    "background": {"dark_background"}, "noise": {"noisy_background"}}[group]
        assert names and set(names) <= expected, group
    with pytest.raises(ValueError, match="counterfactual groups"):
        counterfactual_factors(factors, torch.Generator(), groups=("texture",))


def test_counterfactual_states_turn_the_labels_into_the_counterfactual_labels(data):
    images, states = data.counterfactuals(range(N), torch.Generator().manual_seed(0))
    assert images.shape == (N, 3, 32, 32) and states.shape == (N, 13)
    labels = data.targets[:N].long()
    edited = torch.where(states >= 0, states, labels)
    assert ((states >= 0).sum(dim=1) >= 1).all()  # every image changes
    assert not torch.equal(edited, labels)
    again, _ = data.counterfactuals(range(N), torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # a pure function of the generator


def test_counterfactual_loss_trains_the_state_embeddings(tmp_path):
    cfg = TrainConfig(method="mcm", steps=2, batch_size=8, data={"size": 32}, precision="fp32", progress=False,
                      model={"counterfactual_weight": 1.0, "concept_weight": 0.0, "aux_concept_weight": 0.0},
                      out_dir=str(tmp_path))  # no concept loss: the state embeddings learn from edits alone
    trainer = Trainer(cfg)
    images, targets = next(trainer.batches(1))
    out = trainer.forward(images, targets)
    assert "counterfactual" in out.losses and torch.isfinite(out.losses["counterfactual"])
    out.loss.backward()
    assert trainer.unwrapped.state_embed.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="counterfactual_weight"):
        Trainer(TrainConfig(method="mcm", dataset="digits", steps=2, batch_size=8, progress=False,
                            model={"counterfactual_weight": 1.0}, out_dir=str(tmp_path / "d")))
    several = load_dataset("shapes", size=8, min_objects=2, max_objects=2)
    with pytest.raises(ValueError, match="several objects"):
        several.counterfactuals(range(8), torch.Generator())


# ---------------------------------------------------------------------------- mask ratio range
def test_mask_ratio_range_draws_per_step_and_reproducibly(tmp_path):
    cfg = TrainConfig(method="mcm", steps=50, batch_size=8, data={"size": 32}, mask_ratio=0.25,
                      mask_ratio_max=0.9, progress=False, out_dir=str(tmp_path))
    trainer = Trainer(cfg)
    ratios = []
    for step in range(50):
        trainer.step = step
        ratios.append(trainer.step_mask_ratio())
    assert all(0.25 <= r <= 0.9 for r in ratios) and len(set(ratios)) > 40
    trainer.step = 7
    assert trainer.step_mask_ratio() == ratios[7]
    fixed = Trainer(TrainConfig(method="mcm", steps=5, batch_size=8, data={"size": 32}, mask_ratio=0.5,
                                progress=False, out_dir=str(tmp_path / "f")))
    assert fixed.step_mask_ratio() == 0.5
    with pytest.raises(ValueError, match="mask_ratio_max"):
        TrainConfig(mask_ratio=0.5, mask_ratio_max=0.25)


# ---------------------------------------------------------------------------- the CPU fast path
def test_precision_auto_follows_the_hardware():
    from mcm_core.devices import cpu_bf16_supported, use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cuda) is True and use_bf16("auto", cpu) is cpu_bf16_supported()


def test_bf16_cpu_step_matches_float32(tmp_path):
    """The fast CPU step (bf16 autocast, explicit attention) computes the float32 step's loss to bf16 rounding."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(method="mcm", steps=2, batch_size=16, data={"size": 32}, precision=precision,
                          device="cpu", progress=False, out_dir=str(tmp_path / precision))
        trainer = Trainer(cfg)
        images, targets = next(trainer.batches(1))
        losses[precision] = trainer.train_step(images, targets)["loss"].item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_step_uses_explicit_attention_in_every_precision(tmp_path, precision):
    """The fused CPU attention kernel is slow at these sequence lengths in bf16 and in float32 alike,
    so every CPU step runs with explicit attention, and the switch is restored after the step."""
    cfg = TrainConfig(method="mcm", steps=2, batch_size=8, data={"size": 16}, precision=precision,
                      device="cpu", progress=False, out_dir=str(tmp_path))
    trainer = Trainer(cfg)
    attention = [m for m in trainer.model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in attention]
    assert any(before)  # timm's and MCM's attention modules use the fused kernel outside the step
    seen = []
    for module in attention:
        module.register_forward_pre_hook(lambda m, args: seen.append(m.fused_attn))
    images, targets = next(trainer.batches(1))
    trainer.train_step(images, targets)
    assert seen and not any(seen)  # explicit inside the step
    assert [m.fused_attn for m in attention] == before  # restored after it


def test_explicit_attention_computes_the_same_and_restores_the_switch():
    from mcm_core.devices import explicit_attention

    model = small_mcm()
    images = torch.rand(4, 3, 32, 32)
    mask = nested_mask(mask_noise(4, model.cfg.num_patches, torch.Generator().manual_seed(0)), 0.5)
    fused = model(images, mask=mask).pred
    with explicit_attention(model):
        assert not any(getattr(m, "fused_attn", False) for m in model.modules())
        explicit = model(images, mask=mask).pred
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert sum(getattr(m, "fused_attn", False) is True for m in model.modules()) >= 2 * model.cfg.depth
