"""Patch clusterings for Latent MIM (notebook 06): k-means over each image's patch features, and how
well the clusters follow the object.

Numbers in, numbers out; :func:`mcm_core.viz.latent.plot_segmentations` draws the label maps.

Shapes: N images, L patches in row-major order on a ``grid = (gh, gw)``, D feature width.

Contents
--------
:func:`kmeans`, :func:`patch_clusters`, :func:`foreground_patches`, :func:`foreground_purity`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mcm_core.analysis.arrays import as_images, to_numpy

__all__ = ["kmeans", "patch_clusters", "foreground_patches", "foreground_purity"]


def kmeans(points: torch.Tensor, k: int, iters: int = 25, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Batched k-means (k-means++ seeding, Lloyd steps), one independent clustering per set.

    Args:
        points: float (N, M, D), N sets of M points.
        restarts: seedings tried per set; the one with the lowest within-cluster sum of squares wins.
    Returns:
        long (N, M) cluster labels in [0, k).
    """
    generator = torch.Generator().manual_seed(seed)
    n, m, d = points.shape
    x = points.double().repeat_interleave(restarts, dim=0)  # (N R, M, D): restarts run side by side
    rows = torch.arange(x.shape[0])
    centres = x[rows, torch.randint(m, (x.shape[0],), generator=generator)][:, None]  # (N R, 1, D)
    for _ in range(k - 1):  # k-means++: next centre drawn with probability ~ squared distance
        dist = torch.cdist(x, centres).min(dim=-1).values.pow(2)  # (N R, M)
        pick = torch.multinomial(dist + 1e-12, 1, generator=generator)[:, 0]
        centres = torch.cat([centres, x[rows, pick][:, None]], dim=1)
    for _ in range(iters):
        labels = torch.cdist(x, centres).argmin(dim=-1)  # (N R, M)
        onehot = torch.nn.functional.one_hot(labels, k).double()  # (N R, M, k)
        counts = onehot.sum(dim=1)[..., None]  # (N R, k, 1)
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp(min=1), centres)
    labels = torch.cdist(x, centres).argmin(dim=-1)
    inertia = (x - torch.gather(centres, 1, labels[..., None].expand(-1, -1, d))).pow(2).sum(dim=(1, 2))
    best = inertia.view(n, restarts).argmin(dim=1)  # (N,)
    return labels.view(n, restarts, m)[torch.arange(n), best]


def patch_clusters(features: Any, grid: tuple[int, int], k: int = 4, seed: int = 0) -> np.ndarray:
    """k-means over each image's own patch features, as label maps on the patch grid.

    Features are L2-normalized first (k-means on directions, as cosine similarity compares
    them). Labels are renumbered by cluster size, largest first, so colours are comparable
    between images and models (the background is usually cluster 0).

    Args:
        features: (N, L, D) patch features (e.g. ``model.patch_features(images)``) or raw patch
            pixels (N, L, p*p*3).
        grid: (gh, gw) with ``gh * gw == L``.
        k: clusters per image, 2 <= k <= L.
        seed: seed of the k-means++ seeding.
    Returns:
        int (N, gh, gw) cluster labels in [0, k).
    """
    x = torch.as_tensor(to_numpy(features), dtype=torch.float64)
    if x.ndim != 3:
        raise ValueError(f"features must have shape (N, L, D), got {tuple(x.shape)}; one row of features per patch")
    n, num_patches, _ = x.shape
    if len(grid) != 2 or grid[0] * grid[1] != num_patches:
        raise ValueError(f"grid {tuple(grid)} does not hold the {num_patches} patches of the features; "
                         "use the model's cfg.grid")
    if int(k) != k or not 2 <= k <= num_patches:
        raise ValueError(f"k must be an int in [2, {num_patches}] (clusters per image), got {k!r}")
    raw = kmeans(torch.nn.functional.normalize(x, dim=-1), int(k), seed=seed)  # (N, L)
    sizes = torch.nn.functional.one_hot(raw, int(k)).sum(dim=1)  # (N, k)
    order = torch.sort(-sizes, dim=1, stable=True).indices  # largest cluster first
    rank = torch.argsort(order, dim=1)  # old label -> new label
    return torch.gather(rank, 1, raw).numpy().astype(np.int64).reshape(n, grid[0], grid[1])


def foreground_patches(images: Any, patch_size: int, threshold: float = 0.1) -> np.ndarray:
    """Patches whose mean intensity exceeds ``threshold``: (N, 3, H, W) -> bool (N, gh, gw).

    For data on a black background (Fashion-MNIST, digits) this is the object's patch mask.
    """
    array = as_images(images)  # (N, H, W, 3)
    n, h, w, _ = array.shape
    if int(patch_size) != patch_size or patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int dividing the image size {h}x{w}")
    p = int(patch_size)
    means = array.mean(axis=-1).reshape(n, h // p, p, w // p, p).mean(axis=(2, 4))  # (N, gh, gw)
    return means > threshold


def foreground_purity(labels: Any, foreground: Any) -> np.ndarray:
    """Per image: fraction of patches whose cluster's majority (object or background) they share.

    1.0 means every cluster lies inside the object or inside the background; clusters cut
    by position instead of content score lower.

    Args:
        labels: int (N, gh, gw) cluster labels; foreground: bool (N, gh, gw).
    Returns:
        float (N,) in [0.5, 1].
    """
    labels, foreground = to_numpy(labels), to_numpy(foreground).astype(bool)
    if labels.shape != foreground.shape or labels.ndim != 3:
        raise ValueError(f"labels and foreground must both be (N, gh, gw), got {labels.shape} and {foreground.shape}")
    purity = np.empty(labels.shape[0])
    for i, (lab, fg) in enumerate(zip(labels.reshape(len(labels), -1), foreground.reshape(len(labels), -1))):
        inside = np.bincount(lab, weights=fg.astype(float))  # object patches per cluster
        total = np.bincount(lab)
        purity[i] = np.maximum(inside, total - inside).sum() / lab.size
    return purity
