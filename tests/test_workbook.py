"""The notebook helpers of mcm_core.workbook: one call for the parameters cell, and train_or_load.

``parameters`` is driven with a plain dict as the notebook's ``globals()`` and papermill's injected
cell given as history; ``train_or_load`` trains a tiny MCM (2 steps of batch 8 on 64 shapes images).
"""
from __future__ import annotations

import pytest
import torch

from mcm_core import workbook
from mcm_core.config import TrainConfig
from mcm_core.workbook import STANDARD, Range, parameters, spec_entry, train_or_load
from mcm_core.workbook.params import SMOKE_ENV
from mcm_core.workbook.training import evaluated_steps, run_config

SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_num_heads": 2}
SPEC = {"preset": ["tiny", "small", "base"], "mask_ratio": Range(0.0, 1.0), "steps": Range(1, 10**7),
        "lr": Range(1e-6, 1.0), "checkpoint_path": str}


def cell(**changes) -> dict:
    """A notebook's namespace after its parameters cell, with ``changes``."""
    return {"smoke": False, "seed": 0, "device": "cpu", "preset": "tiny", "mask_ratio": 0.75, "steps": 300,
            "lr": 0.003, "checkpoint_path": "../runs/demo", "In": [], **changes}


# ---------------------------------------------------------------------------- parameters
def test_parameters_checks_resolves_and_writes_the_values_back(monkeypatch, capsys):
    monkeypatch.delenv(SMOKE_ENV, raising=False)
    namespace = cell(smoke=None, mask_ratio=0)
    params = parameters(namespace, SPEC, smoke_caps={"steps": 6}, smoke_folder="checkpoint_path", history=[])
    assert list(params) == [*STANDARD, *SPEC]  # smoke, seed, device first, then the notebook's own
    assert params["smoke"] is False and params["mask_ratio"] == 0.0 and isinstance(params["mask_ratio"], float)
    assert params["steps"] == 300 and params["checkpoint_path"] == "../runs/demo"  # no smoke: untouched
    assert all(namespace[name] == value for name, value in params.items())  # the notebook's names hold them
    assert capsys.readouterr().out.strip() == ("smoke=False seed=0 device=cpu preset=tiny mask_ratio=0.0 "
                                               "steps=300 lr=0.003 checkpoint_path=../runs/demo")


