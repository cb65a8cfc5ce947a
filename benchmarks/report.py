"""Generated sections inside hand-written markdown pages.

A page such as ``docs/results.md`` mixes prose written by people with tables that scripts
measure. Each script owns one section, fenced by two HTML comments::

    <!-- begin generated: compare_methods -->
    ...
    <!-- end generated: compare_methods -->

:func:`replace_section` rewrites only the text between its own fences (appending the fenced
section at the end of the page the first time), so re-running one script never erases the
prose or another script's tables. The page is written atomically.
"""
from __future__ import annotations

import re
from pathlib import Path

from mcm_core.checkpoint import atomic_write_text


def fences(name: str) -> tuple[str, str]:
    """The begin and end comment lines of section ``name``."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"section name must be lower-case letters, digits and '_', got {name!r}")
    return f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"


def replace_section(path: str | Path, name: str, lines: list[str]) -> str:
    """Put ``lines`` between the fences of section ``name`` in the markdown file ``path``.

    Creates the file when missing and appends the section when the page has no fences for it.
    Returns the new page text. Raises ValueError when only one of the two fences is present
    (a hand edit broke them), naming the fence to restore.
    """
    path = Path(path)
    begin, end = fences(name)
    text = path.read_text() if path.exists() else ""
    body = "\n".join([begin, *lines, end])
    has_begin, has_end = begin in text, end in text
    if has_begin != has_end:
        missing = end if has_begin else begin
        raise ValueError(f"{path} has only one fence of section {name!r}; restore the line {missing!r}")
    if has_begin:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + body + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + body + "\n"
    atomic_write_text(path, text)
    return text
