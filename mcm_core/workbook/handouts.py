"""Student handouts: copies of the workbook's notebooks with the worked solutions taken out.

A cell tagged ``solution`` in ``notebooks/`` is replaced in the copy by an exercise cell of the
same kind, tagged ``exercise``:

- a **code** solution keeps its leading comment lines (the prompt, e.g.
  ``# Exercise 3: predict concepts from half-masked test images``) and gets
  ``# your code here``; without a comment it becomes ``# Exercise N: your code here``;
- a **markdown** solution keeps its first line when it is a heading (``#### Exercise 1``)
  and gets *Write your answer here.*

Every output is cleared, and a note at the top says where the copy comes from. The copies,
and a ``README.md`` index, go to ``handouts/`` (beside ``notebooks/``, so the notebooks'
relative paths such as ``../runs`` and ``..`` still point at the repository root)::

    python -m mcm_core.workbook.handouts build     # (re)write handouts/ (make handouts)
    python -m mcm_core.workbook.handouts check     # exit 1, naming the files, when handouts/ is out of date

Both folders are arguments relative to the current directory: ``--notebooks`` (default
``notebooks/``, else the notebooks shipped with the package) and ``--output`` (default
``handouts/``). Build from the repository root to get the committed copies.

Solution cells must come after everything the rest of the notebook needs (the Exercises
section at the end), since the student copy runs without them.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from mcm_core.workbook.folders import NOTEBOOKS, input_folder, is_shipped

__all__ = ["SOLUTION_TAG", "EXERCISE_TAG", "student_cell", "student_notebook", "handout_files",
           "build_handouts", "check_handouts", "notebooks_folder", "output_folder", "main"]

HANDOUT_DEFAULT = Path("handouts")  # under the current directory
SOLUTION_TAG, EXERCISE_TAG = "solution", "exercise"
BUILD_COMMAND = "make handouts (or: .venv/bin/python -m mcm_core.workbook.handouts build)"
CODE_PLACEHOLDER = "# your code here"
MARKDOWN_PLACEHOLDER = "*Write your answer here.*"
NOTE_ID = "handout-note"
RUNTIME_METADATA = ("execution", "papermill", "collapsed", "scrolled")  # cell metadata a run leaves behind


def tags(cell: Mapping) -> list[str]:
    """The cell's tags (none: ``[]``)."""
    return list(cell.get("metadata", {}).get("tags", []))


def leading_comments(source: str) -> list[str]:
    """The comment lines a code cell starts with (its prompt), blank lines before them skipped."""
    lines = source.lstrip("\n").splitlines()
    out = []
    for line in lines:
        if not line.lstrip().startswith("#"):
            break
        out.append(line.rstrip())
    return out


def student_cell(cell: NotebookNode, number: int) -> NotebookNode:
    """The exercise cell that replaces solution cell ``cell`` (the ``number``-th of its notebook).

    The copy keeps the cell's id and metadata (tag ``solution`` becomes ``exercise``) and has no outputs.
    """
    if "parameters" in tags(cell):
        raise ValueError(f"cell {cell.get('id')!r} is tagged both 'parameters' and 'solution'; a solution "
                         "must be a cell of its own in the Exercises section")
    new = copy.deepcopy(cell)
    if "id" in new:
        new.id = str(new.id).replace(SOLUTION_TAG, EXERCISE_TAG)
    new.metadata["tags"] = [EXERCISE_TAG if t == SOLUTION_TAG else t for t in tags(cell)]
    if cell.cell_type == "code":
        prompt = leading_comments(cell.source) or [f"# Exercise {number}:"]
        new.source = "\n".join([*prompt, CODE_PLACEHOLDER])
        new.outputs, new.execution_count = [], None
    elif cell.cell_type == "markdown":
        first = cell.source.lstrip("\n").splitlines()[:1]
        heading = first if first and first[0].lstrip().startswith("#") else [f"#### Exercise {number}"]
        new.source = "\n\n".join([heading[0].rstrip(), MARKDOWN_PLACEHOLDER])
        new.pop("attachments", None)
    else:
        raise ValueError(f"cell {cell.get('id')!r} is a {cell.cell_type} cell tagged 'solution'; only code and "
                         "markdown cells can be solutions")
    return new


def clean(cell: NotebookNode) -> NotebookNode:
    """``cell`` without outputs, execution count or run-time metadata."""
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    for key in RUNTIME_METADATA:
        cell.metadata.pop(key, None)
    return cell


def student_notebook(nb: NotebookNode, source_name: str) -> NotebookNode:
    """The student copy of ``nb``: solution cells replaced, outputs cleared, a note after the title.

    Args:
        nb: a notebook (not modified).
        source_name: where it comes from, for the note (e.g. ``"notebooks/01_train_mcm.ipynb"``).
    """
    out = copy.deepcopy(nb)
    cells, number = [], 0
    for cell in nb.cells:
        if SOLUTION_TAG in tags(cell):
            number += 1
            cells.append(student_cell(cell, number))
        else:
            cells.append(clean(cell))
    note = nbformat.v4.new_markdown_cell(
        f"> **Student copy** of `{source_name}`, made by `make handouts`: edit the original, not this file. "
        f"The cells tagged `{EXERCISE_TAG}` at the end are yours to fill in.")
    note.id = NOTE_ID
    at = 1 if cells and cells[0].cell_type == "markdown" else 0  # after the title
    cells.insert(at, note)
    out.cells = cells
    out.metadata.pop("papermill", None)
    out.metadata["mcm_handout"] = {"source": source_name, "solutions_removed": number}
    return out


