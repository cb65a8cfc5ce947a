"""Labs: one notebook run over a grid of parameters, in parallel, collected into one table and one figure.

A lab is a YAML file (see ``labs/`` and ``docs/instructors.md``)::

    notebook: 01_train_mcm            # a notebook in notebooks/
    grid: {mask_ratio: [0.0, 0.25, 0.5, 0.75]}    # or runs: [{...}, {...}]
    time_budget_s: 1800               # per run; a run over it is stopped and reported
    metrics: [concept_macro_f1, train_tflop]      # names or patterns (knn_acc.*) the runs record

``python -m mcm_core.labs run labs/mask_ratio_sweep.yaml [--smoke]`` executes the notebook with
papermill once per parameter set (``workers`` at a time, each kernel on ``threads`` torch
threads) and writes, under ``outputs/labs/<name>/``: one folder per run (the executed
notebook, ``metrics.json``, ``log.txt``, ``run.json``, figures, run folders), ``summary.csv``
and ``summary.png``. A run that fails or goes over its budget is reported in the summary with
its error; the others go on, and the command exits with 1 after writing the summary.

Folders are arguments, relative to the current directory: ``--notebooks`` (default ``notebooks/``),
``--labs`` (where a lab given by name, e.g. ``mask_ratio_sweep``, is looked up; default ``labs/``)
and ``--output`` (default ``outputs/labs/<name>``). Without ``notebooks/`` or ``labs/`` in the
current directory, the copies shipped with the package are used (:mod:`mcm_core.workbook`), so an
installed package runs a lab from an empty folder; nothing is ever written into the package.

Notebooks record their metrics with :func:`mcm_core.notebook.record_metrics`, which writes to
the file the runner names in ``MCM_METRICS_PATH``.

The functions that read and check a lab, expand its grid and build its summary are pure and
tested on their own; :func:`run_lab` and :func:`main` are the thin layer that runs processes.
"""
from __future__ import annotations

import argparse
import ast
import csv
import difflib
import fnmatch
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcm_core.notebook import METRICS_ENV, assigned_values
from mcm_core.workbook import LABS, NOTEBOOKS, input_folder, is_shipped

__all__ = ["Lab", "LabError", "RunPlan", "load_lab", "parse_lab", "expand_grid", "notebook_parameters",
           "run_ids", "plan_runs", "flatten_metrics", "match_metrics", "summarize_runs", "write_csv",
           "notebook_error", "run_lab", "main", "notebooks_folder", "labs_folder", "find_lab_file", "default_output"]

OUTPUT_DEFAULT = Path("outputs") / "labs"  # under the current directory; a lab's runs go to <it>/<name>[_smoke]

KEYS = ("name", "description", "notebook", "parameters", "grid", "runs", "time_budget_s", "workers",
        "threads", "metrics", "figure")
REQUIRED = ("notebook", "time_budget_s", "metrics")
FIGURE_KEYS = ("x", "mean_over", "xlabel")
# Parameters the runner sets itself: a lab may not give them.
RESERVED = {"smoke": "pass --smoke to the command instead"}
RUN_FOLDER_PARAMETER = "checkpoint_path"  # set per run (<run>/checkpoint) unless the lab gives it
STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT, STATUS_MISSING = "ok", "failed", "over budget", "not run"
SUMMARY_CSV, SUMMARY_PNG, RUN_JSON, METRICS_JSON = "summary.csv", "summary.png", "run.json", "metrics.json"
TABLE_COLUMNS = ("run_id", "status", "seconds", "error", "notebook")  # the summary's own columns


class LabError(ValueError):
    """A lab definition that cannot be run; the message names the problem and the fix."""


