"""The package installed from a wheel (not editable) works from an empty folder and never writes into itself.

A wheel is built from a copy of the sources (so no ``build/`` lands in the repository) and installed with
``pip install --no-deps --target`` into a fresh virtual environment whose only other content is a ``.pth``
file naming this environment's site-packages, for the dependencies (torch is not installed twice). Then,
with that environment's Python, from an empty folder: train, evaluate, check a shipped lab by name, run a
one-run lab in smoke mode on the shipped notebook 01, build the handouts and write a figure. Everything
must land in the empty folder, and the installed package must be unchanged (``__pycache__`` aside).
Offline: pip builds without isolation and installs without an index.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "mcm_core", "notebooks", "labs")  # what the wheel is built from
SMALL = "{embed_dim: 64, depth: 2, num_heads: 2, decoder_embed_dim: 64, decoder_num_heads: 2}"

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``command``; its output, or a failure showing the end of it."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(command)} exited with {proc.returncode}:\n{output[-4000:]}"
    return output


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``, bytecode caches left out."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of its sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in SOURCES:
        if (ROOT / name).is_dir():  # links (mcm_core/workbook/shipped/notebooks -> ../../../notebooks) stay links
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "dist"), str(source)], work, {**os.environ, "PIP_NO_INPUT": "1"})
    (found,) = (work / "dist").glob("mcm_workbook-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """A fresh environment with the wheel installed: (its python, its site-packages)."""
    env_dir = tmp_path_factory.mktemp("env") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], env_dir.parent, dict(os.environ))
    python = env_dir / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       env_dir, dict(os.environ)).strip())
    (purelib / "_project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(purelib),
         str(wheel)], env_dir, {**os.environ, "PIP_NO_INPUT": "1"})
    return python, purelib


def test_the_wheel_ships_the_notebooks_and_labs_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("mcm_core/workbook/shipped/", 1)[1] for n in names if n.startswith("mcm_core/workbook/shipped/")}
    assert {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} <= shipped
    assert {f"labs/{p.name}" for p in (ROOT / "labs").glob("*.yaml")} <= shipped
    assert "mcm_core/assets/mcm_tiny_shapes.safetensors" in names
    assert all(n.startswith(("mcm_core/", "mcm_workbook-")) for n in names), "only the package in the wheel"


def test_the_installed_package_runs_from_an_empty_folder_and_writes_nothing_into_itself(installed, tmp_path):
    python, purelib = installed
    package = purelib / "mcm_core"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MCM_FIGURES_DIR", "MCM_METRICS_PATH", "MCM_SMOKE", "JUPYTER_PATH")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1", MCM_DEBUG="1", TQDM_DISABLE="1",
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter"))  # no registered kernels: the environment's own python
    where = run([str(python), "-c", "import mcm_core, sys; from jupyter_client.kernelspec import KernelSpecManager; "
                 "print(mcm_core.__file__); print(KernelSpecManager().get_kernel_spec('python3').argv[0])"],
                empty, env).split()
    assert Path(where[0]).parent == package, f"mcm_core imported from {where[0]}, not the wheel"
    assert Path(where[1]) == python, f"the python3 kernel runs {where[1]}, not the fresh environment"
    before, site_before = listing(package), set(listing(purelib))

    run([str(python), "-m", "mcm_core", "train", "--steps", "2", "--batch-size", "8", "--set", "data.size=64",
         "--model", SMALL, "--eval-size", "16", "--no-progress", "--out-dir", "runs/tiny"], empty, env)
    run([str(python), "-m", "mcm_core", "eval", "--checkpoint", "runs/tiny", "--size", "16",
         "--output", "eval.json"], empty, env)
    checked = run([str(python), "-m", "mcm_core.workbook.labs", "check", "mask_ratio_sweep"], empty, env)
    assert "0_mask_ratio-0.0" in checked
    (empty / "one.yaml").write_text(yaml.safe_dump({
        "notebook": "01_train_mcm", "runs": [{"mask_ratio": 0.5}], "time_budget_s": 300,
        "metrics": ["concept_macro_f1", "final_loss"]}))
    run([str(python), "-m", "mcm_core.workbook.labs", "run", "one.yaml", "--smoke"], empty, env)
    run([str(python), "-m", "mcm_core.workbook.handouts", "build"], empty, env)
    figure = run([str(python), "-c", "import numpy as np; from mcm_core import viz; "
                  "print(viz.save_figure(viz.show_images(np.zeros((1, 3, 8, 8))), 'wheel'))"], empty, env)

    assert (empty / "runs" / "tiny" / "checkpoint.safetensors").is_file()
    evaluation = json.loads((empty / "eval.json").read_text())
    assert evaluation["num_images"] == 16 and "concepts" in evaluation and "reconstruction" in evaluation
    lab = empty / "outputs" / "labs" / "one_smoke"
    summary = (lab / "summary.csv").read_text()
    assert ",ok," in summary, summary
    assert sorted((lab / "0" / "figures").glob("01_*.png")) and (lab / "0" / "checkpoint_smoke").is_dir()
    assert len(list((empty / "handouts").glob("[0-9][0-9]_*.ipynb"))) == len(list(
        (package / "workbook" / "shipped" / "notebooks").glob("*.ipynb")))
    assert Path(figure.strip().splitlines()[-1]) == empty / "figures" / "wheel.png"
    assert sorted(p.name for p in empty.iterdir()) == ["eval.json", "figures", "handouts", "one.yaml", "outputs",
                                                       "runs"]
    assert listing(package) == before, "files of the installed package changed"
    assert set(listing(purelib)) == site_before, "files were added to site-packages"
