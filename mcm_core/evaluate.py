"""Evaluation: concept metrics, reconstruction quality, frozen-feature probes, edits, cost.

Everything here reads a trained model and never trains it (a linear probe fits a
scikit-learn classifier on frozen features, nothing else). Conventions follow
``docs/design.md``: images ``(B, 3, H, W)`` float in ``[0, 1]``, masks bool ``(B, L)``
with ``True`` = hidden, every random function takes a ``generator``.

Contents
--------
- Concepts: :func:`concept_metrics` (-> :class:`ConceptReport`), :func:`predict_concepts`.
- Reconstruction: :func:`reconstruction_metrics` (MSE / PSNR on hidden patches).
- Frozen features: :func:`extract_features`, :func:`knn_accuracy`, :func:`linear_probe`.
- Editing: :func:`edit_success_rate` (METHODS.md section 2, the metric no paper reports).
- Cost: :func:`count_flops`, :func:`training_flops_per_image`, :class:`RunCost`.

Model calls run under ``torch.no_grad()`` in eval mode; the model's previous
train/eval mode is restored afterwards.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from mcm_core.choices import check_pool
from mcm_core.models.capabilities import is_model, pixel_problem, require
from mcm_core.models.registry import model_names

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
    "RunCost",
]

DataSource = Dataset | DataLoader | Iterable | tuple[Tensor, Tensor]
METRICS = ("accuracy", "precision", "recall", "f1", "auc")
LABELS = {"accuracy": "acc", "precision": "prec", "recall": "rec", "f1": "f1", "auc": "auc"}


# =========================================================================== helpers
@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with gradients off; restore its previous mode on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU for none)."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def iterate_batches(source: DataSource, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images (B, 3, H, W), targets (B, ...))`` from any of the accepted sources.

    Accepted: a map-style ``Dataset`` of ``(image, target)`` (batched here, in order, no
    workers), a ``DataLoader`` or any iterable of ``(images, targets)`` batches (used as is),
    or a pair of tensors ``(images (N, 3, H, W), targets (N, ...))``.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(t, Tensor) for t in source):
        images, targets = source
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"images and targets differ in length: {images.shape[0]} vs {targets.shape[0]}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size], targets[start:start + batch_size]
        return
    if isinstance(source, Dataset):  # map-style or iterable: let a DataLoader batch it
        source = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=0)
    if not isinstance(source, Iterable):
        raise TypeError(f"expected a Dataset, a DataLoader or an (images, targets) pair of tensors, "
                        f"got {type(source).__name__}")
    for batch in source:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError("each batch must be an (images, targets) pair; wrap the data in a Dataset "
                            "that returns (image, target)")
        yield torch.as_tensor(batch[0]), torch.as_tensor(batch[1])


def check_image_batch(images: Tensor, what: str = "images") -> None:
    """Raise unless ``images`` is a float (N, 3, H, W) tensor with at least one image."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a float tensor (N, 3, H, W) in [0, 1], got {got}; "
                         "stack a dataset's images with torch.stack([img for img, _ in dataset])")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty; pass at least one image")


def binary_targets(targets: Tensor, what: str = "targets") -> Tensor:
    """Validate 0/1 multi-label targets (N, K) and return them as float."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 2:
        raise ValueError(f"{what} must be 0/1 concept labels of shape (N, K), got shape {tuple(targets.shape)}; "
                         "class-index targets (N,) go to knn_accuracy or linear_probe instead")
    if targets.numel() and not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError(f"{what} must contain only 0 and 1; threshold soft labels first, e.g. (targets > 0.5)")
    return targets.float()


def class_targets(targets: Tensor, what: str = "targets") -> Tensor:
    """Validate integer class targets (N,) and return them as long."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 1:
        raise ValueError(f"{what} must be class indices of shape (N,), got shape {tuple(targets.shape)}; "
                         "for 0/1 concept labels (N, K) use linear_probe")
    if targets.is_floating_point() and not bool((targets == targets.round()).all()):
        raise ValueError(f"{what} must be integer class indices, got non-integer values")
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"{what} must be non-negative class indices, got a minimum of {int(targets.min())}")
    return targets.long()


def safe_ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return float(num) / float(den) if den else 0.0


# =========================================================================== concept metrics
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
    from mcm_core.models.concept_loss import concept_prior

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


