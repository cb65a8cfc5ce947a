"""Moved to :mod:`mcm_core.workbook.handouts`; this path re-exports it, and ``python -m mcm_core.handouts``
runs the same command, until the Makefile, docs and tests are moved."""
from __future__ import annotations

from mcm_core.workbook.handouts import (
    BUILD_COMMAND, CODE_PLACEHOLDER, EXERCISE_TAG, HANDOUT_DEFAULT, MARKDOWN_PLACEHOLDER, NOTE_ID, RUNTIME_METADATA,
    SOLUTION_TAG, build_handouts, check_handouts, clean, handout_files, leading_comments, main, notebook_title,
    notebooks_folder, output_folder, student_cell, student_notebook, tags,
)

__all__ = ["SOLUTION_TAG", "EXERCISE_TAG", "student_cell", "student_notebook", "handout_files",
           "build_handouts", "check_handouts", "notebooks_folder", "output_folder", "main", "BUILD_COMMAND",
           "CODE_PLACEHOLDER", "MARKDOWN_PLACEHOLDER", "NOTE_ID", "RUNTIME_METADATA", "HANDOUT_DEFAULT", "clean",
           "leading_comments", "notebook_title", "tags"]

if __name__ == "__main__":
    raise SystemExit(main())
