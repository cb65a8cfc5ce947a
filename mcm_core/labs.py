"""Moved to :mod:`mcm_core.workbook.labs` (the command line), :mod:`mcm_core.workbook.lab_spec`,
:mod:`mcm_core.workbook.lab_runs` and :mod:`mcm_core.workbook.lab_summary`; this path re-exports them, and
``python -m mcm_core.labs`` runs the same command, until the Makefile, docs and tests are moved."""
from __future__ import annotations

from mcm_core.workbook.lab_runs import (
    ANSI, OUTPUT_DEFAULT, LabResult, RunPlan, default_output, default_workers, execute_run, kill_tree, last_log_line,
    notebook_error, plan_runs, read_records, run_ids, run_lab, slug, wait_until_dead,
)
from mcm_core.workbook.lab_spec import (
    FIGURE_KEYS, KEYS, METRICS_JSON, REQUIRED, RESERVED, RUN_FOLDER_PARAMETER, RUN_JSON, STATUS_FAILED,
    STATUS_MISSING, STATUS_OK, STATUS_TIMEOUT, SUMMARY_CSV, SUMMARY_PNG, TABLE_COLUMNS, Lab, LabError, check_lab,
    expand_grid, find_lab_file, find_notebook, labs_folder, load_lab, notebook_parameters, notebooks_folder,
    parse_lab, positive_number, unknown_names,
)
from mcm_core.workbook.lab_summary import (
    csv_value, flatten_metrics, match_metrics, summarize_runs, write_csv, write_summary,
)
from mcm_core.workbook.labs import main
from mcm_core.workbook.metrics import METRICS_ENV

__all__ = ["Lab", "LabError", "RunPlan", "load_lab", "parse_lab", "expand_grid", "notebook_parameters",
           "run_ids", "plan_runs", "flatten_metrics", "match_metrics", "summarize_runs", "write_csv",
           "notebook_error", "run_lab", "main", "notebooks_folder", "labs_folder", "find_lab_file", "default_output",
           "LabResult", "check_lab", "find_notebook", "unknown_names", "positive_number", "slug", "csv_value",
           "write_summary", "read_records", "execute_run", "kill_tree", "wait_until_dead", "last_log_line",
           "default_workers", "ANSI", "OUTPUT_DEFAULT", "KEYS", "REQUIRED", "FIGURE_KEYS", "RESERVED",
           "RUN_FOLDER_PARAMETER", "STATUS_OK", "STATUS_FAILED", "STATUS_TIMEOUT", "STATUS_MISSING", "SUMMARY_CSV",
           "SUMMARY_PNG", "RUN_JSON", "METRICS_JSON", "TABLE_COLUMNS", "METRICS_ENV"]

if __name__ == "__main__":
    raise SystemExit(main())