# =========================================================================== reconstruction
def check_pixel_model(model: nn.Module) -> None:
    """Raise unless the model predicts raw pixels (``reconstructs_pixels`` and ``norm_pix_loss=False``)."""
    require(model, "reconstructs_pixels", "reconstruction metrics need an MAE-style model (mae or mcm)")
    if (why := pixel_problem(model)) is not None:
        raise ValueError(f"reconstruction_metrics scores pixels, but {why}")


def reconstruction_metrics(model: nn.Module, images: Tensor, mask_ratio: float,
                           generator: torch.Generator | None = None, batch_size: int = 256) -> dict[str, float]:
    """Pixel MSE and PSNR of the reconstructed hidden patches.

    The mask is drawn per image with ``generator`` (MAE random masking). Predictions are
    clipped to [0, 1], as in the images ``model.reconstruct`` shows. Only hidden patches
    are scored; at ``mask_ratio`` 0 nothing is hidden and every patch is scored (as the
    training loss does).

    Args:
        images: (N, 3, H, W) in [0, 1].
    Returns:
        ``{"mse": mean squared error per pixel value over hidden patches,
        "psnr": 10 log10(1 / mse) in dB (inf when mse is 0)}``; PSNR of the pooled MSE,
        not a mean of per-image PSNRs.
    """
    check_pixel_model(model)
    check_image_batch(images)
    device = model_device(model)
    total_error, total_values = 0.0, 0
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            encoded = model.forward_encoder(batch, mask_ratio, generator)
            pred = model.forward_decoder(encoded).clamp(0, 1)  # (B, L, p*p*3)
            error = ((pred - model.patchify(batch)) ** 2).sum(dim=-1)  # (B, L)
            scored = encoded.mask if bool(encoded.mask.any()) else torch.ones_like(encoded.mask)
            total_error += float(error[scored].sum())
            total_values += int(scored.sum()) * pred.shape[-1]
    mse = total_error / total_values
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")}


