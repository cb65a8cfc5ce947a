"""The comparison script runs end to end on a tiny budget; its summary and plot are pure functions."""
from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from mcm_core.analysis.compare import directions, markdown_table, summarize  # noqa: E402
from mcm_core.evaluate import comparison  # noqa: E402
from mcm_core.evaluate.comparison import ComparisonSettings, load_rows  # noqa: E402
from mcm_core.viz.compare import plot_accuracy_vs_flops  # noqa: E402


def fake_rows() -> list[dict]:
    return [
        {"key": "mae", "label": "MAE", "dataset": "fashion_mnist", "train_tflop": 2.0, "wall_s": 10.0,
         "knn_acc": 0.6, "probe_acc": 0.7},
        {"key": "mae", "label": "MAE", "dataset": "shapes", "train_tflop": 2.0, "wall_s": 5.0, "concept_f1": 0.5},
        {"key": "micl", "label": "MiCL", "dataset": "fashion_mnist", "train_tflop": 1.0, "wall_s": 4.0,
         "knn_acc": 0.65, "probe_acc": 0.6},
        {"key": "micl", "label": "MiCL", "dataset": "shapes", "train_tflop": 1.0, "wall_s": 3.0, "concept_f1": 0.4},
        {"key": "latent_mim", "label": "Latent MIM", "skipped": "ImportError: not yet"},
    ]


def test_summarize_merges_the_two_runs_of_each_method():
    summary = summarize(fake_rows())
    assert [s["key"] for s in summary] == ["mae", "micl", "latent_mim"]
    assert summary[0]["knn_acc"] == 0.6 and summary[0]["concept_f1"] == 0.5 and summary[0]["wall_s"] == 15.0
    assert summary[2]["skipped"] == "ImportError: not yet" and summary[2]["knn_acc"] is None


def test_summarize_rejects_rows_without_a_method():
    with pytest.raises(ValueError, match="needs 'key' and 'label'"):
        summarize([{"dataset": "shapes"}])


def test_directions_are_computed_from_the_numbers():
    verdicts = {d["key"]: d["verdict"] for d in directions(summarize(fake_rows()))}
    assert verdicts["micl"] == "holds"  # kNN 0.65 > MAE's 0.6
    assert verdicts["latent_mim"].startswith("not measured (ImportError")
    rows = fake_rows()
    rows[2]["knn_acc"] = 0.5
    assert {d["key"]: d["verdict"] for d in directions(summarize(rows))}["micl"] == "does not hold"


def test_markdown_table_has_one_row_per_method_with_its_verdict():
    lines = markdown_table(summarize(fake_rows()))
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| MAE | 0.600 | 0.700 | 0.500 | 2.000 | 15.0 | baseline |")
    assert lines[3].endswith("| holds |") and "skipped: ImportError: not yet" in lines[4]


def test_settings_are_checked_and_quick_shrinks_the_sets():
    quick = ComparisonSettings(quick=True).checked()
    assert (quick.train_size, quick.eval_train, quick.eval_test) == (512, 160, 80)
    assert ComparisonSettings().checked() == ComparisonSettings()
    assert "device" not in quick.row() and quick.row()["preset"] == "tiny"
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        ComparisonSettings(steps=0).checked()
    with pytest.raises(ValueError, match="the features data"):
        ComparisonSettings(dataset="shapes").checked()


def test_the_script_names_the_bad_flag(benchmark_script, capsys):
    with pytest.raises(SystemExit):
        benchmark_script("compare_methods").parse_args(["--eval-test", "0"])
    assert "--eval-test must be >= 1, got 0" in capsys.readouterr().err


def test_plot_has_one_marker_per_method_and_names_the_skipped():
    fig = plot_accuracy_vs_flops(summarize(fake_rows()))
    axes = fig.axes
    assert len(axes) == 3
    assert all(len(ax.collections) == 2 for ax in axes)  # MAE and MiCL, not the skipped one
    assert "skipped: Latent MIM" in fig._suptitle.get_text()
    assert axes[0].get_xlabel().startswith("training TFLOP")


def test_plot_rejects_unknown_metrics_and_empty_input():
    with pytest.raises(ValueError, match="unknown or no metric"):
        plot_accuracy_vs_flops(summarize(fake_rows()), metrics=["fid"])
    with pytest.raises(ValueError, match="no method has results"):
        plot_accuracy_vs_flops(summarize(fake_rows()[-1:]))


def test_script_smoke_every_method_present_or_skipped(tmp_path, monkeypatch, benchmark_script):
    compare = benchmark_script("compare_methods")
    monkeypatch.setattr(comparison, "METHODS", comparison.METHODS + [
        ("ghost", "a method that is not registered", dict(method="no_such_method", masking="random", mask_ratio=None))])
    report, out = tmp_path / "compare.md", tmp_path / "runs"
    assert compare.main(["--steps", "2", "--batch-size", "8", "--quick", "--out", str(out), "--report", str(report)]) == 0
    rows = [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]
    trained = {(r["key"], r["dataset"]) for r in rows if not r.get("skipped")}
    for key in ("mae", "mae_evolved", "mcm", "micl", "latent_mim"):
        skipped = [r for r in rows if r["key"] == key and r.get("skipped")]
        assert skipped or {(key, "fashion_mnist"), (key, "shapes")} <= trained, key
    ghost = next(r for r in rows if r["key"] == "ghost")
    assert "no_such_method" in ghost["skipped"]
    for r in rows:
        if r.get("skipped"):
            continue
        assert r["train_tflop"] > 0 and r["wall_s"] >= 0
        metric = "concept_f1" if r["dataset"] == "shapes" else "knn_acc"
        assert 0 <= r[metric] <= 1
    mae_runs = [r for r in rows if r["key"] in ("mae", "mae_evolved") and r["dataset"] == "fashion_mnist"]
    assert mae_runs[1]["train_tflop"] > mae_runs[0]["train_tflop"]  # the EMA pass of evolved masking is counted
    text = report.read_text()
    assert "| MAE, random masks |" in text and "| Latent MIM |" in text and "skipped: ValueError" in text
    assert "python benchmarks/compare_methods.py --steps 2" in text and "direction hold" in text
    lines = (out / "compare.jsonl").read_text()
    assert compare.main(["--steps", "2", "--batch-size", "8", "--quick", "--out", str(out), "--report", str(report),
                         "--resume"]) == 0  # every run is in the log: nothing is trained again
    assert (out / "compare.jsonl").read_text().count("\n") == lines.count("\n") + 1  # only the ghost's skip row
    settings = compare.parse_args(["--steps", "2", "--batch-size", "8", "--quick"]).settings
    assert rows[0]["settings"] == settings.row()
    assert load_rows(out / "compare.jsonl", settings) is not None
    assert load_rows(out / "compare.jsonl", ComparisonSettings(**{**settings.__dict__, "steps": 3})) is None
