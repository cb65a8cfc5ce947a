"""Evolved hierarchical masking (METHODS.md section 5): mask whole nodes of a patch tree.

A binary tree over each image's patches, built from a patch affinity ``(B, L, L)`` that the
*model* computes (:func:`build_tree`, :class:`HierarchyTree`; the clustering itself is in the
private :mod:`mcm_core.masking._agglomeration`), cut into ``K(t)`` nodes where ``K`` shrinks
with training progress (:func:`level_schedule`); whole nodes are masked
(:func:`mask_whole_nodes`, :class:`HierarchicalMasker`). Our choices, all switches: average
linkage on the symmetrized affinity, merging only 4-adjacent groups (``adjacency``), a
``sqrt`` schedule. Also the tree's quality against object labels
(:func:`patch_labels_from_pixel_masks`, :func:`tree_purity`).

This module never imports the models: the training loop passes the affinity in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from mcm_core.masking._agglomeration import _agglomerate
from mcm_core.masking.simple import DeviceLike, Grid, _check_grid, _hide_first, _uniform, num_hidden


# --------------------------------------------------------------------------- hierarchy tree
@dataclass
class HierarchyTree:
    """Per-image binary trees over the patches (agglomerative clustering).

    Node ids: leaves ``0..L-1`` are patches; merge ``m`` creates internal node ``L + m``;
    the root is ``2L - 2``.

    Attributes:
        merges: long (B, L-1, 2), the two child node ids of each merge.
        heights: float (B, L-1), average-linkage similarity at each merge (not
            necessarily monotone when merges are restricted to adjacent groups).
        grid: patch grid (gh, gw).
        slots: long (B, L-1, 2), for each merge the smallest patch index of the two
            merged groups ``(a, b)`` with ``a < b``; the union keeps ``a``. Used by
            :meth:`labels_at` (a cheap pointer-jumping pass instead of storing a
            (L, B, L) label history).
    """

    merges: Tensor
    heights: Tensor
    grid: Grid
    slots: Tensor = field(repr=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def labels_at(self, num_nodes: int) -> Tensor:
        """Node of every patch when the tree is cut into ``num_nodes`` nodes: long (B, L).

        Ids are contiguous ``0..num_nodes-1``, numbered by each node's smallest patch
        index. ``labels_at(L)`` is ``arange(L)``; ``labels_at(1)`` is all zeros.
        """
        L = self.num_patches
        if int(num_nodes) != num_nodes or not 1 <= num_nodes <= L:
            raise ValueError(f"num_nodes must be an int in [1, {L}] (the number of patches), got {num_nodes!r}")
        B, device = self.slots.shape[0], self.slots.device
        done = L - int(num_nodes)  # merges applied at this cut
        parent = torch.arange(L, device=device).repeat(B, 1)
        parent.scatter_(1, self.slots[:, :done, 1], self.slots[:, :done, 0])  # merged group b -> a
        # Why: pointer jumping (parent of parent) doubles the followed path; log2(L) steps reach the roots.
        for _ in range(max(1, math.ceil(math.log2(L)))):
            parent = parent.gather(1, parent)
        is_root = torch.zeros(B, L, dtype=torch.bool, device=device).scatter_(1, parent, True)
        # Why: cumsum over the root indicator turns root patch indices into contiguous ids.
        return (is_root.long().cumsum(1) - 1).gather(1, parent)


def _check_affinity(affinity: Tensor, grid: Grid, check_finite: bool = True) -> None:
    L = grid[0] * grid[1]
    if affinity.dim() != 3 or affinity.shape[1:] != (L, L):
        raise ValueError(f"affinity must be (B, L, L) with L = {L} patches of grid {grid}, got "
                         f"{tuple(affinity.shape)}; compute it with the model's patch_affinity(images)")
    if not affinity.is_floating_point():
        raise ValueError(f"affinity must be a float tensor, got {affinity.dtype}")
    # Why: one sum is cheaper than a full isfinite pass; NaN/inf anywhere make it non-finite.
    if check_finite and not bool(torch.isfinite(affinity.sum())) and not bool(torch.isfinite(affinity).all()):
        raise ValueError("affinity contains inf or NaN; clamp or fix the attention maps first")


def build_tree(affinity: Tensor, grid: Sequence[int], adjacency: bool = True,
               check_finite: bool = True, *, exact_width: bool | None = None) -> HierarchyTree:
    """Agglomerative clustering of each image's patches into a binary tree.

    Average linkage on the symmetrized affinity ``(A + A^T) / 2``: the similarity of two
    groups is the mean similarity of their patch pairs. With ``adjacency=True`` (our
    choice) only groups touching on the 4-neighbourhood grid may merge, so every node is
    a connected region; ``adjacency=False`` is plain average linkage.

    All B images are merged together, ``L - 1`` steps of a few tensor ops over (B, L)
    and (B, E) tensors, E = candidate patch pairs (2L - gh - gw with adjacency,
    L(L-1)/2 without, so the switch costs O(L^2) per step); runs on the affinity's
    device (CPU or CUDA), no loop over images or pairs.

    Ties are deterministic: the first best candidate in the order of its patch pair
    ``(p, q)`` (row-major), so for equal scores the lowest-numbered patches merge first.

    Args:
        affinity: float (B, L, L), higher = more similar (e.g. the cosine of the patch
            tokens, or attention summed over layers and heads).
        grid: (gh, gw) with ``gh * gw = L``.
        adjacency: restrict merges to spatially adjacent groups.
        check_finite: raise on inf/NaN in the affinity (reads one value back from a GPU).
        exact_width: as groups merge, the candidate pairs are cut down to the most any image
            keeps (True: counted, a read-back from a GPU) or to a bound known on the host
            (False: :func:`~mcm_core.masking.max_group_pairs`, at most ``3g - 6`` pairs of ``g``
            connected regions; no read-back, a few more padded columns). None (default): exact
            on the CPU only. Both give identical trees, ties included.
    Returns:
        :class:`HierarchyTree` on the affinity's device. Nothing is read back from a GPU
        except the finiteness check (and the width, if ``exact_width=True``).
    """
    grid = _check_grid(grid)
    _check_affinity(affinity, grid, check_finite)
    with torch.no_grad():
        merges, heights, slots = _agglomerate(affinity.detach().float(), grid, adjacency, exact=exact_width)
    return HierarchyTree(merges, heights, grid, slots)


# --------------------------------------------------------------------------- hierarchical masking
SCHEDULES = ("sqrt", "linear")


def level_schedule(progress: float, num_patches: int, min_nodes: int = 4, schedule: str = "sqrt") -> int:
    """Number of tree nodes K(t) to cut into at training ``progress`` t in [0, 1].

    K goes from ``L // 2`` at t = 0 down to ``min_nodes`` at t = 1 as ``sqrt(t)``
    (our choice; ``schedule="linear"`` is the switch): early masks are small nodes
    (textures, pairs of patches), late masks are parts and objects. Non-increasing in t.
    ``min_nodes`` larger than ``num_patches`` is clipped to it.
    """
    if not 0.0 <= float(progress) <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (step / total_steps), got {progress}")
    if int(num_patches) != num_patches or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}")
    if int(min_nodes) != min_nodes or min_nodes < 1:
        raise ValueError(f"min_nodes must be a positive int, got {min_nodes!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    min_nodes = min(int(min_nodes), int(num_patches))  # tiny grids: never more nodes than patches
    start = max(num_patches // 2, min_nodes)
    weight = math.sqrt(progress) if schedule == "sqrt" else float(progress)
    k = round(start - (start - min_nodes) * weight)
    return int(min(max(k, min_nodes), start))


def mask_whole_nodes(labels: Tensor, num_nodes: int, mask_ratio: float,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Hide whole nodes in a random order until exactly ``num_hidden`` patches are hidden.

    The last node reached is hidden partially (random patches within it), so the count
    is exact and at most one node per image is partially hidden.

    Args:
        labels: long (B, L), node id in ``0..num_nodes-1`` of every patch.
    Returns:
        mask: bool (B, L), ``True`` = hidden.
        node_order: long (B, K), the random order in which nodes are taken (only a
            prefix of it is hidden).
    """
    B, L = labels.shape
    n = num_hidden(L, mask_ratio)
    device = labels.device
    node_order = _uniform((B, num_nodes), generator, device).argsort(dim=1)  # random permutation
    # Why: scattering arange through a permutation inverts it: rank of each node in the order.
    node_rank = torch.empty_like(node_order).scatter_(
        1, node_order, torch.arange(num_nodes, device=device).expand(B, num_nodes))
    # Why: key = node rank + U[0,1): sorting takes nodes in order, random patches within one
    # (float64 so rank + u never rounds up into the next node).
    keys = node_rank.gather(1, labels).double() + _uniform((B, L), generator, device).double()
    return _hide_first(keys.argsort(dim=1), n), node_order


