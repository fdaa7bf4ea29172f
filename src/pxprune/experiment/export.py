"""Compact exports of a sweep: what a report, an NTK reading and a mask overlap need, without
checkpoints, so that results travel with the docs and a grid can be built up in parts.

An exported run folder holds ``config.yaml``, ``metrics.json``, ``history.csv``, ``layers.csv``,
``prune_history.csv``, ``split.json``, ``ntk.json`` (where ``pxprune ntk`` ran) and ``mask.pt``
bit-packed (eight weights a byte, read by ``Mask.load`` like any mask). ``init.pt``, ``last.pt``,
``tb/`` and ``lottery/`` stay behind. ``pxprune report`` reads an export like the sweep itself, and
``pxprune sweep --out EXPORT`` counts its runs as finished (they have ``metrics.json`` and their
configuration), so only missing cells run.

Exporting into a folder that already holds an export of the same base configuration adds the
source's grid to its ``sweep.json`` as one more part (``merged_sweep_json``) and copies only the runs
it lacks; a run there with another configuration is an error, raised before anything is written.
Each run is written into a temporary folder and moved into place, so an interrupted export leaves
whole runs only."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..masks import Mask
from .errors import UserError
from .files import atomic_write_text, write_json
from .folder import (
    CONFIG,
    HISTORY,
    LAYERS,
    MASK,
    METRICS,
    PRUNE_HISTORY,
    SPLIT,
    _first_difference,
    read_config_dict,
)
from .sweep import LOCK_DIR, SWEEP_FILE, merged_sweep_json, read_sweep_file

NTK_FILE = "ntk.json"
COPIED = (CONFIG, METRICS, HISTORY, LAYERS, PRUNE_HISTORY, SPLIT, NTK_FILE)
"""Files copied as they are (those present); the mask is re-written packed."""
_IGNORED_KEYS = ("provenance",)


@dataclasses.dataclass
class ExportResult:
    out: Path
    exported: list[str] = dataclasses.field(default_factory=list)
    already: list[str] = dataclasses.field(default_factory=list)
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)
    """Run name -> why it was not exported (not finished, unreadable mask)."""

    @property
    def size(self) -> int:
        """Bytes of every file under the export."""
        return sum(f.stat().st_size for f in self.out.rglob("*") if f.is_file())


def _run_folders(sweep_dir: Path) -> list[tuple[str, Path]]:
    """``criterion/sparsity/seed<k>`` -> folder, for every run folder under a sweep folder."""
    found = []
    for crit in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if crit.name.startswith(".") or crit.name in (LOCK_DIR, "report"):
            continue
        for sparsity in sorted(p for p in crit.iterdir() if p.is_dir()):
            for seed in sorted(p for p in sparsity.iterdir() if p.is_dir()):
                if seed.name.startswith("seed") and seed.name[4:].isdigit():
                    found.append((f"{crit.name}/{sparsity.name}/{seed.name}", seed))
    return found


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _IGNORED_KEYS}


def _target_state(name: str, source: Path, target: Path) -> str:
    """``absent``, ``same`` (a finished export of this run) or a :class:`UserError`."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return "absent"
    if not (target / CONFIG).is_file():
        raise UserError(f"{target} exists and holds no pxprune run; move it away and export again")
    theirs = read_config_dict(target / CONFIG, "; move it away and export again")
    ours = read_config_dict(source / CONFIG)
    diff = _first_difference(_identity(theirs), _identity(ours), "config")
    if diff:
        raise UserError(f"{target} holds a different run than {source} ({diff}); export into "
                        "another folder")
    if not (target / METRICS).is_file():
        raise UserError(f"{target} holds the same run, unfinished; finish it there or delete it, "
                        "then export again")
    return "same"


def export_sweep(source: str | os.PathLike, out: str | os.PathLike, *,
                 progress: Callable[[int, int, str], None] | None = None) -> ExportResult:
    """Export every finished run of the sweep folder ``source`` into ``out``. ``progress(i, n,
    name)`` is called per run. Raises :class:`UserError` (before writing anything) for a source
    that is not a sweep, an ``out`` that holds another sweep or other runs, or ``out == source``."""
    source, out = Path(source), Path(out)
    spec = read_sweep_file(source) if source.is_dir() else None
    if spec is None:
        raise UserError(f"{source} holds no {SWEEP_FILE}; give a folder written by `pxprune sweep`")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is inside the sweep it exports; give another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    existing = read_sweep_file(out) if out.is_dir() else None
    if existing is None and out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no {SWEEP_FILE}; choose another --out")
    sweep_json = merged_sweep_json(existing, spec) if existing is not None else dict(spec)

    result = ExportResult(out=out)
    todo: list[tuple[str, Path, Path]] = []
    for name, folder in _run_folders(source):
        if not (folder / METRICS).is_file() or not (folder / CONFIG).is_file():
            result.left_out[name] = "not finished"
            continue
        target = out / name
        if _target_state(name, folder, target) == "same":
            result.already.append(name)
        else:
            todo.append((name, folder, target))

    out.mkdir(parents=True, exist_ok=True)
    for i, (name, folder, target) in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), name)
        try:
            mask = Mask.load(folder / MASK) if (folder / MASK).is_file() else None
        except (OSError, ValueError) as err:
            result.left_out[name] = f"unreadable mask.pt ({err})"
            continue
        _write_run(folder, target, mask)
        result.exported.append(name)
    write_json(out / SWEEP_FILE, sweep_json)
    return result


def _write_run(folder: Path, target: Path, mask: Mask | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an export that was killed: ours, never the user's
    tmp.mkdir()
    try:
        for file in COPIED:
            if (folder / file).is_file():
                atomic_write_text(tmp / file, (folder / file).read_text())
        if mask is not None:
            mask.save(tmp / MASK, packed=True)
        if target.exists():
            target.rmdir()  # empty (checked by _target_state)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
