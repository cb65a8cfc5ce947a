"""Tests for mcm_core.masking: exact counts, reproducibility, trees, collator."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mcm_core.masking import (
    MASKERS,
    HierarchicalMasker,
    HierarchyTree,
    MaskingCollator,
    MaskStrategy,
    block_mask,
    build_tree,
    ids_from_mask,
    level_schedule,
    make_masker,
    mask_whole_nodes,
    max_group_pairs,
    num_hidden,
    patch_labels_from_pixel_masks,
    random_mask,
    tree_purity,
)

GRID = (8, 8)
L = GRID[0] * GRID[1]
RATIOS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_affinity(batch: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, num_patches, num_patches, generator=gen(seed))


def masks_for(name: str, batch: int, ratio: float, seed: int | None = 0, grid=GRID) -> torch.Tensor:
    """A mask from any strategy; hierarchical gets a random affinity."""
    masker = make_masker(name, grid)
    g = gen(seed) if seed is not None else None
    affinity = rand_affinity(batch, grid[0] * grid[1], seed=7) if name == "hierarchical" else None
    return masker(batch, ratio, generator=g, affinity=affinity, progress=0.5)


def hidden_neighbour_pairs(mask: torch.Tensor, grid=GRID) -> torch.Tensor:
    """Number of 4-neighbour pairs with both patches hidden, per image: (B,)."""
    m = mask.view(-1, *grid)
    return (m[:, 1:, :] & m[:, :-1, :]).sum((1, 2)) + (m[:, :, 1:] & m[:, :, :-1]).sum((1, 2))


def is_connected(patches: list[int], grid) -> bool:
    """True if the patch set is 4-connected on the grid (BFS)."""
    cells, gw = set(patches), grid[1]
    todo, seen = [patches[0]], {patches[0]}
    while todo:
        p = todo.pop()
        r, c = divmod(p, gw)
        for q in (p - gw if r > 0 else -1, p + gw, p - 1 if c > 0 else -1, p + 1 if c < gw - 1 else -1):
            if q in cells and q not in seen:
                seen.add(q)
                todo.append(q)
    return len(seen) == len(cells)


def naive_tree(affinity: torch.Tensor, grid, adjacency: bool) -> tuple[list[tuple[int, int]], list[float]]:
    """Reference: plain-Python average linkage on one image (float64, same tie rule)."""
    n = grid[0] * grid[1]
    sim = ((affinity + affinity.T) / 2).double()
    groups = {i: [i] for i in range(n)}  # slot (= smallest patch) -> patches
    node = {i: i for i in range(n)}
    neighbours = lambda p, q: abs(p // grid[1] - q // grid[1]) + abs(p % grid[1] - q % grid[1]) == 1
    merges, heights = [], []
    for m in range(n - 1):
        best = None
        for a in sorted(groups):
            for b in sorted(groups):
                if b <= a:
                    continue
                if adjacency and not any(neighbours(p, q) for p in groups[a] for q in groups[b]):
                    continue
                s = float(sim[groups[a]][:, groups[b]].mean())
                if best is None or s > best[0]:
                    best = (s, a, b)
        s, a, b = best
        merges.append((node[a], node[b]))
        heights.append(s)
        groups[a] = groups[a] + groups.pop(b)
        node[a] = n + m
    return merges, heights


# ----------------------------------------------------------------------------- num_hidden
def test_num_hidden_rounds_and_clips():
    assert num_hidden(64, 0.75) == 48
    assert num_hidden(64, 0.0) == 0
    assert num_hidden(4, 0.99) == 3  # round(3.96) = 4 clipped: the encoder keeps one patch
    assert num_hidden(1, 0.5) == 0


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_ratios_raise_clear_errors(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        num_hidden(64, ratio)
    for name in MASKERS:
        with pytest.raises(ValueError, match="mask_ratio"):
            masks_for(name, 2, ratio)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="num_patches"):
        random_mask(2, 0, 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        random_mask(0, 16, 0.5)
    with pytest.raises(ValueError, match="noise must have shape"):
        random_mask(2, 16, 0.5, noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match="grid"):
        block_mask(2, (8,), 0.5)
    with pytest.raises(ValueError, match="affinity must be"):
        build_tree(torch.rand(2, 16, 15), (4, 4))
    with pytest.raises(ValueError, match="affinity must be"):
        build_tree(torch.rand(2, 16, 16), (4, 5))
    with pytest.raises(ValueError, match="inf or NaN"):
        build_tree(torch.full((1, 4, 4), float("nan")), (2, 2))


# ----------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("name", list(MASKERS))
@pytest.mark.parametrize("ratio", RATIOS)
def test_every_strategy_hides_exact_count(name, ratio):
    mask = masks_for(name, 16, ratio)
    assert mask.dtype == torch.bool and mask.shape == (16, L)
    assert (mask.sum(1) == num_hidden(L, ratio)).all()


@pytest.mark.parametrize("grid", [(1, 1), (1, 5), (3, 7), (14, 14)])
@pytest.mark.parametrize("name", list(MASKERS))
def test_odd_grids(name, grid):
    mask = masks_for(name, 3, 0.6, grid=grid)
    assert mask.shape == (3, grid[0] * grid[1])
    assert (mask.sum(1) == num_hidden(grid[0] * grid[1], 0.6)).all()


def test_random_mask_matches_mae_reference_with_injected_noise():
    noise = torch.rand(4, L, generator=gen(3))
    mask = random_mask(4, L, 0.75, noise=noise)
    ids_shuffle = noise.argsort(1)  # MAE: keep the lowest-noise patches
    expected = torch.ones(4, L, dtype=torch.bool)
    expected.scatter_(1, ids_shuffle[:, : L - 48], False)
    assert torch.equal(mask, expected)


# ----------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("name", list(MASKERS))
def test_reproducible_with_seed_and_different_across_seeds(name):
    a, b, c = masks_for(name, 8, 0.5, seed=1), masks_for(name, 8, 0.5, seed=1), masks_for(name, 8, 0.5, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(masks_for(name, 8, 0.5, seed=None), masks_for(name, 8, 0.5, seed=None))


def test_rows_differ_within_a_batch():
    for name in ("random", "block"):
        mask = masks_for(name, 8, 0.5)
        assert len({tuple(r.tolist()) for r in mask}) > 1


def test_generator_device_decides_output_device():
    assert random_mask(2, 16, 0.5, generator=gen()).device.type == "cpu"
    assert block_mask(2, (4, 4), 0.5).device.type == "cpu"


# ----------------------------------------------------------------------------- ids_from_mask
def test_ids_from_mask_round_trip():
    mask = random_mask(5, L, 0.7, generator=gen())
    ids_keep, ids_restore = ids_from_mask(mask)
    n_vis = L - num_hidden(L, 0.7)
    assert ids_keep.shape == (5, n_vis) and ids_restore.shape == (5, L)
    assert ids_keep.dtype == ids_restore.dtype == torch.long
    assert (ids_keep.diff(dim=1) > 0).all()  # visible in ascending patch order
    assert not mask.gather(1, ids_keep).any()
    tokens = torch.arange(L).float().expand(5, L)[..., None]  # token = its patch index
    visible = tokens.gather(1, ids_keep[..., None])
    padded = torch.cat([visible, torch.full((5, L - n_vis, 1), -1.0)], dim=1)
    restored = padded.gather(1, ids_restore[..., None])[..., 0]
    assert torch.equal(restored[~mask], tokens[..., 0][~mask])
    assert (restored[mask] == -1).all()
    ids_shuffle = ids_restore.argsort(1)
    assert torch.equal(ids_shuffle[:, :n_vis], ids_keep)


def test_ids_from_mask_errors():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        ids_from_mask(mask)
    with pytest.raises(ValueError, match="bool"):
        ids_from_mask(torch.zeros(2, 8))
    keep, restore = ids_from_mask(torch.zeros(2, 8, dtype=torch.bool))
    assert keep.shape == (2, 8) and torch.equal(restore, torch.arange(8).expand(2, 8))
    with pytest.raises(ValueError, match=r"hidden must be in \[0, 7\] for 8 patches, got 8"):
        ids_from_mask(torch.ones(2, 8, dtype=torch.bool), hidden=8)


# ----------------------------------------------------------------------------- block masks
def test_block_masks_are_blockier_than_random():
    rnd = hidden_neighbour_pairs(random_mask(64, L, 0.5, generator=gen()))
    blk = hidden_neighbour_pairs(block_mask(64, GRID, 0.5, generator=gen()))
    assert blk.float().mean() > 1.4 * rnd.float().mean()


def test_block_mask_options_validated():
    with pytest.raises(ValueError, match="min_block"):
        block_mask(2, GRID, 0.5, min_block=0)
    with pytest.raises(ValueError, match="aspect_range"):
        block_mask(2, GRID, 0.5, aspect_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="max_rounds"):
        block_mask(2, GRID, 0.5, max_rounds=-1)
    only_top_up = block_mask(4, GRID, 0.5, generator=gen(), max_rounds=0)  # no rectangles: still exact
    assert (only_top_up.sum(1) == 32).all()


# ----------------------------------------------------------------------------- registry
def test_make_masker_names_and_errors():
    for name in MASKERS:
        assert isinstance(make_masker(name, GRID), MaskStrategy)
    with pytest.raises(ValueError, match="valid names: random, block, hierarchical"):
        make_masker("checkerboard", GRID)
    with pytest.raises(TypeError, match="valid options"):
        make_masker("random", GRID, min_block=3)
    blocky = make_masker("block", GRID, min_block=8)
    assert blocky(4, 0.5, generator=gen()).sum().item() == 4 * 32


def test_hierarchical_needs_affinity():
    masker = make_masker("hierarchical", GRID)
    with pytest.raises(ValueError, match="needs affinity"):
        masker(4, 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        masker(3, 0.5, affinity=rand_affinity(4, L))


# ----------------------------------------------------------------------------- tree
def two_block_affinity(batch: int, grid) -> torch.Tensor:
    """High similarity within the left half and within the right half, low across."""
    cols = torch.arange(grid[0] * grid[1]) % grid[1]
    side = cols >= grid[1] // 2
    same = (side[:, None] == side[None, :]).float()
    return same + 0.2 * rand_affinity(batch, grid[0] * grid[1], seed=5)


@pytest.mark.parametrize("adjacency", [True, False])
def test_two_node_cut_separates_two_blocks(adjacency):
    tree = build_tree(two_block_affinity(3, GRID), GRID, adjacency=adjacency)
    labels = tree.labels_at(2)
    expected = (torch.arange(L) % GRID[1] >= GRID[1] // 2).long().expand(3, L)
    assert torch.equal(labels, expected)


def test_tree_structure_and_cut_extremes():
    tree = build_tree(rand_affinity(4, L), GRID)
    assert isinstance(tree, HierarchyTree)
    assert tree.merges.shape == (4, L - 1, 2) and tree.heights.shape == (4, L - 1)
    for b in range(4):  # every node except the root is a child exactly once
        children = sorted(tree.merges[b].flatten().tolist())
        assert children == list(range(2 * L - 2))
        assert (tree.merges[b].max(1).values < L + torch.arange(L - 1)).all()  # children exist before
    assert torch.equal(tree.labels_at(L), torch.arange(L).expand(4, L))
    assert (tree.labels_at(1) == 0).all()
    for k in (2, 5, 17, 40):
        labels = tree.labels_at(k)
        assert all(sorted(row.unique().tolist()) == list(range(k)) for row in labels)
    with pytest.raises(ValueError, match="num_nodes"):
        tree.labels_at(0)


def test_every_node_is_connected_with_adjacency():
    grid = (4, 5)
    tree = build_tree(rand_affinity(3, 20, seed=4), grid, adjacency=True)
    for k in range(1, 21):
        for row in tree.labels_at(k):
            for node in range(k):
                patches = (row == node).nonzero().flatten().tolist()
                assert is_connected(patches, grid), (k, node, patches)


@pytest.mark.parametrize("adjacency", [True, False])
def test_tree_matches_naive_average_linkage(adjacency):
    grid = (4, 4)
    affinity = rand_affinity(3, 16, seed=11)
    tree = build_tree(affinity, grid, adjacency=adjacency)
    for b in range(3):
        merges, heights = naive_tree(affinity[b], grid, adjacency)
        assert tree.merges[b].tolist() == [list(m) for m in merges]
        assert torch.allclose(tree.heights[b].double(), torch.tensor(heights, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("adjacency", [True, False])
@pytest.mark.parametrize("grid", [(8, 8), (5, 7)])
def test_host_bound_compaction_builds_the_same_trees_as_the_exact_one(adjacency, grid):
    """The GPU path pads compacted edges to a bound known on the host: same merges and heights, ties included."""
    n = grid[0] * grid[1]
    for affinity in (rand_affinity(3, n, seed=7), (rand_affinity(3, n, seed=8) * 4).round()):  # many ties
        exact, bound = (build_tree(affinity, grid, adjacency=adjacency, exact_width=flag) for flag in (True, False))
        assert torch.equal(exact.merges, bound.merges) and torch.equal(exact.heights, bound.heights)
        assert torch.equal(exact.slots, bound.slots)
        assert torch.equal(exact.merges, build_tree(affinity, grid, adjacency=adjacency).merges)


def test_group_pair_bound():
    assert [max_group_pairs(g, True) for g in (1, 2, 3, 4, 10)] == [0, 1, 3, 6, 24]  # planar: 3g - 6
    assert [max_group_pairs(g, False) for g in (1, 2, 3, 10)] == [0, 1, 3, 45]


def test_build_tree_rejects_a_non_finite_affinity_unless_told_not_to_check():
    affinity = rand_affinity(2, L)
    affinity[1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="inf or NaN"):
        build_tree(affinity, GRID)
    assert build_tree(affinity, GRID, check_finite=False).merges.shape == (2, L - 1, 2)  # no read-back


def test_ties_are_deterministic():
    affinity = torch.ones(2, 16, 16)  # everything ties
    a, b = build_tree(affinity, (4, 4)), build_tree(affinity, (4, 4))
    assert torch.equal(a.merges, b.merges)
    assert torch.equal(a.merges[0], a.merges[1])
    assert a.merges[0, 0].tolist() == [0, 1]  # lowest pair first


def test_adjacency_switch_allows_distant_merges():
    # patches 0 and 15 (opposite corners) are the most similar pair
    affinity = torch.zeros(1, 16, 16)
    affinity[0, 0, 15] = affinity[0, 15, 0] = 1.0
    assert build_tree(affinity, (4, 4), adjacency=False).merges[0, 0].tolist() == [0, 15]
    assert build_tree(affinity, (4, 4), adjacency=True).merges[0, 0].tolist() != [0, 15]


# ----------------------------------------------------------------------------- schedule and hierarchical masks
def test_level_schedule_monotone_and_endpoints():
    ks = [level_schedule(t / 100, L) for t in range(101)]
    assert ks[0] == L // 2 and ks[-1] == 4
    assert all(x >= y for x, y in zip(ks, ks[1:]))
    assert level_schedule(0.25, L) < level_schedule(0.25, L, schedule="linear")  # sqrt drops faster
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match="progress"):
            level_schedule(bad, L)
    with pytest.raises(ValueError, match="min_nodes"):
        level_schedule(0.5, L, min_nodes=0)
    assert level_schedule(1.0, 3, min_nodes=4) == 3  # clipped on tiny grids
    with pytest.raises(ValueError, match="schedule"):
        level_schedule(0.5, L, schedule="cosine")


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_hierarchical_masks_whole_nodes(ratio, progress):
    masker = HierarchicalMasker(GRID)
    out = masker.sample(rand_affinity(6, L, seed=2), ratio, progress, generator=gen())
    k = out.num_nodes
    assert k == level_schedule(progress, L)
    assert out.labels.shape == (6, L) and out.node_order.shape == (6, k)
    assert (out.mask.sum(1) == num_hidden(L, ratio)).all()
    sizes = torch.zeros(6, k).scatter_add_(1, out.labels, torch.ones(6, L))
    hidden = torch.zeros(6, k).scatter_add_(1, out.labels, out.mask.float())
    partial = (hidden > 0) & (hidden < sizes)
    assert (partial.sum(1) <= 1).all()
    for b in range(6):  # fully hidden nodes are a prefix of node_order, the partial one next
        full = int((hidden[b] == sizes[b]).sum())
        order = out.node_order[b]
        assert (hidden[b, order[:full]] == sizes[b, order[:full]]).all()
        if full < k:
            assert (hidden[b, order[full + 1:]] == 0).all()


def test_mask_whole_nodes_with_object_labels():
    labels = torch.arange(L).div(16, rounding_mode="floor").expand(3, L)  # 4 horizontal bands
    mask, order = mask_whole_nodes(labels, 4, 0.5, generator=gen())
    for b in range(3):  # exactly the two first bands of the order
        assert torch.equal(mask[b], (labels[b] == order[b, 0]) | (labels[b] == order[b, 1]))


def smooth_affinity(batch: int, grid) -> torch.Tensor:
    """Image-like affinity: nearby patches are similar (negative distance of noisy positions)."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).float()
    feats = pos + 0.7 * torch.randn(batch, pos.shape[0], 2, generator=gen(3))
    return -torch.cdist(feats, feats)


