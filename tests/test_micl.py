"""MiCL at the tiny preset: views, loss, gradients, training with the shared trainer, checkpoints, errors."""
from __future__ import annotations

import math

import pytest
import torch

from mcm_core.checkpoint import load_checkpoint, save_checkpoint
from mcm_core.config import TrainConfig
from mcm_core.evaluate import extract_features, knn_accuracy
from mcm_core.masking import block_mask, num_hidden, random_mask
from mcm_core.models import build_model, make_config
from mcm_core.models.micl import heavy_tailed_similarity, symmetric_info_nce, view_size
from mcm_core.train import fit

B, L = 6, 64


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(**overrides):
    torch.manual_seed(0)
    return build_model("micl", "tiny", **overrides)


def as_sets(ids: torch.Tensor) -> list[set[int]]:
    return [set(row) for row in ids.tolist()]


# ---------------------------------------------------------------- views
@pytest.mark.parametrize("mask_ratio, per_view", [(0.75, 8), (0.5, 16), (0.875, 4), (0.0, 32)])
def test_views_are_disjoint_and_of_the_requested_size(images, mask_ratio, per_view):
    model = make(mask_ratio=mask_ratio)
    ids_a, ids_b = model.make_views(images, generator=seeded())
    assert ids_a.shape == ids_b.shape == (B, per_view)
    for a, b in zip(as_sets(ids_a), as_sets(ids_b)):
        assert len(a) == len(b) == per_view  # no repeated patch inside a view
        assert not a & b  # no patch in both views
    hidden_a, hidden_b = model.view_masks(ids_a, ids_b)
    assert ((~hidden_a).sum(1) == per_view).all() and not (~hidden_a & ~hidden_b).any()


def test_views_split_exactly_the_patches_the_trainer_mask_leaves_visible(images):
    model = make(mask_ratio=0.75)
    for mask in (random_mask(B, L, 0.75, generator=seeded(1)), block_mask(B, (8, 8), 0.75, generator=seeded(2))):
        ids_a, ids_b = model.make_views(images, mask=mask, generator=seeded(3))
        for a, b, hidden in zip(as_sets(ids_a), as_sets(ids_b), mask.tolist()):
            visible = {i for i, h in enumerate(hidden) if not h}
            assert a | b == visible and not a & b  # the two views partition the survivors


def test_odd_survivor_count_leaves_one_patch_out(images):
    model = make(mask_ratio=0.5, img_size=28)  # 49 patches, 24 hidden -> 25 survive
    assert model.cfg.view_size() == 12
    mask = random_mask(B, 49, 0.5, generator=seeded(1))
    ids_a, ids_b = model.make_views(images[..., :28, :28], mask=mask, generator=seeded(2))
    for a, b, hidden in zip(as_sets(ids_a), as_sets(ids_b), mask.tolist()):
        visible = {i for i, h in enumerate(hidden) if not h}
        assert len(visible) == 25 and not a & b and len(a | b) == 24 and a | b <= visible


def test_views_are_deterministic_per_generator_and_vary_between_steps(images):
    model = make()
    first = model.make_views(images, generator=seeded(5))
    again = model.make_views(images, generator=seeded(5))
    other = model.make_views(images, generator=seeded(6))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0][0], first[0][1])  # images of one batch get different views


def test_without_mask_the_views_come_from_one_permutation(images):
    model = make(mask_ratio=0.75)
    ids_a, ids_b = model.make_views(images, generator=seeded(7))
    order = torch.rand(B, L, generator=seeded(7)).argsort(dim=1)  # the same noise, ranked
    assert torch.equal(ids_a, order[:, :8].sort(dim=1).values)
    assert torch.equal(ids_b, order[:, 8:16].sort(dim=1).values)


# ---------------------------------------------------------------- loss
@pytest.mark.parametrize("batch", [2, 8, 64])
def test_info_nce_is_ln_batch_for_identical_features(batch):
    z = torch.randn(1, 32).expand(batch, -1)  # every image has the same representation
    loss, monitors = symmetric_info_nce(z, z.clone(), kappa=1 / 64, tau=0.07)
    assert loss.item() == pytest.approx(math.log(batch), abs=1e-5)
    assert monitors["sim_gap"].item() == pytest.approx(0.0, abs=1e-5)


def test_info_nce_rewards_matching_views_and_is_symmetric():
    z_a = torch.randn(16, 32, generator=seeded(0))
    matched, _ = symmetric_info_nce(z_a, z_a + 0.01 * torch.randn(16, 32, generator=seeded(1)), 1 / 64, 0.07)
    shuffled, monitors = symmetric_info_nce(z_a, z_a.roll(1, dims=0), 1 / 64, 0.07)
    assert matched < math.log(16) < shuffled
    swapped, _ = symmetric_info_nce(z_a.roll(1, dims=0), z_a, 1 / 64, 0.07)
    assert torch.allclose(shuffled, swapped)  # the loss does not care which view is "a"
    assert monitors["view_acc"].item() == 0.0 and monitors["sim_gap"] < 0


def test_heavy_tailed_similarity_matches_its_formula():
    s = torch.linspace(-1, 1, 9)
    expected = 0.5 * (1 + s) / (1 + 0.25 * (1 - s)) / 0.5
    assert torch.allclose(heavy_tailed_similarity(s, kappa=0.25, tau=0.5), expected)
    assert torch.allclose(heavy_tailed_similarity(s, 0.0, 1.0), (1 + s) / 2)  # kappa 0: shifted cosine
    assert heavy_tailed_similarity(torch.tensor(1.0), 1 / 64, 0.07).item() == pytest.approx(1 / 0.07)
    assert (heavy_tailed_similarity(s, 1 / 64, 0.07).diff() > 0).all()  # monotone in the cosine