@dataclass(frozen=True)
class Lab:
    """A checked lab definition.

    Attributes:
        name: the lab's name (its output folder); default the YAML file's stem.
        notebook: path of the notebook to run.
        runs: every run's parameters, fixed ``parameters`` included, in run order.
        time_budget_s: wall-clock seconds one run may take.
        metrics: metric names or ``fnmatch`` patterns (``knn_acc.*``) to collect, in column order.
        workers: runs at a time (None: ``min(2, CPU count)``).
        threads: torch / OpenMP threads of every kernel.
        figure_x: the parameter on the summary figure's x axis (None: the one that varies).
        mean_over: draw bars averaged over this parameter's runs instead of lines.
        xlabel: the x-axis label of the bars (with ``mean_over``).
        description: free text.
        source: the YAML file, when read from one.
    """

    name: str
    notebook: Path
    runs: list[dict[str, Any]]
    time_budget_s: float
    metrics: list[str]
    workers: int | None = None
    threads: int = 1
    figure_x: str | None = None
    mean_over: str | None = None
    xlabel: str | None = None
    description: str = ""
    source: Path | None = None

    @property
    def varying(self) -> list[str]:
        """Parameter names whose value differs between runs, in first-seen order."""
        names = list(dict.fromkeys(name for run in self.runs for name in run))

        def value(run: Mapping[str, Any], name: str) -> str | None:  # comparable form; None: not set
            return json.dumps(run[name], sort_keys=True, default=str) if name in run else None

        return [n for n in names if len({value(r, n) for r in self.runs}) > 1]


@dataclass(frozen=True)
class RunPlan:
    """One run: its id, the parameters papermill gets and the folder it writes to."""

    run_id: str
    parameters: dict[str, Any]  # the lab's parameters for this run
    injected: dict[str, Any]  # what the runner adds (smoke, checkpoint_path)
    folder: Path


# ---------------------------------------------------------------------------- reading a lab
def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """Names and default values of the notebook's cell tagged ``parameters``.

    Values that are not Python literals are returned as their source text.
    Raises:
        LabError: the notebook has no cell tagged ``parameters``, or it does not parse.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise LabError(f"{Path(path).name} has {len(cells)} cells tagged 'parameters'; a lab needs exactly one")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as error:
        raise LabError(f"the parameters cell of {Path(path).name} does not parse: {error}") from None
    return assigned_values(tree)


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid``, the last name varying fastest.

    ``{"a": [1, 2], "b": ["x", "y"]}`` -> ``[{a: 1, b: x}, {a: 1, b: y}, {a: 2, b: x}, {a: 2, b: y}]``.
    Raises:
        LabError: ``grid`` is not a mapping of names to non-empty lists.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise LabError(f"'grid' must map parameter names to lists of values, got {grid!r}; "
                       "e.g. grid: {mask_ratio: [0.25, 0.5]}")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise LabError(f"grid value of {name!r} must be a non-empty list, got {values!r}; "
                           f"e.g. {name}: [{values!r}] (a fixed value belongs in 'parameters')")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def unknown_names(names: Sequence[str], valid: Sequence[str]) -> list[str]:
    """``names`` that are not in ``valid``, each with a 'did you mean' hint where one is close."""
    out = []
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
            out.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return out


def find_notebook(name: Any, notebooks_dir: Path) -> Path:
    """The notebook a lab names: a file in ``notebooks_dir``, with or without ``.ipynb``."""
    available = sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not isinstance(name, str) or not name.strip():
        raise LabError(f"'notebook' must be the name of a notebook in {notebooks_dir}, got {name!r}; "
                       f"one of {available}")
    stem = name.strip().removesuffix(".ipynb")
    path = notebooks_dir / f"{stem}.ipynb"
    if stem not in available or not path.is_file():
        hint = unknown_names([stem], available)[0]
        raise LabError(f"unknown notebook {hint} in {notebooks_dir}; one of {available}")
    return path


def positive_number(data: Mapping[str, Any], key: str, integer: bool, example: str) -> Any:
    """``data[key]`` if it is a positive (whole, with ``integer``) finite number, else a LabError with an example."""
    value = data[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        kind = "a positive whole number" if integer else "a positive number of seconds"
        raise LabError(f"'{key}' must be {kind}, got {value!r}; e.g. {key}: {example}")
    return value


def notebooks_folder(given: str | Path | None = None) -> Path:
    """``given``, else ``./notebooks``, else the package's shipped notebooks (:func:`mcm_core.workbook.input_folder`).

    Raises:
        LabError: the folder does not exist; the message names ``--notebooks``.
    """
    try:
        return input_folder(given, NOTEBOOKS, "--notebooks")
    except FileNotFoundError as error:
        raise LabError(str(error)) from None


def labs_folder(given: str | Path | None = None) -> Path:
    """``given``, else ``./labs``, else the package's shipped labs; a LabError naming ``--labs`` if missing."""
    try:
        return input_folder(given, LABS, "--labs")
    except FileNotFoundError as error:
        raise LabError(str(error)) from None


