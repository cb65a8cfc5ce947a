"""The recipe study and the CPU step comparison run end to end on tiny budgets (no timing checks)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_study_trains_measures_and_tabulates(benchmark_script, tmp_path, capsys):
    study = benchmark_script("recipe_study")
    out, runs = tmp_path / "rows.jsonl", tmp_path / "runs"
    assert study.main(["--variants", "notebook01", "--seeds", "0", "--steps", "3", "--num-images", "16",
                       "--threads", "1", "--out", str(out), "--save-dir", str(runs)]) == 0
    row = json.loads(out.read_text())
    assert row["variant"] == "notebook01" and row["steps"] == 3 and row["split"] == "val"
    assert [m["mask_ratio"] for m in row["curve"]] == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert 0 <= row["macro_f1"] <= 1 and 0 <= row["edit_success_075"] <= 1
    assert row["config"]["mask_ratio_max"] == 0.9  # the variant's settings are recorded
    assert "| notebook01 | 0 | 3 |" in capsys.readouterr().out
    # Saved runs are re-measured on another split without training.
    assert study.main(["--measure-runs", str(runs / "notebook01_seed0"), "--split", "test", "--num-images", "16",
                       "--threads", "1", "--out", str(out)]) == 0
    again = json.loads(out.read_text().splitlines()[-1])
    assert again["split"] == "test" and again["steps"] == 3 and again["variant"] == "notebook01"
    with pytest.raises(SystemExit, match="unknown variant"):
        study.variant_config("nope", 1, 0, str(tmp_path))


def test_efficiency_runs_are_timed_side_by_side_and_tabulated(benchmark_script, tmp_path, capsys):
    """The efficiency claim's rows: step times measured alternately, fixed-step runs grouped by step count."""
    study = benchmark_script("recipe_study")
    out = tmp_path / "eff.jsonl"
    assert study.main(["--variants", "eff_m0", "eff_m50", "--time-steps", "1", "--threads", "1",
                       "--out", str(out)]) == 0
    timing = json.loads(out.read_text())["step_seconds"]
    assert set(timing) == {"eff_m0", "eff_m50"} and timing["eff_m50"] < timing["eff_m0"]  # half the patches
    assert study.VARIANTS["eff_m0"]["mask_ratio"] == 0.0 and study.VARIANTS["eff_m50"]["mask_ratio_max"] == 0.0
    assert study.main(["--variants", "eff_m50", "--seeds", "0", "--steps", "2", "--num-images", "16",
                       "--threads", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert study.main(["--table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| training mask ratio | steps | step time vs mask 0 |" in table and "| 0.5 | 2 |" in table


def test_runs_take_their_steps_from_a_timing_or_replicate_a_run(benchmark_script, tmp_path):
    """--timing: steps = budget / the side-by-side step time, no calibration; --steps-like: a replicate
    trains the step count of the variant's first run."""
    study = benchmark_script("recipe_study")
    timing = tmp_path / "timing.jsonl"
    timing.write_text(json.dumps({"step_seconds": {"nb01_embed3": 0.1}}) + "\n")
    out = tmp_path / "rows.jsonl"
    common = ["--seeds", "1", "--num-images", "16", "--threads", "1", "--out", str(out)]
    assert study.main(["--variants", "nb01_embed3", "--timing", str(timing), "--budget-s", "2.15", *common]) == 0
    row = json.loads(out.read_text())
    assert row["steps"] == 21 and row["step_s"] == 0.1 and row["config"]["patch_embed_lr_scale"] == 3.0
    assert study.main(["--variants", "nb01_embed3", "--steps-like", str(out), *common]) == 0
    again = json.loads(out.read_text().splitlines()[-1])
    assert again["steps"] == 21 and again["step_s"] == 0.1
    with pytest.raises(SystemExit, match="no --time-steps row timing"):
        study.main(["--variants", "nb01_d4", "--timing", str(timing), *common])


def test_cpu_step_compare_runs_both_trees(benchmark_script, tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    compare = benchmark_script("cpu_step_compare")
    out = tmp_path / "rows.jsonl"
    assert compare.main(["--baseline", "HEAD", "--methods", "mae", "--repeats", "1", "--warmup", "1", "--timed", "1",
                         "--batch-size", "8", "--threads", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["tree"] for r in rows} == {"baseline", "checkout"} and all(r["images_per_s"] > 0 for r in rows)
    assert "| mae | 0.75 |" in compare.table(rows)


def test_pixel_ceiling_oracles_and_unet(benchmark_script, tmp_path, capsys):
    """The oracle predictors bracket what PSNR means; a sharper oracle scores higher; the U-Net row runs."""
    ceiling = benchmark_script("pixel_ceiling")
    out = tmp_path / "ceiling.jsonl"
    ckpt = str(ROOT / "mcm_core" / "assets" / "mcm_tiny_shapes.safetensors")
    assert ceiling.main(["--oracles", "--checkpoints", ckpt, "--num-images", "32", "--out", str(out)]) == 0
    rows = {r["predictor"]: r["psnr"] for r in map(json.loads, out.read_text().splitlines())}
    blurs = [rows[f"true image, blurred sigma {s} px"] for s in ceiling.BLURS]
    assert blurs == sorted(blurs, reverse=True)  # more blur, lower PSNR
    assert rows[ckpt] > rows[f"{ckpt}, flat patches"] - 1.0 and 10 < rows[ckpt] < 40
    assert ceiling.main(["--unet", "--budget-s", "0.5", "--batch-size", "4", "--out", str(out)]) == 0
    unet = json.loads(out.read_text().splitlines()[-1])
    assert unet["predictor"] == "inpainting U-Net" and unet["steps"] >= 1 and unet["split"] == "val"
    with pytest.raises(SystemExit):
        ceiling.main([])


def test_bayes_ceiling_recovers_an_object_on_its_grid(benchmark_script):
    """An image drawn from a grid candidate is recovered from its visible pixels; the script's rows are sane."""
    ceiling = benchmark_script("pixel_ceiling")
    cands = ceiling.candidates(16)
    index = torch.tensor([int((cands["cx"] == 0.5).nonzero()[5])])  # a centred object, some shape / fill / colour
    image = ceiling.render_candidates(cands, index)[0]
    hidden = torch.zeros(32, 32, dtype=torch.bool)
    hidden[12:16, 12:20] = True  # two patches
    pred, fewest, kept = ceiling.bayes_prediction(image, hidden, cands, slack=0)
    assert fewest == 0 and kept >= 1
    assert torch.allclose(pred[:, hidden], image[:, hidden].float() / 255, atol=1e-6)
    row = ceiling.bayes_ceiling(2, [0.5], 16, "test", 0)[0]
    assert 5 < row["psnr"] < 60 and 0 <= row["colour_fidelity"] <= 1 and row["images"] == 2
