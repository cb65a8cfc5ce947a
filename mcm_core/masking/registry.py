"""The masking strategies by name: :data:`MASKERS` and :func:`make_masker`.

Keyed by the names ``config.py`` validates (:data:`mcm_core.choices.MASKINGS`): ``"random"``
and ``"block"`` from :mod:`mcm_core.masking.simple`, ``"hierarchical"`` from
:mod:`mcm_core.masking.hierarchical`. Its own module so that both can be imported without a cycle.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from mcm_core.choices import MASKINGS
from mcm_core.masking.hierarchical import HierarchicalMasker
from mcm_core.masking.simple import BlockMasker, MaskStrategy, RandomMasker

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
