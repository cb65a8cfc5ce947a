"""Masking strategies: which patches the encoder does not see.

Conventions (``docs/design.md``): a mask is a bool tensor ``(B, L)`` with
``True`` = hidden from the encoder, patches in row-major order on a ``grid = (gh, gw)``,
``L = gh * gw``. Every strategy hides exactly :func:`num_hidden` patches in every image,
so the encoder always gets a rectangular ``(B, N_vis, D)`` batch.

Strategies
----------
- ``"random"`` -- MAE: argsort of per-sample uniform noise (:func:`random_mask`).
- ``"block"`` -- BEiT-style rectangles of random size and aspect (:func:`block_mask`).
- ``"hierarchical"`` -- evolved hierarchical masking (METHODS.md section 5): a binary
  tree over each image's patches, built from a patch affinity ``(B, L, L)`` that the
  *model* computes (:func:`build_tree`), cut into ``K(t)`` nodes where ``K`` shrinks with
  training progress (:func:`level_schedule`); whole nodes are masked
  (:class:`HierarchicalMasker`). Our choices, all switches: average linkage on the
  symmetrized affinity, merging only 4-adjacent groups (``adjacency``), a ``sqrt`` schedule.

Random numbers are drawn with the given ``generator`` on the generator's device, so a
seeded generator reproduces the same masks on any output device.

This module never imports the models: the training loop passes the affinity in.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from mcm_core.choices import MASKINGS, check_mask_ratio

__all__ = [
    "num_hidden",
    "random_mask",
    "block_mask",
    "ids_from_mask",
    "check_mask",
    "MaskStrategy",
    "RandomMasker",
    "BlockMasker",
    "HierarchicalMasker",
    "HierarchicalMaskOutput",
    "HierarchyTree",
    "MASKERS",
    "make_masker",
    "MaskingCollator",
    "build_tree",
    "level_schedule",
    "mask_whole_nodes",
    "tree_purity",
    "patch_labels_from_pixel_masks",
]

Grid = tuple[int, int]
DeviceLike = torch.device | str | None


# --------------------------------------------------------------------------- validation
def _check_grid(grid: Sequence[int]) -> Grid:
    """Return ``grid`` as ``(gh, gw)`` of positive ints, or raise naming the problem."""
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be two positive ints (rows, cols) of patches, got {grid!r}; "
                         "use (H // patch_size, W // patch_size)")
    return int(grid[0]), int(grid[1])


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def num_hidden(num_patches: int, mask_ratio: float) -> int:
    """Exact number of hidden patches per image that every strategy uses.

    ``round(num_patches * mask_ratio)`` clipped to ``[0, num_patches - 1]`` so the
    encoder always sees at least one patch.
    """
    if int(num_patches) != num_patches or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}")
    mask_ratio = check_mask_ratio(mask_ratio)
    return min(max(int(round(num_patches * mask_ratio)), 0), int(num_patches) - 1)


def check_mask(mask: Tensor, batch_size: int, num_patches: int) -> None:
    """Raise unless ``mask`` is a bool (B, L) tensor with B = ``batch_size`` and L = ``num_patches`` (True = hidden).

    The one check of a mask a caller hands a model (its hidden counts are checked where they are used).
    """
    expected = (batch_size, num_patches)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {expected} (True = hidden), got {got}; "
                         "build one with mcm_core.masking")


# --------------------------------------------------------------------------- random numbers
def _output_device(generator: torch.Generator | None, device: DeviceLike) -> torch.device:
    """``device`` if given, else the generator's device, else CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 of ``shape`` drawn on the generator's device, returned on ``device``."""
    # Why: drawing on the generator's device keeps a seeded run identical whatever the output device.
    draw_on = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_on).to(device)


def _hide_first(order: Tensor, n: int) -> Tensor:
    """Bool (B, L) mask hiding the patches ``order[:, :n]`` (order: (B, L) patch indices)."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :n], True)


