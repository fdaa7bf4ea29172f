"""The one markdown-table writer (reports, the CLI, the demo, per-layer reports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    # an unescaped "|" would end the cell early (GitHub renders "\|" as "|", in code spans too)
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                   align: Sequence[str] | str = "") -> str:
    """``| a | b |`` lines. ``align``: one of "" (``---``) or "r" (``---:``) per column, or one
    for all; cells (and headings) are written with ``str``, a ``|`` in them as ``\\|``."""
    marks = [align] * len(header) if isinstance(align, str) else list(align)
    if len(marks) != len(header):
        raise ValueError("one alignment per column")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in marks) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