def parse_lab(data: Any, notebooks_dir: str | Path | None = None, source: str | Path | None = None) -> Lab:
    """Check a lab definition (the YAML file's content) and expand its runs.

    Args:
        data: the parsed YAML mapping.
        notebooks_dir: where ``notebook`` is looked up (None: :func:`notebooks_folder`).
        source: the lab's file, named in messages; its stem is the default ``name`` (else ``"lab"``).
    Raises:
        LabError: unknown or missing keys, an unknown notebook, unknown parameter names, or a
            value of the wrong kind; the message names the key and the fix.
    """
    where = str(source) if source is not None else "lab"
    try:
        return check_lab(data, Path(notebooks_dir) if notebooks_dir is not None else notebooks_folder(), source)
    except LabError as error:
        raise LabError(f"{where}: {error}") from None


def check_lab(data: Any, notebooks_dir: Path, source: str | Path | None) -> Lab:
    """:func:`parse_lab` without the file name in its messages."""
    if not isinstance(data, Mapping):
        raise LabError(f"a lab must be a YAML mapping of keys {list(KEYS)}, got {type(data).__name__}")
    unknown = unknown_names(list(data), KEYS)
    if unknown:
        raise LabError(f"unknown key(s) {', '.join(unknown)}; valid keys are {list(KEYS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise LabError(f"missing key(s) {missing}; every lab needs {list(REQUIRED)} and 'grid' or 'runs'")
    if ("grid" in data) == ("runs" in data):
        raise LabError("give exactly one of 'grid' (a cartesian product) or 'runs' (a list of "
                       "parameter sets), not " + ("both" if "grid" in data else "neither"))
    notebook = find_notebook(data["notebook"], notebooks_dir)
    valid = list(notebook_parameters(notebook))

    fixed = data.get("parameters") or {}
    if not isinstance(fixed, Mapping):
        raise LabError(f"'parameters' must map names to values, got {fixed!r}; e.g. parameters: {{steps: 100}}")
    if "grid" in data:
        sets = expand_grid(data["grid"])
        overlap = sorted(set(fixed) & set(data["grid"]))
        if overlap:
            raise LabError(f"{overlap} given in both 'parameters' and 'grid'; keep each name in one")
    else:
        sets = data["runs"]
        if not isinstance(sets, list) or not sets or not all(isinstance(s, Mapping) for s in sets):
            raise LabError(f"'runs' must be a non-empty list of parameter mappings, got {sets!r}; "
                           "e.g. runs: [{seed: 0}, {seed: 1}]")
    names = list(dict.fromkeys([*fixed, *(n for s in sets for n in s)]))
    for name in names:
        if not isinstance(name, str):
            raise LabError(f"parameter names must be strings, got {name!r}")
        if name in RESERVED:
            raise LabError(f"the runner sets {name!r} itself; {RESERVED[name]}")
    bad = unknown_names(names, valid)
    if bad:
        raise LabError(f"unknown parameter(s) {', '.join(bad)} for {notebook.name}; "
                       f"its parameters are {valid}")
    runs = [{**fixed, **dict(s)} for s in sets]

    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m.strip() for m in metrics):
        raise LabError(f"'metrics' must be a non-empty list of metric names or patterns, got {metrics!r}; "
                       "e.g. metrics: [concept_macro_f1, knn_acc.*]")
    duplicated = sorted({m for m in metrics if metrics.count(m) > 1})
    if duplicated:
        raise LabError(f"metric(s) {duplicated} listed twice in 'metrics'; list each once")
    taken = sorted(set(metrics) & (set(names) | set(TABLE_COLUMNS)))
    if taken:
        raise LabError(f"metric(s) {taken} would clash with a column the table already has (the run's "
                       "parameters and its status columns); leave them out of 'metrics'")

    budget = float(positive_number(data, "time_budget_s", False, "1800"))
    workers = positive_number(data, "workers", True, "2") if data.get("workers") is not None else None
    threads = positive_number(data, "threads", True, "1") if data.get("threads") is not None else 1

    figure = data.get("figure") or {}
    if not isinstance(figure, Mapping):
        raise LabError(f"'figure' must be a mapping with keys {list(FIGURE_KEYS)}, got {figure!r}")
    bad = unknown_names(list(figure), FIGURE_KEYS)
    if bad:
        raise LabError(f"unknown figure key(s) {', '.join(bad)}; valid keys are {list(FIGURE_KEYS)}")
    for key in ("x", "mean_over"):
        if figure.get(key) is not None and figure[key] not in names:
            raise LabError(f"figure {key} {figure[key]!r} is not a parameter of this lab; "
                           f"one of {names}")
    if figure.get("x") is not None and figure.get("mean_over") is not None:
        raise LabError("give figure 'x' (lines over a parameter) or 'mean_over' (bars averaged "
                       "over a parameter), not both")
    xlabel = figure.get("xlabel")
    if xlabel is not None and not isinstance(xlabel, str):
        raise LabError(f"figure xlabel must be text, got {xlabel!r}")

    name = data.get("name") or (Path(source).stem if source is not None else "lab")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise LabError(f"'name' must be a folder name of letters, digits, _ . -, got {name!r}")
    description = data.get("description") or ""
    return Lab(name=name, notebook=notebook, runs=runs, time_budget_s=budget, metrics=[m.strip() for m in metrics],
               workers=workers, threads=threads, figure_x=figure.get("x"), mean_over=figure.get("mean_over"),
               xlabel=xlabel, description=str(description).strip(),
               source=Path(source) if source is not None else None)


