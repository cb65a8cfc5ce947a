"""A lab's summary: its runs' records as one table (``summary.csv``) and one figure (``summary.png``).

Each run leaves a record (``run.json``: parameters, status, seconds, error and the metrics the
notebook recorded). :func:`summarize_runs` turns the records into rows with one column per
parameter and per metric the lab asks for (patterns such as ``knn_acc.*`` expand to every
matching metric), :func:`write_summary` writes the CSV and draws the figure
(:func:`mcm_core.viz.labs.plot_lab_summary`).
"""
from __future__ import annotations

import csv
import fnmatch
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcm_core.workbook.lab_spec import STATUS_OK, SUMMARY_CSV, SUMMARY_PNG, TABLE_COLUMNS, Lab

__all__ = ["flatten_metrics", "match_metrics", "summarize_runs", "csv_value", "write_csv", "write_summary"]


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



def write_summary(lab: Lab, records: Sequence[Mapping[str, Any]], out_dir: Path,
                  smoke: bool = False) -> tuple[Path, Path, list[str]]:
    """Write ``summary.csv`` and ``summary.png`` for ``records`` into ``out_dir``; -> paths and warnings."""
    from mcm_core.viz.labs import plot_lab_summary

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