# --------------------------------------------------------------------------- random
def random_mask(batch_size: int, num_patches: int, mask_ratio: float, *,
                generator: torch.Generator | None = None, device: DeviceLike = None,
                noise: Tensor | None = None) -> Tensor:
    """MAE's random masking: bool (B, L), ``True`` = hidden.

    Per image, uniform noise (B, L) is argsorted; the ``L - n`` patches with the lowest
    noise stay visible, the ``n = num_hidden(L, mask_ratio)`` highest are hidden.

    Args:
        noise: optional (B, L) float noise to use instead of drawing it (tests, notebooks).
    """
    batch_size = _check_batch_size(batch_size)
    n = num_hidden(num_patches, mask_ratio)
    out = _output_device(generator, device)
    if noise is None:
        noise = _uniform((batch_size, num_patches), generator, out)
    elif tuple(noise.shape) != (batch_size, num_patches):
        raise ValueError(f"noise must have shape (batch_size, num_patches) = {(batch_size, num_patches)}, "
                         f"got {tuple(noise.shape)}")
    ids_shuffle = noise.to(out).argsort(dim=1)  # ascending: keep the first L - n
    return _hide_first(ids_shuffle.flip(1), n)


# --------------------------------------------------------------------------- block
def _grow_blocks(hidden: Tensor, grid: Grid, n: int, min_block: int, max_block: int | None,
                 aspect_range: tuple[float, float], max_rounds: int,
                 generator: torch.Generator | None) -> Tensor:
    """Place one random rectangle per image per round (in place on ``hidden`` (B, L) bool).

    A rectangle is accepted only if it adds between 1 and ``remaining`` new patches
    (BEiT's rule), so an image never exceeds ``n`` hidden patches.
    """
    (gh, gw), (B, L), device = grid, hidden.shape, hidden.device
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    count = torch.zeros(B, 1, dtype=torch.long, device=device)
    for _ in range(max_rounds):
        remaining = n - count  # (B, 1)
        u = _uniform((B, 4), generator, device).split(1, dim=1)  # area, aspect, top, left: (B, 1) each
        hi = remaining.clamp(min=min_block).float()
        if max_block is not None:
            hi = hi.clamp(max=max(max_block, min_block))
        area = min_block + (hi - min_block) * u[0]
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])  # log-uniform, as BEiT
        h = torch.sqrt(area * aspect).round().clamp(1, gh)
        w = torch.sqrt(area / aspect).round().clamp(1, gw)
        top = (u[2] * (gh - h + 1)).floor()  # uniform over the positions that fit
        left = (u[3] * (gw - w + 1)).floor()
        # Why: a rectangle is the outer AND of a row band (B, gh) and a column band (B, gw).
        in_rows = (rows >= top) & (rows < top + h)
        in_cols = (cols >= left) & (cols < left + w)
        new = (in_rows[:, :, None] & in_cols[:, None, :]).view(B, L) & ~hidden
        delta = new.sum(dim=1, keepdim=True)
        accept = (delta > 0) & (delta <= remaining)
        hidden |= new & accept
        count += delta * accept
    return hidden


def _has_hidden_neighbour(hidden: Tensor, grid: Grid) -> Tensor:
    """Bool (B, L): patch has a 4-neighbour that is hidden."""
    gh, gw = grid
    h = hidden.view(-1, 1, gh, gw).float()
    # Why: a cross-shaped 3x3 convolution counts hidden 4-neighbours (zero padding = visible).
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=hidden.device)
    return (torch.nn.functional.conv2d(h, kernel.view(1, 1, 3, 3), padding=1) > 0).view(hidden.shape)