@dataclass
class HierarchicalMaskOutput:
    """Everything the hierarchical masker decided, for training and for the notebooks.

    Attributes:
        mask: bool (B, L), ``True`` = hidden.
        tree: the per-image :class:`HierarchyTree`.
        labels: long (B, L), node id (0..K-1) of every patch at the cut.
        num_nodes: K, the cut level used.
        node_order: long (B, K), the random order in which nodes were masked.
    """

    mask: Tensor
    tree: HierarchyTree
    labels: Tensor
    num_nodes: int
    node_order: Tensor


class HierarchicalMasker:
    """Evolved hierarchical masking (METHODS.md section 5): mask whole tree nodes.

    Per batch: build each image's tree from the model's patch affinity
    (:func:`build_tree`), cut it into ``K = level_schedule(progress)`` nodes, hide whole
    nodes in random order (:func:`mask_whole_nodes`). Generate it in the training loop
    (it needs the model), not in a data-loader collator.

    Args:
        grid: patch grid (gh, gw).
        min_nodes: K at the end of training (our choice: 4).
        adjacency: merge only 4-adjacent groups (our choice; False = plain clustering).
        schedule: ``"sqrt"`` (our choice) or ``"linear"``.
        check_finite: reject a non-finite affinity with a clear error (one read-back per batch).
            The trainer turns it off on a GPU: there a non-finite affinity can only come from
            non-finite EMA weights, whose loss the trainer's non-finite check already stops.
    """

    name = "hierarchical"

    def __init__(self, grid: Sequence[int], min_nodes: int = 4, adjacency: bool = True,
                 schedule: str = "sqrt", check_finite: bool = True) -> None:
        self.grid = _check_grid(grid)
        self.check_finite = bool(check_finite)
        self.num_patches = self.grid[0] * self.grid[1]
        self.min_nodes = int(min_nodes)
        self.adjacency = bool(adjacency)
        self.schedule = schedule
        level_schedule(0.0, self.num_patches, self.min_nodes, schedule)  # validate now, not mid-training

    def num_nodes(self, progress: float) -> int:
        """K(t), the number of nodes the tree is cut into at ``progress``."""
        return level_schedule(progress, self.num_patches, self.min_nodes, self.schedule)

    def sample(self, affinity: Tensor, mask_ratio: float, progress: float,
               generator: torch.Generator | None = None) -> HierarchicalMaskOutput:
        """Mask for a batch from its affinity (B, L, L); all outputs on the affinity's device."""
        k = self.num_nodes(progress)
        num_hidden(self.num_patches, mask_ratio)  # fail before the expensive tree
        tree = build_tree(affinity, self.grid, self.adjacency, check_finite=self.check_finite)
        labels = tree.labels_at(k)
        mask, order = mask_whole_nodes(labels, k, mask_ratio, generator)
        return HierarchicalMaskOutput(mask, tree, labels, k, order)

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None, progress: float = 0.0) -> Tensor:
        """Bool (B, L) mask; requires ``affinity`` (B, L, L) from the model."""
        if affinity is None:
            raise ValueError("hierarchical masking needs affinity=(B, L, L) from the model "
                             "(e.g. model.encoder.patch_affinity(images)); build it in the training loop")
        if affinity.shape[0] != batch_size:
            raise ValueError(f"affinity has {affinity.shape[0]} images but batch_size is {batch_size}")
        mask = self.sample(affinity, mask_ratio, progress, generator).mask
        return mask if device is None else mask.to(device)



