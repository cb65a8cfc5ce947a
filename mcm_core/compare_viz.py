"""Moved to :mod:`mcm_core.analysis.compare` (:func:`summarize`) and :mod:`mcm_core.viz.compare`
(:func:`plot_accuracy_vs_flops`); this path re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.analysis.compare import METRICS, summarize
from mcm_core.viz.compare import MARKERS, plot_accuracy_vs_flops

__all__ = ["METRICS", "summarize", "plot_accuracy_vs_flops", "MARKERS"]
