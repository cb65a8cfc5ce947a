"""Masking strategies: which patches the encoder does not see.

A mask is a bool tensor ``(B, L)``, ``True`` = hidden, patches in row-major order on a
``grid = (gh, gw)``; every strategy hides exactly :func:`num_hidden` patches per image
(``docs/design.md``). The package, in import order:

- :mod:`~mcm_core.masking.simple` -- the conventions and their checks (:func:`num_hidden`,
  :func:`check_mask`, :func:`ids_from_mask`), ``"random"`` (MAE, :func:`random_mask`) and
  ``"block"`` (BEiT, :func:`block_mask`), the :class:`MaskStrategy` protocol and its
  :class:`RandomMasker` and :class:`BlockMasker`.
- :mod:`~mcm_core.masking._agglomeration` -- private: the batched average-linkage clustering
  (and :func:`max_group_pairs`, the host-side bound its GPU path pads to).
- :mod:`~mcm_core.masking.hierarchical` -- ``"hierarchical"`` (METHODS.md section 5): a tree
  over each image's patches from the model's affinity (:func:`build_tree`,
  :class:`HierarchyTree`), cut into ``K(t)`` nodes (:func:`level_schedule`), whole nodes
  hidden (:func:`mask_whole_nodes`, :class:`HierarchicalMasker`); tree purity against objects.
- :mod:`~mcm_core.masking.registry` -- the strategies by name (:data:`MASKERS`, :func:`make_masker`).
- :mod:`~mcm_core.masking.collate` -- :class:`MaskingCollator`, masks drawn in data-loader workers.

Random numbers are drawn with the given ``generator`` on the generator's device, so a seeded
generator reproduces the same masks on any output device. Nothing here imports the models: the
training loop passes the affinity in.
"""
from mcm_core.masking.simple import (
    BlockMasker, MaskStrategy, RandomMasker, block_mask, check_mask, ids_from_mask, mask_noise, nested_mask, num_hidden,
    random_mask,
)
from mcm_core.masking.hierarchical import (
    HierarchicalMasker, HierarchicalMaskOutput, HierarchyTree, build_tree, level_schedule,
    mask_whole_nodes, patch_labels_from_pixel_masks, tree_purity,
)
from mcm_core.masking.registry import MASKERS, make_masker
from mcm_core.masking.collate import MaskingCollator

# Public before the split but outside __all__, as then: the type aliases, the schedule names, the bound.
from mcm_core.masking.simple import DeviceLike, Grid  # noqa: F401
from mcm_core.masking.hierarchical import SCHEDULES  # noqa: F401
from mcm_core.masking._agglomeration import max_group_pairs  # noqa: F401

__all__ = [
    "num_hidden",
    "random_mask",
    "mask_noise",
    "nested_mask",
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
