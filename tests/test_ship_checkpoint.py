"""scripts/ship_checkpoint.py: the record of a second seed and the learning-curve table of the assets README."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ship():
    spec = importlib.util.spec_from_file_location("ship_checkpoint", ROOT / "scripts" / "ship_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation(step: int, psnr: float) -> dict:
    return {"step": step, "concept_f1": 0.9, "psnr_05": psnr, "colour_fidelity_05": 0.8, "edit_following_05": 0.79,
            "psnr_09": psnr - 3, "colour_fidelity_09": 0.4, "edit_following_09": 0.38}


def test_curve_table_has_one_row_per_evaluated_step(ship):
    lines = ship.curve_table([evaluation(1000, 17.5), {"step": 1500, "concept_f1": 0.9}, evaluation(2000, 18.25)])
    assert lines[0].startswith("| step | macro-F1 | PSNR@0.5")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 1,000", "| 2,000"]  # rows without measures skipped
    assert "| 18.25 |" in lines[-1] and "| 15.25 |" in lines[-1]
    assert ship.curve_table([]) == []


def test_readme_lists_the_learning_curve(ship):
    curve = {"macro_f1": 0.99, "edit_success_075": 0.5,
             "curve": [{"mask_ratio": 0.5, "psnr": 20.0, "colour_fidelity": 0.8, "edit_following": 0.8}]}
    cfg = {"method": "mcm", "preset": "tiny", "steps": 2000, "seed": 0, "eval_size": 600, "model": {"depth": 4}}
    text = ship.readme(cfg, {}, 3.4, {"float32": curve, "float16": curve}, 600.0, [evaluation(2000, 18.25)])
    assert "## Learning curve" in text and "| 2,000 |" in text and "--set model.depth=4" in text
    assert "## Learning curve" not in ship.readme(cfg, {}, 3.4, {"float32": curve, "float16": curve}, None)


def test_record_is_json_with_the_runs_config_and_measures(ship, tmp_path):
    cfg = {"seed": 1, "steps": 2000}
    info = SimpleNamespace(train={"step": 2000, "config": cfg, "evaluations": [evaluation(2000, 18.0)]})
    measured = {"macro_f1": 0.98, "edit_success_075": 0.5, "curve": []}
    row = json.loads(json.dumps(ship.record(tmp_path / "reference_seed1", info, measured, 930.0)))
    assert row["run"] == "reference_seed1" and row["seed"] == 1 and row["steps"] == 2000
    assert row["test"] == measured and row["train_wall_s"] == 930.0 and row["evaluations"][0]["step"] == 2000
    assert {"date", "torch", "threads"} <= set(row)