def test_hierarchical_masks_change_with_progress():
    masker = HierarchicalMasker(GRID)
    affinity = smooth_affinity(8, GRID)
    early = masker.sample(affinity, 0.5, 0.0, generator=gen())
    late = masker.sample(affinity, 0.5, 1.0, generator=gen())
    assert early.num_nodes > late.num_nodes
    assert hidden_neighbour_pairs(late.mask).float().mean() > hidden_neighbour_pairs(early.mask).float().mean()


# ----------------------------------------------------------------------------- purity
def test_patch_labels_and_purity():
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, :, 16:] = 1
    masks[1, 0:1, 0:4] = 2  # minority inside patch 0: majority stays 0
    objects = patch_labels_from_pixel_masks(masks, 4)
    assert objects.shape == (2, L)
    expected = (torch.arange(L) % 8 >= 4).long()
    assert torch.equal(objects[0], expected) and torch.equal(objects[1], expected)
    assert torch.allclose(tree_purity(expected.expand(2, L), objects), torch.ones(2))
    assert torch.allclose(tree_purity(torch.zeros(2, L, dtype=torch.long), objects), torch.full((2,), 0.5))
    tree = build_tree(two_block_affinity(2, GRID), GRID)
    assert torch.allclose(tree_purity(tree.labels_at(2), objects), torch.ones(2))
    with pytest.raises(ValueError, match="divisible"):
        patch_labels_from_pixel_masks(masks, 5)
    with pytest.raises(ValueError, match="both be"):
        tree_purity(expected.expand(2, L), objects[:, :10])


