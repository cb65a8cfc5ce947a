"""Side-by-side comparison of the methods (notebook 07): the accuracy-vs-cost figure.

Pure, like the rest of :mod:`mcm_core.viz`: the per-method summaries of
:func:`mcm_core.analysis.compare.summarize` in, a fresh matplotlib ``Figure`` out.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from mcm_core.analysis.compare import METRICS

__all__ = ["MARKERS", "plot_accuracy_vs_flops"]

MARKERS = "os^DvP*Xh"


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
    fig = Figure(figsize=(4.2 * len(metrics), 4.2), layout="constrained")
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
