"""Where figures go: ``figures/`` under the current directory, ``$MCM_FIGURES_DIR``, or the caller's folder.

Contents
--------
:data:`FIGURES_ENV`, :func:`figures_dir`, :func:`save_figure`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["FIGURES_ENV", "FIGURES_DEFAULT", "figures_dir", "save_figure"]

FIGURES_ENV = "MCM_FIGURES_DIR"
FIGURES_DEFAULT = "figures"  # under the current directory


def figures_dir(folder: str | Path | None = None) -> Path:
    """Where figures go: ``folder`` if given, else ``$MCM_FIGURES_DIR`` if set, else ``figures/`` under the
    current directory (never the package's location)."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(FIGURES_ENV) or Path.cwd() / FIGURES_DEFAULT)


def save_figure(fig: Figure, name: str, dpi: int = 120, folder: str | Path | None = None) -> Path:
    """Write ``fig`` as ``<figures_dir(folder)>/<name>.png`` (creating the folder) and return the path.

    Args:
        name: a file name without folders, e.g. ``"01_masks"`` (``.png`` is added).
        folder: the folder (None: ``$MCM_FIGURES_DIR``, else ``./figures``).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or name.strip(".") == "":
        raise ValueError(f"figure name must be a plain file name of letters, digits, _ . -, got {name!r}; "
                         "e.g. '01_masks' (the folder comes from folder=, $MCM_FIGURES_DIR or ./figures)")
    folder = figures_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=dpi)
    return path