def test_smoke_mode_from_the_environment_caps_the_loops_and_renames_the_run_folder(monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    namespace = cell(smoke=None, steps=3)
    params = parameters(namespace, SPEC, smoke_caps={"steps": 6, "lr": 1e-3}, smoke_folder="checkpoint_path",
                        history=[], quiet=True)
    assert params["smoke"] is True and namespace["smoke"] is True
    assert params["steps"] == 3 and params["lr"] == 1e-3  # min(value, cap)
    assert namespace["checkpoint_path"] == "../runs/demo_smoke"  # a smoke run never replaces a full one


def test_papermill_values_are_checked_and_unknown_injected_names_are_caught():
    injected = ["# Parameters\nsteps = 5\nmask_ratio = 0.5\n"]
    namespace = cell(steps=5, mask_ratio=0.5)
    assert parameters(namespace, SPEC, history=injected, quiet=True)["steps"] == 5
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'mask_ratoi' \(did you mean 'mask_ratio'\?\)"):
        parameters(cell(mask_ratoi=0.5), SPEC, history=["# Parameters\nmask_ratoi = 0.5\n"], quiet=True)
    with pytest.raises(ValueError, match=r"'mask_ratio' must be in \[0, 1\), got 1.5"):
        parameters(cell(mask_ratio=1.5), SPEC, history=[], quiet=True)
    with pytest.raises(TypeError, match="parameter 'steps' must be int, got 2.5"):
        parameters(cell(steps=2.5), SPEC, history=[], quiet=True)
    with pytest.raises(ValueError, match=r"'preset' must be one of \['base', 'small', 'tiny'\], got 'huge'"):
        parameters(cell(preset="huge"), SPEC, history=[], quiet=True)
    with pytest.raises(ValueError, match=r"parameter\(s\) \['seed'\] are not defined"):
        parameters({k: v for k, v in cell().items() if k != "seed"}, SPEC, history=[], quiet=True)


def test_without_the_standard_parameters_only_the_spec_is_checked():
    assert parameters({"steps": 4}, {"steps": Range(1, 10)}, standard=False, history=[], quiet=True) == {"steps": 4}
    with pytest.raises(ValueError, match=r"smoke_caps / smoke_folder name\(s\) \['batch_size'\] are not parameters"):
        parameters(cell(), SPEC, smoke_caps={"batch_size": 16}, history=[], quiet=True)


@pytest.mark.parametrize("entry, expected", [
    (Range(1, 10), (int, Range(1, 10))),
    (Range(0.0, 1.0), (float, Range(0.0, 1.0))),
    (str, (str, None)),
    (["tiny", "small"], (str, ["tiny", "small"])),
    ([None, 3], ((type(None), int), [None, 3])),
    (((int, type(None)), Range(1, 10)), ((int, type(None)), Range(1, 10))),
    ((bool, None), (bool, None)),
])
def test_spec_entries_have_short_forms(entry, expected):
    assert spec_entry("x", entry) == expected


@pytest.mark.parametrize("entry", [[], "tiny", 3, (bool, type(None)), ("tiny", "small")])
def test_a_bad_spec_entry_names_the_parameter_and_the_forms(entry):
    with pytest.raises(TypeError, match="the spec of parameter 'x' must be a type"):
        spec_entry("x", entry)


# ---------------------------------------------------------------------------- train_or_load
def tiny(**changes) -> TrainConfig:
    settings = {"method": "mcm", "preset": "tiny", "dataset": "shapes", "data": {"size": 64}, "model": SMALL,
                "steps": 2, "batch_size": 8, "device": "cpu", "progress": False}
    return TrainConfig(**{**settings, **changes})


def test_run_config_and_evaluated_steps(tmp_path):
    assert run_config(tiny(), tmp_path / "run").out_dir == str(tmp_path / "run")
    assert run_config(tiny(), tmp_path / "run" / "checkpoint.safetensors").out_dir == str(tmp_path / "run")
    with pytest.raises(ValueError, match="must be a run folder or its checkpoint.safetensors"):
        run_config(tiny(), tmp_path / "mine.safetensors")
    assert evaluated_steps(tiny()) == [2] and evaluated_steps(tiny(eval_every=1), start=True) == [0, 1, 2]
    assert evaluated_steps(TrainConfig(steps=10, eval_every=4)) == [4, 8, 10]


def test_train_or_load_trains_once_loads_the_second_time_and_retrains_when_the_config_differs(tmp_path, capsys):
    folder = tmp_path / "run"

    def eval_fn(model, step):
        return {"weight_sum": float(sum(p.sum() for p in model.parameters()))}

    first = train_or_load(tiny(), folder, eval_fn)
    assert first.trained and first.checkpoint == folder / "checkpoint.safetensors" and first.folder == folder
    assert len(first.history) == 2 and [e["step"] for e in first.evaluations] == [2]
    assert first.series("loss")[0] == [0, 1] and first.wall_seconds > 0
    out = capsys.readouterr().out
    assert out.startswith("trained mcm 2 steps in ") and out.count("\n") == 1 and "replaces" not in out

    second = train_or_load(tiny(progress=True, log_every=5), folder, eval_fn)  # runtime fields may differ
    assert not second.trained and second.wall_seconds is None
    assert second.history == first.history and second.evaluations == first.evaluations
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert capsys.readouterr().out == f"loaded {folder / 'checkpoint.safetensors'}: a finished mcm run of these " \
                                      "settings (2 steps)\n"

    third = train_or_load(tiny(), folder, needs=["records.pt"])  # a file the notebook keeps is missing
    assert third.trained and "it replaces the run that was there" in capsys.readouterr().out
    (folder / "records.pt").write_text("kept by the notebook")
    assert not train_or_load(tiny(), folder, needs=["records.pt"], quiet=True).trained

    changed = train_or_load(tiny(lr=2e-3), folder, quiet=True)
    assert changed.trained and changed.config.lr == 2e-3
    assert not train_or_load(tiny(lr=2e-3), folder, quiet=True).trained
    assert capsys.readouterr().out == ""


def test_watch_builds_the_eval_fn_from_the_trainer_and_evaluates_step_0(tmp_path):
    seen = []

    def watch(trainer):
        seen.append(trainer)
        return lambda model, step: {"step_seen": float(trainer.step)}

    cfg = tiny(eval_every=1, out_dir=str(tmp_path / "watched"))
    run = train_or_load(cfg, watch=watch, quiet=True)
    assert run.trained and len(seen) == 1 and [e["step"] for e in run.evaluations] == [0, 1, 2]
    assert [e["step_seen"] for e in run.evaluations] == [0.0, 1.0, 2.0]
    again = train_or_load(cfg, watch=watch, quiet=True)
    assert not again.trained and len(seen) == 1 and again.evaluations == run.evaluations
    with pytest.raises(ValueError, match="not both"):
        train_or_load(cfg, eval_fn=lambda model, step: {}, watch=watch)


def test_the_package_exports_the_folder_functions_and_the_helpers():
    for name in ("shipped_folder", "input_folder", "is_shipped", "parameters", "Range", "setup", "record_metrics",
                 "checkpoint_matches", "workbook_checkpoint", "SHIPPED_CHECKPOINT", "train_or_load"):
        assert hasattr(workbook, name), name
    assert workbook.SHIPPED_CHECKPOINT.is_file()
