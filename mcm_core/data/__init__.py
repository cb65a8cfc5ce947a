"""Data for the workbook: the built-in shapes concept dataset and real-image loaders.

One entry point, :func:`load_dataset`, returns a torch Dataset of ``(image, target)``
with images float ``(3, H, W)`` in [0, 1]. Concept datasets (``shapes``, ``celeba``)
have ``.concept_names`` and float ``(K,)`` 0/1 targets; class datasets
(``fashion_mnist``, ``digits``) have ``.classes`` and int targets; ``folder`` has
target -1. Nothing here downloads anything.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch.utils.data import Dataset

from mcm_core.choices import DATASET_NAMES
from mcm_core.data.real import CelebA, Digits, FashionMNIST, ImageFolder
from mcm_core.data.shapes import (
    CONCEPT_NAMES, ShapesBatch, ShapesDataset, concept_frequencies, generate_shapes,
    render_shapes,
)

__all__ = [
    "load_dataset", "DATASET_NAMES", "CONCEPT_NAMES", "generate_shapes", "render_shapes",
    "ShapesBatch", "ShapesDataset", "concept_frequencies", "FashionMNIST", "Digits", "CelebA",
    "ImageFolder",
]

# Keyed by the names config.py and the CLI list (mcm_core.choices.DATASET_NAMES), in their order.
_LOADERS: dict[str, Callable[..., Dataset]] = dict(
    zip(DATASET_NAMES, (ShapesDataset, FashionMNIST, Digits, CelebA, ImageFolder), strict=True))


def dataset_options(name: str) -> list[str]:
    """The keyword options that ``load_dataset(name, split, **options)`` accepts."""
    params = inspect.signature(_loader(name)).parameters
    return [p for p in params if p != "split"]


def _loader(name: str) -> Callable[..., Dataset]:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {list(DATASET_NAMES)}")
    return _LOADERS[key]


def load_dataset(name: str, split: str = "train", **options: object) -> Dataset:
    """Build dataset ``name`` (one of :data:`DATASET_NAMES`) for ``split``.

    Options by dataset (see each class for details):

    - ``shapes``: size, seed, image_size (32), min_objects, max_objects, cache_limit_mb
    - ``fashion_mnist``: root (Debian's install path), image_size (28)
    - ``digits``: image_size (32)
    - ``celeba``: root, attributes (11 defaults), image_size (64)
    - ``folder``: root (required), image_size (32), skip_unreadable (False)
    """
    loader = _loader(name)
    valid = dataset_options(name)
    for option in options:
        if option not in valid:
            close = difflib.get_close_matches(option, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown option {option!r} for dataset {name!r}{hint}; "
                            f"valid options: {valid}")
    return loader(split=split, **options)
