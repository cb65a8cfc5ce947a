"""Training config (YAML, overrides, type errors) and checkpoints (round trip, atomicity, clear errors)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mcm_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mcm_core.config import TrainConfig, load_config, parse_overrides
from mcm_core.models import build_model


# ---------------------------------------------------------------- config
def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: mae\nsteps: 50\nmodel:\n  norm_pix_loss: true\n")
    cfg = load_config(path, parse_overrides(["steps=70", "mask_ratio=0.6", "model.depth=4", "progress=false"]))
    assert (cfg.method, cfg.steps, cfg.mask_ratio, cfg.progress) == ("mae", 70, 0.6, False)
    assert cfg.model == {"norm_pix_loss": True, "depth": 4}
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_unknown_keys_and_wrong_types_are_named(tmp_path):
    with pytest.raises(KeyError, match="unknown config key 'stepz'"):
        load_config(overrides={"stepz": "3"})
    with pytest.raises(TypeError, match="'steps' expects int"):
        load_config(overrides={"steps": "many"})
    with pytest.raises(TypeError, match="'lr' must be float"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        TrainConfig(mask_ratio=1.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n")
    with pytest.raises(KeyError, match="unknown config key"):
        load_config(bad)
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["steps"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["mae", "mcm"])
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, "tiny", mask_ratio=0.5).eval()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, train={"step": 3})
    loaded, info = load_checkpoint(path)
    assert info.method == name and info.train["step"] == 3 and "torch" in info.versions
    images = torch.rand(2, 3, 32, 32)
    mask = model.make_mask(images, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images, mask=mask).pred, loaded(images, mask=mask).pred)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["method"] == name and sidecar["config"]["mask_ratio"] == 0.5


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    path = save_checkpoint(tmp_path / "ok.safetensors", build_model("mae"))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged|truncated"):
        load_checkpoint(cut)


def test_save_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = build_model("mae")
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model)
    before = path.read_bytes()

    import mcm_core.checkpoint as ckpt

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with torch.no_grad():
        model.decoder_pred.weight.add_(1.0)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_top_level_api(tmp_path):
    import mcm_core
    model = mcm_core.build_model("mcm", "tiny")
    path = mcm_core.save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, info = mcm_core.load_checkpoint(path)
    assert info.method == "mcm" and type(loaded) is type(model)
    assert mcm_core.export_timm(loaded).num_features == 128
    assert isinstance(mcm_core.__version__, str)


def test_float16_storage_halves_the_file_and_loads_back_as_float32(tmp_path):
    torch.manual_seed(0)
    model = build_model("mcm", "tiny").eval()
    full = save_checkpoint(tmp_path / "full.safetensors", model)
    half = save_checkpoint(tmp_path / "half.safetensors", model, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.predict_concepts(images), model.predict_concepts(images), atol=2e-2, rtol=0)


def test_workbook_checkpoint_prefers_notebook_01_run_then_the_shipped_one(tmp_path, capsys):
    from mcm_core.workbook import SHIPPED_CHECKPOINT, workbook_checkpoint

    assert workbook_checkpoint(tmp_path / "missing") == SHIPPED_CHECKPOINT
    assert "shipped" in capsys.readouterr().out
    run = tmp_path / "01_train_mcm"
    save_checkpoint(run / "checkpoint.safetensors", build_model("mcm", "tiny"))
    assert workbook_checkpoint(run) == run / "checkpoint.safetensors"
    assert workbook_checkpoint(run / "checkpoint.safetensors", quiet=True) == run / "checkpoint.safetensors"
    assert workbook_checkpoint(run, use_reference=True) == SHIPPED_CHECKPOINT  # notebooks 02/03's default
    assert "reference" in capsys.readouterr().out


def test_the_shipped_checkpoint_is_a_trained_mcm_on_shapes():
    from mcm_core.workbook import SHIPPED_CHECKPOINT

    assert SHIPPED_CHECKPOINT.stat().st_size < 8 * 2**20, "the shipped checkpoint should stay a few MB"
    model, info = load_checkpoint(SHIPPED_CHECKPOINT)
    assert info.method == "mcm" and model.cfg.num_concepts == 13 and model.cfg.img_size == 32
    assert info.train["step"] == info.train["config"]["steps"]
    assert info.train["metrics"]["concepts"]["macro"]["f1"] > 0.5  # measured when it was made, see assets/README.md
    measured = info.train["test_measures"]  # scripts/ship_checkpoint.py, on the held-out test split
    assert [row["mask_ratio"] for row in measured["curve"]] == [0.1, 0.25, 0.5, 0.75, 0.9]
