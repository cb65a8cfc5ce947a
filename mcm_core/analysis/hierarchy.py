"""Geometry of hierarchical masking's trees (notebook 04): label checks, node boundaries, dendrogram layout.

Numpy in, numpy out; :mod:`mcm_core.viz.hierarchy` draws what these compute.

Conventions (``docs/design.md``): patches in row-major order on a ``grid = (gh, gw)`` with
``L = gh * gw``; node labels long ``(L,)`` / ``(N, L)`` with ids ``0..K-1``
(``HierarchyTree.labels_at(K)``); tree merges long ``(L - 1, 2)`` of node ids (leaves ``0..L-1``,
merge ``m`` makes node ``L + m``), as in :class:`mcm_core.masking.HierarchyTree`.

Contents
--------
- Checks: :func:`as_grid`, :func:`as_labels`, :func:`check_merges`.
- Geometry: :func:`boundary_segments`, :func:`dendrogram_layout`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mcm_core.analysis.arrays import to_numpy

__all__ = ["as_grid", "as_labels", "check_merges", "boundary_segments", "dendrogram_layout"]


def as_grid(grid: Sequence[int]) -> tuple[int, int]:
    """``grid`` as two positive ints ``(gh, gw)``, or a ValueError naming the fix."""
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be two positive ints (rows, cols) of patches, got {grid!r}; "
                         "use model.cfg.grid")
    return int(grid[0]), int(grid[1])


def as_labels(labels: Any, num_patches: int, what: str = "labels") -> np.ndarray:
    """Validate node labels: (..., L) non-negative ints -> int64 array of the same shape."""
    array = to_numpy(labels)
    if array.ndim == 0 or array.shape[-1] != num_patches or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer node ids with last dimension L = {num_patches}, got "
                         f"{array.dtype} {array.shape}; use tree.labels_at(K)")
    if array.size and array.min() < 0:
        raise ValueError(f"{what} must be non-negative node ids, got a minimum of {array.min()}")
    return array.astype(np.int64)


def boundary_segments(labels: Any, grid: Sequence[int]) -> np.ndarray:
    """Patch edges that separate two nodes: float (S, 2, 2) of ((x0, y0), (x1, y1)) in patch units.

    Patch ``(r, c)`` spans ``[c, c + 1] x [r, r + 1]``; multiply by the patch size and
    subtract 0.5 to draw over ``imshow`` pixel coordinates.
    """
    gh, gw = as_grid(grid)
    ids = as_labels(labels, gh * gw).reshape(gh, gw)
    rows, cols = np.nonzero(ids[:, 1:] != ids[:, :-1])  # vertical edge at x = c + 1
    vertical = [((c + 1, r), (c + 1, r + 1)) for r, c in zip(rows, cols)]
    rows, cols = np.nonzero(ids[1:, :] != ids[:-1, :])  # horizontal edge at y = r + 1
    horizontal = [((c, r + 1), (c + 1, r + 1)) for r, c in zip(rows, cols)]
    return np.asarray(vertical + horizontal, dtype=float).reshape(-1, 2, 2)


def check_merges(merges: Any, num_patches: int) -> np.ndarray:
    """Validate one tree's merges: int (L - 1, 2), merge m joining two earlier nodes, each used once."""
    array = to_numpy(merges)
    L = int(num_patches)
    if array.shape != (L - 1, 2) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"merges must be integer node ids (L - 1, 2) = ({L - 1}, 2) for one image, got "
                         f"{array.dtype} {array.shape}; pass tree.merges[i] of a HierarchyTree")
    array = array.astype(np.int64)
    limits = L + np.arange(L - 1)[:, None]  # merge m may only use nodes < L + m
    if (array < 0).any() or (array >= limits).any() or len(np.unique(array)) != array.size:
        raise ValueError("merges do not form a binary tree: merge m must join two distinct earlier nodes "
                         "(< L + m), each node used once; pass tree.merges[i] unchanged")
    return array


def dendrogram_layout(merges: Any, num_patches: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where to draw a tree: leaf order and (x, y) of every node.

    Leaves get x = 0..L-1 in depth-first order from the root (so every node's leaves are
    contiguous); an internal node sits above the middle of its children. y is the merge
    rank (leaves 0, merge m at m + 1): monotone, unlike the linkage heights, which need
    not be when merges are restricted to adjacent groups.

    Args:
        merges: int (L - 1, 2), node ids merged at each step (one image's ``tree.merges``).
    Returns:
        leaf_order: int (L,), patch index of the leaf at x = 0, 1, ...;
        x, y: float (2L - 1,), node positions indexed by node id.
    """
    L = int(num_patches)
    array = check_merges(merges, L)
    x, y = np.zeros(2 * L - 1), np.zeros(2 * L - 1)
    y[L:] = np.arange(1, L)
    order: list[int] = []
    stack = [2 * L - 2]  # the root
    while stack:  # depth first, left child first
        node = stack.pop()
        if node < L:
            order.append(node)
        else:
            stack.extend(array[node - L][::-1])
    x[order] = np.arange(L)
    for m, (a, b) in enumerate(array):  # children come before parents
        x[L + m] = (x[a] + x[b]) / 2
    return np.asarray(order, dtype=np.int64), x, y
