"""What every command of :mod:`mcm_core.cli` shares: the usage error, JSON output, number formatting,
progress lines on stderr, and resolving a checkpoint, its device and its data set.

Nothing here imports torch at import time (``mcm --help`` stays instant); the library modules
are imported when a function runs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from mcm_core.config import parse_value


class UsageError(ValueError):
    """A command-line mistake found by the CLI itself (reported like the library's errors)."""


# =========================================================================== output
def jsonable(value: Any) -> Any:
    """Strict JSON: nan / inf become null, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    from mcm_core.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Say on stderr what starts and how long it took, so a long evaluation is never silent."""
    print(f"... {what}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


# =========================================================================== checkpoints and data
def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint path, or a run folder's ``checkpoint.safetensors``."""
    from mcm_core.checkpoint import checkpoint_file as resolve

    return resolve(path)


def device_of(name: str):
    from mcm_core.devices import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as error:  # no GPU for device=cuda: a usage problem, not a crash
        raise UsageError(str(error)) from None


def load_model(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    from mcm_core.checkpoint import load_checkpoint

    path = checkpoint_file(args.checkpoint)
    model, info = load_checkpoint(path, device=device_of(args.device))
    return model, info, path


def checkpoint_data(model: Any, info: Any, name: str | None, split: str,
                    data: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    """``(dataset name, the split's data set, its options)``: the training data unless ``name`` says otherwise;
    ``data`` (the ``--data`` text, a YAML mapping) adds or replaces options."""
    from mcm_core.data import dataset_options, load_dataset

    trained = info.train.get("config", {})
    if name is None:
        name = trained.get("dataset")
        if name is None:
            raise UsageError("this checkpoint records no training data set; pass --dataset NAME")
    options = dict(trained.get("data", {})) if name == trained.get("dataset") else {}
    if data is not None:
        options.update(parse_value("data", data))  # a mapping, or an error naming --data
    if "image_size" in dataset_options(name):
        options.setdefault("image_size", model.cfg.img_size)
    return name, load_dataset(name, split=split, **options), options