def find_lab_file(lab: str | Path, labs_dir: str | Path | None = None) -> Path:
    """The YAML file of ``lab``: a path to a file, or the name of a lab in ``labs_dir`` (with or without ``.yaml``).

    Args:
        labs_dir: where names are looked up (None: ``./labs``, else the labs shipped with the package).
    Raises:
        LabError: no such file; the message lists the labs of the folder.
    """
    path = Path(lab)
    if path.is_file():
        return path
    folder = labs_folder(labs_dir) if labs_dir is not None else None
    if folder is None:
        try:
            folder = labs_folder()
        except LabError:
            pass
    if folder is not None and path.parent == Path("."):  # a bare name: a lab of the folder
        candidate = folder / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if candidate.is_file():
            return candidate
    found = sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None else []
    where = f"; the labs in {folder} are {found} (give one by name, or pass --labs DIR)" if folder is not None else \
        "; no labs folder ./labs either: pass a lab file, or --labs DIR"
    raise LabError(f"no lab file at {path}{where}")


def load_lab(path: str | Path, notebooks_dir: str | Path | None = None, labs_dir: str | Path | None = None) -> Lab:
    """Read and check a lab YAML file, or a lab of ``labs_dir`` by name (:func:`find_lab_file`, :func:`parse_lab`)."""
    import yaml

    path = find_lab_file(path, labs_dir)
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else notebooks_folder()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise LabError(f"{path} is not valid YAML: {error}") from None
    return parse_lab(data, notebooks_dir, source=path)


# ---------------------------------------------------------------------------- planning runs
def slug(value: Any) -> str:
    """A value as a short file-name part: ``0.25`` -> ``0.25``, ``[0.5, 0.75]`` -> ``0.5-0.75``."""
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")[:40] or "x"


def run_ids(runs: Sequence[Mapping[str, Any]], varying: Sequence[str]) -> list[str]:
    """One folder name per run: its index, then ``name-value`` of every varying parameter.

    ``[{mask_ratio: 0.25}, {mask_ratio: 0.5}]`` -> ``["0_mask_ratio-0.25", "1_mask_ratio-0.5"]``
    (the index is zero-padded to the same width for every run).
    """
    width = len(str(max(len(runs) - 1, 0)))
    ids = []
    for i, run in enumerate(runs):
        parts = [f"{i:0{width}d}"] + [f"{n}-{slug(run[n])}" for n in varying if n in run]
        ids.append("_".join(parts))
    return ids


