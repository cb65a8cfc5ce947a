"""The house keeps its layers: every import in ``mcm_core`` goes from a layer to the same or a lower
one (``docs/design.md``, "Layout"), the command line and the course tooling sit on top, and modules
stay short enough to read."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcm_core"
# Lowest first. A module may import its own layer and those before it.
LAYERS: list[tuple[str, ...]] = [
    ("choices",),
    ("data",),
    ("masking",),
    ("models",),
    ("train", "batches", "optim", "devices", "distributed", "checkpoint", "export", "config", "runs"),
    ("evaluate",),
    ("analysis",),
    ("viz",),
    ("cli", "launch", "__main__"),
    ("workbook",),
]
LONG_MODULES = {"models/latent_mim.py", "train.py"}  # the two docs/design.md names, with their reasons
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def top_name(path: Path) -> str:
    """``mcm_core/evaluate/metrics.py`` -> ``evaluate``; ``mcm_core/train.py`` -> ``train``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def layer_of(name: str) -> int:
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"mcm_core.{name} is in no layer of tests/test_layout.py; add it where docs/design.md puts it")


def imported(path: Path) -> set[str]:
    """The ``mcm_core`` top-level names ``path`` imports, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "mcm_core":
                names |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mcm_core.")}
    return names - {"__version__"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    if path == PACKAGE / "__init__.py":
        return  # the lazy top-level names
    own = layer_of(top_name(path))
    upward = {name for name in imported(path) if layer_of(name) > own}
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}, a layer above its own"


def test_nothing_but_the_entry_point_imports_the_command_line():
    users = {str(p.relative_to(PACKAGE)) for p in modules()
             if top_name(p) not in ("cli", "__main__") and "cli" in imported(p)}
    assert not users, f"{sorted(users)} import mcm_core.cli: move what they need into evaluate or train"


def test_modules_stay_short_unless_named_in_the_design_doc():
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONG_MODULES, f"over {MAX_LINES} lines: {long}; split them or say why in docs/design.md"
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    assert all(f"`{name}`" in design or f"{name} " in design for name in long)
