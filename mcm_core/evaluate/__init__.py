"""Evaluation: concept metrics, reconstruction quality, frozen-feature probes, edits, cost.

Everything here reads a trained model and never trains it (a linear probe fits a
scikit-learn classifier on frozen features, nothing else). Conventions follow
``docs/design.md``: images ``(B, 3, H, W)`` float in ``[0, 1]``, masks bool ``(B, L)``
with ``True`` = hidden, every random function takes a ``generator``.

Modules (imported here in dependency order; every name is re-exported)
----------------------------------------------------------------------
- :mod:`~mcm_core.evaluate.inputs`: eval mode, model device, batch iteration, input checks.
- :mod:`~mcm_core.evaluate.metrics`: :func:`concept_metrics` (-> :class:`ConceptReport`),
  :func:`predict_concepts`, :func:`class_accuracy`, :func:`prior_thresholds`.
- :mod:`~mcm_core.evaluate.reconstruction`: :func:`reconstruction_metrics` (MSE / PSNR on hidden
  patches), :func:`edit_success_rate` (METHODS.md section 2, the metric no paper reports).
- :mod:`~mcm_core.evaluate.probes`: :func:`extract_features`, :func:`knn_accuracy`, :func:`linear_probe`.
- :mod:`~mcm_core.evaluate.flops`: :func:`count_flops`, :func:`training_flops_per_image`,
  :func:`training_flops_per_step`, :class:`RunCost`.
- :mod:`~mcm_core.evaluate.pipeline`: what ``mcm eval`` and the end-of-training evaluation compute
  (:class:`RunEvaluator`, :func:`concept_report`, :func:`reconstruction_over`, ...), as dicts.
- :mod:`~mcm_core.evaluate.measures`: hidden-pixel PSNR, colour fidelity and colour-edit following
  on the shapes data (``from mcm_core.evaluate.measures import ...``: it needs the shapes data's palette,
  so ``import mcm_core.evaluate`` does not load it).
- :mod:`~mcm_core.evaluate.comparison`: the methods side by side on one budget (notebook 07,
  ``benchmarks/compare_methods.py``): :class:`ComparisonSettings`, :func:`run_all`, :func:`load_rows`
  (``from mcm_core.evaluate.comparison import ...``: it trains, so it is not imported here).

Model calls run under ``torch.no_grad()`` in eval mode; the model's previous
train/eval mode is restored afterwards.
"""
from __future__ import annotations

from mcm_core.evaluate.inputs import (  # noqa: F401 (helpers re-exported)
    DataSource, binary_targets, check_image_batch, class_targets, eval_mode, iterate_batches, model_device,
    safe_ratio,
)
from mcm_core.evaluate.metrics import (  # noqa: F401 (helpers re-exported)
    LABELS, METRICS, ConceptReport, binary_auc, class_accuracy, concept_metrics, concept_row, confusion_counts,
    macro_average, predict_concepts, prior_thresholds,
)
from mcm_core.evaluate.reconstruction import (  # noqa: F401 (helpers re-exported)
    check_edit_inputs, check_pixel_model, edit_success_rate, edit_successes, reconstruction_metrics,
)
from mcm_core.evaluate.probes import (  # noqa: F401 (helpers re-exported)
    check_features, extract_features, fit_binary, knn_accuracy, linear_probe, standardize,
)
from mcm_core.evaluate.flops import (
    RunCost, count_flops, flop_counting, training_flops_per_image, training_flops_per_step,
)
from mcm_core.evaluate.pipeline import (  # noqa: F401 (helpers re-exported)
    EVAL_BATCH, FeatureMetrics, RunEvaluator, concept_metrics_dict, concept_report, features_metrics,
    reconstruction_over, shapes_measures,
)

__all__ = [
    "ConceptReport",
    "concept_metrics",
    "predict_concepts",
    "reconstruction_metrics",
    "extract_features",
    "knn_accuracy",
    "linear_probe",
    "edit_success_rate",
    "count_flops",
    "flop_counting",
    "training_flops_per_image",
    "training_flops_per_step",
    "RunCost",
    "class_accuracy",
    "prior_thresholds",
    "RunEvaluator",
    "FeatureMetrics",
    "concept_report",
    "concept_metrics_dict",
    "reconstruction_over",
    "shapes_measures",
    "features_metrics",
]

