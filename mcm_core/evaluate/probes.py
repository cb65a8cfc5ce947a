"""Frozen-feature probes: encoder features of full images, kNN accuracy and logistic-regression probes.

:func:`extract_features` runs any model of :mod:`mcm_core.models` over a data set with nothing
masked and returns features ``(N, D)`` with their targets; :func:`knn_accuracy` (classes) and
:func:`linear_probe` (classes or 0/1 concepts, scored with
:func:`~mcm_core.evaluate.metrics.concept_metrics`) read them. Nothing is trained but the
probe's scikit-learn classifier; the model stays frozen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mcm_core.choices import check_pool
from mcm_core.evaluate.inputs import (
    DataSource, binary_targets, class_targets, eval_mode, iterate_batches, model_device,
)
from mcm_core.evaluate.metrics import concept_metrics
from mcm_core.models import model_names
from mcm_core.models.outputs import is_model


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
