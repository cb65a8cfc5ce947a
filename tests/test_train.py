"""The training loop: learning happens, resume is exact, divergence is caught, masks are per step."""
from __future__ import annotations

import json

import pytest
import torch

from mcm_core.batches import StepBatchSampler
from mcm_core.checkpoint import load_checkpoint
from mcm_core.config import TrainConfig
from mcm_core.optim import lr_lambda
from mcm_core.train import Trainer, TrainingDiverged, fit

# Small enough for a 2-core CI machine, still the tiny preset's 32 px / patch 4 layout.
SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_num_heads": 2}


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(method="mcm", steps=12, batch_size=16, mask_ratio=0.5, model=dict(SMALL), data={"size": 256},
                out_dir=str(tmp_path / "run"), progress=False, log_every=4, warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_mcm_learns_concepts(tmp_path):
    """A few hundred steps: the loss falls and concept macro-F1 beats chance clearly."""
    from mcm_core.evaluate import concept_metrics, predict_concepts
    from mcm_core.data import load_dataset

    cfg = config(tmp_path, steps=300, batch_size=32, lr=2e-3, warmup_steps=20, log_every=25,
                 data={"size": 4096}, mask_ratio=0.5)
    result = fit(cfg)
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-25:]) / 25 < 0.6 * sum(losses[:25]) / 25
    test = load_dataset("shapes", split="test", size=512)
    logits, targets = predict_concepts(result.model, test)
    report = concept_metrics(logits, targets)
    # chance: predicting by the prior gives macro-F1 well under 0.5 on these concepts
    assert report.macro["f1"] > 0.6, report


def test_resume_continues_the_same_loss_curve(tmp_path):
    full = fit(config(tmp_path / "a", steps=12))
    first = fit(config(tmp_path / "b", steps=12), until=8)  # interrupted after step 8
    assert [r["loss"] for r in first.history] == [r["loss"] for r in full.history[:8]]
    resumed = fit(config(tmp_path / "b", steps=12), resume=True)
    assert [r["step"] for r in resumed.history] == list(range(12))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    lines = (tmp_path / "b" / "run" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(12))


def test_resume_with_other_settings_is_refused_unless_allowed(tmp_path):
    fit(config(tmp_path, steps=6), until=2)
    with pytest.raises(ValueError, match=r"trained with other settings \(lr: 0.001 -> 0.002; mask_ratio: 0.5 -> "
                                         r"0.25\); resume with the run's own config"):
        fit(config(tmp_path, steps=6, lr=2e-3, mask_ratio=0.25), resume=True)
    fit(config(tmp_path, steps=6, device="cpu", log_every=2), resume=True, until=3)  # runtime fields may change
    resumed = fit(config(tmp_path, steps=6, lr=2e-3), resume=True, allow_config_change=True)
    assert [r["step"] for r in resumed.history] == list(range(6))
    fresh = fit(config(tmp_path / "fresh", steps=6, lr=2e-3))  # the new schedule applies from the resumed step
    assert [r["lr"] for r in resumed.history[3:]] == pytest.approx([r["lr"] for r in fresh.history[3:]])
    assert [r["lr"] for r in resumed.history[:3]] != pytest.approx([r["lr"] for r in fresh.history[:3]])


def test_patch_embed_learning_rate_scale(tmp_path):
    """patch_embed_lr_scale gives the patch embedding its own groups at that multiple of the schedule's lr,
    survives a resume, and cannot change within a run."""
    cfg = config(tmp_path, steps=4, lr=1e-3, patch_embed_lr_scale=3.0)
    trainer = Trainer(cfg)
    groups = trainer.optimizer.param_groups
    embed = {id(p) for p in trainer.unwrapped.encoder.patch_embed.parameters()}
    for group in groups:
        in_embed = {id(p) in embed for p in group["params"]}
        assert len(in_embed) == 1 and group["lr_scale"] == (3.0 if in_embed.pop() else 1.0)
        assert group["lr"] == pytest.approx(group["lr_scale"] * 1e-3 * lr_lambda(cfg)(0))
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in trainer.unwrapped.parameters() if p.requires_grad)
    fit(cfg)
    resumed = Trainer(config(tmp_path, steps=6, lr=1e-3, patch_embed_lr_scale=3.0))
    resumed.resume(tmp_path / "run" / "checkpoint.safetensors", allow_config_change=True)  # steps changed
    lrs = sorted({round(g["lr"] / g["lr_scale"], 12) for g in resumed.optimizer.param_groups})
    assert len(lrs) == 1 and lrs[0] == pytest.approx(1e-3 * lr_lambda(resumed.cfg)(4))
    with pytest.raises(ValueError, match="patch_embed_lr_scale=3.0"):
        Trainer(config(tmp_path, steps=6, lr=1e-3)).resume(tmp_path / "run" / "checkpoint.safetensors",
                                                           allow_config_change=True)


