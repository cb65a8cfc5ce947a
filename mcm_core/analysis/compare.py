"""Side-by-side comparison of the methods: one summary per method from the benchmark's JSON rows.

Pure functions over the JSON rows that ``benchmarks/compare_methods.py`` writes, one row per
training run (a method trained on one data set)::

    {"key": "mae", "label": "MAE, random masks", "dataset": "fashion_mnist", "train_tflop": 1.2,
     "wall_s": 30.5, "knn_acc": 0.71, "probe_acc": 0.78}
    {"key": "mae", "label": "MAE, random masks", "dataset": "shapes", "train_tflop": 1.2, "wall_s": 29.0,
     "concept_f1": 0.64}
    {"key": "latent_mim", "label": "Latent MIM", "skipped": "ImportError: ..."}

:func:`mcm_core.viz.compare.plot_accuracy_vs_flops` draws the summaries.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["METRICS", "summarize"]

METRICS = {  # summary key: axis label
    "knn_acc": "kNN accuracy (frozen features)",
    "probe_acc": "linear-probe accuracy (frozen features)",
    "concept_f1": "concept macro-F1 (shapes)",
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
