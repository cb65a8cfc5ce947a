"""The checkpoints the notebooks share: reuse a finished run, and the reference run shipped with mcm_core.

:func:`checkpoint_matches` says whether a run folder already holds a finished run of a config (so
a notebook loads it instead of training again; :func:`mcm_core.workbook.training.train_or_load`
builds on it). :func:`workbook_checkpoint` picks the checkpoint a later notebook starts from:
notebook 01's run, else :data:`SHIPPED_CHECKPOINT`, the reference MCM in ``mcm_core/assets``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mcm_core.runs import CHECKPOINT_NAME  # what mcm_core.train writes into a run folder

__all__ = ["SHIPPED_CHECKPOINT", "checkpoint_matches", "workbook_checkpoint"]

# The reference MCM (tiny preset, shapes, notebook 01's model and losses trained longer) shipped with the package:
# notebooks 02 and 03 draw their figures from it by default, and notebook 01 compares its run with it;
# mcm_core/assets/README.md holds the command that trained it and its measured metrics.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "mcm_tiny_shapes.safetensors"


def checkpoint_matches(path: str | Path, config: Any) -> bool:
    """True when ``path`` holds a finished run of ``config`` (a ``TrainConfig``).

    Fields that do not change what is learned (device, progress bar, out_dir, ...) may differ.
    A missing file, an unfinished run or any other difference gives False: train again.
    """
    from mcm_core.checkpoint import CheckpointError, read_metadata
    from mcm_core.config import config_changes

    path = Path(path)
    if not path.is_file():
        return False
    try:
        train = read_metadata(path).get("train", {})
    except CheckpointError:
        return False
    return not config_changes(train.get("config", {}), config.to_dict()) and int(train.get("step", -1)) == config.steps


def workbook_checkpoint(checkpoint_path: str | Path, quiet: bool = False, use_reference: bool = False) -> Path:
    """The checkpoint a later notebook starts from.

    Args:
        checkpoint_path: a run folder (``<folder>/checkpoint.safetensors`` is used) or a
            ``.safetensors`` file, usually notebook 01's ``"../runs/01_train_mcm"``.
        quiet: do not print which checkpoint is used.
        use_reference: take the reference checkpoint shipped with mcm_core (trained longer than
            notebook 01's run; ``mcm_core/assets/README.md``) even when ``checkpoint_path`` exists.
    Returns:
        The path of an existing checkpoint file: the reference one when asked for, else notebook
        01's run if it exists, else the reference one.
    Raises:
        FileNotFoundError: neither exists (the package was installed without its assets).
    """
    path = Path(checkpoint_path)
    candidate = path if path.suffix == ".safetensors" else path / CHECKPOINT_NAME
    chosen = candidate if candidate.is_file() and not use_reference else SHIPPED_CHECKPOINT
    if not chosen.is_file():
        raise FileNotFoundError(f"no checkpoint at {candidate} and the shipped one ({SHIPPED_CHECKPOINT}) is "
                                "missing: run notebook 01 first, or reinstall mcm_core from the repository")
    if not quiet:
        source = "notebook 01's run" if chosen == candidate else "the reference checkpoint shipped with mcm_core"
        print(f"using {source}: {chosen}")
    return chosen
