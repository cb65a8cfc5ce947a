"""Exporting the encoder to a timm VisionTransformer."""
from __future__ import annotations

import json
import re
import shlex
import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from mcm_core import export
from mcm_core.checkpoint import save_checkpoint
from mcm_core.cli import main
from mcm_core.data import load_dataset
from mcm_core.data.imageops import load_rgb
from mcm_core.export import export_timm, load_timm, save_timm
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


# ---------------------------------------------------------------------------- timm hand-off
README = Path(__file__).resolve().parents[1] / "README.md"
SQUARE = 48  # a square image larger than the model's 32 px: resized on the way in


def readme_blocks(heading: str = "## Use the encoder in timm") -> dict[str, str]:
    """The README section's fenced code blocks by language (the snippet the README shows, verbatim)."""
    text = README.read_text()
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S))


def square_png(path: Path, seed: int = 0) -> Path:
    """A shapes image rendered at 48 px, saved as a PNG."""
    image, _ = load_dataset("shapes", split="test", image_size=SQUARE, size=4, seed=seed)[1]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def offline(monkeypatch):
    """No network: timm must read the exported file, never download (any connection raises)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the timm hand-off tried to open a network connection")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_exported_vit_carries_the_training_data_config(tmp_path):
    model = make("mcm")
    vit = export_timm(model).eval()
    assert vit.default_cfg is vit.pretrained_cfg and vit.pretrained_cfg["num_classes"] == 0
    config = timm.data.resolve_model_data_config(vit)
    assert config == {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0),
                      "std": (1.0, 1.0, 1.0), "crop_pct": 1.0, "crop_mode": "center"}
    transform = timm.data.create_transform(**config)
    for side in (SQUARE, 32, 20):  # shrunk, as is, enlarged
        path = tmp_path / f"image{side}.png"
        Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        theirs = transform(Image.open(path).convert("RGB"))
        ours = load_rgb(path, 32)  # what load_dataset("folder", ...) gives
        # the same resize: timm's (Pillow) rounds to 8 bits, ours stays in float
        torch.testing.assert_close(theirs, ours, atol=1 / 255 if side != 32 else 0, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(vit(theirs[None]), model.features(theirs[None]), atol=1e-5, rtol=0)
            torch.testing.assert_close(vit(theirs[None]), model.features(ours[None]), atol=5e-3, rtol=0)


@pytest.mark.parametrize("name", ["micl", "latent_mim", "supervised"])
def test_every_method_exports_its_features(name, images):
    model = make(name)
    vit = export_timm(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit(images), model.features(images), atol=1e-5, rtol=0)


def test_readme_timm_snippet_runs_offline(tmp_path, monkeypatch, offline, capsys):
    """The README's two blocks verbatim: ``mcm export`` on a run, then timm alone gives model.features."""
    monkeypatch.chdir(tmp_path)
    model = make("mcm").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = load_dataset("shapes", split="train", size=16)
    batch = torch.stack([data[i][0] for i in range(16)])
    concepts = torch.stack([data[i][1] for i in range(16)])
    for step in range(2):  # a couple of training steps: weights away from their initialisation
        optimizer.zero_grad()
        model(batch, mask_ratio=0.5, concepts=concepts, generator=torch.Generator().manual_seed(step)).loss.backward()
        optimizer.step()
    model.eval()
    save_checkpoint(tmp_path / "runs" / "mcm50" / "checkpoint.safetensors", model, train={"step": 2})
    square_png(tmp_path / "image.png")
    blocks = readme_blocks()
    command = shlex.split(blocks["bash"].strip())
    assert command[:3] == [".venv/bin/python", "-m", "mcm_core"]
    assert main(command[3:]) == 0
    printed = capsys.readouterr().out
    namespace: dict = {}
    exec(compile(blocks["python"], "README.md", "exec"), namespace)
    pixels = namespace["transform"](Image.open("image.png").convert("RGB"))
    with torch.no_grad():
        same_input = model.features(pixels[None])
        expected = model.features(load_rgb(tmp_path / "image.png", 32)[None])  # our loader's tensor
    assert namespace["features"].shape == (1, model.cfg.embed_dim)
    torch.testing.assert_close(namespace["features"], same_input, atol=1e-5, rtol=0)
    torch.testing.assert_close(namespace["features"], expected, atol=5e-3, rtol=0)  # inputs within 1/255
    spec = json.loads((tmp_path / "encoder.json").read_text())
    assert spec["create_model"] in printed and spec["source"]["method"] == "mcm"
    assert Path(spec["pretrained_cfg_overlay"]["file"]) == (tmp_path / "encoder.safetensors").resolve()
    vit = eval(spec["create_model"], {"timm": timm}).eval()  # the printed call, as written
    assert timm.data.resolve_model_data_config(vit)["input_size"] == (3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(expected.new_zeros(1, 3, 32, 32) + 0.5),
                                   model.features(expected.new_zeros(1, 3, 32, 32) + 0.5), atol=1e-5, rtol=0)


def test_save_timm_pth_and_a_call_that_does_not_reproduce_the_encoder(tmp_path, monkeypatch, offline, images):
    model = make("mae")
    spec = save_timm(model, tmp_path / "encoder.pth")
    vit = load_timm(spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit(images), model.features(images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_timm(model, tmp_path / "encoder.bin")
    kwargs = export.create_model_kwargs
    for change, why in (({"global_pool": "avg"}, "it cannot load"), ({"act_layer": "relu"}, "features differ")):
        monkeypatch.setattr(export, "create_model_kwargs", lambda cfg, change=change: {**kwargs(cfg), **change})
        with pytest.raises(RuntimeError, match=f"does not reproduce the encoder \\({why}"):
            save_timm(model, tmp_path / "other.safetensors")
        assert not (tmp_path / "other.safetensors").exists() and not (tmp_path / "other.json").exists()


def test_export_command_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["export", "--checkpoint", str(missing), "--output", str(tmp_path / "e.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint.safetensors", make("micl"), train={"step": 0})
    assert main(["export", "--checkpoint", str(run), "--output", str(tmp_path / "e.onnx")]) == 2
    assert "--output must be a .safetensors" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--output", str(run / "checkpoint.safetensors")]) == 2
    assert "would overwrite the checkpoint" in capsys.readouterr().err
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(damaged), "--output", str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcm export: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "e.json").exists()
    assert main(["export", "--help"]) == 0
    assert "--output" in capsys.readouterr().out
