"""The results study script runs end to end on a tiny budget and writes its report."""
from __future__ import annotations

import json

import pytest




@pytest.mark.slow
def test_results_pipeline_smoke(tmp_path, monkeypatch, benchmark_script):
    results = benchmark_script("results")
    small = {"embed_dim": 64, "depth": 2, "num_heads": 2}
    monkeypatch.setattr(results, "SHAPES_RUNS", [
        ("MCM, mask 0", dict(method="mcm", mask_ratio=0.0, model=small)),
        ("MCM, mask 0.5", dict(method="mcm", mask_ratio=0.5, model=small)),
        ("MAE, mask 0.75 + linear concept head", dict(method="mae", mask_ratio=0.75, model=small)),
    ])
    report = tmp_path / "results.md"
    assert results.main(["--steps", "2", "--quick", "--only", "shapes", "--train-size", "256",
                         "--test-size", "64", "--out", str(tmp_path / "runs"), "--report", str(report)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["MCM, mask 0", "MCM, mask 0.5", "MAE, mask 0.75 + linear concept head"]
    assert rows[1]["train_tflop"] < rows[0]["train_tflop"]
    assert 0 <= rows[1]["edit_success"] <= 1
    text = report.read_text()
    assert "| MCM, mask 0.5 |" in text and "## Targets" in text and "python benchmarks/results.py" in text
    report.write_text("# hand-written page\n")
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--report", str(report)]) == 0
    text = report.read_text()  # the same tables from the log, nothing trained, the page's prose kept
    assert text.startswith("# hand-written page\n") and "| MCM, mask 0.5 |" in text and "--report-only" in text
    with pytest.raises(SystemExit, match="no .*results.jsonl; run the study first"):
        results.main(["--report-only", "--out", str(tmp_path / "nothing")])
