"""The valid names of every option, declared once, and the mask-ratio check (no torch import).

Torch-free on purpose: :mod:`mcm_core.config` and the CLI's ``--help`` read these before
torch is imported, and the torch modules that act on the names build their tables from
them (``masking.MASKERS``, ``data.load_dataset``, ``ViTEncoder.patch_affinity``).
``MODEL_NAMES`` lists the built-in models for help texts; the registry
(``mcm_core.models.model_names()``) is what ``build_model`` accepts, and
``tests/test_capabilities.py`` checks that the two agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MODEL_NAMES = ("mae", "mcm", "micl", "latent_mim", "supervised")  # built in (mcm_core.models registers them)
DATASET_NAMES = ("shapes", "fashion_mnist", "digits", "celeba", "folder")  # mcm_core.data.load_dataset
MASKINGS = ("random", "block", "hierarchical")  # mcm_core.masking.make_masker
AFFINITIES = ("tokens", "attention")  # ViTEncoder.patch_affinity kinds (hierarchical masking's trees)
PRECISIONS = ("auto", "bf16", "fp32")  # TrainConfig.precision
POOLS = ("cls", "mean")  # features(images, pool): the CLS token or the mean of the patch tokens

MASK_RATIO_HINT = "1 would hide every patch and leave the encoder nothing to see (use e.g. 0.75)"


def one_of(names: Sequence[str], last: str = "or") -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"`` (for error messages)."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def check_pool(pool: str) -> None:
    """Raise unless ``pool`` is one of :data:`POOLS`."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; use one of {list(POOLS)}")


def check_mask_ratio(mask_ratio: Any, what: str = "mask_ratio", hint: str = MASK_RATIO_HINT) -> float:
    """Return ``mask_ratio`` as a float, or raise the package's one mask-ratio error unless it is a number in [0, 1).

    Accepts ints, floats, numpy and 0-d torch scalars; refuses bools, text and NaN.

    Args:
        what: the name the message gives the value (``"mask_ratio"``, ``"--mask-ratio"``, ``"max_ratio"``).
        hint: what to do instead, appended to the message.
    """
    try:
        ratio = float("nan") if isinstance(mask_ratio, (bool, str, bytes)) else float(mask_ratio)
    except (TypeError, ValueError):
        ratio = float("nan")
    if not 0.0 <= ratio < 1.0:  # also rejects NaN
        shown = repr(mask_ratio) if isinstance(mask_ratio, (str, bytes)) else mask_ratio
        raise ValueError(f"{what} must be in [0, 1), got {shown}; {hint}")
    return ratio


__all__ = ["MODEL_NAMES", "DATASET_NAMES", "MASKINGS", "AFFINITIES", "PRECISIONS", "POOLS", "one_of",
           "check_pool", "check_mask_ratio"]