# ---------------------------------------------------------------- model
def test_forward_outputs_and_monitors(images):
    model = make()
    out = model(images, generator=seeded())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.losses) == {"infonce", "pos_sim", "neg_sim", "sim_gap", "view_acc"}
    assert all(not v.requires_grad and v.ndim == 0 for v in out.losses.values())
    assert out.pred is None and out.mask.shape == (B, L)
    assert (out.mask.sum(1) == L - 16).all()  # hidden from both views
    z_a, z_b = model.forward_encoder(images, *model.make_views(images, generator=seeded()))
    assert z_a.shape == z_b.shape == (B, model.cfg.embed_dim)


def test_untrained_loss_starts_near_ln_batch(images):
    batch = torch.rand(32, 3, 32, 32, generator=seeded(9))
    loss = make()(batch, generator=seeded()).loss.item()
    assert abs(loss - math.log(32)) < 0.1 * math.log(32)  # an untrained encoder barely tells images apart


def test_gradients_reach_every_parameter(images):
    model = make()
    model(images, generator=seeded()).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_no_decoder_no_projector_no_momentum_encoder():
    model = make()
    assert [name for name, _ in model.named_children()] == ["encoder"]
    assert all(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.encoder.parameters())


def test_bf16_autocast_keeps_the_loss_in_float32(images):
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, generator=seeded())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    reference = model(images, generator=seeded()).loss
    assert abs(out.loss.item() - reference.item()) < 0.05


def test_features_for_frozen_evaluation(images):
    model = make()
    assert model.features(images).shape == (B, model.cfg.embed_dim)
    assert model.features(images, pool="mean").shape == (B, model.cfg.embed_dim)
    labels = torch.arange(B) % 2
    train_x, train_y = extract_features(model, (images, labels), batch_size=4)
    assert train_x.shape == (B, model.cfg.embed_dim)
    assert 0.0 <= knn_accuracy(train_x, train_y, train_x, train_y, k=3) <= 1.0


@pytest.mark.parametrize("preset, per_view", [("small", 8), ("base", 24)])
def test_presets_build(preset, per_view):
    cfg = make_config("micl", preset)
    assert cfg.view_size() == per_view
    assert (cfg.num_patches - num_hidden(cfg.num_patches, cfg.mask_ratio)) // 2 == per_view


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("overrides, message", [
    ({"mask_ratio": 0.99}, "too few for two disjoint views"),
    ({"tau": 0.0}, "tau must be > 0"),
    ({"kappa": -1.0}, "kappa must be >= 0"),
])
def test_bad_config_gets_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model("micl", "tiny", **overrides)


def test_view_size_error_suggests_a_working_ratio():
    with pytest.raises(ValueError, match=r"mask_ratio=0\.96875 \(1 patch per view\)"):
        view_size(64, 0.99)
    assert view_size(64, 0.96875) == 1


def test_bad_inputs_get_clear_errors(images):
    model = make(mask_ratio=0.75)
    with pytest.raises(ValueError, match="at least 2 images"):
        model(images[:1])
    with pytest.raises(ValueError, match="hides \\[32\\] patches per image"):
        model(images, mask=random_mask(B, L, 0.5, generator=seeded()))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model(images, mask=torch.zeros(B, L))
    with pytest.raises(ValueError, match="too few for two disjoint views"):
        model(images, mask_ratio=0.99)
    out = model(images, mask_ratio=0.5, mask=random_mask(B, L, 0.5, generator=seeded()))  # ratio matches
    assert (out.mask.sum(1) == 32).all()


# ---------------------------------------------------------------- trainer and checkpoints
def micl_config(tmp_path, steps: int, **changes) -> TrainConfig:
    values = dict(method="micl", dataset="shapes", data={"size": 256, "seed": 0}, mask_ratio=0.75, steps=steps,
                  batch_size=32, lr=2e-3, warmup_steps=2, log_every=5, progress=False, out_dir=str(tmp_path / "run"))
    return TrainConfig(**{**values, **changes})


def test_fit_lowers_the_loss_and_opens_the_similarity_gap(tmp_path):
    result = fit(micl_config(tmp_path, steps=25))
    history = result.history
    assert len(history) == 25 and {"infonce", "sim_gap", "pos_sim", "neg_sim"} <= set(history[0])
    first = sum(r["loss"] for r in history[:5]) / 5
    last = sum(r["loss"] for r in history[-5:]) / 5
    assert last < first - 0.1, (first, last)
    assert history[-1]["sim_gap"] > history[0]["sim_gap"]


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, images):
    model = make(kappa=0.05, tau=0.1)
    model.encoder.cls_token.data.add_(0.5)  # differ from a fresh model
    path = save_checkpoint(tmp_path / "micl.safetensors", model)
    loaded, info = load_checkpoint(path)
    assert info.method == "micl" and loaded.cfg == model.cfg
    model.eval()
    assert torch.equal(loaded(images, generator=seeded()).loss, model(images, generator=seeded()).loss)
    assert torch.equal(loaded.features(images), model.features(images))


def test_resume_is_exact(tmp_path):
    cfg = micl_config(tmp_path, steps=6, data={"size": 128, "seed": 0}, batch_size=16, log_every=1)
    straight = fit(cfg)
    resumed_cfg = micl_config(tmp_path, steps=6, data={"size": 128, "seed": 0}, batch_size=16, log_every=1,
                              out_dir=str(tmp_path / "split"))
    fit(resumed_cfg, until=3)
    resumed = fit(resumed_cfg, resume=True)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], abs=1e-6)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