def notebook_title(nb: NotebookNode, fallback: str) -> str:
    """The text of the notebook's first markdown heading, else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            first = cell.source.strip().splitlines()[:1]
            if first and first[0].startswith("#"):
                return first[0].lstrip("#").strip()
    return fallback


def notebooks_folder(given: str | Path | None = None) -> Path:
    """``given``, else ``./notebooks``, else the notebooks shipped with the package.

    Raises:
        FileNotFoundError: the folder does not exist; the message names ``--notebooks``.
    """
    return input_folder(given, NOTEBOOKS, "--notebooks")


def output_folder(given: str | Path | None = None) -> Path:
    """``given``, else ``./handouts``; a folder inside the installed package is refused."""
    folder = Path(os.path.abspath(given if given is not None else Path.cwd() / HANDOUT_DEFAULT))
    if is_shipped(folder):
        raise ValueError(f"{folder} is inside the installed package; pass --output DIR outside it")
    return folder


def handout_files(notebooks_dir: str | Path | None = None) -> dict[str, str]:
    """``{file name: text}`` of every handout: one per numbered notebook, plus ``README.md``.

    Args:
        notebooks_dir: the notebooks (None: :func:`notebooks_folder`).
    """
    notebooks_dir = notebooks_folder(notebooks_dir)
    sources = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    files, rows = {}, []
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        student = student_notebook(nb, f"notebooks/{path.name}")
        nbformat.validate(student)
        files[path.name] = nbformat.writes(student) + "\n"
        count = student.metadata["mcm_handout"]["solutions_removed"]
        rows.append(f"| [{path.name}]({path.name}) | {notebook_title(nb, path.stem)} | {count} |")
    files["README.md"] = "\n".join([
        "# Student handouts",
        "",
        "Copies of the workbook's notebooks (`notebooks/`) in which every cell tagged `solution` is",
        "replaced by an exercise cell tagged `exercise`. **Generated: do not edit.** Edit the notebooks",
        "in `notebooks/` and run `make handouts`; a test fails when these copies are out of date.",
        "See `docs/instructors.md`.",
        "",
        "| notebook | title | exercises to fill in |",
        "|---|---|---|",
        *rows,
        "",
    ])
    return files


def build_handouts(notebooks_dir: str | Path | None = None, out_dir: str | Path | None = None) -> list[Path]:
    """Write every handout into ``out_dir`` and remove stale ones; -> the files written.

    Args:
        notebooks_dir: the notebooks (None: ``./notebooks``, else the shipped ones).
        out_dir: the handouts' folder (None: ``./handouts``).
    """
    files = handout_files(notebooks_dir)
    out_dir = output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.ipynb"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def check_handouts(notebooks_dir: str | Path | None = None, out_dir: str | Path | None = None) -> list[str]:
    """What differs between ``out_dir`` and what :func:`build_handouts` would write (empty: in sync).

    Args: as for :func:`build_handouts`.
    """
    files = handout_files(notebooks_dir)
    notebooks_dir = notebooks_folder(notebooks_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / HANDOUT_DEFAULT
    problems = []
    for name, text in files.items():
        path = out_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.read_text() != text:
            problems.append(f"{path} differs from its notebook")
    for extra in sorted(out_dir.glob("*.ipynb")) if out_dir.is_dir() else []:
        if extra.name not in files:
            problems.append(f"{extra} has no notebook in {notebooks_dir}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``build`` or ``check``; check exits with 1, naming the stale files and the command to run."""
    parser = argparse.ArgumentParser(prog="python -m mcm_core.workbook.handouts",
                                     description="Student copies of the notebooks without the solution cells.")
    parser.add_argument("command", choices=("build", "check"), help="build: write handouts/; check: compare")
    parser.add_argument("--notebooks", default=None, metavar="DIR",
                        help="source folder (default ./notebooks, else the notebooks shipped with the package)")
    parser.add_argument("--output", default=None, metavar="DIR", help="handout folder (default ./handouts)")
    args = parser.parse_args(argv)
    try:
        notebooks_dir, out_dir = notebooks_folder(args.notebooks), output_folder(args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "build":
        written = build_handouts(notebooks_dir, out_dir)
        print(f"wrote {len(written)} files to {out_dir}")
        return 0
    problems = check_handouts(notebooks_dir, out_dir)
    if problems:
        print("handouts are out of date:\n  " + "\n  ".join(problems) + f"\nrun {BUILD_COMMAND} and commit "
              "the result", file=sys.stderr)
        return 1
    print(f"handouts in {out_dir} are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
