"""Running a lab: one papermill process per run, ``workers`` at a time, each within the time budget.

:func:`plan_runs` gives every run its folder (``<output>/<index>_<name>-<value>...``) and the
parameters the runner adds (``smoke``, a ``checkpoint_path`` of its own); :func:`execute_run` runs
one notebook in a subprocess with ``MCM_METRICS_PATH`` pointing into that folder, stops it at the
budget and writes its record (``run.json``); :func:`run_lab` runs them all in parallel, records a
failure instead of raising it, and writes the summary (:mod:`~mcm_core.workbook.lab_summary`).
"""
from __future__ import annotations

import json
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

from mcm_core.workbook.folders import is_shipped
from mcm_core.workbook.lab_spec import (
    METRICS_JSON, RUN_FOLDER_PARAMETER, RUN_JSON, STATUS_FAILED, STATUS_MISSING, STATUS_OK, STATUS_TIMEOUT, Lab,
    notebook_parameters,
)
from mcm_core.workbook.lab_summary import write_summary
from mcm_core.workbook.metrics import METRICS_ENV

__all__ = ["RunPlan", "LabResult", "run_ids", "plan_runs", "notebook_error", "execute_run", "run_lab",
           "read_records", "default_output", "default_workers", "OUTPUT_DEFAULT"]

OUTPUT_DEFAULT = Path("outputs") / "labs"  # under the current directory; a lab's runs go to <it>/<name>[_smoke]


@dataclass(frozen=True)
class RunPlan:
    """One run: its id, the parameters papermill gets and the folder it writes to."""

    run_id: str
    parameters: dict[str, Any]  # the lab's parameters for this run
    injected: dict[str, Any]  # what the runner adds (smoke, checkpoint_path)
    folder: Path


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

