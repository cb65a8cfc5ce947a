"""The batched agglomerative clustering behind :func:`mcm_core.masking.hierarchical.build_tree` (private).

Average linkage over all B images at once, ``L - 1`` merge steps of a few tensor ops, with
the candidate patch pairs (4-neighbours, or all pairs) cut down as groups merge. The width
of that cut is either read back (exact, free on the CPU) or a bound known on the host
(:func:`max_group_pairs`: the contact graph of connected grid regions is planar), so a GPU
never synchronizes; both give identical trees. Returns plain tensors; ``build_tree`` wraps
them in a :class:`~mcm_core.masking.hierarchical.HierarchyTree`.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from mcm_core.masking.simple import Grid


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


def _agglomerate(affinity: Tensor, grid: Grid, adjacency: bool,
                 exact: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Run all ``L - 1`` merges; drop dead edges whenever the number of groups halves.

    ``exact``: cut the edge list to its exact width (a read-back) or to the host-side bound;
    None = exact on the CPU only. Both give identical trees.

    Returns:
        merges: long (B, L-1, 2); heights: (B, L-1) in the affinity's dtype; slots: long (B, L-1, 2),
        as the fields of :class:`~mcm_core.masking.hierarchical.HierarchyTree`.
    """
    B, L, _ = affinity.shape
    if L == 1:
        empty = torch.zeros(B, 0, 2, dtype=torch.long, device=affinity.device)
        return empty, affinity.new_zeros(B, 0), empty.clone()
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
    return torch.stack(nodes, 1), heights_t, torch.stack(slots, 1)

