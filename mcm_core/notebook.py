"""Helpers for the workbook's notebooks: parameter validation, seeding, checkpoint reuse.

Every notebook has one cell tagged ``parameters`` (papermill overrides it by inserting
an ``injected-parameters`` cell after it) followed by::

    params = resolve_params(notebook_params(globals(), SPEC), SPEC)

which checks every value against the notebook's ``SPEC`` (``name -> (type, allowed)``),
turns ``smoke=None`` into the ``MCM_SMOKE`` environment setting and ``device="auto"``
into a concrete device, and fails with a message naming the parameter and its valid
values. Names papermill injected that the notebook does not define are caught by
reading the injected cell back from the kernel's input history.
"""
from __future__ import annotations

import ast
import difflib
import json
import math
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcm_core.runs import CHECKPOINT_NAME  # what mcm_core.train writes into a run folder

__all__ = ["Range", "resolve_params", "notebook_params", "injected_parameters", "smoke_from_env",
           "setup", "checkpoint_matches", "workbook_checkpoint", "SHIPPED_CHECKPOINT", "record_metrics",
           "METRICS_ENV"]

SMOKE_ENV = "MCM_SMOKE"
METRICS_ENV = "MCM_METRICS_PATH"  # where record_metrics writes; set by the lab runner (mcm_core.labs)
INJECTED_HEADER = "# Parameters"  # papermill's first line of the injected-parameters cell

Spec = Mapping[str, tuple[Any, Any]]
# The reference MCM (tiny preset, shapes, notebook 01's recipe trained longer) shipped with the package:
# notebooks 02 and 03 draw their figures from it by default, and notebook 01 compares its run with it;
# mcm_core/assets/README.md holds the command that trained it and its measured metrics.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "mcm_tiny_shapes.safetensors"


@dataclass(frozen=True)
class Range:
    """Allowed numbers ``low <= x < high`` (or ``<= high`` with ``include_high``); use as ``allowed``."""

    low: float
    high: float
    include_high: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return self.low <= value <= self.high if self.include_high else self.low <= value < self.high

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}{']' if self.include_high else ')'}"


def type_label(tp: Any) -> str:
    types = tp if isinstance(tp, tuple) else (tp,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def type_ok(value: Any, tp: Any) -> bool:
    """isinstance with the notebook conventions: bool is not an int, an int is a valid float."""
    types = tp if isinstance(tp, tuple) else (tp,)
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, bool):
            continue
        if isinstance(value, t):
            return True
    return False