def block_mask(batch_size: int, grid: Sequence[int], mask_ratio: float, *,
               generator: torch.Generator | None = None, device: DeviceLike = None,
               min_block: int = 4, max_block: int | None = None,
               aspect_range: tuple[float, float] = (0.3, 1 / 0.3), max_rounds: int = 8) -> Tensor:
    """BEiT-style blockwise masking: bool (B, L), ``True`` = hidden.

    Rounds of one rectangle per image, all images at once: area uniform in
    ``[min_block, min(remaining, max_block)]`` patches, aspect ratio log-uniform in
    ``aspect_range``, position uniform; a rectangle is kept only if it adds at most the
    remaining count (so no image overshoots). After ``max_rounds`` rounds (default 8:
    on 8x8 and 14x14 grids more rounds do not make the masks blockier, measured as
    hidden 4-neighbour pairs) any shortfall is topped up with visible patches next to hidden
    ones first, then anywhere, so exactly ``num_hidden(L, mask_ratio)`` are hidden.
    Cost: about 25 small tensor ops per round, no loop over images or patches
    (B=256 on an 8x8 grid: a few ms on a 2-core CPU).
    """
    batch_size = _check_batch_size(batch_size)
    grid = _check_grid(grid)
    L = grid[0] * grid[1]
    n = num_hidden(L, mask_ratio)
    if int(min_block) != min_block or min_block < 1:
        raise ValueError(f"min_block must be a positive int (patches), got {min_block!r}")
    lo, hi = aspect_range
    if not (0 < lo <= hi):
        raise ValueError(f"aspect_range must be (low, high) with 0 < low <= high, got {aspect_range!r}; "
                         "BEiT uses (0.3, 1 / 0.3)")
    if int(max_rounds) != max_rounds or max_rounds < 0:
        raise ValueError(f"max_rounds must be a non-negative int, got {max_rounds!r}")
    out = _output_device(generator, device)
    hidden = torch.zeros(batch_size, L, dtype=torch.bool, device=out)
    if n == 0:
        return hidden
    hidden = _grow_blocks(hidden, grid, n, int(min_block), max_block, (lo, hi), int(max_rounds), generator)
    # Top-up: key 0 = already hidden, 1 = next to a hidden patch, 2 = elsewhere; random within.
    level = torch.where(hidden, 0.0, torch.where(_has_hidden_neighbour(hidden, grid), 1.0, 2.0))
    keys = level + _uniform((batch_size, L), generator, out)
    return _hide_first(keys.argsort(dim=1), n)


# --------------------------------------------------------------------------- ids
def ids_from_mask(mask: Tensor, hidden: int | None = None) -> tuple[Tensor, Tensor]:
    """Index tensors that gather the visible patches and restore image order.

    Args:
        mask: bool (B, L), ``True`` = hidden; every row must hide the same number.
        hidden: that number, when the caller knows it (e.g. ``num_hidden(L, mask_ratio)`` of the
            ratio the mask was drawn at). Then nothing is read back to the host (no GPU
            synchronization) and the counts are trusted, not checked. None: counted and checked.
    Returns:
        ids_keep: long (B, N_vis), visible patch indices in ascending order.
        ids_restore: long (B, L), ``argsort(ids_shuffle)`` where ``ids_shuffle`` lists the
            visible patches then the hidden ones (each ascending): position of patch ``l``
            in the ``[visible, hidden]`` sequence.
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool tensor (B, L) with True = hidden, got {mask.dtype} "
                         f"{tuple(mask.shape)}; convert with mask.bool()")
    B, L = mask.shape
    if hidden is None:
        counts = mask.sum(dim=1)
        if B > 0 and bool((counts != counts[0]).any()):
            raise ValueError(f"every image must hide the same number of patches, got counts "
                             f"{counts.unique().tolist()}; build masks with mcm_core.masking (exact counts)")
        hidden = int(counts[0]) if B > 0 else 0
    elif not 0 <= hidden < L:
        raise ValueError(f"hidden must be in [0, {L - 1}] for {L} patches, got {hidden}")
    n_vis = L - hidden
    # Why: cumsums give each patch its slot in [visible..., hidden...] without a sort.
    visible_slot = (~mask).long().cumsum(1) - 1
    hidden_slot = n_vis + mask.long().cumsum(1) - 1
    ids_restore = torch.where(mask, hidden_slot, visible_slot)
    ids_shuffle = torch.empty_like(ids_restore).scatter_(
        1, ids_restore, torch.arange(L, device=mask.device).expand(B, L))  # inverse permutation
    return ids_shuffle[:, :n_vis], ids_restore


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
               check_finite: bool = True) -> HierarchyTree:
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
    Returns:
        :class:`HierarchyTree` on the affinity's device. Nothing is read back from a GPU
        except the finiteness check.
    """
    grid = _check_grid(grid)
    _check_affinity(affinity, grid, check_finite)
    with torch.no_grad():
        return _agglomerate(affinity.detach().float(), grid, adjacency)


