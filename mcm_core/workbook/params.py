"""Notebook parameters: the checks of the ``parameters`` cell, papermill's injected values, smoke mode, seeding.

Every notebook has one cell tagged ``parameters`` (papermill overrides it by inserting
an ``injected-parameters`` cell after it) followed by one call::

    params = parameters(globals(), {"steps": Range(1, 10**7), "lr": Range(1e-6, 1.0), ...},
                        smoke_caps={"steps": 6}, smoke_folder="checkpoint_path")

which checks every value against the notebook's spec (``name -> (type, allowed)``, or a short
form: see :func:`spec_entry`), turns ``smoke=None`` into the ``MCM_SMOKE`` environment setting
and ``device="auto"`` into a concrete device, shrinks the loops in smoke mode, writes the
resolved values back into the notebook's names and fails with a message naming the parameter
and its valid values. Names papermill injected that the notebook does not define are caught by
reading the injected cell back from the kernel's input history. :func:`resolve_params` and
:func:`notebook_params` are the two steps it is made of.
"""
from __future__ import annotations

import ast
import difflib
import os
import random
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Range", "STANDARD", "parameters", "spec_entry", "resolve_params", "notebook_params",
           "injected_parameters", "assigned_values", "smoke_from_env", "setup", "SMOKE_ENV"]

SMOKE_ENV = "MCM_SMOKE"
INJECTED_HEADER = "# Parameters"  # papermill's first line of the injected-parameters cell

Spec = Mapping[str, tuple[Any, Any]]


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
        ``"cpu"`` / ``"cuda"`` (via ``mcm_core.devices.resolve_device``), floats as ``float``.
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
        from mcm_core.devices import resolve_device  # lazy: keeps this module light to import
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


# ---------------------------------------------------------------------------- one call per notebook
STANDARD: dict[str, tuple[Any, Any]] = {  # every workbook notebook's first three parameters
    "smoke": ((bool, type(None)), None),
    "seed": (int, Range(0, 2**31)),
    "device": (str, None),  # checked when it is resolved
}


def is_type_spec(tp: Any) -> bool:
    """A type, or a non-empty tuple of types (``(int, type(None))``)."""
    return isinstance(tp, type) or (isinstance(tp, tuple) and bool(tp) and all(isinstance(t, type) for t in tp))


def spec_entry(name: str, entry: Any) -> tuple[Any, Any]:
    """One parameter's ``(type, allowed)`` (what :func:`resolve_params` checks) from its short form.

    Args:
        entry: ``(type, allowed)`` as is (``type`` may be a tuple of types, ``allowed`` None, a
            :class:`Range` or a collection); a type (``str``): any value of it; a :class:`Range`:
            a number in it, ``int`` when both bounds are ints, else ``float`` (write
            ``Range(0.0, 1.0)`` for a float parameter); a list or set: one of its values, of their types.
    Raises:
        TypeError: ``entry`` is none of these; the message names the parameter and the forms.
    """
    if isinstance(entry, Range):
        whole = all(isinstance(b, int) and not isinstance(b, bool) for b in (entry.low, entry.high))
        return (int if whole else float), entry
    if isinstance(entry, type):
        return entry, None
    if isinstance(entry, (list, set, frozenset)) and entry:
        types = tuple(dict.fromkeys(type(value) for value in entry))
        return (types[0] if len(types) == 1 else types), list(entry)
    if isinstance(entry, tuple) and len(entry) == 2 and is_type_spec(entry[0]):
        allowed = entry[1]
        if allowed is None or isinstance(allowed, Range) or (
                isinstance(allowed, (list, tuple, set, frozenset)) and not isinstance(allowed, str)):
            return entry
    raise TypeError(f"the spec of parameter {name!r} must be a type (str), a Range (Range(0.0, 1.0)), a non-empty "
                    f"list of its values (['tiny', 'small']) or a (type, allowed) pair, got {entry!r}")


def parameters(namespace: MutableMapping[str, Any], spec: Mapping[str, Any], *,
               smoke_caps: Mapping[str, float] | None = None, smoke_folder: str | None = None,
               standard: bool = True, history: Iterable[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Check a notebook's parameters, resolve the automatic ones and write them back: the notebook's one call.

    Args:
        namespace: the notebook's ``globals()``: the values of its ``parameters`` cell, after
            papermill's injected cell if any; updated in place with the resolved values.
        spec: ``{name: spec}`` in any form :func:`spec_entry` takes. :data:`STANDARD` (``smoke``,
            ``seed``, ``device``) is added in front unless ``spec`` gives its own or ``standard`` is False.
        smoke_caps: in smoke mode, ``{name: cap}``: each number parameter becomes ``min(value, cap)``
            (None stays None).
        smoke_folder: in smoke mode, the parameter naming a run folder gets ``"_smoke"`` appended, so
            a smoke run never replaces a full one.
        history: the kernel's cell sources (default: IPython's ``In``), where injected names are read.
        quiet: do not print the resolved values (one line).
    Returns:
        ``{name: value}`` in spec order, as :func:`resolve_params` resolves them, after the smoke caps.
    Raises:
        ValueError / TypeError: as :func:`resolve_params` (unknown, missing or invalid values), or
            a ``smoke_caps`` / ``smoke_folder`` name that is not a parameter.
    """
    full = {**(STANDARD if standard else {}), **{name: spec_entry(name, entry) for name, entry in spec.items()}}
    named = [*(smoke_caps or {}), *([smoke_folder] if smoke_folder is not None else [])]
    unknown = [name for name in named if name not in full]
    if unknown:
        raise ValueError(f"smoke_caps / smoke_folder name(s) {unknown} are not parameters; the parameters are "
                         f"{sorted(full)}")
    values = resolve_params(notebook_params(namespace, full, history), full)
    if values.get("smoke"):
        for name, cap in (smoke_caps or {}).items():
            if values[name] is not None:
                values[name] = min(values[name], cap)
        if smoke_folder is not None and values[smoke_folder] is not None:
            values[smoke_folder] = f"{values[smoke_folder]}_smoke"
    namespace.update(values)
    if not quiet:
        print(" ".join(f"{name}={value}" for name, value in values.items()))
    return values
