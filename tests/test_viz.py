"""Figure functions (mcm_core.viz) and notebook helpers (mcm_core.workbook): fast, Agg backend."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from mcm_core import viz
from mcm_core.config import TrainConfig
from mcm_core.evaluate import concept_metrics
from mcm_core.workbook import (
    Range, checkpoint_matches, injected_parameters, notebook_params, resolve_params, setup,
)

PATCH = 4


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # 4x4 grid of 4-px patches


@pytest.fixture
def mask() -> torch.Tensor:
    m = torch.zeros(3, 16, dtype=torch.bool)
    m[:, :8] = True  # top half hidden
    return m


# --------------------------------------------------------------------------- images
def test_show_images_one_axes_per_image(images):
    fig = viz.show_images(torch.cat([images, images]), titles=list("abcdef"), ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # 2 rows of 4, the two spare panels removed
    assert fig.axes[1].get_title() == "b"


def test_show_images_accepts_grey_and_numpy(images):
    assert len(viz.show_images(images[:, :1].numpy()).axes) == 3


@pytest.mark.parametrize("bad", [torch.rand(3, 16, 16), torch.rand(2, 4, 16, 16), torch.rand(0, 3, 8, 8)])
def test_show_images_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="images"):
        viz.show_images(bad)


def test_show_images_title_count(images):
    with pytest.raises(ValueError, match="2 titles for 3 images"):
        viz.show_images(images, titles=["a", "b"])


def test_mask_overlay_greys_hidden_patches_only(images, mask):
    out = viz.mask_overlay(images, mask, PATCH, grey=0.5)
    assert out.shape == (3, 16, 16, 3)
    assert (out[:, :8] == 0.5).all()  # hidden: top two patch rows = 8 pixel rows
    assert torch.allclose(torch.from_numpy(out[:, 8:]), images.permute(0, 2, 3, 1)[:, 8:])


def test_show_masked_rows(images, mask):
    assert len(viz.show_masked(images, mask, PATCH).axes) == 3 * 2
    fig = viz.show_masked(images, mask, PATCH, reconstructions={"a": images, "b": images}, titles=["x", "y", "z"])
    assert len(fig.axes) == 3 * 4


@pytest.mark.parametrize("bad_mask, match", [
    (torch.zeros(3, 15, dtype=torch.bool), r"\(3, 16\)"),  # wrong L
    (torch.zeros(3, 16), "bool"),  # float mask
    (torch.zeros(2, 16, dtype=torch.bool), r"\(3, 16\)"),  # wrong N
])
def test_show_masked_rejects_bad_masks(images, bad_mask, match):
    with pytest.raises(ValueError, match=match):
        viz.show_masked(images, bad_mask, PATCH)


def test_show_masked_rejects_bad_patch_and_reconstruction(images, mask):
    with pytest.raises(ValueError, match="does not divide"):
        viz.show_masked(images, mask, 5)
    with pytest.raises(ValueError, match="reconstruction"):
        viz.show_masked(images, mask, PATCH, reconstructions=images[:2])


def test_compare_masks(images, mask):
    fig = viz.compare_masks(images, {"top": mask, "bottom": mask.flip(1)}, PATCH)
    assert len(fig.axes) == 3 * 3
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.compare_masks(images, {}, PATCH)


# --------------------------------------------------------------------------- history and concepts
HISTORY = [{"step": s, "loss": 1.0 / (s + 1), "recon": 0.5, "lr": 1e-3} for s in range(30)]


def test_plot_history_one_axes_per_key():
    assert len(viz.plot_history(HISTORY).axes) == 1
    assert len(viz.plot_history(HISTORY, keys=("loss", "recon"), smooth=0).axes) == 2


def test_plot_history_errors():
    with pytest.raises(KeyError, match="available keys are"):
        viz.plot_history(HISTORY, keys=("concept",))
    with pytest.raises(ValueError, match="empty"):
        viz.plot_history([])
    with pytest.raises(ValueError, match="smooth"):
        viz.plot_history(HISTORY, smooth=1.0)


def test_ema_is_debiased():
    assert viz.ema([2.0, 2.0, 2.0], 0.9).tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_plot_concept_metrics_from_report_and_rows():
    logits = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    report = concept_metrics(logits, targets, names=["red", "blue", "square"])
    fig = viz.plot_concept_metrics(report)
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["red", "blue", "square"]
    assert len(viz.plot_concept_metrics(report.per_concept, metrics=("f1",)).axes) == 1
    with pytest.raises(KeyError, match="unknown metric"):
        viz.plot_concept_metrics(report, metrics=("f2",))
    with pytest.raises(ValueError, match="ConceptReport"):
        viz.plot_concept_metrics([])


# --------------------------------------------------------------------------- files
def test_save_figure_writes_png(tmp_path, monkeypatch, images):
    target = tmp_path / "figs" / "nested"
    monkeypatch.setenv("MCM_FIGURES_DIR", str(target))
    path = viz.save_figure(viz.show_images(images), "01_test")
    assert path == target / "01_test.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_figure_rejects_bad_names(tmp_path, monkeypatch, images):
    monkeypatch.setenv("MCM_FIGURES_DIR", str(tmp_path))
    fig = viz.show_images(images)
    for bad in ("../escape", "a/b", "", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            viz.save_figure(fig, bad)
    with pytest.raises(TypeError, match="Figure"):
        viz.save_figure("not a figure", "x")


def test_figures_dir_default_is_under_the_current_directory(monkeypatch, tmp_path):
    """Never the package's location: figures/ under the current directory, $MCM_FIGURES_DIR, or the caller's folder."""
    monkeypatch.delenv("MCM_FIGURES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert viz.figures_dir() == tmp_path / "figures"
    monkeypatch.setenv("MCM_FIGURES_DIR", str(tmp_path / "env"))
    assert viz.figures_dir() == tmp_path / "env"
    assert viz.figures_dir(tmp_path / "mine") == tmp_path / "mine"


def test_save_figure_into_a_folder_the_caller_chooses(monkeypatch, tmp_path, images):
    monkeypatch.setenv("MCM_FIGURES_DIR", str(tmp_path / "env"))
    path = viz.save_figure(viz.show_images(images), "01_test", folder=tmp_path / "mine")
    assert path == tmp_path / "mine" / "01_test.png" and path.stat().st_size > 0
    assert not (tmp_path / "env").exists()


def test_viz_never_uses_pyplot():
    import sys
    import subprocess
    code = "import mcm_core.viz, sys; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- notebook parameters
SPEC = {
    "smoke": ((bool, type(None)), None),
    "seed": (int, None),
    "device": (str, None),
    "dataset": (str, ("shapes", "digits")),
    "mask_ratio": (float, Range(0.0, 1.0)),
}
GOOD = {"smoke": None, "seed": 0, "device": "cpu", "dataset": "shapes", "mask_ratio": 0.5}


def test_resolve_params_resolves_smoke_and_device(monkeypatch):
    monkeypatch.setenv("MCM_SMOKE", "1")
    out = resolve_params({**GOOD, "device": "auto", "mask_ratio": 0}, SPEC)
    assert out["smoke"] is True and out["device"] in ("cpu", "cuda")
    assert isinstance(out["mask_ratio"], float)
    monkeypatch.delenv("MCM_SMOKE")
    assert resolve_params(GOOD, SPEC)["smoke"] is False
    assert resolve_params({**GOOD, "smoke": True}, SPEC)["smoke"] is True


@pytest.mark.parametrize("change, error, match", [
    ({"mask_ratio": 1.5}, ValueError, r"'mask_ratio' must be in \[0, 1\), got 1.5"),
    ({"dataset": "cifar"}, ValueError, r"'dataset' must be one of \['digits', 'shapes'\]"),
    ({"seed": "0"}, TypeError, "'seed' must be int"),
    ({"seed": True}, TypeError, "'seed' must be int"),
    ({"smoke": 1}, TypeError, "'smoke' must be bool or None"),
    ({"mask_ratoi": 0.5}, ValueError, "unknown parameter.*did you mean 'mask_ratio'"),
])
def test_resolve_params_errors_name_the_parameter(change, error, match):
    with pytest.raises(error, match=match):
        resolve_params({**GOOD, **change}, SPEC)


def test_resolve_params_missing_name():
    with pytest.raises(ValueError, match=r"\['seed'\] are not defined"):
        resolve_params({k: v for k, v in GOOD.items() if k != "seed"}, SPEC)


def test_injected_parameters_are_read_from_history():
    history = ["import os", "# Parameters\nsmoke = True\nmask_ratoi = 0.3\n", "x = 1"]
    assert injected_parameters(history) == {"smoke": True, "mask_ratoi": 0.3}
    assert injected_parameters(["smoke = True"]) == {}
    values = notebook_params({**GOOD, "mask_ratoi": 0.3, "other": 1}, SPEC, history)
    assert set(values) == set(SPEC) | {"mask_ratoi"}  # "other" is not a parameter and not injected
    with pytest.raises(ValueError, match="unknown parameter"):
        resolve_params(values, SPEC)


def test_setup_seeds_everything():
    import random
    import numpy as np
    gen = setup(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    setup(3)
    gen = torch.Generator().manual_seed(3)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())


def test_checkpoint_matches(tmp_path):
    from mcm_core.checkpoint import save_checkpoint
    from mcm_core.models import build_model

    cfg = TrainConfig(steps=5, batch_size=4, out_dir=str(tmp_path), progress=False)
    path = tmp_path / "checkpoint.safetensors"
    assert not checkpoint_matches(path, cfg)
    model = build_model("mae", "tiny", depth=2, decoder_depth=1)
    save_checkpoint(path, model, train={"step": 5, "config": {**cfg.to_dict(), "device": "cuda"}})
    assert checkpoint_matches(path, cfg)  # device differs only
    assert not checkpoint_matches(path, TrainConfig(steps=6, batch_size=4, out_dir=str(tmp_path)))
    path.write_bytes(b"junk")
    assert not checkpoint_matches(path, cfg)
