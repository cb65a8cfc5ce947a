"""Student handouts (``mcm_core.workbook.handouts``): solution cells replaced, everything else untouched,
outputs cleared, and the committed copies in ``handouts/`` in sync with ``notebooks/``."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mcm_core import workbook
from mcm_core.workbook import folders, handouts
from mcm_core.workbook.handouts import EXERCISE_TAG, SOLUTION_TAG, check_handouts, student_cell, student_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
HANDOUT_DIR = ROOT / "handouts"
EDITED = ["01_train_mcm", "02_concept_tokens", "03_mask_ratio_interpolation", "05_masked_contrastive",
          "06_latent_mim", "07_compare_methods"]


def tagged(cell, *tags):
    cell.metadata["tags"] = list(tags)
    return cell


def demo_notebook():
    nb = new_notebook()
    title = new_markdown_cell("# 99 · A demo")
    params = tagged(new_code_cell("smoke = None\nseed = 0"), "parameters")
    work = new_code_cell("x = seed + 1\nx", execution_count=4)
    work.outputs = [new_output("execute_result", data={"text/plain": "1"}, execution_count=4)]
    exercises = new_markdown_cell("## Exercises\n\n1. Add one.\n2. Explain.")
    code_solution = tagged(new_code_cell("# Exercise 1: add one to x\ny = x + 1\nprint(y)", execution_count=5),
                           SOLUTION_TAG)
    code_solution.outputs = [new_output("stream", name="stdout", text="2\n")]
    bare_solution = tagged(new_code_cell("z = 3"), SOLUTION_TAG, "keep-me")
    md_solution = tagged(new_markdown_cell("#### Exercise 2\n\nBecause x is seed + 1."), SOLUTION_TAG)
    plain_md_solution = tagged(new_markdown_cell("Because."), SOLUTION_TAG)
    nb.cells = [title, params, work, exercises, code_solution, bare_solution, md_solution, plain_md_solution]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_solution_code_cells_keep_their_prompt_and_lose_the_code():
    nb = demo_notebook()
    cell = student_cell(nb.cells[4], 1)
    assert cell.source == "# Exercise 1: add one to x\n# your code here"
    assert cell.metadata["tags"] == [EXERCISE_TAG] and cell.outputs == [] and cell.execution_count is None
    bare = student_cell(nb.cells[5], 2)
    assert bare.source == "# Exercise 2:\n# your code here" and bare.metadata["tags"] == [EXERCISE_TAG, "keep-me"]
    assert nb.cells[4].source.startswith("# Exercise 1: add one to x\ny = x + 1")  # the original is untouched


def test_solution_markdown_cells_keep_their_heading_only():
    nb = demo_notebook()
    assert student_cell(nb.cells[6], 3).source == "#### Exercise 2\n\n*Write your answer here.*"
    assert student_cell(nb.cells[7], 4).source == "#### Exercise 4\n\n*Write your answer here.*"


def test_student_notebook_replaces_solutions_keeps_the_rest_and_clears_outputs():
    nb = demo_notebook()
    original = copy.deepcopy(nb)
    student = student_notebook(nb, "notebooks/99_demo.ipynb")
    assert nb == original  # not modified
    nbformat.validate(student)
    assert student.cells[0].source == nb.cells[0].source
    assert student.cells[1].id == "handout-note" and "notebooks/99_demo.ipynb" in student.cells[1].source
    kept = student.cells[2:]
    assert len(kept) == len(nb.cells) - 1
    for before, after in zip(nb.cells[1:4], kept[:3]):  # parameters, work, exercises list: same source and tags
        assert after.source == before.source and after.metadata.get("tags") == before.metadata.get("tags")
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in kept if c.cell_type == "code")
    assert not any(SOLUTION_TAG in c.metadata.get("tags", []) for c in student.cells)
    assert sum(EXERCISE_TAG in c.metadata.get("tags", []) for c in student.cells) == 4
    assert "y = x + 1" not in nbformat.writes(student) and "Because x is" not in nbformat.writes(student)
    assert student.metadata["mcm_handout"] == {"source": "notebooks/99_demo.ipynb", "solutions_removed": 4}


def test_a_parameters_cell_cannot_be_a_solution():
    cell = tagged(new_code_cell("smoke = None"), "parameters", SOLUTION_TAG)
    with pytest.raises(ValueError, match="tagged both 'parameters' and 'solution'"):
        student_cell(cell, 1)


def test_build_and_check_on_a_folder(tmp_path):
    source, out = tmp_path / "notebooks", tmp_path / "handouts"
    source.mkdir()
    nbformat.write(demo_notebook(), source / "99_demo.ipynb")
    assert check_handouts(source, out) == [f"{out / '99_demo.ipynb'} is missing", f"{out / 'README.md'} is missing"]
    written = handouts.build_handouts(source, out)
    assert sorted(p.name for p in written) == ["99_demo.ipynb", "README.md"]
    assert check_handouts(source, out) == []
    (out / "98_gone.ipynb").write_text("{}")
    nb = nbformat.read(source / "99_demo.ipynb", as_version=4)
    nb.cells[2].source = "x = seed + 2"
    nbformat.write(nb, source / "99_demo.ipynb")
    assert check_handouts(source, out) == [f"{out / '99_demo.ipynb'} differs from its notebook",
                                           f"{out / '98_gone.ipynb'} has no notebook in {source}"]
    handouts.build_handouts(source, out)
    assert check_handouts(source, out) == [] and not (out / "98_gone.ipynb").exists()


def test_check_command_names_the_fix(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    nbformat.write(demo_notebook(), source / "99_demo.ipynb")
    assert handouts.main(["check", "--notebooks", str(source), "--output", str(tmp_path / "h")]) == 1
    assert "make handouts" in capsys.readouterr().err
    assert handouts.main(["build", "--notebooks", str(source), "--output", str(tmp_path / "h")]) == 0
    assert handouts.main(["check", "--notebooks", str(source), "--output", str(tmp_path / "h")]) == 0


def test_folders_are_arguments_relative_to_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    nbformat.write(demo_notebook(), tmp_path / "notebooks" / "99_demo.ipynb")
    assert handouts.main(["build"]) == 0  # ./notebooks -> ./handouts
    assert sorted(p.name for p in (tmp_path / "handouts").iterdir()) == ["99_demo.ipynb", "README.md"]
    assert handouts.main(["check"]) == 0 and check_handouts() == []
    assert handouts.main(["build", "--notebooks", str(tmp_path / "nope")]) == 2
    assert f"no notebooks folder {tmp_path / 'nope'}; pass an existing folder to --notebooks" in capsys.readouterr().err


def test_without_a_notebooks_folder_the_shipped_notebooks_are_used_and_never_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty folder
    assert handouts.notebooks_folder() == workbook.shipped_folder("notebooks")
    assert check_handouts(None, HANDOUT_DIR) == []  # the shipped notebooks are the repository's
    shipped = workbook.shipped_folder("notebooks")
    with pytest.raises(ValueError, match="inside the installed package"):  # checked before anything is written
        handouts.output_folder(shipped / "handouts")
    monkeypatch.setattr(folders, "shipped_folder", lambda kind: None)
    assert handouts.main(["build"]) == 2
    message = "no notebooks folder ./notebooks; run from the repository root or pass --notebooks DIR"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "handouts").exists()


# ---------------------------------------------------------------------------- the repository's copies
def test_committed_handouts_are_in_sync_with_the_notebooks():
    problems = check_handouts(NOTEBOOK_DIR, HANDOUT_DIR)
    assert not problems, ("handouts/ is out of date with notebooks/:\n  " + "\n  ".join(problems)
                          + "\nrun `make handouts` (or `.venv/bin/python -m mcm_core.workbook.handouts build`) "
                          "and commit handouts/")


@pytest.mark.parametrize("stem", EDITED)
def test_every_edited_notebook_has_a_worked_solution_and_its_handout_does_not(stem):
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    solutions = [c for c in nb.cells if SOLUTION_TAG in c.metadata.get("tags", [])]
    assert solutions and any(c.cell_type == "code" for c in solutions)
    exercises_at = max(i for i, c in enumerate(nb.cells) if "## Exercises" in c.source)
    assert all(nb.cells.index(c) > exercises_at for c in solutions), "solutions belong after the Exercises list"
    student = nbformat.read(HANDOUT_DIR / f"{stem}.ipynb", as_version=4)
    assert sum(EXERCISE_TAG in c.metadata.get("tags", []) for c in student.cells) == len(solutions)
    assert sum("parameters" in c.metadata.get("tags", []) for c in student.cells) == 1
    assert all(not c.outputs and c.execution_count is None for c in student.cells if c.cell_type == "code")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_handouts_are_not_workbook_notebooks():
    """tests/test_notebooks.py and scripts/run_notebooks.py only see notebooks/NN_*.ipynb."""
    found = load(ROOT / "scripts" / "run_notebooks.py").notebooks(None)
    assert found and all(p.parent == NOTEBOOK_DIR for p in found)
    test_notebooks = load(ROOT / "tests" / "test_notebooks.py")
    assert test_notebooks.NOTEBOOKS and all(p.parent == NOTEBOOK_DIR for p in test_notebooks.NOTEBOOKS)
    assert not any(p.parent == HANDOUT_DIR for p in found + test_notebooks.NOTEBOOKS)


def test_handouts_keep_the_relative_paths_working():
    """handouts/ sits beside notebooks/, so '../runs' and '..' (notebook 07's benchmarks import) still work."""
    assert HANDOUT_DIR.parent == NOTEBOOK_DIR.parent
    student = nbformat.read(HANDOUT_DIR / "01_train_mcm.ipynb", as_version=4)
    assert any('checkpoint_path = "../runs/01_train_mcm"' in c.source for c in student.cells)