# --------------------------------------------------------------------------- tree quality
def patch_labels_from_pixel_masks(object_masks: Tensor, patch_size: int) -> Tensor:
    """Majority object label of every patch: long (B, L) from pixel labels (B, H, W).

    Labels are non-negative ints (e.g. 0 = background); ties go to the smaller label.
    """
    if object_masks.dim() != 3:
        raise ValueError(f"object_masks must be (B, H, W) integer labels, got shape {tuple(object_masks.shape)}")
    B, H, W = object_masks.shape
    p = int(patch_size)
    if p < 1 or H % p or W % p:
        raise ValueError(f"image size {H}x{W} must be divisible by patch_size={patch_size}")
    labels = object_masks.long()
    if bool((labels < 0).any()):
        raise ValueError("object labels must be non-negative ints (0 = background)")
    # Why: (B, gh, p, gw, p) -> (B, L, p*p) groups each patch's pixels on the last axis.
    pix = labels.view(B, H // p, p, W // p, p).permute(0, 1, 3, 2, 4).reshape(B, -1, p * p)
    counts = torch.zeros(*pix.shape[:2], int(labels.max()) + 1, device=labels.device)
    counts.scatter_add_(2, pix, torch.ones_like(pix, dtype=counts.dtype))
    return counts.argmax(dim=2)  # first max = smaller label on ties


def tree_purity(labels: Tensor, patch_objects: Tensor) -> Tensor:
    """Node purity against object labels: float (B,).

    For each node, the fraction of its patches belonging to its majority object;
    averaged over nodes weighted by node size (= majority patches / L). 1.0 when no
    node straddles two objects.

    Args:
        labels: long (B, L), node id per patch (e.g. ``tree.labels_at(K)``).
        patch_objects: long (B, L), object id per patch (non-negative).
    """
    if labels.shape != patch_objects.shape or labels.dim() != 2:
        raise ValueError(f"labels and patch_objects must both be (B, L), got {tuple(labels.shape)} "
                         f"and {tuple(patch_objects.shape)}")
    if bool((labels < 0).any()) or bool((patch_objects < 0).any()):
        raise ValueError("node and object labels must be non-negative ints")
    B, L = labels.shape
    num_objects = int(patch_objects.max()) + 1
    cells = int(labels.max()) + 1
    # Why: one flat index node * O + object lets a single scatter_add count (node, object) pairs.
    pair = labels.long() * num_objects + patch_objects.long()
    counts = torch.zeros(B, cells * num_objects, device=labels.device)
    counts.scatter_add_(1, pair, torch.ones(B, L, device=labels.device))
    return counts.view(B, cells, num_objects).amax(dim=2).sum(dim=1) / L