def plan_runs(lab: Lab, out_dir: Path, smoke: bool = False) -> list[RunPlan]:
    """The runs of ``lab`` with their folders under ``out_dir`` and the parameters the runner adds.

    Every run gets ``smoke`` (when the notebook has it) and, unless the lab sets it, its own
    ``checkpoint_path`` inside its folder, so parallel runs never share a run folder.
    """
    defaults = notebook_parameters(lab.notebook)
    plans = []
    for run_id, params in zip(run_ids(lab.runs, lab.varying), lab.runs):
        folder = out_dir / run_id
        injected: dict[str, Any] = {}
        if "smoke" in defaults:
            injected["smoke"] = bool(smoke)
        if RUN_FOLDER_PARAMETER in defaults and RUN_FOLDER_PARAMETER not in params:
            injected[RUN_FOLDER_PARAMETER] = str(folder.resolve() / "checkpoint")
        plans.append(RunPlan(run_id, dict(params), injected, folder))
    return plans


# ---------------------------------------------------------------------------- collecting
def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts as dotted names: ``{"knn": {"mae": 0.6}}`` -> ``{"knn.mae": 0.6}``."""
    flat: dict[str, Any] = {}
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, key + "."))
        else:
            flat[key] = value
    return flat


def match_metrics(patterns: Sequence[str], recorded: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """For each pattern, the recorded metric names it matches, in first-seen order.

    Args:
        patterns: exact names or ``fnmatch`` patterns (``knn_acc.*``).
        recorded: every run's flattened metrics.
    Returns:
        ``{pattern: [column, ...]}``; a pattern that matches nothing maps to ``[]``.
    """
    seen = list(dict.fromkeys(name for metrics in recorded for name in metrics))
    return {p: [name for name in seen if fnmatch.fnmatchcase(name, p)] for p in patterns}


def summarize_runs(lab: Lab, records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]],
                                                                            dict[str, list[str]], list[str]]:
    """The summary table of a lab's runs.

    Args:
        records: one per run (what ``run.json`` holds): ``run_id``, ``parameters``, ``status``,
            ``error``, ``seconds``, ``notebook`` and ``metrics`` (nested or flat).
    Returns:
        ``(columns, rows, panels, warnings)``: the CSV's columns (run id, the lab's parameters,
        status, seconds, the metric columns, error, notebook), one row dict per run, the metric
        columns of each pattern of ``lab.metrics``, and a warning for every pattern no
        successful run recorded.
    """
    flat = [flatten_metrics(r.get("metrics") or {}) for r in records]
    panels = match_metrics(lab.metrics, flat)
    params = list(dict.fromkeys(n for r in records for n in r.get("parameters", {})))
    taken = set(params) | set(TABLE_COLUMNS)  # a pattern's match never overwrites these columns
    panels = {p: [c for c in cols if c not in taken] for p, cols in panels.items()}
    metric_columns = list(dict.fromkeys(c for cols in panels.values() for c in cols))
    columns = ["run_id", *params, "status", "seconds", *metric_columns, "error", "notebook"]
    rows = []
    for record, metrics in zip(records, flat):
        row = {"run_id": record["run_id"], **{n: record.get("parameters", {}).get(n) for n in params},
               "status": record["status"], "seconds": record.get("seconds"),
               **{c: metrics.get(c) for c in metric_columns},
               "error": record.get("error") or "", "notebook": record.get("notebook") or ""}
        rows.append(row)
    warnings = []
    recorded_ok = sorted({n for r, m in zip(records, flat) if r["status"] == STATUS_OK for n in m})
    if any(r["status"] == STATUS_OK for r in records):
        for pattern, cols in panels.items():
            if not cols:
                warnings.append(f"metric {pattern!r} was recorded by no run; the runs recorded {recorded_ok}: "
                                f"fix 'metrics' in the lab, or record it in the notebook with record_metrics")
    return columns, rows, panels, warnings


def csv_value(value: Any) -> Any:
    """One CSV cell: empty for None, floats to 6 significant digits, lists and dicts as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the summary rows as CSV (empty cells for missing values, floats to 6 digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: csv_value(row.get(c)) for c in columns})
    return path


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def notebook_error(executed: Path) -> str | None:
    """``"ErrorName: message (cell In [n])"`` of the first error output in an executed notebook, else None."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # missing or half-written: the caller falls back to the log
        return None
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                where = f" (cell In [{cell.execution_count}])" if cell.get("execution_count") else ""
                return ANSI.sub("", f"{output.get('ename', 'Error')}: {output.get('evalue', '')}").strip() + where
    return None


def last_log_line(log: Path) -> str:
    """The last non-empty line of a run's log (the error when the kernel died without a traceback)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [clean for line in text.splitlines() if (clean := ANSI.sub("", line).strip())]
    return lines[-1][:500] if lines else "no output"


