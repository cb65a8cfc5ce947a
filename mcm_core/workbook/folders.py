"""Where the workbook's folders are: given by the caller, else under the current directory, else shipped.

Paths never come from where the source files are. Every command that reads or writes a folder
takes it as an argument (``--notebooks``, ``--labs``, ``--output``) whose default is relative to
the current directory: ``notebooks/``, ``labs/``, ``outputs/...``, ``handouts/``, ``figures/``.

The workbook's notebooks and lab files also ship inside the package (``mcm_core/workbook/shipped/notebooks``
and ``mcm_core/workbook/shipped/labs``; in the repository these are links to ``notebooks/`` and ``labs/``),
so an installed package run from an empty folder still finds them: :func:`input_folder` falls
back to them when the current directory has none. They are read, never written: a notebook run
from the shipped folder gets its own working directory (see :func:`is_shipped`).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["NOTEBOOKS", "LABS", "SHIPPED", "shipped_folder", "package_dirs", "is_shipped", "input_folder"]

NOTEBOOKS, LABS = "notebooks", "labs"  # the shipped folders, and the default folder names in the current directory
SHIPPED = "shipped"  # the sub-folder of mcm_core/workbook that holds them (apart from the code modules)


def shipped_folder(kind: str) -> Path | None:
    """The package's own copy of ``kind`` (``"notebooks"`` or ``"labs"``), None when it is not installed."""
    if kind not in (NOTEBOOKS, LABS):
        raise ValueError(f"kind must be {NOTEBOOKS!r} or {LABS!r}, got {kind!r}")
    try:
        folder = Path(str(resources.files(__package__) / SHIPPED / kind))
    except (TypeError, ModuleNotFoundError):  # not a file-system package (e.g. a zip)
        return None
    return folder if folder.is_dir() else None


def package_dirs() -> list[Path]:
    """The package folder, as written and with links resolved (the repository links ``notebooks/`` in)."""
    here = Path(os.path.abspath(Path(__file__).parent.parent))
    return list(dict.fromkeys([here, here.resolve()]))


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` lies inside the installed package (a shipped notebook or lab): never write there."""
    path = Path(os.path.abspath(path))
    candidates = {path, path.resolve()}
    return any(p.is_relative_to(d) for p in candidates for d in package_dirs())


def input_folder(given: str | Path | None, kind: str, option: str) -> Path:
    """The folder of ``kind`` to read from, as an absolute path.

    Args:
        given: the caller's folder; it must exist.
        kind: ``"notebooks"`` or ``"labs"``: without ``given``, ``./<kind>`` if it exists, else the
            package's shipped copy.
        option: the command-line option that sets it, named in the error.
    Raises:
        FileNotFoundError: ``given`` does not exist, or neither default does; the message names ``option``.
    """
    if given is not None:
        folder = Path(given)
        if not folder.is_dir():
            raise FileNotFoundError(f"no {kind} folder {folder}; pass an existing folder to {option}")
        return Path(os.path.abspath(folder))
    local = Path.cwd() / kind
    if local.is_dir():
        return local
    shipped = shipped_folder(kind)
    if shipped is not None:
        return shipped
    raise FileNotFoundError(f"no {kind} folder ./{kind}; run from the repository root or pass {option} DIR")
