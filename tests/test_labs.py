"""Labs (``mcm_core.workbook.labs``): reading and checking lab files, grid expansion, the summary table and
figure, metric recording, and one end-to-end lab run in smoke mode with a failing run."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from matplotlib.figure import Figure

from mcm_core import workbook
from mcm_core.viz.labs import metric_label, plot_lab_summary, series_label
from mcm_core.workbook import folders, lab_runs, labs
from mcm_core.workbook.labs import Lab, LabError, expand_grid, parse_lab, run_ids, summarize_runs
from mcm_core.workbook.metrics import METRICS_ENV, record_metrics

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
LAB_FILES = sorted((ROOT / "labs").glob("*.yaml"))


def minimal(**changes) -> dict:
    """A valid lab definition over notebook 01, with ``changes`` applied (None deletes a key)."""
    data = {"notebook": "01_train_mcm", "grid": {"mask_ratio": [0.25, 0.5]}, "time_budget_s": 60,
            "metrics": ["concept_macro_f1"]}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------------------- grid expansion
def test_expand_grid_is_the_cartesian_product_in_order():
    runs = expand_grid({"mask_ratio": [0.25, 0.5], "seed": [0, 1, 2]})
    assert len(runs) == 6
    assert runs[0] == {"mask_ratio": 0.25, "seed": 0} and runs[1] == {"mask_ratio": 0.25, "seed": 1}
    assert runs[-1] == {"mask_ratio": 0.5, "seed": 2}


@pytest.mark.parametrize("grid, message", [
    ({"mask_ratio": []}, "grid value of 'mask_ratio' must be a non-empty list"),
    ({"mask_ratio": 0.5}, "belongs in 'parameters'"),
    ({}, "'grid' must map parameter names to lists"),
])
def test_expand_grid_rejects_non_lists(grid, message):
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand_grid(grid)


def test_parse_lab_merges_fixed_parameters_and_names_runs():
    lab = parse_lab(minimal(parameters={"steps": 3}), NOTEBOOK_DIR, source="labs/demo.yaml")
    assert lab.name == "demo" and lab.notebook == NOTEBOOK_DIR / "01_train_mcm.ipynb"
    assert lab.runs == [{"steps": 3, "mask_ratio": 0.25}, {"steps": 3, "mask_ratio": 0.5}]
    assert lab.varying == ["mask_ratio"]
    assert run_ids(lab.runs, lab.varying) == ["0_mask_ratio-0.25", "1_mask_ratio-0.5"]


def test_explicit_runs_and_run_ids_are_unique_and_padded():
    runs = [{"seed": s} for s in range(11)]
    lab = parse_lab(minimal(grid=None, runs=runs), NOTEBOOK_DIR)
    ids = run_ids(lab.runs, lab.varying)
    assert ids[0] == "00_seed-0" and ids[10] == "10_seed-10" and len(set(ids)) == 11
    assert run_ids([{"sweep_mask_ratios": [0.5, 0.75]}], []) == ["0"]
    assert run_ids([{"x": [0.5, 0.75]}, {"x": "a b"}], ["x"]) == ["0_x-0.5-0.75", "1_x-a-b"]


def test_plan_gives_every_run_its_own_checkpoint_folder_and_smoke(tmp_path):
    lab = parse_lab(minimal(), NOTEBOOK_DIR)
    plans = labs.plan_runs(lab, tmp_path, smoke=True)
    assert [p.injected["smoke"] for p in plans] == [True, True]
    folders = {p.injected["checkpoint_path"] for p in plans}
    assert len(folders) == 2 and all(f.startswith(str(tmp_path.resolve())) for f in folders)
    fixed = parse_lab(minimal(parameters={"checkpoint_path": "../runs/mine"}), NOTEBOOK_DIR)
    assert all("checkpoint_path" not in p.injected for p in labs.plan_runs(fixed, tmp_path))


# ---------------------------------------------------------------------------- validation errors
@pytest.mark.parametrize("data, message", [
    (minimal(metric=["x"]), "unknown key(s) 'metric' (did you mean 'metrics'?)"),
    (minimal(notebook="01_train_mc"), "unknown notebook '01_train_mc' (did you mean '01_train_mcm'?)"),
    (minimal(notebook="99_nothing"), "unknown notebook '99_nothing'"),
    (minimal(grid={"mask_ratoi": [0.5]}), "unknown parameter(s) 'mask_ratoi' (did you mean 'mask_ratio'?)"),
    (minimal(parameters={"stepz": 3}), "unknown parameter(s) 'stepz' (did you mean 'steps'?)"),
    (minimal(grid=None), "give exactly one of 'grid'"),
    (minimal(runs=[{"seed": 1}]), "not both"),
    (minimal(metrics=None), "missing key(s) ['metrics']"),
    (minimal(metrics=[]), "'metrics' must be a non-empty list"),
    (minimal(metrics=["a", "a"]), "listed twice"),
    (minimal(metrics=["mask_ratio"]), "would clash with a column the table already has"),
    (minimal(metrics=["status"]), "would clash with a column the table already has"),
    (minimal(time_budget_s=0), "'time_budget_s' must be a positive number of seconds"),
    (minimal(time_budget_s="1h"), "'time_budget_s' must be a positive number of seconds"),
    (minimal(workers=0), "'workers' must be a positive whole number"),
    (minimal(parameters={"smoke": True}), "pass --smoke to the command instead"),
    (minimal(parameters={"mask_ratio": 0.5}), "given in both 'parameters' and 'grid'"),
    (minimal(grid=None, runs=[]), "'runs' must be a non-empty list"),
    (minimal(figure={"x": "seed"}), "figure x 'seed' is not a parameter of this lab"),
    (minimal(figure={"y": "mask_ratio"}), "unknown figure key(s) 'y'"),
    (minimal(name="a/b"), "'name' must be a folder name"),
    (["notebook"], "a lab must be a YAML mapping"),
])
def test_bad_lab_files_name_the_problem_and_the_fix(data, message):
    with pytest.raises(LabError) as error:
        parse_lab(data, NOTEBOOK_DIR, source="bad.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("bad.yaml: ")  # the file is named


def test_load_lab_reports_missing_files_and_bad_yaml(tmp_path):
    with pytest.raises(LabError, match="no lab file at"):
        labs.load_lab(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("notebook: [01\n")
    with pytest.raises(LabError, match="is not valid YAML"):
        labs.load_lab(broken)


@pytest.mark.parametrize("path", LAB_FILES, ids=[p.stem for p in LAB_FILES])
def test_the_example_labs_are_valid(path):
    lab = labs.load_lab(path)
    assert lab.runs and lab.metrics and lab.time_budget_s > 0


def test_there_are_the_two_example_labs():
    assert {"mask_ratio_sweep", "method_comparison"} <= {p.stem for p in LAB_FILES}


def test_summary_command_rebuilds_the_table_from_the_run_folders(tmp_path, capsys):
    lab_file = tmp_path / "demo.yaml"
    lab_file.write_text(yaml.safe_dump(minimal(grid={"mask_ratio": [0.25, 0.5, 1.5]},
                                               metrics=["concept_macro_f1", "knn.*"])))
    out = tmp_path / "out"
    assert labs.main(["summary", str(lab_file), "--output", str(out)]) == 2
    assert "run it first" in capsys.readouterr().err
    for record in records()[:2]:  # the third run never wrote its run.json
        (out / record["run_id"]).mkdir(parents=True)
        (out / record["run_id"] / "run.json").write_text(json.dumps(record))
    assert labs.main(["summary", str(lab_file), "--output", str(out)]) == 1
    with open(out / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["status"] for r in table] == ["ok", "ok", "not run"] and table[1]["knn.mcm"] == "0.72"
    assert "run the lab first" in table[2]["error"] and (out / "summary.png").is_file()


def test_a_runner_error_on_one_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    def fake_execute(plan, lab, kernel="python3"):
        if plan.run_id.startswith("1_"):
            raise OSError("No space left on device")
        return {"run_id": plan.run_id, "parameters": plan.parameters, "status": "ok", "error": None,
                "seconds": 1.0, "metrics": {"concept_macro_f1": 0.5}, "notebook": None}

    monkeypatch.setattr(lab_runs, "execute_run", fake_execute)  # what run_lab calls
    lab = parse_lab(minimal(grid={"mask_ratio": [0.25, 0.5, 0.75]}), NOTEBOOK_DIR)
    result = labs.run_lab(lab, tmp_path, workers=2, log=lambda line: None)
    assert [r["status"] for r in result.records] == ["ok", "failed", "ok"]
    assert result.failed[0]["error"] == "the lab runner failed: OSError: No space left on device"
    assert result.csv.is_file() and result.figure.is_file()


def test_check_command_lists_runs_and_bad_file_exits_2(tmp_path, capsys):
    assert labs.main(["check", str(ROOT / "labs" / "mask_ratio_sweep.yaml")]) == 0
    assert "0_mask_ratio-0.0" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(grid={"mask_ratoi": [0.5]})))
    assert labs.main(["run", str(bad)]) == 2
    assert "did you mean 'mask_ratio'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- folders are arguments
def test_folders_default_to_the_current_directory_else_the_shipped_copies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: the package's own notebooks and labs
    assert labs.notebooks_folder() == workbook.shipped_folder("notebooks")
    assert labs.labs_folder() == workbook.shipped_folder("labs")
    lab = labs.load_lab("mask_ratio_sweep")
    assert lab.notebook == workbook.shipped_folder("notebooks") / "01_train_mcm.ipynb"
    assert labs.default_output(lab, smoke=True) == tmp_path / "outputs" / "labs" / "mask_ratio_sweep_smoke"
    assert labs.default_output(lab, root="elsewhere") == Path("elsewhere") / "mask_ratio_sweep"
    (tmp_path / "notebooks").mkdir()  # folders in the current directory come first
    shutil.copy(NOTEBOOK_DIR / "01_train_mcm.ipynb", tmp_path / "notebooks")
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "mine.yaml").write_text(yaml.safe_dump(minimal()))
    lab = labs.load_lab("mine.yaml")
    assert lab.notebook == tmp_path / "notebooks" / "01_train_mcm.ipynb"
    assert lab.source == tmp_path / "labs" / "mine.yaml"
    with pytest.raises(LabError, match=r"no lab file at mask_ratio_sweep; the labs in .* are \['mine'\]"):
        labs.load_lab("mask_ratio_sweep")


def test_a_missing_folder_is_an_error_naming_its_option(tmp_path, monkeypatch, capsys):
    assert labs.main(["check", "mask_ratio_sweep", "--notebooks", str(tmp_path / "nope")]) == 2
    assert f"no notebooks folder {tmp_path / 'nope'}; pass an existing folder to --notebooks" in capsys.readouterr().err
    assert labs.main(["check", "mask_ratio_sweep", "--labs", str(tmp_path / "nope")]) == 2
    assert "pass an existing folder to --labs" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(folders, "shipped_folder", lambda kind: None)  # neither ./notebooks nor an installed copy
    assert labs.main(["check", str(ROOT / "labs" / "mask_ratio_sweep.yaml")]) == 2
    assert ("no notebooks folder ./notebooks; run from the repository root or pass --notebooks DIR"
            in capsys.readouterr().err)
    assert labs.main(["check", str(ROOT / "labs" / "mask_ratio_sweep.yaml"), "--notebooks", str(NOTEBOOK_DIR)]) == 0


def test_the_shipped_folders_sit_apart_from_the_code_modules():
    """mcm_core/workbook/labs.py is code; the shipped labs are in mcm_core/workbook/shipped/labs."""
    package = Path(folders.__file__).parent
    assert workbook.shipped_folder("notebooks") == package / "shipped" / "notebooks"
    assert workbook.shipped_folder("labs") == package / "shipped" / "labs"
    assert (package / "shipped" / "labs" / "mask_ratio_sweep.yaml").is_file()
    assert (package / "labs.py").is_file() and labs.__file__ == str(package / "labs.py")


def test_the_command_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "mcm_core.workbook.labs", "check", "mask_ratio_sweep"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "0_mask_ratio-0.0" in proc.stdout, proc.stderr[-3000:]


def test_a_shipped_notebook_runs_in_its_run_folder_and_a_repository_one_in_its_folder(tmp_path, monkeypatch):
    """papermill gets absolute paths; the kernel of a notebook inside the package never runs (writes) there."""
    calls = []

    class FakeProcess:
        def __init__(self, command, **kwargs):
            calls.append((command, kwargs))

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(lab_runs.subprocess, "Popen", FakeProcess)
    monkeypatch.chdir(tmp_path)
    for notebooks in (workbook.shipped_folder("notebooks"), NOTEBOOK_DIR):
        lab = parse_lab(minimal(grid={"mask_ratio": [0.5]}), notebooks)
        plan = labs.plan_runs(lab, Path("out") / notebooks.name)[0]
        assert labs.execute_run(plan, lab)["status"] == "ok"
    folder = tmp_path / "out" / "notebooks" / "0"
    (shipped, shipped_kw), (repo, repo_kw) = calls
    assert shipped[shipped.index("--cwd") + 1] == str(folder) and shipped_kw["cwd"] == str(folder)
    assert repo[repo.index("--cwd") + 1] == str(NOTEBOOK_DIR)
    assert repo_kw["cwd"] == str(tmp_path / "out" / NOTEBOOK_DIR.name / "0")
    assert workbook.is_shipped(shipped[3]) and not workbook.is_shipped(repo[3])
    assert all(Path(arg).is_absolute() for arg in shipped[3:5] + repo[3:5])


# ---------------------------------------------------------------------------- summary
def records() -> list[dict]:
    return [
        {"run_id": "0_mask_ratio-0.25", "parameters": {"mask_ratio": 0.25}, "status": "ok", "error": None,
         "seconds": 20.0, "notebook": "0_mask_ratio-0.25/01_train_mcm.ipynb",
         "metrics": {"concept_macro_f1": 0.5, "knn": {"mae": 0.6, "mcm": 0.7}, "note": "text"}},
        {"run_id": "1_mask_ratio-0.5", "parameters": {"mask_ratio": 0.5}, "status": "ok", "error": None,
         "seconds": 21.0, "notebook": "1_mask_ratio-0.5/01_train_mcm.ipynb",
         "metrics": {"concept_macro_f1": 0.6, "knn": {"mae": 0.65, "mcm": 0.72}}},
        {"run_id": "2_mask_ratio-1.5", "parameters": {"mask_ratio": 1.5}, "status": "failed",
         "error": "ValueError: parameter 'mask_ratio' must be in [0, 1), got 1.5", "seconds": 4.0,
         "notebook": "2_mask_ratio-1.5/01_train_mcm.ipynb", "metrics": {}},
    ]


def demo_lab(metrics: list[str]) -> Lab:
    return Lab(name="demo", notebook=NOTEBOOK_DIR / "01_train_mcm.ipynb",
               runs=[{"mask_ratio": r} for r in (0.25, 0.5, 1.5)], time_budget_s=60, metrics=metrics)


def test_summary_has_a_row_per_run_with_the_failure_and_its_error():
    columns, rows, panels, warnings = summarize_runs(demo_lab(["concept_macro_f1", "knn.*"]), records())
    assert columns == ["run_id", "mask_ratio", "status", "seconds", "concept_macro_f1", "knn.mae", "knn.mcm",
                       "error", "notebook"]
    assert panels == {"concept_macro_f1": ["concept_macro_f1"], "knn.*": ["knn.mae", "knn.mcm"]}
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[1]["knn.mcm"] == 0.72 and rows[2]["concept_macro_f1"] is None
    assert "must be in [0, 1), got 1.5" in rows[2]["error"]
    assert warnings == []


def test_a_pattern_never_overwrites_a_parameter_column():
    recorded = records()
    recorded[0]["metrics"]["mask_ratio"] = 0.99  # a notebook may record its own parameters (01 does)
    columns, rows, panels, _ = summarize_runs(demo_lab(["*"]), recorded)
    assert columns.count("mask_ratio") == 1 and rows[0]["mask_ratio"] == 0.25
    assert "mask_ratio" not in panels["*"]


def test_a_metric_no_run_recorded_is_a_warning_naming_what_was_recorded():
    _, rows, panels, warnings = summarize_runs(demo_lab(["concept_f1"]), records())
    assert panels == {"concept_f1": []} and "concept_f1" not in rows[0]
    assert len(warnings) == 1 and "'concept_f1' was recorded by no run" in warnings[0]
    assert "concept_macro_f1" in warnings[0]


def test_csv_and_figure_from_the_summary(tmp_path):
    lab = demo_lab(["concept_macro_f1", "knn.*", "note"])
    csv_path, png, warnings = labs.write_summary(lab, records(), tmp_path)
    with open(csv_path) as handle:
        table = list(csv.DictReader(handle))
    assert [r["status"] for r in table] == ["ok", "ok", "failed"]
    assert table[0]["concept_macro_f1"] == "0.5" and table[2]["concept_macro_f1"] == ""
    assert table[0]["note"] == "text" and "got 1.5" in table[2]["error"]
    assert png.stat().st_size > 10_000 and warnings == []


def test_figure_lines_mark_failed_runs_and_bars_average_runs():
    lab = demo_lab(["concept_macro_f1", "knn.*"])
    _, rows, panels, _ = summarize_runs(lab, records())
    fig = plot_lab_summary(rows, panels, x="mask_ratio", title="demo")
    assert isinstance(fig, Figure) and fig._suptitle.get_text() == "demo"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert all(ax.get_xlabel() == "mask_ratio" and ax.get_ylabel() and ax.get_title() for ax in visible)
    assert "failed run (error in summary.csv)" in visible[1].get_legend_handles_labels()[1]
    assert visible[0].get_xlim()[1] > 1.5  # the failed run's x is in view
    assert {"mae", "mcm"} <= set(visible[1].get_legend_handles_labels()[1])
    bars = plot_lab_summary(rows, {"knn.*": ["knn.mae", "knn.mcm"]}, mean_over="seed", xlabel="method")
    ax = bars.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mae", "mcm"]
    assert ax.get_xlabel() == "method: mean ± std of 2 runs (a dot per seed)"
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.625, 0.71]


def test_labels_of_patterns():
    assert metric_label("knn_acc.*") == "knn_acc" and metric_label("final_loss") == "final_loss"
    assert series_label("knn_acc.*", "knn_acc.mae_evolved") == "mae_evolved"
    assert series_label("final_loss", "final_loss") == "final_loss"


def test_notebook_error_reads_the_first_error_output(tmp_path):
    nb = nbformat.v4.new_notebook()
    ok = nbformat.v4.new_code_cell("x = 1")
    bad = nbformat.v4.new_code_cell("raise ValueError('no')", execution_count=3)
    bad.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="\x1b[31mno\x1b[0m", traceback=[])]
    nb.cells = [ok, bad]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert labs.notebook_error(path) == "ValueError: no (cell In [3])"
    assert labs.notebook_error(tmp_path / "missing.ipynb") is None


# ---------------------------------------------------------------------------- record_metrics
def test_record_metrics_is_a_no_op_outside_a_lab(monkeypatch):
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert record_metrics({"f1": 0.5}) is None


def test_record_metrics_merges_into_the_file_the_runner_names(monkeypatch, tmp_path):
    import numpy as np
    import torch

    path = tmp_path / "metrics.json"
    monkeypatch.setenv(METRICS_ENV, str(path))
    record_metrics({"f1": torch.tensor(0.5), "knn": {"mae": np.float32(0.25)}})
    record_metrics({"loss": float("nan"), "f1": 0.75})
    assert json.loads(path.read_text()) == {"f1": 0.75, "knn": {"mae": 0.25}, "loss": None}


@pytest.mark.parametrize("metrics, error, message", [
    ({"f1": [0.5, 0.6]}, TypeError, "metric 'f1' must be a number"),
    ({"f1": None}, None, None),
    ("f1", TypeError, "takes a dict"),
    ({"": 1.0}, TypeError, "non-empty strings"),
])
def test_record_metrics_rejects_what_it_cannot_store(metrics, error, message, tmp_path):
    if error is None:  # None is a valid value: nothing measured
        assert record_metrics(metrics, path=tmp_path / "m.json") == tmp_path / "m.json"
        return
    with pytest.raises(error, match=message):
        record_metrics(metrics, path=tmp_path / "m.json")


def test_record_metrics_rejects_arrays_with_the_fix(tmp_path):
    import torch

    with pytest.raises(ValueError, match=r"metric 'f1' must be one number, got an array of shape \(3,\)"):
        record_metrics({"f1": torch.ones(3)}, path=tmp_path / "m.json")


# ---------------------------------------------------------------------------- time budget
@pytest.mark.slow
def test_a_run_over_its_budget_is_stopped_with_its_kernel_and_reported(tmp_path):
    """A notebook that sleeps past its budget: papermill and the kernel are stopped, the run is reported."""
    import psutil

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    pid_file = tmp_path / "kernel.pid"
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("smoke = None\nseconds = 600")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(seconds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebooks / "99_sleep.ipynb")
    lab = parse_lab({"notebook": "99_sleep", "runs": [{"seconds": 600}], "time_budget_s": 25, "metrics": ["x"]},
                    notebooks)
    record = labs.execute_run(labs.plan_runs(lab, tmp_path / "out")[0], lab)
    assert record["status"] == "over budget" and "time budget of 25 s" in record["error"]
    assert record["seconds"] < 60
    assert json.loads((tmp_path / "out" / "0" / "run.json").read_text())["status"] == "over budget"
    assert pid_file.is_file(), "the kernel never started within the budget: raise it in this test"
    kernel = int(pid_file.read_text())
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_smoke_lab_runs_in_parallel_and_reports_the_failed_run(tmp_path):
    """Notebook 01 in smoke mode at mask ratio 0.25 and 0.5, plus 1.5 (invalid): CSV, figure, exit 1."""
    lab_file = tmp_path / "e2e.yaml"
    lab_file.write_text(yaml.safe_dump({
        "notebook": "01_train_mcm", "grid": {"mask_ratio": [0.25, 0.5, 1.5]}, "time_budget_s": 300,
        "workers": 2, "metrics": ["concept_macro_f1", "train_tflop", "train_wall_s"], "figure": {"x": "mask_ratio"}}))
    out = tmp_path / "out"
    env = {**os.environ}
    env.pop(METRICS_ENV, None)
    command = [sys.executable, "-m", "mcm_core.workbook.labs", "run", str(lab_file), "--smoke", "--output", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED 2_mask_ratio-1.5" in proc.stderr
    with open(out / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["run_id"] for r in table] == ["0_mask_ratio-0.25", "1_mask_ratio-0.5", "2_mask_ratio-1.5"]
    assert [r["status"] for r in table] == ["ok", "ok", "failed"]
    for row in table[:2]:
        assert 0 <= float(row["concept_macro_f1"]) <= 1 and float(row["train_tflop"]) > 0
        assert (out / row["notebook"]).is_file()
    assert float(table[0]["train_tflop"]) > float(table[1]["train_tflop"])  # fewer hidden patches cost more
    assert "'mask_ratio' must be in [0, 1), got 1.5" in table[2]["error"] and table[2]["concept_macro_f1"] == ""
    assert (out / "summary.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "0_mask_ratio-0.25" / "figures").glob("01_*.png"))
    assert (out / "0_mask_ratio-0.25" / "checkpoint_smoke" / "checkpoint.safetensors").is_file()
    assert (out / "lab.yaml").read_text() == lab_file.read_text()
