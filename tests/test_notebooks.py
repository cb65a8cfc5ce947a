"""The workbook's notebooks: committed clean, executable in smoke mode, strict about parameters.

Execution uses papermill with the ``python3`` kernel registered in ``.venv`` and the
notebook folder as working directory; figures and run folders go to ``tmp_path``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def execute(path: Path, tmp_path: Path, **parameters):
    """Run ``path`` with papermill in smoke mode; run folders and figures under ``tmp_path``."""
    import papermill as pm

    os.environ["MCM_FIGURES_DIR"] = str(tmp_path / "figures")
    params = {"smoke": True, "checkpoint_path": str(tmp_path / "run"), **parameters}
    return pm.execute_notebook(str(path), str(tmp_path / path.name), parameters=params, kernel_name="python3",
                               cwd=str(NOTEBOOK_DIR), progress_bar=False)


@pytest.fixture
def figures_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MCM_FIGURES_DIR", str(tmp_path / "figures"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no numbered notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs_and_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert "smoke = None" in tagged[0].source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert path.name in (NOTEBOOK_DIR / "README.md").read_text(), f"{path.name} missing from notebooks/README.md"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_in_smoke_mode(path, tmp_path, figures_env):
    execute(path, tmp_path)
    figures = sorted((tmp_path / "figures").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} saved no figure with prefix {path.name[:2]}_"
    assert all(f.stat().st_size > 0 for f in figures)


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"mask_ratio": 1.5}, "'mask_ratio' must be in [0, 1), got 1.5"),
    ({"mask_ratoi": 0.5}, "unknown parameter(s) 'mask_ratoi' (did you mean 'mask_ratio'?)"),
])
def test_invalid_parameter_fails_with_the_validation_message(change, message, tmp_path, figures_env):
    from papermill.exceptions import PapermillExecutionError

    path = NOTEBOOK_DIR / "01_train_mcm.ipynb"
    with pytest.raises(PapermillExecutionError) as error:
        execute(path, tmp_path, **change)
    assert message in str(error.value)


@pytest.mark.slow
def test_nbval_lax_runs_every_notebook(tmp_path):
    """``MCM_SMOKE=1 python -m pytest --nbval-lax notebooks/``, on a copy so run folders land in tmp_path."""
    copy = tmp_path / "notebooks"
    copy.mkdir()
    for path in NOTEBOOKS:
        shutil.copy(path, copy / path.name)
    env = {**os.environ, "MCM_SMOKE": "1", "MCM_FIGURES_DIR": str(tmp_path / "figures")}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                           str(copy)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
