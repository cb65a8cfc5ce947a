"""The training-step benchmark runs end to end on the CPU and reports what it promises (no timing checks)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

FIELDS = ("method", "preset", "mask_ratio", "batch_size", "images_per_s", "step_ms", "gflop_per_image", "tflops",
          "device", "torch", "timm", "mcm_core", "precision", "compile", "date", "forward_gflop_per_image",
          "encoder_forward_gflop_per_image", "encoder_forward_share", "forward_gflop_by_part")



@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("bench_train")


def check_row(row: dict) -> None:
    for name in FIELDS:
        assert name in row, name
    assert row["preset"] == "tiny" and row["batch_size"] == 4 and row["device"]
    from mcm_core.devices import cpu_bf16_supported

    # CPU: bf16 autocast where bf16 matrix products are native (precision=auto), never compiled unless asked
    assert row["precision"] == ("bf16" if cpu_bf16_supported() else "fp32") and row["compile"] is False
    assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["tflops"] > 0
    assert row["peak_rss_mib"] > 0 and "peak_mem_gib" not in row
    assert row["gflop_per_image"] > row["forward_gflop_per_image"] >= row["encoder_forward_gflop_per_image"] > 0
    assert 0 < row["encoder_forward_share"] <= 1
    assert math.isclose(sum(row["forward_gflop_by_part"].values()), row["forward_gflop_per_image"], rel_tol=1e-3)


def test_every_method_at_the_tiny_preset_and_mcm_cost_falls_with_the_mask_ratio(bench, benchmark_script, tmp_path,
                                                                                 capsys):
    out = tmp_path / "bench.jsonl"
    common = ["--device", "cpu", "--presets", "tiny", "--batch-size", "4", "--steps", "1", "--warmup", "0",
              "--out", str(out)]
    try:
        rows = bench.main(["--methods", "mae", "micl", "latent_mim", *common])
        sweep = bench.main(["--methods", "mcm", "--mask-ratios", "0", "0.25", "0.5", "0.75", "0.9", *common])
    finally:
        torch.set_num_threads(1)  # as conftest.py set it
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed == written == rows + sweep  # one JSON line per run, printed and appended
    assert [r["method"] for r in rows] == ["mae", "micl", "latent_mim"]
    assert [r["mask_ratio"] for r in rows] == [0.75, 0.75, 0.75]  # the papers' settings at 64 patches
    for row in rows + sweep:
        check_row(row)
    assert [r["mask_ratio"] for r in sweep] == [0.0, 0.25, 0.5, 0.75, 0.9]
    for key in ("gflop_per_image", "forward_gflop_per_image", "encoder_forward_gflop_per_image",
                "encoder_forward_share"):
        values = [r[key] for r in sweep]
        assert values == sorted(values, reverse=True) and len(set(values)) == len(values), key
    # The encoder's cost falls with the visible patches (64, 48, 32, 16, 6), plus a little for CLS and attention.
    full = sweep[0]["encoder_forward_gflop_per_image"]
    for row in sweep[1:]:
        assert row["encoder_forward_gflop_per_image"] / full == pytest.approx(row["visible_patches"] / 64, abs=0.04)
    check_report(benchmark_script("bench_report"), out, rows + sweep, tmp_path)


def check_report(report, jsonl: Path, rows: list[dict], tmp_path: Path) -> None:
    """bench_report.py turns the JSON lines into a fenced table (prose around it kept) and a plot."""
    page, png = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img" / "bench.png"
    page.parent.mkdir()
    page.write_text("# Benchmarks\n\nHand-written prose.\n")
    report.main([str(jsonl), "--section", "cpu_methods", "--page", str(page), "--plot", str(png)])
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written prose.\n")
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == [report.NAMES[r["method"]] for r in rows]
    assert f"{rows[0]['images_per_s']:,.1f}" in table[0] and "(img/bench.png)" in text
    assert png.stat().st_size > 10_000
    report.main([str(jsonl), "--section", "cpu_methods", "--page", str(page)])  # re-run: replaced, not appended
    assert page.read_text().count("<!-- begin generated: cpu_methods -->") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(SystemExit):
        report.main([str(bad), "--section", "x", "--page", str(page)])


def test_paper_settings_and_bad_settings(bench, capsys):
    assert bench.paper_setting("mcm", "base") == (0.25, {})
    assert bench.paper_setting("micl", "base") == (0.91, {})  # 9 patches per view, as MiCL's code at 0.9
    from mcm_core.models.micl import view_size
    assert view_size(196, 0.91) == 9
    assert bench.paper_setting("latent_mim", "large") == (0.9, {"decoder_depth": 3, "patch_gap": 4, "projector_depth": 3,
                                                                "projector_dim": 4096, "target_projector": True})
    assert bench.paper_setting("latent_mim", "tiny") == (0.75, {})
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--methods", "latent_mim", "--mask-ratios", "0"])  # nothing hidden to predict
    assert "at least 2" in capsys.readouterr().err
