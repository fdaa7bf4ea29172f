"""A run folder: its file names, how each file is read and written, and the weights a run starts
from (docs/design/CONTRACTS.md, "Run folders").

| file | written | holds |
| --- | --- | --- |
| ``config.yaml`` | first | the resolved configuration (identity of the run) and where the data were found |
| ``init.pt`` | first | theta_0, the weights pruning scored (plain parameter names) |
| ``split.json`` | first | the pruning split (indices into the training set, hash) |
| ``prune_history.csv`` | after pruning | kept weights per layer after every round |
| ``layers.csv`` | after pruning | the per-layer report of the mask |
| ``mask.pt`` | after pruning, last | the mask (with ``init.pt``: "pruned") |
| ``history.csv``, ``tb/`` | every epoch | the task's columns per epoch; TensorBoard scalars |
| ``last.pt`` | every epoch | the complete training state (resume) |
| ``metrics.json`` | at the end | the final metrics ("finished") |
| ``lottery/`` | lottery runs | ``level<k>.pt`` per level, ``rewind.pt`` (theta_k) |

Every write is atomic, so a run killed at any point leaves a folder that resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .._io import load_payload
from ..data.base import DatasetSpec
from ..masks import Mask, state_hash
from ..report import Report
from ..train import load_checkpoint, load_plain_state_dict, plain_state_dict, save_checkpoint
from .config import RunConfig, config_from_dict
from .data import build_model
from .errors import UserError
from .files import atomic_torch_save, atomic_write_text, read_csv, read_json, write_csv, write_json
from .sources import MaskSource, load_rewind

CONFIG, INIT, SPLIT, MASK = "config.yaml", "init.pt", "split.json", "mask.pt"
PRUNE_HISTORY, LAYERS, HISTORY, TB = "prune_history.csv", "layers.csv", "history.csv", "tb"
LAST, METRICS = "last.pt", "metrics.json"
LOTTERY_DIR, REWIND = "lottery", "rewind.pt"
INIT_FORMAT = "pxprune.init"
LAYER_COLUMNS = ("name", "shape", "kept", "total", "density", "effective_kept",
                 "effective_density", "dense_macs", "masked_macs", "empty")
PROVENANCE = "provenance"
"""config.yaml's key for facts about where the run ran (not part of its identity)."""
FILES = (CONFIG, INIT, SPLIT, MASK, PRUNE_HISTORY, LAYERS, HISTORY, LAST, METRICS)