def test_a_setting_added_later_at_its_default_is_no_change():
    """Checkpoints from before a TrainConfig field existed resume when the field keeps its default."""
    from mcm_core.config import config_changes

    saved = TrainConfig().to_dict()
    del saved["patch_embed_lr_scale"]
    assert config_changes(saved, TrainConfig().to_dict()) == []
    assert config_changes(saved, TrainConfig(patch_embed_lr_scale=2.0).to_dict()) == [
        "patch_embed_lr_scale: '<missing>' -> 2.0"]


def test_same_seed_same_curve_other_seed_other_curve(tmp_path):
    a = fit(config(tmp_path / "a", method="mae", mask_ratio=0.75, steps=6))
    b = fit(config(tmp_path / "b", method="mae", mask_ratio=0.75, steps=6))
    c = fit(config(tmp_path / "c", method="mae", mask_ratio=0.75, steps=6, seed=1))
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert [r["loss"] for r in a.history] != [r["loss"] for r in c.history]


def test_outputs_written_and_checkpoint_loads(tmp_path):
    result = fit(config(tmp_path, steps=4))
    run = tmp_path / "run"
    assert {"checkpoint.safetensors", "checkpoint.json", "config.yaml", "history.jsonl", "versions.json"} <= {
        p.name for p in run.iterdir()}
    model, info = load_checkpoint(result.checkpoint)
    assert info.train["step"] == 4 and info.method == "mcm"
    assert model.cfg.num_concepts == 13 and model.cfg.concept_names[0] == "circle"


@pytest.mark.parametrize("masking, affinity", [("block", "tokens"), ("hierarchical", "tokens"),
                                               ("hierarchical", "attention")])
def test_every_masking_strategy_trains(tmp_path, masking, affinity):
    result = fit(config(tmp_path, masking=masking, hierarchy_affinity=affinity, steps=4))
    assert len(result.history) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


def test_masks_differ_between_steps(tmp_path):
    trainer = Trainer(config(tmp_path))
    images = torch.rand(16, 3, 32, 32)
    first = trainer.make_mask(images)
    trainer.step = 1
    second = trainer.make_mask(images)
    trainer.step = 0
    assert not torch.equal(first, second)
    assert torch.equal(first, trainer.make_mask(images))


def test_nan_loss_stops_with_the_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, steps=12, checkpoint_every=4)
    trainer = Trainer(cfg)
    real_step = trainer.train_step

    def poisoned(images, targets):
        metrics = real_step(images, targets)
        if trainer.step == 6:
            metrics["loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 6.*last good checkpoint"):
        trainer.run()
    _, info = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert info.train["step"] == 4


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    f = lr_lambda(cfg)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(50) < f(10) and abs(f(100) - 0.01) < 1e-6


def test_sampler_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(100, 10, seed=3, start=0, steps=25))
    tail = list(StepBatchSampler(100, 10, seed=3, start=17, steps=25))
    assert full[17:] == tail
    assert sorted(sum(full[:10], [])) == list(range(100))  # one epoch covers every image once
    assert full[:10] != full[10:20]  # a new order each epoch
    shards = [list(StepBatchSampler(100, 10, 3, 0, 5, rank=r, world_size=2)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(b) for b in full[:5]]


def test_bad_images_range_is_reported(tmp_path):
    trainer = Trainer(config(tmp_path))
    from mcm_core.batches import check_batch
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_batch(torch.full((2, 3, 32, 32), 255.0))
    assert trainer.model.cfg.img_size == 32


def test_supervised_reference_trains(tmp_path):
    result = fit(config(tmp_path, method="supervised", steps=4, mask_ratio=0.0))
    assert len(result.history) == 4 and "concept" in result.history[0]


def test_a_failing_final_evaluation_keeps_the_trained_checkpoint(tmp_path):
    def broken_eval(model, step):
        raise RuntimeError("evaluation bug")

    with pytest.raises(RuntimeError, match="evaluation bug"):
        fit(config(tmp_path, steps=3), eval_fn=broken_eval)
    _, info = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert info.train["step"] == 3  # the weights of the finished run were saved before evaluating