# ---------------------------------------------------------------------------- running
def kill_tree(process: subprocess.Popen) -> None:
    """Stop a papermill process and its descendants (the kernel runs in its own session)."""
    import psutil

    try:
        parent = psutil.Process(process.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    wait_until_dead(family)


def wait_until_dead(procs: list, timeout: float = 15.0) -> None:
    """Block until every killed process is gone or a zombie (SIGKILL lands asynchronously on a busy machine).

    A grandchild (the kernel) is reaped by init, not by us, so "dead" includes the zombie state.
    """
    import psutil

    def gone(proc: "psutil.Process") -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + timeout
    while not all(gone(proc) for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


def execute_run(plan: RunPlan, lab: Lab, kernel: str = "python3") -> dict[str, Any]:
    """Execute one run with papermill in a subprocess, within the lab's time budget; -> its record.

    Writes into ``plan.folder``: the executed notebook, ``params.yaml``, ``log.txt``,
    ``metrics.json`` (by the notebook), ``figures/`` and ``run.json`` (the returned record).
    """
    import yaml

    folder = Path(os.path.abspath(plan.folder))
    folder.mkdir(parents=True, exist_ok=True)
    notebook = Path(os.path.abspath(lab.notebook))
    # The kernel runs in the notebook's folder, so its relative paths (../runs/...) resolve as they do in
    # Jupyter; a notebook shipped inside the installed package runs in its run folder instead.
    kernel_cwd = folder if is_shipped(notebook) else notebook.parent
    executed, metrics_path, log = folder / lab.notebook.name, folder / METRICS_JSON, folder / "log.txt"
    for stale in (executed, metrics_path, folder / RUN_JSON):
        stale.unlink(missing_ok=True)
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump({**plan.parameters, **plan.injected}, sort_keys=False))
    threads = str(lab.threads)
    env = {**os.environ, METRICS_ENV: str(metrics_path.resolve()), "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "MCM_FIGURES_DIR": str((folder / "figures").resolve()), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "papermill", str(notebook), str(executed), "-f", str(params_file),
               "--cwd", str(kernel_cwd), "-k", kernel, "--no-progress-bar"]
    start, timed_out = time.perf_counter(), False
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(folder))
        try:
            code = process.wait(timeout=lab.time_budget_s)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            code, timed_out = None, True
    seconds = round(time.perf_counter() - start, 1)
    if timed_out:
        status = STATUS_TIMEOUT
        error = (f"over its time budget of {lab.time_budget_s:g} s and stopped; raise time_budget_s in the lab "
                 "or shrink the run (e.g. fewer steps)")
    elif code == 0:
        status, error = STATUS_OK, None
    else:
        status = STATUS_FAILED
        error = notebook_error(executed) or f"papermill exited with {code}: {last_log_line(log)}"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    record = {"run_id": plan.run_id, "parameters": plan.parameters, "injected": plan.injected, "status": status,
              "error": error, "seconds": seconds, "metrics": metrics,
              "notebook": str(executed.relative_to(folder.parent)) if executed.is_file() else None}
    (folder / RUN_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def default_workers() -> int:
    """``min(2, CPU count)``: two runs at a time at most, one on a single core."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass
class LabResult:
    """What :func:`run_lab` did: the run records and where the summary went."""

    records: list[dict[str, Any]]
    csv: Path
    figure: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The records of the runs that did not end ``ok``."""
        return [r for r in self.records if r["status"] != STATUS_OK]


def write_summary(lab: Lab, records: Sequence[Mapping[str, Any]], out_dir: Path,
                  smoke: bool = False) -> tuple[Path, Path, list[str]]:
    """Write ``summary.csv`` and ``summary.png`` for ``records`` into ``out_dir``; -> paths and warnings."""
    from mcm_core.lab_viz import plot_lab_summary

    columns, rows, panels, warnings = summarize_runs(lab, records)
    csv_path = write_csv(out_dir / SUMMARY_CSV, columns, rows)
    ok = sum(r["status"] == STATUS_OK for r in rows)
    title = (f"lab {lab.name}: {lab.notebook.stem}, {ok} of {len(rows)} runs ok" + (" (smoke mode)" if smoke else ""))
    x = lab.figure_x or (lab.varying[0] if len(lab.varying) == 1 and not lab.mean_over else None)
    numeric = {p: cols for p, cols in panels.items()  # text columns (e.g. verdicts) stay in the CSV only
               if any(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows for c in cols)
               or not cols}
    fig = plot_lab_summary(rows, numeric or panels, x=x, mean_over=lab.mean_over, xlabel=lab.xlabel, title=title)
    figure = out_dir / SUMMARY_PNG
    fig.savefig(figure, dpi=120)
    return csv_path, figure, warnings


def default_output(lab: Lab, smoke: bool = False, root: str | Path | None = None) -> Path:
    """``<root>/<name>`` (``<name>_smoke`` for smoke runs, so they never mix with full ones).

    Args:
        root: the labs' output folder (None: ``outputs/labs`` under the current directory).
    """
    base = Path(root) if root is not None else Path.cwd() / OUTPUT_DEFAULT
    return base / (lab.name + ("_smoke" if smoke else ""))


def read_records(lab: Lab, out_dir: Path) -> list[dict[str, Any]]:
    """The ``run.json`` of every run of ``lab`` in ``out_dir``; a run without one is reported as not run."""
    records = []
    for plan in plan_runs(lab, out_dir):
        path = plan.folder / RUN_JSON
        if path.is_file():
            records.append(json.loads(path.read_text()))
        else:
            records.append({"run_id": plan.run_id, "parameters": plan.parameters, "status": STATUS_MISSING,
                            "error": f"no {RUN_JSON} in {plan.folder}: run the lab first", "seconds": None,
                            "metrics": {}, "notebook": None})
    return records


def run_lab(lab: Lab, out_dir: Path | None = None, smoke: bool = False, workers: int | None = None,
            kernel: str = "python3", log: Callable[[str], None] = print) -> LabResult:
    """Run every run of ``lab`` (``workers`` at a time) and write the summary; failures are recorded, not raised."""
    out_dir = Path(out_dir) if out_dir is not None else default_output(lab, smoke)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lab.source is not None:
        shutil.copyfile(lab.source, out_dir / "lab.yaml")
    plans = plan_runs(lab, out_dir, smoke)
    workers = workers or lab.workers or default_workers()
    log(f"[lab {lab.name}] {len(plans)} runs of {lab.notebook.name}{' (smoke)' if smoke else ''}, "
        f"{workers} at a time, {lab.threads} thread(s) each, budget {lab.time_budget_s:g} s per run -> {out_dir}")
    records: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(execute_run, plan, lab, kernel): plan for plan in plans}
        for future in as_completed(futures):
            plan = futures[future]
            try:
                record = future.result()
            except Exception as error:  # the runner itself failed on this run (e.g. a full disk): report it, go on
                record = {"run_id": plan.run_id, "parameters": plan.parameters, "injected": plan.injected,
                          "status": STATUS_FAILED, "error": f"the lab runner failed: {type(error).__name__}: {error}",
                          "seconds": None, "metrics": {}, "notebook": None}
            records[plan.run_id] = record
            extra = f": {record['error']}" if record["error"] else ""
            took = f" in {record['seconds']:.1f} s" if record["seconds"] is not None else ""
            log(f"[lab {lab.name}] {plan.run_id} {record['status']}{took}{extra}")
    ordered = [records[p.run_id] for p in plans]
    csv_path, figure, warnings = write_summary(lab, ordered, out_dir, smoke)
    for warning in warnings:
        log(f"[lab {lab.name}] warning: {warning}")
    return LabResult(ordered, csv_path, figure, warnings)


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None, prog: str = "python -m mcm_core.labs") -> int:
    """``run LAB.yaml [--smoke]``, ``summary LAB.yaml`` or ``check LAB.yaml``.

    Returns:
        0, 1 when a run failed (after writing the summary), 2 for a bad lab file or option.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Run a notebook over a parameter grid (a lab); "
                                     "see docs/instructors.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    def folders(command: argparse.ArgumentParser, first: bool = False) -> None:
        command.add_argument("--notebooks", default=None, metavar="DIR", help=(
            "folder the lab's notebook is taken from (default ./notebooks, else the notebooks shipped with "
            "the package; e.g. a student's copies)") if first else "as for run")
        command.add_argument("--labs", default=None, metavar="DIR", help=(
            "folder a lab given by name is looked up in (default ./labs, else the labs shipped with the "
            "package)") if first else "as for run")

    lab_help = "the lab: its YAML file (e.g. labs/mask_ratio_sweep.yaml) or its name in --labs (mask_ratio_sweep)"
    output_help = f"the lab's output folder (default ./{OUTPUT_DEFAULT.as_posix()}/<name>[_smoke])"
    run = sub.add_parser("run", help="run every grid point and write summary.csv / summary.png")
    run.add_argument("lab", help=lab_help)
    run.add_argument("--smoke", action="store_true", help="pass smoke=True to every run (seconds per run)")
    run.add_argument("--workers", type=int, default=None, help="runs at a time (default: the lab's, else min(2, CPUs))")
    run.add_argument("--output", default=None, metavar="DIR", help=output_help)
    run.add_argument("--kernel", default="python3", help="Jupyter kernel (set-up registers python3 in .venv)")
    folders(run, first=True)
    summary = sub.add_parser("summary", help="rewrite summary.csv / summary.png from the run folders (no runs)")
    summary.add_argument("lab", help=lab_help)
    summary.add_argument("--smoke", action="store_true",
                         help=f"the smoke runs' folder (./{OUTPUT_DEFAULT.as_posix()}/<name>_smoke)")
    summary.add_argument("--output", default=None, metavar="DIR", help=output_help)
    folders(summary)
    check = sub.add_parser("check", help="check a lab file and list its runs, without running anything")
    check.add_argument("lab", help=lab_help)
    folders(check)
    args = parser.parse_args(argv)
    try:
        notebooks_dir = notebooks_folder(args.notebooks)
        lab = load_lab(args.lab, notebooks_dir, args.labs)
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise LabError(f"--workers must be at least 1, got {args.workers}")
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"lab {lab.name}: {lab.notebook.name}, {len(lab.runs)} runs, budget {lab.time_budget_s:g} s each, "
              f"metrics {lab.metrics}")
        for run_id, params in zip(run_ids(lab.runs, lab.varying), lab.runs):
            print(f"  {run_id}: {params}")
        return 0
    if args.command == "summary":
        out_dir = Path(args.output) if args.output else default_output(lab, args.smoke)
        if not out_dir.is_dir():
            print(f"error: no runs of lab {lab.name} in {out_dir}: run it first "
                  f"(python -m mcm_core.labs run {args.lab}{' --smoke' if args.smoke else ''})", file=sys.stderr)
            return 2
        records = read_records(lab, out_dir)
        csv_path, figure, warnings = write_summary(lab, records, out_dir, args.smoke)
        for warning in warnings:
            print(f"[lab {lab.name}] warning: {warning}")
        failed = [r for r in records if r["status"] != STATUS_OK]
        print(f"[lab {lab.name}] {len(records) - len(failed)} of {len(records)} runs ok; table {csv_path}, "
              f"figure {figure}")
        return 1 if failed else 0
    result = run_lab(lab, Path(args.output) if args.output else None, smoke=args.smoke, workers=args.workers,
                     kernel=args.kernel)
    ok = len(result.records) - len(result.failed)
    print(f"[lab {lab.name}] {ok} of {len(result.records)} runs ok; table {result.csv}, figure {result.figure}")
    for record in result.failed:
        print(f"[lab {lab.name}] FAILED {record['run_id']} ({record['status']}): {record['error']}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