def smoke_from_env() -> bool:
    """``MCM_SMOKE`` set to 1 / true / yes (any case) means smoke mode."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def resolve_params(params: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """Validate notebook parameters and resolve the automatic ones.

    Args:
        params: ``{name: value}`` as the notebook holds them (see :func:`notebook_params`).
        spec: ``{name: (type or tuple of types, allowed)}`` where ``allowed`` is None (any value
            of the type), a collection of values, or a :class:`Range`.
    Returns:
        A new dict: ``smoke`` None -> ``MCM_SMOKE`` from the environment, ``device`` "auto" ->
        ``"cpu"`` / ``"cuda"`` (via ``mcm_core.train.resolve_device``), floats as ``float``.
    Raises:
        ValueError: unknown or missing names, or a value outside its allowed values.
        TypeError: a value of the wrong type.
    """
    valid = sorted(spec)
    unknown = sorted(set(params) - set(spec))
    if unknown:
        hints = [f"{u!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(u, valid, n=1))
                 else repr(u) for u in unknown]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}; this notebook's parameters are {valid}")
    missing = sorted(set(spec) - set(params))
    if missing:
        raise ValueError(f"parameter(s) {missing} are not defined; restore them in the cell tagged 'parameters'")
    out: dict[str, Any] = {}
    for name in spec:
        tp, allowed = spec[name]
        value = params[name]
        if not type_ok(value, tp):
            raise TypeError(f"parameter {name!r} must be {type_label(tp)}, got {value!r} ({type(value).__name__})")
        if allowed is not None and value is not None and value not in allowed:
            choices = str(allowed) if isinstance(allowed, Range) else sorted(allowed, key=str)
            raise ValueError(f"parameter {name!r} must be {'in' if isinstance(allowed, Range) else 'one of'} "
                             f"{choices}, got {value!r}")
        types = tp if isinstance(tp, tuple) else (tp,)
        if type(value) is int and float in types and int not in types:
            value = float(value)  # mask_ratio=1 from the command line is still a float parameter
        out[name] = value
    if "smoke" in out and out["smoke"] is None:
        out["smoke"] = smoke_from_env()
    if isinstance(out.get("device"), str):
        from mcm_core.train import resolve_device  # lazy: keeps this module light to import
        out["device"] = str(resolve_device(out["device"]))
    return out


def injected_parameters(history: Iterable[str] | None = None) -> dict[str, Any]:
    """Names and values papermill injected, read from the kernel's input history.

    Args:
        history: cell sources in execution order (default: IPython's ``In``; none outside IPython).
    Returns:
        ``{name: value}`` of the last injected-parameters cell, ``{}`` when there is none.
    """
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return {}
        shell = get_ipython()
        history = shell.user_ns.get("In", []) if shell is not None else []
    found: dict[str, Any] = {}
    for source in history:
        if not isinstance(source, str) or not source.lstrip().startswith(INJECTED_HEADER):
            continue
        found = assigned_values(ast.parse(source))
    return found


def assigned_values(tree: ast.Module) -> dict[str, Any]:
    """``{name: value}`` of the top-level ``name = ...`` assignments of a parsed cell.

    Values that are not Python literals are returned as their source text.
    """
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        found[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        found[target.id] = ast.unparse(node.value)  # not a literal: still a name
    return found


def notebook_params(namespace: Mapping[str, Any], spec: Spec,
                    history: Iterable[str] | None = None) -> dict[str, Any]:
    """The notebook's current value of each ``spec`` name, plus every injected name.

    Injected names outside ``spec`` are kept, so :func:`resolve_params` reports them as unknown.
    """
    values = {name: namespace[name] for name in spec if name in namespace}
    for name in injected_parameters(history):
        values.setdefault(name, namespace.get(name))
    return values


def setup(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA); optionally cap torch's threads.

    Returns:
        A CPU ``torch.Generator`` seeded with ``seed``, for masks and samples in the notebook.
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.Generator().manual_seed(int(seed))


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


def metric_value(name: str, value: Any) -> Any:
    """``value`` as JSON: numbers (one-element tensors and NumPy scalars too), str, bool, None, or a dict."""
    if isinstance(value, Mapping):
        return {str(key): metric_value(f"{name}.{key}", inner) for key, inner in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        size = value.numel() if isinstance(value, torch.Tensor) else np.size(value)
        if size != 1:
            raise ValueError(f"metric {name!r} must be one number, got an array of shape {tuple(value.shape)}; "
                             "record a summary of it (e.g. its mean) or one metric per element")
        value = value.item()
    if isinstance(value, (int, float)):
        return value if isinstance(value, int) or math.isfinite(value) else None  # nan / inf: not measured
    raise TypeError(f"metric {name!r} must be a number, str, bool, None or a dict of them, "
                    f"got {type(value).__name__}")


def record_metrics(metrics: Mapping[str, Any], path: str | Path | None = None) -> Path | None:
    """Add ``metrics`` to the JSON file a lab run collects; a no-op outside a lab.

    The lab runner (``python -m mcm_core.labs run``) sets ``MCM_METRICS_PATH`` for every
    notebook it executes; each call merges into that file (later values win), so a notebook
    may record its metrics in several places. Nested dicts become dotted column names in the
    lab's summary (``{"knn_acc": {"mae": 0.6}}`` -> ``knn_acc.mae``).

    Args:
        metrics: ``{name: value}``; values are numbers (nan / inf are stored as null), str,
            bool, None, one-element tensors or arrays, or dicts of those.
        path: the file to write (default: ``$MCM_METRICS_PATH``; nothing is written when unset).
    Returns:
        The path written, or None when there was nowhere to write.
    Raises:
        TypeError / ValueError: a name or value that cannot be stored, named in the message.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"record_metrics takes a dict of name -> value, got {type(metrics).__name__}")
    bad = [name for name in metrics if not isinstance(name, str) or not name]
    if bad:
        raise TypeError(f"metric names must be non-empty strings, got {bad!r}")
    values = {name: metric_value(name, value) for name, value in metrics.items()}
    target = path if path is not None else os.environ.get(METRICS_ENV, "").strip() or None
    if target is None:
        return None
    target = Path(target)
    recorded = json.loads(target.read_text()) if target.is_file() else {}
    recorded.update(values)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=2) + "\n")  # in recording order: the summary's column order
    tmp.replace(target)  # atomic: a run killed mid-write never leaves half a file
    return target
