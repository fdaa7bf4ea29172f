"""What the study scripts in docs/ share: running the command line, and rewriting one marked
block of a page (the rest of the page, findings included, is kept)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def cli(*argv: str) -> None:
    """``pxprune ARGV`` in a subprocess (echoed to stderr); a failure stops the study."""
    print("+", shlex.join(["pxprune", *argv]), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pxprune", *argv], check=True)


def write_block(page: Path, name: str, text: str, command: str, *, missing: str) -> None:
    """Put ``Command: ...`` and ``text`` between ``<!-- name -->`` and ``<!-- /name -->`` of
    ``page``; ``missing`` is appended first when the page (or the block) does not exist yet."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n\nCommand: `{command}`\n\n{text}\n\n{end}"
    current = page.read_text() if page.exists() else ""
    if start not in current:
        current = current.rstrip() + f"\n\n{missing}{start}\n{end}\n"
    before, rest = current.split(start, 1)
    _, after = rest.split(end, 1)
    page.write_text(before + block + after)