def read_config_dict(path: Path, hint: str = "") -> dict:
    """The mapping in a config.yaml; ``UserError`` (ending with ``hint``) when unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path} is unreadable ({type(err).__name__}){hint}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a pxprune configuration{hint}")
    return data


def load_mask(path: Path) -> Mask:
    """``Mask.load`` with its errors as :class:`UserError`."""
    try:
        return Mask.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; delete the run folder to start it again") from None
    except ValueError as err:
        raise UserError(str(err)) from None


def save_weights(path: Path, model: nn.Module, config: RunConfig) -> str:
    """theta_0 (or a rewind point): the plain state dict and its hash."""
    digest = state_hash(model)
    atomic_torch_save({"format": INIT_FORMAT, "version": 1, "model": config.model.name,
                       "theta0_hash": digest, "state_dict": plain_state_dict(model)}, path)
    return digest


def load_weights(path: Path, model: nn.Module) -> str:
    """Load weights written by :func:`save_weights` into ``model``; returns their hash."""
    try:
        payload = load_payload(path, INIT_FORMAT, what="theta_0 (init.pt)",
                               fix="delete the run folder to start it again")
    except FileNotFoundError:
        raise UserError(f"{path} is missing; delete the run folder to start it again") from None
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        load_plain_state_dict(model, payload["state_dict"])
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    digest = state_hash(model)
    if payload.get("theta0_hash") not in (None, digest):
        raise UserError(f"{path} is corrupt (its weights do not match its recorded hash)")
    return digest


def load_theta0(model: nn.Module, init: Path | None) -> str:
    """theta_0 into ``model`` from ``init`` (an init.pt), or the model as built when None; its hash."""
    return load_weights(init, model) if init is not None else state_hash(model)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """One run folder (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state
    def is_leftover(self, file: Path) -> bool:
        """A temporary file of an atomic write that was killed (``.config.yaml.abc123``)."""
        return file.name.startswith(".") and any(file.name.startswith(f".{n}.") for n in FILES)

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(not self.is_leftover(f) for f in self.path.iterdir())

    def finished(self) -> bool:
        return (self / METRICS).is_file()

    def pruned(self) -> bool:
        """The mask and theta_0 are both there (``mask.pt`` is written last)."""
        return (self / MASK).is_file() and (self / INIT).is_file()

    def has_checkpoint(self) -> bool:
        return (self / LAST).is_file()

    # ------------------------------------------------------------------ configuration
    def read_config_dict(self, hint: str = "") -> dict:
        return read_config_dict(self / CONFIG, hint)

    def read_config(self) -> RunConfig:
        if not (self / CONFIG).is_file():
            raise UserError(f"{self.path} is not a pxprune run folder (no {CONFIG})")
        data = self.read_config_dict()
        data = {k: v for k, v in data.items() if k != PROVENANCE}
        return config_from_dict(data, str(self / CONFIG))

    def write_config(self, config: RunConfig, provenance: Mapping[str, Any] | None = None) -> None:
        text = config.to_yaml()
        if provenance:
            text += yaml.safe_dump({PROVENANCE: dict(provenance)}, sort_keys=False)
        atomic_write_text(self / CONFIG, text)

    # ------------------------------------------------------------------ theta_0 and the split
    def save_init(self, model: nn.Module, config: RunConfig) -> str:
        return save_weights(self / INIT, model, config)

    def load_init(self, model: nn.Module) -> str:
        return load_weights(self / INIT, model)

    def starting_weights(self, model: nn.Module, config: RunConfig, *, source: MaskSource,
                         mask: Mask, spec: DatasetSpec, theta0: str | None = None) -> tuple[str, str]:
        """Load into ``model`` the weights training (and the NTK at initialisation) start from, in
        the one order every reader uses: theta_0 (init.pt), then the source's rewind point (a
        lottery ticket's theta_k), then a re-initialisation (``+reinit``: the model built from
        the ``reinit`` stream). Give ``theta0``, its hash, when ``model`` already holds theta_0,
        so that init.pt is read once. Returns (theta_0's hash, "theta_0" | "rewind" | "reinit")."""
        if theta0 is None:
            theta0 = self.load_init(model)
        which = "theta_0"
        rewind = source.rewind_file(self, config)
        if rewind is not None:
            load_rewind(rewind, model, mask)
            which = "rewind"
        if config.train.reinit:
            model.load_state_dict(build_model(config, spec, stream="reinit").state_dict())
            which = "reinit"
        return theta0, which

    def write_split(self, config: RunConfig, indices: list[int], digest: str) -> None:
        write_json(self / SPLIT, {
            "per_class": config.data.per_class, "train_subset": config.data.train_subset,
            "seed": config.seed, "indices": indices, "hash": digest,
        })

    def read_split(self) -> dict[str, Any]:
        return read_json(self / SPLIT)

    # ------------------------------------------------------------------ the mask
    def load_mask(self) -> Mask:
        return load_mask(self / MASK)

    def write_pruned(self, mask: Mask, names: list[str], rows: Iterable[list[int]],
                     report: Report) -> None:
        """The prune history, the per-layer report, then the mask (its presence, with
        init.pt, means "pruned")."""
        write_csv(self / PRUNE_HISTORY, ["round", *names], rows)
        self.write_layers(report)
        mask.save(self / MASK)

    def write_layers(self, report: Report) -> None:
        write_csv(self / LAYERS, LAYER_COLUMNS,
                  ([row[c] for c in LAYER_COLUMNS] for row in report.as_dicts()))

    def read_prune_history(self, names: list[str]) -> list[list[int]] | None:
        return copied_history(self / PRUNE_HISTORY, names)

    # ------------------------------------------------------------------ training
    def read_history(self, columns: tuple[str, ...], upto: int) -> list[dict[str, Any]]:
        path = self / HISTORY
        if not path.is_file():
            return []
        rows = []
        for row in read_csv(path):
            try:
                epoch = int(row["epoch"])
            except (KeyError, ValueError):
                continue
            if epoch <= upto:
                rows.append({"epoch": epoch, **{c: _number(row.get(c)) for c in columns[1:]}})
        return rows

    def write_history(self, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        write_csv(self / HISTORY, columns, ([r[c] for c in columns] for r in rows))

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            return load_checkpoint(self / LAST)
        except ValueError as err:
            raise UserError(str(err)) from None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(self / LAST, state)

    def tensorboard(self, purge_step: int | None) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - the tensorboard package is optional
            return None
        return SummaryWriter(log_dir=str(self / TB), purge_step=purge_step)

    def read_metrics(self) -> dict[str, Any]:
        try:
            return read_json(self / METRICS)
        except (OSError, ValueError):
            raise UserError(f"{self / METRICS} is unreadable; delete it to finish the run again") \
                from None

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        write_json(self / METRICS, metrics)

    # ------------------------------------------------------------------ lottery files
    @property
    def lottery(self) -> Path:
        return self / LOTTERY_DIR

    @property
    def rewind(self) -> Path:
        return self / LOTTERY_DIR / REWIND


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def copied_history(path: Path | None, names: list[str]) -> list[list[int]] | None:
    """The rows of a prune_history.csv (None when absent or unreadable)."""
    if path is None:
        return None
    try:
        rows = read_csv(path)
        return [[int(r["round"]), *(int(r[n]) for n in names)] for r in rows]
    except (OSError, KeyError, ValueError):
        return None


def same_config(existing: Mapping[str, Any], config: RunConfig) -> str | None:
    """The first difference between a folder's config.yaml and ``config`` (None: the same run)."""
    mine = yaml.safe_load(config.to_yaml())
    return _first_difference(_identity(existing), _identity(mine))


def _identity(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("recipe", "comment", PROVENANCE)}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *[k for k in b if k not in a]]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return f"{where} only in {'this command' if key not in a else 'the folder'}"
            diff = _first_difference(a[key], b[key], where)
            if diff:
                return diff
        return None
    if a != b:
        return f"{prefix}: {a!r} there, {b!r} here"
    return None


def checkpoint_fits(state: Mapping[str, Any], mask_digest: str, identity: Any, where: Path) -> None:
    if state.get("mask_digest") != mask_digest:
        raise UserError(f"{where} was trained with another mask than {where.parent / MASK}; "
                        f"delete {where} to train again")
    if state.get("identity") != identity:
        raise UserError(f"{where} belongs to another configuration; delete it")


__all__ = [
    "CONFIG", "HISTORY", "INIT", "LAST", "LAYERS", "LAYER_COLUMNS", "LOTTERY_DIR", "MASK",
    "METRICS", "PRUNE_HISTORY", "REWIND", "SPLIT", "TB", "RunFolder", "checkpoint_fits",
    "copied_history", "load_mask", "load_theta0", "load_weights", "read_config_dict",
    "same_config", "save_weights",
]
