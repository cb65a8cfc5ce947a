"""What a lab is: the YAML file read, checked against its notebook and expanded into runs.

A lab file names a notebook, a grid (or a list) of its parameters, a time budget per run and the
metrics to collect (see :mod:`mcm_core.workbook.labs` for the format and the command). :func:`load_lab`
reads one (a path, or a name in the labs folder), :func:`parse_lab` checks it and returns a
:class:`Lab` whose ``runs`` are every run's parameters; every error names the key and the fix.
The constants below are shared with :mod:`~mcm_core.workbook.lab_summary` and
:mod:`~mcm_core.workbook.lab_runs`.
"""
from __future__ import annotations

import ast
import difflib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcm_core.workbook.folders import LABS, NOTEBOOKS, input_folder
from mcm_core.workbook.params import assigned_values

__all__ = ["Lab", "LabError", "load_lab", "parse_lab", "check_lab", "expand_grid", "notebook_parameters",
           "notebooks_folder", "labs_folder", "find_lab_file", "find_notebook", "unknown_names"]

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

