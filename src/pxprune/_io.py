"""Atomic file writes: a temporary file beside the target, fsync, then one rename. A reader sees
the old file or the new one, never a half-written one, and nothing existing is lost on error."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kw: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path`` with the usual mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text (UTF-8, newlines as given) atomically."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def load_payload(
    path: str | os.PathLike, fmt: str, *, what: str, fix: str,
    version: int | tuple[int, ...] | None = None,
) -> dict:
    """``torch.load(weights_only=True)`` of a dict tagged ``format == fmt`` (and ``version``);
    ``ValueError`` naming ``what`` the file should be and ``fix`` when it is not one. A missing
    file stays a ``FileNotFoundError``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(
            f"{path} is not a readable pxprune {what} ({type(err).__name__}); {fix}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not a pxprune {what} file; {fix}")
    versions = (version,) if isinstance(version, int) else version
    if versions is not None and payload.get("version") not in versions:
        readable = " and ".join(map(str, versions))
        raise ValueError(
            f"{path} has {what} format version {payload.get('version')}, this pxprune reads {readable}"
        )
    return payload
