"""Side-by-side comparison of the methods: one summary per method from the benchmark's JSON rows.

Pure functions over the JSON rows that :func:`mcm_core.evaluate.comparison.run_all` writes, one
row per training run (a method trained on one data set)::

    {"key": "mae", "label": "MAE, random masks", "dataset": "fashion_mnist", "train_tflop": 1.2,
     "wall_s": 30.5, "knn_acc": 0.71, "probe_acc": 0.78}
    {"key": "mae", "label": "MAE, random masks", "dataset": "shapes", "train_tflop": 1.2, "wall_s": 29.0,
     "concept_f1": 0.64}
    {"key": "latent_mim", "label": "Latent MIM", "skipped": "ImportError: ..."}

:func:`summarize` merges a method's rows, :func:`directions` checks each paper's claim against the
MAE baseline, :func:`markdown_table` writes the table; :func:`mcm_core.viz.compare.plot_accuracy_vs_flops`
draws the summaries.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["METRICS", "BASELINE", "DIRECTIONS", "summarize", "directions", "markdown_table"]

METRICS = {  # summary key: axis label
    "knn_acc": "kNN accuracy (frozen features)",
    "probe_acc": "linear-probe accuracy (frozen features)",
    "concept_f1": "concept macro-F1 (shapes)",
}
BASELINE = "mae"
DIRECTIONS = {  # key: (metric that must beat the baseline's, the paper's claim in words)
    "mae_evolved": ("probe_acc", "evolved hierarchical masks beat random masks on linear-probe accuracy (paper 003)"),
    "mcm": ("concept_f1", "MCM's concept head beats a linear probe on MAE features in concept macro-F1 (paper 000)"),
    "micl": ("knn_acc", "MiCL beats MAE on kNN accuracy of frozen features (paper 001)"),
    "latent_mim": ("knn_acc", "Latent MIM beats MAE on kNN accuracy of frozen features (paper 002)"),
}


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per method, in first-seen order, merging its runs on the two data sets.

    Returns dicts with ``key``, ``label``, ``skipped`` (reason or None), the metrics of
    ``METRICS`` (None when missing), ``train_tflop`` (the features-data run's training TFLOP)
    and ``wall_s`` (the summed training wall-clock of all its runs). When a method has several
    rows for one data set, the last one wins.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "key" not in row or "label" not in row:
            raise ValueError(f"a comparison row needs 'key' and 'label', got keys {sorted(row)}")
        entry = out.setdefault(row["key"], {"key": row["key"], "label": row["label"], "skipped": None,
                                            **{m: None for m in METRICS}, "train_tflop": None,
                                            "wall_s": None, "runs": {}})
        if row.get("skipped"):
            entry["skipped"] = row["skipped"]
            continue
        entry["runs"][row["dataset"]] = row
    for entry in out.values():
        runs = entry.pop("runs")
        for run in runs.values():
            for metric in METRICS:
                if run.get(metric) is not None:
                    entry[metric] = run[metric]
        features_run = next((r for r in runs.values() if r.get("knn_acc") is not None), None)
        if features_run is not None:
            entry["train_tflop"] = features_run["train_tflop"]
        if runs:
            entry["wall_s"] = round(sum(r["wall_s"] for r in runs.values()), 1)
            entry["skipped"] = None
    return list(out.values())


def directions(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each method with a paper claim (:data:`DIRECTIONS`): its metric, the baseline's, and the verdict.

    The verdict is ``"holds"``, ``"does not hold"`` or ``"not measured (<why>)"``.
    """
    by_key = {s["key"]: s for s in summary}
    base = by_key.get(BASELINE) or {}
    out = []
    for key, (metric, claim) in DIRECTIONS.items():
        entry = by_key.get(key)
        if entry is None:
            continue
        mine, theirs = entry.get(metric), base.get(metric)
        if entry.get("skipped") or mine is None or theirs is None:
            verdict = f"not measured ({entry.get('skipped') or 'baseline missing'})"
        else:
            verdict = "holds" if mine > theirs else "does not hold"
        out.append({"key": key, "label": entry["label"], "claim": claim, "metric": metric, "value": mine,
                    "baseline": theirs, "verdict": verdict})
    return out


def number(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` places."""
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparison as markdown lines, one row per method, with whether its paper's direction holds."""
    verdicts = {d["key"]: d["verdict"] for d in directions(summary)}
    lines = ["| method | kNN acc | linear-probe acc | concept macro-F1 | training TFLOP | wall-clock (s) | "
             "paper's direction |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["skipped"]:
            lines.append(f"| {s['label']} | skipped: {s['skipped']} | | | | | |")
            continue
        tflop = "-" if s["train_tflop"] is None else f"{s['train_tflop']:.3f}"
        lines.append(f"| {s['label']} | {number(s['knn_acc'])} | {number(s['probe_acc'])} | "
                     f"{number(s['concept_f1'])} | {tflop} | {s['wall_s']} | {verdicts.get(s['key'], 'baseline')} |")
    return lines