@functools.lru_cache(maxsize=64)
def _patch_edges(grid: Grid, adjacency: bool, device: torch.device) -> Tensor:
    """Candidate patch pairs (E, 2) with p < q, sorted by (p, q): 4-neighbours, or all pairs.

    Built on the CPU (the boolean selection would read back from a GPU) and cached per grid
    and device, so a training step copies nothing; callers must not modify the result.
    """
    return _patch_edges_cpu(grid, adjacency).to(device)


def _patch_edges_cpu(grid: Grid, adjacency: bool) -> Tensor:
    gh, gw = grid
    L = gh * gw
    if not adjacency:
        return torch.triu_indices(L, L, 1).T
    p = torch.arange(L)
    right, down = p[p % gw < gw - 1], p[p // gw < gh - 1]
    edges = torch.cat((torch.stack((right, right + 1), 1), torch.stack((down, down + gw), 1)))
    return edges[(edges[:, 0] * L + edges[:, 1]).argsort()]


class _Agglomerator:
    """State of the batched clustering; see :func:`build_tree`.

    Groups are named by their smallest patch index ("slot"). Every image does one merge
    per step, so all tensors stay rectangular:
        rows (B*L, L): for each slot, the sum of its patches' similarities to every
            patch (a merge adds two rows; no column ever needs rewriting).
        label (B, L): slot of every patch.
        pu, pv (B, E): the patch pairs that may link two groups (4-neighbours, or all
            pairs without adjacency); gu, gv: their current slots.
        score (B, E): average linkage of the two groups an edge joins; -inf inside a group.
    A group pair may appear on several edges with the same score; the first one counts.
    """

    def __init__(self, affinity: Tensor, grid: Grid, adjacency: bool) -> None:
        B, L, _ = affinity.shape
        device = affinity.device
        # Symmetrize; add-then-mul_ keeps the memory order (much faster than (A + A^T) / 2 on CPU).
        sim = torch.add(affinity, affinity.mT).mul_(0.5).contiguous()
        edges = _patch_edges(grid, adjacency, device)
        self.pu, self.pv = edges[:, 0].repeat(B, 1), edges[:, 1].repeat(B, 1)
        self.gu, self.gv = self.pu, self.pv
        self.score = sim.view(B, L * L).gather(1, self.pu * L + self.pv).double()
        self.rows = sim.view(B * L, L)
        self.label = torch.arange(L, device=device).repeat(B, 1)
        self.node = self.label.clone()  # tree node id held by each slot
        self.sizes = torch.ones(B, L, dtype=torch.float64, device=device)
        self.offs = torch.arange(B, device=device) * L  # flat row of slot 0 of each image

    def step(self, m: int) -> tuple[Tensor, Tensor, Tensor]:
        """Merge every image's best pair: node ids (B, 2), slots (B, 2) with a < b, heights (B, 1)."""
        B, L = self.label.shape
        sizes = self.sizes
        height, e = self.score.max(dim=1, keepdim=True)  # first best edge
        ue, ve = self.gu.gather(1, e), self.gv.gather(1, e)
        a, b = torch.minimum(ue, ve), torch.maximum(ue, ve)  # (B, 1): b joins a
        ab = torch.cat((a, b), dim=1)
        record = self.node.gather(1, ab), ab, height
        ia, ib = self.offs + a[:, 0], self.offs + b[:, 0]
        pair = self.rows.index_select(0, torch.cat((ia, ib)))
        union = pair[:B] + pair[B:]  # (B, L) union-to-patch sums
        self.rows.index_copy_(0, ia, union)
        self.label = label = torch.where(self.label == b, a, self.label)
        size = sizes.gather(1, ab).sum(dim=1, keepdim=True)
        sizes.scatter_(1, a, size)
        self.node.scatter_(1, a, L + m)
        # Union-to-group sums: add the patch sums up per group (float64: sums are exact enough
        # that atomic adds on CUDA give the same value in any order).
        to_group = torch.zeros(B, L, dtype=torch.float64, device=union.device)
        to_group.scatter_add_(1, label, union.double())
        mean = (to_group / (size * sizes)).scatter_(1, a, float("-inf"))  # -inf: edges inside the union
        gu = self.gu = label.gather(1, self.pu)
        gv = self.gv = label.gather(1, self.pv)
        at_u, at_v = gu == a, gv == a
        # Only edges touching the union change: their score is the union's mean with the other end.
        self.score = torch.where(at_u | at_v, mean.gather(1, torch.where(at_u, gv, gu)), self.score)
        return record

    def compact(self, groups: int, adjacency: bool, exact: bool) -> None:
        """Drop edges inside a group and repeated group pairs, keeping edge order (so ties).

        The new width is the most kept edges of any image when ``exact`` (a read-back: free on
        the CPU), else an upper bound known on the host: at most ``3 g - 6`` distinct pairs of
        ``g`` connected regions of a grid (their contact graph is planar), ``g (g - 1) / 2``
        without adjacency. Either way kept edges come first in their old order and the padding
        after them repeats a kept pair's score or holds -inf, so the merges are identical.
        """
        B, L = self.label.shape
        gu, gv = self.gu, self.gv
        inside = L * L
        key = torch.where(gu != gv, torch.minimum(gu, gv) * L + torch.maximum(gu, gv), inside)
        sorted_key, perm = key.sort(dim=1, stable=True)  # stable: the first copy of a pair stays first
        repeat = torch.cat((torch.zeros_like(sorted_key[:, :1], dtype=torch.bool),
                            sorted_key[:, 1:] == sorted_key[:, :-1]), dim=1) | (sorted_key == inside)
        drop = torch.empty_like(repeat).scatter_(1, perm, repeat)
        if exact:
            keep = int((~drop).sum(dim=1).max())  # same width for all images; the rest is padding
        else:
            keep = min(gu.shape[1], max_group_pairs(groups, adjacency))
        keep = max(keep, 1)
        order = drop.to(torch.int8).argsort(dim=1, stable=True)[:, :keep]  # kept edges first, in order
        self.pu, self.pv, self.gu, self.gv, self.score = (
            t.gather(1, order) for t in (self.pu, self.pv, gu, gv, self.score))


def max_group_pairs(groups: int, adjacency: bool) -> int:
    """Most distinct pairs of ``groups`` groups that can share an edge (see ``_Agglomerator.compact``)."""
    if not adjacency:
        return groups * (groups - 1) // 2
    return groups - 1 if groups <= 2 else 3 * groups - 6


def _agglomerate(affinity: Tensor, grid: Grid, adjacency: bool, exact: bool | None = None) -> HierarchyTree:
    """Run all ``L - 1`` merges; drop dead edges whenever the number of groups halves.

    ``exact``: cut the edge list to its exact width (a read-back) or to the host-side bound;
    None = exact on the CPU only. Both give identical trees.
    """
    B, L, _ = affinity.shape
    if L == 1:
        empty = torch.zeros(B, 0, 2, dtype=torch.long, device=affinity.device)
        return HierarchyTree(empty, affinity.new_zeros(B, 0), grid, empty.clone())
    state = _Agglomerator(affinity, grid, adjacency)
    nodes, slots, heights = [], [], []
    last_compaction = L
    exact = affinity.device.type == "cpu" if exact is None else exact
    for m in range(L - 1):
        node_pair, slot_pair, height = state.step(m)
        nodes.append(node_pair)
        slots.append(slot_pair)
        heights.append(height)
        groups = L - 1 - m
        if 2 <= groups <= last_compaction // 2:
            state.compact(groups, adjacency, exact)
            last_compaction = groups
    heights_t = torch.cat(heights, dim=1).to(affinity.dtype)
    return HierarchyTree(torch.stack(nodes, 1), heights_t, grid, torch.stack(slots, 1))


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


# --------------------------------------------------------------------------- strategies / registry
@runtime_checkable
class MaskStrategy(Protocol):
    """A masking strategy: ``masker(batch_size, mask_ratio, ...) -> bool (B, L)``."""

    grid: Grid

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None,
                 progress: float = 0.0) -> Tensor: ...


