"""The summary figure of a lab (``mcm_core.workbook.labs``): one panel per metric, built from the summary rows.

Pure, like the rest of :mod:`mcm_core.viz`: rows in, a fresh matplotlib ``Figure`` out.

- **lines** (default): the x axis is a parameter (the one the lab varies), one line per
  metric column; several runs at one x are averaged, their single values drawn as dots.
- **bars** (``mean_over``): one bar per metric column (e.g. per method), the mean over the
  runs with the standard deviation as an error bar and every run as a dot.

Failed runs have no metrics: the lines mode marks their x with a red dotted line.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

__all__ = ["plot_lab_summary", "series_label", "metric_label"]

FAILED_COLOR = "tab:red"


def metric_label(pattern: str) -> str:
    """A panel's name: the pattern without its wildcard part, ``knn_acc.*`` -> ``knn_acc``."""
    head = pattern.split("*")[0].split("?")[0].split("[")[0].rstrip("._-")
    return head or pattern


def series_label(pattern: str, column: str) -> str:
    """A column's name inside its panel: the part the wildcard matched (``knn_acc.*``, ``knn_acc.mae`` -> ``mae``)."""
    if "*" not in pattern:
        return column
    prefix, suffix = pattern.split("*")[0], pattern.split("*")[-1]
    core = column[len(prefix):] if column.startswith(prefix) else column
    return (core[: len(core) - len(suffix)] if suffix and core.endswith(suffix) else core) or column


def number(value: Any) -> float | None:
    """A finite float, or None (missing, text, nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def positions(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """x positions of ``values``: the numbers themselves, or 0, 1, ... for text with the labels."""
    if all(number(v) is not None for v in values):
        return [float(v) for v in values], None
    labels = list(dict.fromkeys(str(v) for v in values))
    return [float(labels.index(str(v))) for v in values], labels


def draw_lines(ax: Any, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], pattern: str, x: str | None) -> None:
    """One line per column over ``x`` (the mean of the runs at each x), failed runs as red dotted lines."""
    keys = [row.get(x) if x else row["run_id"] for row in rows]
    xs, labels = positions(keys)
    ok = [i for i, row in enumerate(rows) if row["status"] == "ok"]
    for column in columns:
        by_x: dict[float, list[float]] = {}
        for i in ok:
            value = number(rows[i].get(column))
            if value is not None:
                by_x.setdefault(xs[i], []).append(value)
        if not by_x:
            continue
        grid = sorted(by_x)
        line = ax.plot(grid, [statistics.fmean(by_x[g]) for g in grid], marker="o",
                       label=series_label(pattern, column))[0]
        if any(len(v) > 1 for v in by_x.values()):
            ax.scatter([g for g in grid for _ in by_x[g]], [v for g in grid for v in by_x[g]], s=12,
                       color=line.get_color(), alpha=0.5)
    failed_x = sorted({xs[i] for i, row in enumerate(rows) if row["status"] != "ok"})
    for j, fx in enumerate(failed_x):
        ax.axvline(fx, color=FAILED_COLOR, linestyle=":", linewidth=1.5,
                   label="failed run (error in summary.csv)" if j == 0 else None)
    if xs:  # every run's x in view, failed ones too (a vertical line does not widen the axis)
        pad = 0.06 * (max(xs) - min(xs)) or 0.5
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(x or "run")


def draw_bars(ax: Any, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], pattern: str,
              mean_over: str, xlabel: str | None) -> None:
    """One bar per column: the mean of the ok runs, their standard deviation, and a dot per run."""
    ok = [row for row in rows if row["status"] == "ok"]
    for i, column in enumerate(columns):
        values = [v for v in (number(row.get(column)) for row in ok) if v is not None]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.bar(i, statistics.fmean(values), yerr=std, capsize=4, color="tab:blue", alpha=0.6)
        ax.scatter([i] * len(values), values, s=14, color="black", zorder=3)
    ax.set_xticks(range(len(columns)), [series_label(pattern, c) for c in columns], rotation=30, ha="right",
                  fontsize=8)
    n = len(ok)
    ax.set_xlabel(f"{xlabel or 'column'}: mean ± std of {n} run{'s' if n != 1 else ''} (a dot per {mean_over})")


def plot_lab_summary(rows: Sequence[Mapping[str, Any]], panels: Mapping[str, Sequence[str]], x: str | None = None,
                     mean_over: str | None = None, xlabel: str | None = None, title: str = "",
                     ncols: int = 3) -> Figure:
    """One panel per metric pattern of a lab's summary.

    Args:
        rows: the summary rows (``run_id``, ``status``, parameters and metric columns).
        panels: ``{pattern: [column, ...]}`` (see ``mcm_core.workbook.lab_summary.match_metrics``).
        x: the parameter on the x axis (lines); None puts the run ids there.
        mean_over: draw bars averaged over the runs (this parameter names what varies) instead.
        xlabel: the bars' x-axis label (what the columns are, e.g. ``"method"``).
        title: the figure's title.
    Returns:
        A ``Figure`` (``len(panels)`` panels, ``ncols`` per row).
    """
    if not panels:
        raise ValueError("panels is empty: a lab summary needs at least one metric pattern")
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.5 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (pattern, columns) in zip(axes, panels.items()):
        label = metric_label(pattern)
        ax.set_title(label.replace("_", " "))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        has_data = any(number(row.get(c)) is not None for row in rows if row["status"] == "ok" for c in columns)
        if mean_over:
            draw_bars(ax, rows, columns, pattern, mean_over, xlabel)
        else:
            draw_lines(ax, rows, columns, pattern, x)
        if not has_data:
            ax.text(0.5, 0.5, "no run recorded it", transform=ax.transAxes, ha="center", va="center", color="grey")
        names = ax.get_legend_handles_labels()[1]
        if len(names) > 1 or any(n.startswith("failed run") for n in names):
            ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
