"""Generated sections of the docs pages: a script rewrites its own section and nothing else."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import fences, replace_section  # noqa: E402


def test_section_is_appended_then_replaced_in_place(tmp_path):
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nProse written by hand.\n")
    replace_section(page, "study", ["| a |", "|---|", "| 1 |"])
    replace_section(page, "other", ["other table"])
    text = replace_section(page, "study", ["| a |", "|---|", "| 2 |"])
    begin, end = fences("study")
    assert text.startswith("# Results\n\nProse written by hand.\n\n" + begin)
    assert "| 2 |" in text and "| 1 |" not in text and text.count(begin) == 1 and text.count(end) == 1
    assert text.index(end) < text.index(fences("other")[0])  # order and the other section kept
    assert "other table" in page.read_text()


def test_missing_page_is_created(tmp_path):
    text = replace_section(tmp_path / "new.md", "study", ["x"])
    assert text == "\n".join([*fences("study")[:1], "x", fences("study")[1]]) + "\n"


def test_a_broken_fence_is_named_not_overwritten(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"{fences('study')[0]}\nold\n")
    with pytest.raises(ValueError, match="only one fence of section 'study'; restore the line '<!-- end generated"):
        replace_section(page, "study", ["new"])
    assert page.read_text() == f"{fences('study')[0]}\nold\n"


def test_section_names_are_checked():
    with pytest.raises(ValueError, match="section name must be"):
        fences("Results -->")
