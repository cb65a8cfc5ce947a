"""Labs: one notebook run over a grid of parameters, in parallel, collected into one table and one figure.

A lab is a YAML file (see ``labs/`` and ``docs/instructors.md``)::

    notebook: 01_train_mcm            # a notebook in notebooks/
    grid: {mask_ratio: [0.0, 0.25, 0.5, 0.75]}    # or runs: [{...}, {...}]
    time_budget_s: 1800               # per run; a run over it is stopped and reported
    metrics: [concept_macro_f1, train_tflop]      # names or patterns (knn_acc.*) the runs record

``python -m mcm_core.workbook.labs run labs/mask_ratio_sweep.yaml [--smoke]`` executes the notebook with
papermill once per parameter set (``workers`` at a time, each kernel on ``threads`` torch
threads) and writes, under ``outputs/labs/<name>/``: one folder per run (the executed
notebook, ``metrics.json``, ``log.txt``, ``run.json``, figures, run folders), ``summary.csv``
and ``summary.png``. A run that fails or goes over its budget is reported in the summary with
its error; the others go on, and the command exits with 1 after writing the summary.

Folders are arguments, relative to the current directory: ``--notebooks`` (default ``notebooks/``),
``--labs`` (where a lab given by name, e.g. ``mask_ratio_sweep``, is looked up; default ``labs/``)
and ``--output`` (default ``outputs/labs/<name>``). Without ``notebooks/`` or ``labs/`` in the
current directory, the copies shipped with the package are used (:mod:`mcm_core.workbook.folders`), so an
installed package runs a lab from an empty folder; nothing is ever written into the package.

Notebooks record their metrics with :func:`mcm_core.workbook.metrics.record_metrics`, which writes to
the file the runner names in ``MCM_METRICS_PATH``.

The functions that read and check a lab, expand its grid and build its summary are pure and
tested on their own; :func:`run_lab` and :func:`main` are the thin layer that runs processes.
This module is the command line and the labs' public names; the code lives in
:mod:`~mcm_core.workbook.lab_spec` (reading and checking a lab), :mod:`~mcm_core.workbook.lab_runs`
(planning and running its runs) and :mod:`~mcm_core.workbook.lab_summary` (the table and figure).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcm_core.workbook.lab_runs import (
    OUTPUT_DEFAULT, LabResult, RunPlan, default_output, default_workers, execute_run, notebook_error, plan_runs,
    read_records, run_ids, run_lab,
)
from mcm_core.workbook.lab_spec import (
    STATUS_OK, Lab, LabError, check_lab, expand_grid, find_lab_file, find_notebook, labs_folder, load_lab,
    notebook_parameters, notebooks_folder, parse_lab, unknown_names,
)
from mcm_core.workbook.lab_summary import (
    csv_value, flatten_metrics, match_metrics, summarize_runs, write_csv, write_summary,
)

__all__ = ["Lab", "LabError", "RunPlan", "LabResult", "load_lab", "parse_lab", "check_lab", "expand_grid",
           "notebook_parameters", "run_ids", "plan_runs", "flatten_metrics", "match_metrics", "summarize_runs",
           "csv_value", "write_csv", "write_summary", "notebook_error", "execute_run", "run_lab", "read_records",
           "main", "notebooks_folder", "labs_folder", "find_lab_file", "find_notebook", "unknown_names",
           "default_output", "default_workers", "OUTPUT_DEFAULT"]


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None, prog: str = "python -m mcm_core.workbook.labs") -> int:
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
                  f"({prog} run {args.lab}{' --smoke' if args.smoke else ''})", file=sys.stderr)
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
