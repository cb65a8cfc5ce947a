"""Side-by-side comparison of the methods: per-method summary rows and the accuracy-vs-cost plot.

Pure functions over the JSON rows that ``benchmarks/compare_methods.py`` writes, one row per
training run (a method trained on one data set)::

    {"key": "mae", "label": "MAE, random masks", "dataset": "fashion_mnist", "train_tflop": 1.2,
     "wall_s": 30.5, "knn_acc": 0.71, "probe_acc": 0.78}
    {"key": "mae", "label": "MAE, random masks", "dataset": "shapes", "train_tflop": 1.2, "wall_s": 29.0,
     "concept_f1": 0.64}
    {"key": "latent_mim", "label": "Latent MIM", "skipped": "ImportError: ..."}
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

METRICS = {  # summary key: axis label
    "knn_acc": "kNN accuracy (frozen features)",
    "probe_acc": "linear-probe accuracy (frozen features)",
    "concept_f1": "concept macro-F1 (shapes)",
}
MARKERS = "os^DvP*Xh"


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


def plot_accuracy_vs_flops(summary: Sequence[Mapping[str, Any]],
                           metrics: Sequence[str] = tuple(METRICS)) -> Figure:
    """One panel per metric: the metric (y) against training TFLOP (x), one labelled marker per method.

    Args:
        summary: rows of :func:`summarize`; skipped methods and missing values are left out
            (a skipped method is named in the figure's footnote).
        metrics: keys of ``METRICS`` to draw.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown or no metric(s) {unknown}; choose from {list(METRICS)}")
    drawn = [s for s in summary if not s.get("skipped") and s.get("train_tflop") is not None]
    if not drawn:
        raise ValueError("no method has results to draw; run benchmarks/compare_methods.py first")
    fig = plt.figure(figsize=(4.2 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for i, entry in enumerate(drawn):
            if entry.get(metric) is None:
                continue
            ax.scatter(entry["train_tflop"], entry[metric], marker=MARKERS[i % len(MARKERS)], s=70,
                       color=f"C{i}", label=entry["label"])
        ax.set_xlabel("training TFLOP (features-data run)")
        ax.set_ylabel(METRICS[metric])
        ax.set_title(METRICS[metric].split(" (")[0])
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes:  # one legend entry per method, whichever panel drew it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    skipped = [s["label"] for s in summary if s.get("skipped")]
    title = "same backbone, same steps x batch" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), frameon=False)
    fig.suptitle(title)
    return fig


__all__ = ["METRICS", "summarize", "plot_accuracy_vs_flops"]