class RandomMasker:
    """MAE random masking as a strategy object (ignores ``affinity`` and ``progress``)."""

    name = "random"

    def __init__(self, grid: Sequence[int]) -> None:
        self.grid = _check_grid(grid)

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None, progress: float = 0.0) -> Tensor:
        return random_mask(batch_size, self.grid[0] * self.grid[1], mask_ratio,
                           generator=generator, device=device)


class BlockMasker:
    """BEiT-style block masking as a strategy object; options as :func:`block_mask`."""

    name = "block"

    def __init__(self, grid: Sequence[int], min_block: int = 4, max_block: int | None = None,
                 aspect_range: tuple[float, float] = (0.3, 1 / 0.3), max_rounds: int = 8) -> None:
        self.grid = _check_grid(grid)
        self.options: dict[str, Any] = dict(min_block=min_block, max_block=max_block,
                                            aspect_range=aspect_range, max_rounds=max_rounds)

    def __call__(self, batch_size: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                 device: DeviceLike = None, affinity: Tensor | None = None, progress: float = 0.0) -> Tensor:
        return block_mask(batch_size, self.grid, mask_ratio, generator=generator, device=device, **self.options)


# Keyed by the names config.py validates (mcm_core.choices.MASKINGS), in their order.
MASKERS: dict[str, Callable[..., MaskStrategy]] = dict(
    zip(MASKINGS, (RandomMasker, BlockMasker, HierarchicalMasker), strict=True))