# ----------------------------------------------------------------------------- collator
def collect_masks(seed: int, epochs: int = 2, workers: int = 2) -> list[list[torch.Tensor]]:
    data = TensorDataset(torch.rand(16, 3, 8, 8), torch.arange(16))
    collator = MaskingCollator("random", (2, 2), 0.5, seed=seed)
    loader = DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collator)
    out = []
    for epoch in range(epochs):
        collator.set_epoch(epoch)
        batches = list(loader)
        assert all(len(batch) == 3 for batch in batches)
        out.append([mask for _, _, mask in batches])
    return out


def test_collator_masks_differ_across_workers_and_epochs_and_reproduce():
    run1, run2 = collect_masks(seed=0), collect_masks(seed=0)
    assert all(torch.equal(a, b) for e1, e2 in zip(run1, run2) for a, b in zip(e1, e2))
    # batches 0 and 1 come from different workers, each on its first call
    assert not torch.equal(run1[0][0], run1[0][1])
    assert any(not torch.equal(a, b) for a, b in zip(run1[0], run1[1]))  # epochs differ
    other = collect_masks(seed=1, epochs=1)
    assert any(not torch.equal(a, b) for a, b in zip(run1[0], other[0]))


def test_collator_in_main_process_and_errors():
    data = [(torch.rand(3, 8, 8), i) for i in range(4)]
    collator = MaskingCollator("block", (2, 2), 0.5, seed=0)
    images, targets, mask = collator(data)
    assert images.shape == (4, 3, 8, 8) and targets.tolist() == [0, 1, 2, 3]
    assert mask.shape == (4, 4) and (mask.sum(1) == 2).all()
    later = [collator(data)[2] for _ in range(4)]  # the call counter moves the stream on
    assert any(not torch.equal(mask, m) for m in later)
    with pytest.raises(ValueError, match="training loop"):
        MaskingCollator("hierarchical", GRID, 0.5, seed=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskingCollator("random", GRID, 1.0, seed=0)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    affinity = rand_affinity(4, L, seed=9)
    cpu, cuda = build_tree(affinity, GRID), build_tree(affinity.cuda(), GRID)
    assert cuda.merges.is_cuda
    assert torch.equal(cpu.merges, cuda.merges.cpu())
    assert torch.equal(cpu.labels_at(6), cuda.labels_at(6).cpu())
    g = torch.Generator(device="cuda").manual_seed(0)
    for name in MASKERS:
        aff = affinity.cuda() if name == "hierarchical" else None
        mask = make_masker(name, GRID)(4, 0.75, generator=g, affinity=aff, progress=0.5)
        assert mask.is_cuda and (mask.sum(1) == 48).all()
    mask = random_mask(4, L, 0.75, generator=gen(), device="cuda")  # CPU draws, CUDA output
    assert mask.is_cuda and torch.equal(mask.cpu(), random_mask(4, L, 0.75, generator=gen()))