# =========================================================================== frozen features
def extract_features(model: nn.Module, dataset_or_loader: DataSource, batch_size: int = 256,
                     pool: str = "cls", device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Frozen encoder features of full images (nothing masked).

    Args:
        model: anything with ``features(images, pool)`` (MAE, MCM, MiCL, Latent MIM, supervised).
        pool: ``"cls"`` (the CLS token) or ``"mean"`` (mean of the patch tokens).
    Returns:
        features float (N, D) and targets (N,) class indices or (N, K) concept labels, on the CPU.
    """
    check_pool(pool)
    if not is_model(model):
        raise TypeError(f"{type(model).__name__} is not a model of mcm_core.models (it declares no capabilities "
                        f"or lacks features()); pass a model built with build_model(name) for a name in "
                        f"model_names(): {', '.join(model_names())}")
    device = model_device(model, device)
    features, targets = [], []
    with eval_mode(model):
        for images, target in iterate_batches(dataset_or_loader, batch_size):
            features.append(model.features(images.to(device), pool).float().cpu())
            targets.append(target.cpu())
    if not features:
        raise ValueError("the dataset is empty; extract_features needs at least one image")
    return torch.cat(features), torch.cat(targets)


def check_features(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> None:
    """Raise unless features are (N, D) with matching D and as many targets as rows."""
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{name}_x must be a non-empty (N, D) feature matrix, got {tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}_x has {x.shape[0]} rows but {name}_y has {y.shape[0]}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_x.shape[1]} vs {test_x.shape[1]}")


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 1024) -> float:
    """Weighted k-nearest-neighbour accuracy on frozen features (the InstDisc / DINO protocol).

    Features are L2-normalized; each test point takes its ``k`` most cosine-similar
    training points, each votes for its class with weight ``exp(similarity / temperature)``,
    and the class with the largest vote wins.

    Args:
        train_x: (N, D); train_y: (N,) class indices; test_x: (M, D); test_y: (M,).
        chunk_size: test points scored at once (bounds memory to chunk_size x N similarities).
    Returns:
        Top-1 accuracy in [0, 1].
    """
    train_x, test_x = torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float()
    train_y, test_y = class_targets(train_y, "train_y"), class_targets(test_y, "test_y")
    check_features(train_x, train_y, test_x, test_y)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the protocol uses 0.07")
    k = min(int(k), train_x.shape[0])
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train_n = nn.functional.normalize(train_x, dim=1)
    correct = 0
    for start in range(0, test_x.shape[0], chunk_size):
        query = nn.functional.normalize(test_x[start:start + chunk_size], dim=1)
        sim, idx = (query @ train_n.T).topk(k, dim=1)  # (M', k)
        votes = torch.zeros(query.shape[0], num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_y[start:start + chunk_size]).sum())
    return correct / test_x.shape[0]


def standardize(train_x: Tensor, test_x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-variance features using the training statistics: -> float64 (N, D), (M, D)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.double().numpy())
    return scaler.transform(train_x.double().numpy()), scaler.transform(test_x.double().numpy())


def fit_binary(train_x: np.ndarray, labels: np.ndarray, test_x: np.ndarray, C: float, max_iter: int) -> np.ndarray:
    """Logistic-regression decision values (M,) for one concept; a constant ±1 when training labels hold one class."""
    from sklearn.linear_model import LogisticRegression

    if labels.min() == labels.max():
        return np.full(test_x.shape[0], 1.0 if labels[0] == 1 else -1.0)
    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs").fit(train_x, labels)
    return clf.decision_function(test_x)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, C: float = 1.0,
                 max_iter: int = 1000) -> dict[str, Any]:
    """Logistic-regression probe on standardized frozen features (scikit-learn, lbfgs).

    Args:
        train_x: (N, D); test_x: (M, D).
        train_y, test_y: class indices (N,) / (M,), or 0/1 concept labels (N, K) / (M, K).
        C: inverse L2 strength; max_iter: lbfgs iterations.
    Returns:
        Classes: ``{"accuracy": top-1}``.
        Concepts (one classifier per concept, logit threshold 0): ``{"accuracy": mean over
        concepts of per-concept accuracy, "macro_f1", "macro_auc", "per_concept_f1": [K floats]}``.
        A concept with one class in the training labels is predicted as that class.
    """
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = torch.as_tensor(train_x).float().cpu(), torch.as_tensor(test_x).float().cpu()
    train_y, test_y = torch.as_tensor(train_y).cpu(), torch.as_tensor(test_y).cpu()
    check_features(train_x, train_y, test_x, test_y)
    if C <= 0:
        raise ValueError(f"C must be > 0 (inverse regularization strength), got {C}")
    xtr, xte = standardize(train_x, test_x)
    if train_y.ndim == 1:
        ytr, yte = class_targets(train_y, "train_y").numpy(), class_targets(test_y, "test_y").numpy()
        if len(np.unique(ytr)) < 2:
            raise ValueError("train_y holds a single class; a linear probe needs at least two")
        clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs").fit(xtr, ytr)
        return {"accuracy": float((clf.predict(xte) == yte).mean())}
    ytr, yte = binary_targets(train_y, "train_y").numpy(), binary_targets(test_y, "test_y")
    if ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train_y has {ytr.shape[1]} concepts but test_y has {yte.shape[1]}")
    logits = np.stack([fit_binary(xtr, ytr[:, i], xte, C, max_iter) for i in range(ytr.shape[1])], axis=1)
    report = concept_metrics(torch.from_numpy(logits), yte)
    return {"accuracy": report.macro["accuracy"], "macro_f1": report.macro["f1"],
            "macro_auc": report.macro["auc"], "per_concept_f1": report.column("f1")}


# =========================================================================== editing
def check_edit_inputs(model: nn.Module, images: Tensor, concepts: Tensor,
                      concept_indices: list[int] | None) -> tuple[Tensor, list[int]]:
    """Validate the inputs of :func:`edit_success_rate`: -> long (N, K) labels, the concept indices."""
    require(model, "can_edit", "edit success needs an MCM model (build_model('mcm'))")
    check_image_batch(images)
    labels = binary_targets(torch.as_tensor(concepts).cpu(), "concepts").long()
    k = model.cfg.num_concepts
    if tuple(labels.shape) != (images.shape[0], k):
        raise ValueError(f"concepts must have shape (N, K) = {(images.shape[0], k)}, got {tuple(labels.shape)}")
    indices = list(range(k)) if concept_indices is None else [int(i) for i in concept_indices]
    if not indices or any(not 0 <= i < k for i in indices):
        raise ValueError(f"concept_indices must be a non-empty list of indices in [0, {k}), got {concept_indices!r}")
    return labels, indices


def edit_successes(model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor, indices: list[int]) -> Tensor:
    """Successful flips of one batch: images (B, 3, H, W), labels long (B, K), mask (B, L) -> long (len(indices),)."""
    wins = []
    for k in indices:
        states = torch.full_like(labels, -1)
        states[:, k] = 1 - labels[:, k]  # ask for the opposite of the true state
        edited = model.edit(images, states, mask=mask)  # (B, 3, H, W)
        now_on = model.predict_concepts(edited, 0.0)[:, k] > 0  # re-encoded on the full image
        wins.append((now_on == states[:, k].bool()).sum())
    return torch.stack(wins).cpu()


def edit_success_rate(model: nn.Module, images: Tensor, concepts: Tensor, mask_ratio: float = 0.75,
                      generator: torch.Generator | None = None, concept_indices: list[int] | None = None,
                      batch_size: int = 256) -> dict[str, Any]:
    """Fraction of edited reconstructions whose re-encoded concept prediction flips as asked.

    For every image and every requested concept k: ask ``model.edit`` for the opposite of
    the image's true label of k (all other concepts unchanged), decode, re-encode the edited
    image with nothing hidden (``model.predict_concepts(edited, 0.0)``), and count a success
    when concept k's logit is > 0 exactly when the asked state is 1.

    Each image gets **one** mask, drawn once with ``generator`` and shared by all its edits,
    so the per-concept rates differ only by the concept, not by the mask. Only hidden patches
    can change: at ``mask_ratio`` 0 an edit leaves the image as it is, and the rate is just
    the model's error rate on those concepts.

    Args:
        images: (N, 3, H, W) in [0, 1]; concepts: (N, K) 0/1 true labels.
        mask_ratio: test-time mask ratio (higher lets the concepts dominate the hidden patches).
        concept_indices: which concepts to edit (default: all K).
    Returns:
        ``{"rate": successes / (N x len(concept_indices)), "per_concept": [rate of each requested
        concept, in the order given], "concept_indices": [...]}``.
    """
    labels, indices = check_edit_inputs(model, images, concepts, concept_indices)
    device = model_device(model)
    wins = torch.zeros(len(indices), dtype=torch.long)
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            mask = model.make_mask(batch, mask_ratio, generator)  # bool (B, L), shared by every edit
            wins += edit_successes(model, batch, labels[start:start + batch_size].to(device), mask, indices)
    n = images.shape[0]
    return {"rate": float(wins.sum()) / (n * len(indices)), "per_concept": (wins.double() / n).tolist(),
            "concept_indices": indices}


# =========================================================================== cost
@contextmanager
def flop_counting() -> Iterator[FlopCounterMode]:
    """``torch.utils.flop_counter`` around a block, attention on the MATH SDPA backend.

    The fused CPU attention kernel is not counted (METHODS.md section 6), so counts would
    otherwise miss attention. The counter's ``get_total_flops()`` is the total;
    ``get_flop_counts()`` splits it by module (forward passes attribute reliably; backward
    passes of interleaved modules, such as MCM's encoder and concept blocks, do not).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()`` once, counted by ``torch.utils.flop_counter`` (see ``flop_counting``)."""
    with flop_counting() as counter:
        fn()
    return int(counter.get_total_flops())


def training_flops_per_image(model: nn.Module, images: Tensor, mask_ratio: float,
                             concepts: Tensor | None = None, generator: torch.Generator | None = None) -> float:
    """FLOPs of one training step (forward + backward of ``model(images, ...)``) per image.

    Args:
        images: (B, 3, H, W); concepts: optional (B, K) 0/1 labels (MCM's concept loss).
    Returns:
        total FLOPs / B. The model's gradients are zeroed (set to None) afterwards.
        Optimizer FLOPs are not included.
    """
    check_image_batch(images)

    def step() -> None:
        model(images, mask_ratio=mask_ratio, concepts=concepts, generator=generator).loss.backward()

    try:
        flops = count_flops(step)
    finally:
        model.zero_grad(set_to_none=True)
    return flops / images.shape[0]


@dataclass
class RunCost:
    """What a training run cost.

    Attributes:
        wall_seconds: wall-clock training time.
        train_flops: total training FLOPs (e.g. ``training_flops_per_image(...) * images_seen``).
        images_seen: images processed (steps x batch size).
    """

    wall_seconds: float
    train_flops: float
    images_seen: int

    @property
    def tflops_per_second(self) -> float:
        """Achieved throughput in TFLOP/s (nan when no time was measured)."""
        return self.train_flops / self.wall_seconds / 1e12 if self.wall_seconds > 0 else float("nan")

    @property
    def flops_per_image(self) -> float:
        """Training FLOPs per image seen (nan when no image was seen)."""
        return self.train_flops / self.images_seen if self.images_seen > 0 else float("nan")

    @property
    def images_per_second(self) -> float:
        """Training throughput in images per second (nan when no time was measured)."""
        return self.images_seen / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the derived rates."""
        return {**asdict(self), "tflops_per_second": self.tflops_per_second,
                "flops_per_image": self.flops_per_image, "images_per_second": self.images_per_second}