def make_masker(name: str, grid: Sequence[int], **options: Any) -> MaskStrategy:
    """Build a strategy by name (``"random"``, ``"block"``, ``"hierarchical"``)."""
    if name not in MASKERS:
        raise ValueError(f"unknown masking strategy {name!r}; valid names: {', '.join(MASKERS)}")
    factory = MASKERS[name]
    valid = [p for p in inspect.signature(factory).parameters if p != "grid"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"masking strategy {name!r} has no option(s) {unknown}; "
                        f"valid options: {valid or 'none'}")
    return factory(grid, **options)


# --------------------------------------------------------------------------- data-loader collator
def _mix_seed(*parts: int) -> int:
    """One 64-bit seed from several non-negative ints (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0])


class MaskingCollator:
    """DataLoader ``collate_fn`` that also draws the masks: returns ``(images, targets, mask)``.

    The mask (bool (B, L), CPU) comes from a generator seeded by
    ``(seed, epoch, worker id, call counter)``: masks differ across steps, epochs and
    workers, and a run with the same seed reproduces them. Call :meth:`set_epoch` at the
    start of every epoch (workers are re-created with a copy of this object each epoch;
    with ``persistent_workers=True`` they keep their counter, so masks still differ).

    Only ``"random"`` and ``"block"``: the hierarchical strategy needs the model's
    affinity, so it is generated in the training loop (:class:`HierarchicalMasker`).
    """

    def __init__(self, strategy: str, grid: Sequence[int], mask_ratio: float, seed: int, **options: Any) -> None:
        if strategy == "hierarchical":
            raise ValueError("the hierarchical strategy needs the model's affinity; generate it in the "
                             "training loop with HierarchicalMasker, and use a plain collate_fn")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.masker = make_masker(strategy, grid, **options)
        self.grid = self.masker.grid
        num_hidden(self.grid[0] * self.grid[1], mask_ratio)
        self.strategy, self.mask_ratio, self.seed = strategy, float(mask_ratio), int(seed)
        self.epoch = 0
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a new stream of masks for this epoch."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """The generator for the next batch in this process (advances the call counter)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id + 1 if info is not None else 0  # 0 = main process
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, worker, self._calls))
        self._calls += 1
        return gen

    def __call__(self, batch: list[Any]) -> tuple[Tensor, Any, Tensor]:
        fields = torch.utils.data.default_collate(batch)
        if not isinstance(fields, (list, tuple)) or len(fields) != 2:
            raise ValueError("MaskingCollator expects dataset items (image, target)")
        images, targets = fields
        mask = self.masker(images.shape[0], self.mask_ratio, generator=self.generator())
        return images, targets, mask


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
