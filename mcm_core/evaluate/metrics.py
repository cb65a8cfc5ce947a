"""Concept metrics: per-concept accuracy / precision / recall / F1 / AUC of an MCM's concept logits.

:func:`predict_concepts` runs a model over a data set and returns its concept logits
``(N, K)`` and 0/1 targets ``(N, K)``; :func:`concept_metrics` turns logits and targets
into a :class:`ConceptReport` (per concept, the confusion counts and macro averages);
:func:`class_accuracy` reads one-hot class data as top-1 accuracy, and
:func:`prior_thresholds` gives per-concept logit thresholds that undo the concept loss's
frequency weighting. Inputs are checked by :mod:`mcm_core.evaluate.inputs`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mcm_core.evaluate.inputs import DataSource, binary_targets, eval_mode, iterate_batches, model_device, safe_ratio
from mcm_core.models.outputs import require

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
LABELS = {"accuracy": "acc", "precision": "prec", "recall": "rec", "f1": "f1", "auc": "auc"}


@dataclass
class ConceptReport:
    """Per-concept and macro-averaged binary metrics.

    Attributes:
        names: the K concept names.
        per_concept: one dict per concept with ``name``, ``accuracy``, ``precision``, ``recall``,
            ``f1``, ``auc`` (nan when the targets hold one class only), ``support`` (positives)
            and the confusion counts ``tp``, ``fp``, ``fn``, ``tn``.
        macro: unweighted mean over concepts of each metric; ``auc`` averages only the
            concepts where it is defined (nan when none is).
        threshold: the logit threshold used for the predictions: one for every concept, or a
            list of K (e.g. :func:`prior_thresholds`).
        num_samples: N.
    """

    names: list[str]
    per_concept: list[dict[str, Any]]
    macro: dict[str, float]
    threshold: float | list[float] = 0.0
    num_samples: int = 0

    @property
    def confusion(self) -> Tensor:
        """Confusion counts per concept: long (K, 4), columns ``tp, fp, fn, tn``."""
        return torch.tensor([[row[c] for c in ("tp", "fp", "fn", "tn")] for row in self.per_concept],
                            dtype=torch.long).reshape(-1, 4)

    def column(self, metric: str) -> list[float]:
        """One metric for every concept, in concept order (e.g. ``report.column("f1")``)."""
        if not self.per_concept or metric not in self.per_concept[0]:
            valid = sorted(self.per_concept[0]) if self.per_concept else list(METRICS)
            raise KeyError(f"unknown metric {metric!r}; valid metrics are {valid}")
        return [row[metric] for row in self.per_concept]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (nan stays nan; ``json.dumps`` writes it as ``NaN``)."""
        return {"names": list(self.names), "per_concept": [dict(r) for r in self.per_concept],
                "macro": dict(self.macro), "threshold": self.threshold, "num_samples": self.num_samples}

    def format(self, digits: int = 3) -> str:
        """A readable fixed-width table: one row per concept, then the macro average."""
        width = max([len("concept"), len("macro")] + [len(n) for n in self.names])
        header = f"{'concept':<{width}}  " + "  ".join(f"{LABELS[m]:>6}" for m in METRICS) + f"  {'pos':>6}"
        lines = [header, "-" * len(header)]
        for row in self.per_concept:
            values = "  ".join(f"{row[m]:>6.{digits}f}" for m in METRICS)
            lines.append(f"{row['name']:<{width}}  {values}  {row['support']:>6d}")
        lines.append("-" * len(header))
        macro = "  ".join(f"{self.macro[m]:>6.{digits}f}" for m in METRICS)
        lines.append(f"{'macro':<{width}}  {macro}  {'':>6}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def confusion_counts(pred: Tensor, targets: Tensor) -> Tensor:
    """Per-concept confusion counts of bool predictions and 0/1 targets (N, K) -> long (K, 4): tp, fp, fn, tn."""
    truth = targets.bool()
    return torch.stack([(pred & truth).sum(0), (pred & ~truth).sum(0),
                        (~pred & truth).sum(0), (~pred & ~truth).sum(0)], dim=1).long()


def binary_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of one concept, or nan when ``truth`` (N,) holds a single class."""
    from sklearn.metrics import roc_auc_score

    if truth.min() == truth.max():
        return float("nan")
    return float(roc_auc_score(truth, scores))


def concept_row(name: str, counts: Tensor, auc: float) -> dict[str, Any]:
    """The metrics of one concept from its counts (4,) ``tp, fp, fn, tn``."""
    tp, fp, fn, tn = (int(c) for c in counts)
    precision, recall = safe_ratio(tp, tp + fp), safe_ratio(tp, tp + fn)
    return {"name": name, "accuracy": safe_ratio(tp + tn, tp + fp + fn + tn), "precision": precision,
            "recall": recall, "f1": safe_ratio(2 * precision * recall, precision + recall), "auc": auc,
            "support": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def macro_average(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Unweighted mean of each metric over concepts; AUC over the concepts where it is defined."""
    macro = {m: float(np.mean([r[m] for r in rows])) for m in METRICS if m != "auc"}
    aucs = [r["auc"] for r in rows if not math.isnan(r["auc"])]
    macro["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return macro


def concept_metrics(logits: Tensor, targets: Tensor, names: list[str] | None = None,
                    threshold: float | list[float] | Tensor = 0.0) -> ConceptReport:
    """Binary metrics of every concept.

    Args:
        logits: (N, K) concept scores; a concept is predicted present when its logit > ``threshold``.
        targets: (N, K) 0/1 labels.
        names: K concept names (default ``concept_0 ... concept_{K-1}``).
        threshold: logit threshold (0 = probability 0.5), one for all concepts or K of them (K,).
    Returns:
        A :class:`ConceptReport`. Precision, recall and F1 are 0 where undefined (no predicted
        or no true positives), as scikit-learn's ``zero_division=0``; AUC is nan for a
        concept whose targets hold one class only, and left out of the macro AUC.
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    targets = binary_targets(torch.as_tensor(targets).detach().cpu())
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be (N, K), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("concept_metrics needs at least one sample, got N = 0")
    k = logits.shape[1]
    names = [f"concept_{i}" for i in range(k)] if names is None else list(names)
    if len(names) != k:
        raise ValueError(f"got {len(names)} names for {k} concepts; pass one name per column of logits")
    cut = torch.as_tensor(threshold, dtype=torch.float32).detach().cpu()
    if cut.ndim > 1 or (cut.ndim == 1 and cut.shape[0] != k):
        raise ValueError(f"threshold must be one number or one per concept ({k}), got shape {tuple(cut.shape)}")
    counts = confusion_counts(logits > cut, targets)
    scores, truth = logits.numpy(), targets.numpy()
    rows = [concept_row(names[i], counts[i], binary_auc(scores[:, i], truth[:, i])) for i in range(k)]
    used = float(cut) if cut.ndim == 0 else [round(float(t), 6) for t in cut]
    return ConceptReport(names, rows, macro_average(rows), used, int(logits.shape[0]))


def class_accuracy(logits: Tensor, targets: Tensor) -> float | None:
    """Top-1 accuracy of concept logits on class data: argmax of ``logits`` (N, K) against the one positive.

    Class labels are trained as one-hot concepts (e.g. Fashion-MNIST); None unless every row
    of ``targets`` (N, K) has exactly one positive.
    """
    targets = torch.as_tensor(targets)
    if len(targets) == 0 or not bool((targets.sum(1) == 1).all()):
        return None
    return float((torch.as_tensor(logits).argmax(1) == targets.argmax(1)).float().mean())


def prior_thresholds(model_or_freq: nn.Module | list[float] | Tensor) -> Tensor:
    """Per-concept logit thresholds that undo the frequency weighting of the concept loss: (K,).

    The concept loss weights positives by ``0.5 / f`` and negatives by ``0.5 / (1 - f)``, so its
    logits are those of a balanced data set: ``log((1 - f) / f)`` above the logits under the
    data's own frequencies ``f``. Thresholding there (instead of at 0, the balanced decision)
    predicts a concept when its probability under the true frequencies exceeds 0.5: fewer false
    positives for rare concepts, which raises precision, accuracy and usually F1, at the cost of
    recall. AUC does not change.

    Args:
        model_or_freq: an MCM or supervised model (its ``cfg.concept_freq``; all 0 when it has
            none) or the K frequencies. Frequencies are clamped to [0.01, 0.99], as in the loss.
    """
    from mcm_core.models.losses import concept_prior

    if isinstance(model_or_freq, nn.Module):  # no concept_freq: an unweighted loss, thresholds 0
        cfg = model_or_freq.cfg
        prior = concept_prior(getattr(cfg, "concept_freq", None), cfg.num_concepts)
    else:
        values = [float(f) for f in torch.as_tensor(model_or_freq).flatten()]
        if not values or not all(0 < f < 1 for f in values):
            raise ValueError(f"concept frequencies must lie in (0, 1), got {values[:5]}")
        prior = concept_prior(values, len(values))
    return torch.log((1 - prior) / prior)


def predict_concepts(model: nn.Module, dataset_or_loader: DataSource, batch_size: int = 256,
                     mask_ratio: float = 0.0, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Concept logits of an MCM model over a whole dataset.

    Args:
        model: anything with ``predict_concepts(images, mask_ratio, generator)`` (MCM).
        dataset_or_loader: a concept Dataset, a DataLoader or an ``(images, targets)`` pair.
        mask_ratio: fraction of patches hidden from the encoder (0 = full images).
        device: where the model runs (default: its parameters' device).
        generator: random source of the masks when ``mask_ratio > 0``.
    Returns:
        logits float (N, K) and targets float (N, K), both on the CPU.
    """
    require(model, "uses_concepts", "concept logits need an MCM model (build_model('mcm')); "
            "for MAE use extract_features + linear_probe")
    device = model_device(model, device)
    logits, targets = [], []
    with eval_mode(model):
        for images, target in iterate_batches(dataset_or_loader, batch_size):
            logits.append(model.predict_concepts(images.to(device), mask_ratio, generator).float().cpu())
            targets.append(target.float().cpu())
    if not logits:
        raise ValueError("the dataset is empty; predict_concepts needs at least one image")
    return torch.cat(logits), binary_targets(torch.cat(targets), "dataset targets")
