"""Curves and bars of training and evaluation numbers: the loss history, per-concept metrics, and the
shapes measures against the test-time mask ratio.

Pure like the rest of :mod:`mcm_core.viz`: numbers in, a fresh matplotlib ``Figure`` out.
:func:`ema` (the debiased moving average) is reused by the topic modules' curves.

Contents
--------
- Training: :func:`ema`, :func:`plot_history`.
- Concepts: :func:`concept_rows`, :func:`plot_concept_metrics`.
- Measures: :func:`plot_measures_curve`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["ema", "plot_history", "concept_rows", "plot_concept_metrics", "plot_measures_curve"]


# --------------------------------------------------------------------------- training
def ema(values: Sequence[float], smooth: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard-style), ``smooth`` in [0, 1)."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = smooth * avg + (1 - smooth) * v
        out[i] = avg / (1 - smooth ** (i + 1))  # Why: divides out the bias of starting at 0
    return out


def curve_keys(keys: str | Sequence[str], smooth: float, example: str, what: str) -> tuple[str, ...]:
    """``keys`` as a non-empty tuple (one name may be given as a string), after checking ``smooth`` in [0, 1).

    Raises:
        ValueError: no key (the message shows ``example``), or ``smooth`` outside [0, 1).
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if not keys:
        raise ValueError(f"keys is empty; pass at least one {what}, e.g. {example}")
    if not 0.0 <= float(smooth) < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}; e.g. 0.6 (0 = no smoothing)")
    return keys


def plot_history(history: Sequence[Mapping[str, float]] | Any, keys: Sequence[str] = ("loss",),
                 smooth: float = 0.6, log_y: bool = False) -> Figure:
    """Metric curves against the step, one axes per key.

    Args:
        history: per-step dicts with ``step`` and metric keys (``TrainResult.history``, a run's
            ``history.jsonl`` rows, or anything with a ``.history`` list of them).
        keys: metrics to plot, e.g. ``("loss", "recon", "concept")``.
        smooth: EMA weight in [0, 1): the raw curve is drawn faint and the smoothed one on top
            (0 = raw only).
        log_y: logarithmic y axis.
    """
    rows = list(getattr(history, "history", history))
    if not rows:
        raise ValueError("history is empty; train for at least one step (fit(...).history)")
    keys = curve_keys(keys, smooth, example="keys=('loss',)", what="metric name")
    available = sorted({k for r in rows for k in r} - {"step"})
    for key in keys:
        if not any(key in r for r in rows):
            raise KeyError(f"no metric {key!r} in the history; available keys are {available}")
    fig = Figure(figsize=(4.2 * len(keys), 3.0), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(keys), squeeze=False)).flat
    for ax, key in zip(axes, keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        steps, values = (np.asarray(v, dtype=float) for v in zip(*points))
        if smooth > 0 and len(values) > 1:
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1, label="raw")
            ax.plot(steps, ema(values, smooth), color="C0", linewidth=2, label=f"EMA {smooth:g}")
            ax.legend(fontsize=8)
        else:
            ax.plot(steps, values, color="C0", marker="o" if len(values) < 20 else None)
        ax.set(title=key, xlabel="step", yscale="log" if log_y else "linear")
        ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- concepts
def concept_rows(report: Any) -> list[Mapping[str, Any]]:
    """Per-concept dicts (with ``name``) from a ``ConceptReport`` or a list of such dicts."""
    rows = getattr(report, "per_concept", report)
    if not isinstance(rows, Sequence) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("report must be an evaluate.ConceptReport or a non-empty list of per-concept dicts "
                         "(keys: name, f1, precision, recall)")
    return list(rows)


def plot_concept_metrics(report: Any, metrics: Sequence[str] = ("f1", "precision", "recall")) -> Figure:
    """Grouped bars of per-concept metrics, concept names on the x axis; one axes.

    Args:
        report: ``evaluate.concept_metrics(...)`` (a ``ConceptReport``) or its ``per_concept`` list.
        metrics: which per-concept values to draw (any of accuracy, precision, recall, f1, auc).
    """
    rows = concept_rows(report)
    if isinstance(metrics, str):
        metrics = (metrics,)
    for metric in metrics:
        if metric not in rows[0]:
            raise KeyError(f"unknown metric {metric!r}; the rows have {sorted(rows[0])}")
    names = [str(r.get("name", i)) for i, r in enumerate(rows)]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig = Figure(figsize=(max(5.0, 0.5 * len(rows) + 1.5), 3.4), layout="constrained")
    ax: Axes = fig.subplots()
    for i, metric in enumerate(metrics):
        values = np.asarray([float(r[metric]) for r in rows])
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(values), width,
               label=f"{metric} (mean {np.nanmean(values):.2f})")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="per-concept metrics")
    ax.grid(axis="y", alpha=0.3)
    # Above the axes, in one row: inside, it covered the last concepts' bars.
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=len(metrics), frameon=False)
    return fig


def plot_measures_curve(curves: Mapping[str, Sequence[Any]], targets: Mapping[str, float] | None = None) -> Figure:
    """Hidden-pixel PSNR (left) and colour fidelity / colour-edit following (right) against the test-time
    mask ratio, one line style per model; two axes.

    Args:
        curves: model label -> ``mcm_core.evaluate.measures.measure_shapes_curve(...)`` (objects with
            ``mask_ratio``, ``psnr``, ``colour_fidelity``, ``edit_following``).
        targets: optional horizontal guides, e.g. ``{"psnr": 24, "share": 0.9}``.
    """
    if not curves:
        raise ValueError("curves is empty; pass {label: measure_shapes_curve(...)} for at least one model")
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for (label, curve), style in zip(curves.items(), ("-", "--", ":", "-.")):
        ratios = [m.mask_ratio for m in curve]
        left.plot(ratios, [m.psnr for m in curve], style, marker="o", color="k", label=label)
        right.plot(ratios, [m.colour_fidelity for m in curve], style, marker="o", color="tab:blue",
                   label=f"colour fidelity ({label})")
        right.plot(ratios, [m.edit_following for m in curve], style, marker="s", color="tab:red",
                   label=f"colour-edit following ({label})")
    for ax, key in ((left, "psnr"), (right, "share")):
        if targets and key in targets:
            ax.axhline(targets[key], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("test-time mask ratio")
        ax.grid(alpha=0.3)
    left.set(ylabel="dB", title="hidden-pixel PSNR")
    right.set(ylim=(0, 1.02), ylabel="share of hidden object pixels", title="colours of the hidden object pixels")
    left.legend(fontsize=8)
    right.legend(fontsize=7, loc="lower right")
    return fig
