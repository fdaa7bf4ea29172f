"""One run: prune at initialisation, train, evaluate, into a run folder (CONTRACTS.md section 5).

:func:`plan` checks the configuration against the output folder without building a model or
reading data (a folder holding a different run, or files that are not a run, is a
:class:`UserError`); :func:`execute` then does the work and reports progress to an
:class:`Observer` (the library never prints). Resume rules: a folder with ``metrics.json`` is
finished; with ``last.pt`` training continues from it (history.csv truncated to its epoch, later
TensorBoard steps purged) and ends with exactly the metrics of an uninterrupted run; with
``mask.pt`` and ``init.pt`` (a ``prune`` folder, or a run stopped before its first epoch ended)
the mask is reused; otherwise everything restarts from pruning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import __version__
from .._io import load_payload
from ..api import prune as prune_model
from ..criteria import CRITERIA
from ..data import (
    DatasetNotFoundError,
    create_dataset,
    get_spec,
    pruning_split,
    split_hash,
    train_subset,
)
from ..data.base import DatasetSpec
from ..masks import Mask, state_hash
from ..models import create_model
from ..report import Report
from ..seeding import stream_seed
from ..selection import prunable_parameters
from ..train import (
    Trainer,
    load_checkpoint,
    load_plain_state_dict,
    plain_state_dict,
    save_checkpoint,
)
from ..train.loop import (
    EpochStats,
    EvalStats,
    default_workers,
    evaluate,
    make_loader,
    resolve_amp,
)
from .config import RunConfig, config_from_dict, with_prune
from .errors import UserError
from .files import (
    atomic_torch_save,
    atomic_write_text,
    read_csv,
    read_json,
    write_csv,
    write_json,
)
from .spec import DENSE, LOTTERY, LOTTERY_OPTIONS, criterion_label, sparsity_label

log = logging.getLogger("pxprune")

CONFIG, INIT, SPLIT, MASK = "config.yaml", "init.pt", "split.json", "mask.pt"
PRUNE_HISTORY, LAYERS, HISTORY, TB = "prune_history.csv", "layers.csv", "history.csv", "tb"
LAST, METRICS = "last.pt", "metrics.json"
LOTTERY_DIR, REWIND = "lottery", "rewind.pt"
"""Lottery runs also keep ``lottery/level<k>.pt`` (the trained weights of each level; level 0 is
the training to the rewind step) and ``lottery/rewind.pt`` (theta_k when rewinding)."""

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
LAYER_COLUMNS = ("name", "shape", "kept", "total", "density", "effective_kept",
                 "effective_density", "dense_macs", "masked_macs", "empty")
METRIC_KEYS = ("criterion", "criterion_options", "sparsity", "density", "effective_density",
               "seed", "epochs", "test_acc", "test_acc5", "test_loss", "train_loss",
               "prune_seconds", "train_seconds", "empty_layers", "flops_fraction", "versions")
INIT_FORMAT = "pxprune.init"
MATERIALISE_BYTES = 1 << 30
"""Pruning splits up to this size are held in memory; larger ones are re-read every round."""


class Observer:
    """Progress callbacks of a run; every method does nothing here (the CLI draws tqdm bars).

    ``begin`` comes once every check has passed, just before the first file is written:
    ``state`` is ``new``, ``pruned`` (reusing mask.pt) or ``resume`` (after ``epoch``)."""

    def begin(self, state: str, epoch: int) -> None: ...

    def prune_start(self, rounds: int) -> None: ...

    def prune_round(self, round: int, rounds: int) -> None: ...

    def prune_end(self) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self) -> None: ...

    def epoch_end(self, row: Mapping[str, Any]) -> None: ...


# ------------------------------------------------------------------------------ names
def run_label(config: RunConfig) -> str:
    """The folder / report-row name of a configuration's criterion (``px--bn=train+shuffled``)."""
    p = config.prune
    return criterion_label(p.criterion, p.options, shuffle=p.shuffle, reinit=config.train.reinit)


def default_out(config: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<recipe>/<criterion label>/<sparsity>/seed<k>/``."""
    return (Path(root) / config.recipe / run_label(config) / sparsity_label(config.prune.sparsity)
            / f"seed{config.seed}")


def versions() -> dict[str, str]:
    import torchvision

    return {"pxprune": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# ------------------------------------------------------------------------------ planning
@dataclasses.dataclass
class Plan:
    """What :func:`execute` will do. ``state``: ``new`` (prune from scratch), ``pruned`` (reuse
    mask.pt), ``resume`` (continue from last.pt) or ``finished``."""

    config: RunConfig
    out: Path
    mode: str
    state: str
    mask: Mask | None = None
    init_source: Path | None = None
    rewind_source: Path | None = None
    source_history: Path | None = None
    checkpoint: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


def _identity_yaml(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("recipe", "comment")}


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


def load_mask(path: Path) -> Mask:
    """``Mask.load`` with its errors as :class:`UserError`."""
    try:
        return Mask.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; delete the run folder to start it again") from None
    except ValueError as err:
        raise UserError(str(err)) from None


def read_config_dict(path: Path, hint: str = "") -> dict:
    """The mapping in a config.yaml; ``UserError`` (ending with ``hint``) when unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path} is unreadable ({type(err).__name__}){hint}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a pxprune configuration{hint}")
    return data


def read_config(out: Path) -> RunConfig:
    """The configuration a run folder was made with."""
    path = out / CONFIG
    if not path.is_file():
        raise UserError(f"{out} is not a pxprune run folder (no {CONFIG})")
    return config_from_dict(read_config_dict(path), str(path))


def plan(config: RunConfig, out: str | Path | None = None, *, mode: str = "run",
         mask: Mask | None = None, mask_file: Path | None = None) -> Plan:
    """Check ``out`` against ``config`` (``mode``: run, prune or train; ``train`` gives the
    ``mask`` loaded from ``mask_file``). Reads only small files and checkpoints."""
    if mode not in ("run", "prune", "train"):
        raise ValueError(f"unknown mode {mode!r}")
    out = Path(out) if out is not None else default_out(config)
    result = Plan(config=config, out=out, mode=mode, state="new")
    if mode == "train":
        assert mask is not None and mask_file is not None
        result.mask = mask
        beside = mask_file.parent
        if (beside / INIT).is_file():
            result.init_source = beside / INIT
        if (beside / PRUNE_HISTORY).is_file():
            result.source_history = beside / PRUNE_HISTORY
        if (beside / LOTTERY_DIR / REWIND).is_file():
            result.rewind_source = beside / LOTTERY_DIR / REWIND
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if not out.exists() or not any(not _leftover(f) for f in out.iterdir()):
        return result
    path = out / CONFIG
    if not path.is_file():
        raise UserError(
            f"{out} is not empty and holds no pxprune run (no {CONFIG}); choose another --out"
        )
    existing = read_config_dict(path, "; choose another --out")
    mine = yaml.safe_load(config.to_yaml())
    diff = _first_difference(_identity_yaml(existing), _identity_yaml(mine))
    if diff:
        raise UserError(
            f"{out} holds a different run ({diff}); choose another --out or delete that folder"
        )
    if (out / METRICS).is_file():
        try:
            result.metrics = read_json(out / METRICS)
        except (OSError, ValueError):
            raise UserError(f"{out / METRICS} is unreadable; delete it to finish the run again") \
                from None
        result.state = "finished"
        return result
    have_mask = (out / MASK).is_file() and (out / INIT).is_file()
    if mode == "prune":
        if have_mask:
            result.mask = load_mask(out / MASK)
            result.state = "finished"
        return result
    if (out / LAST).is_file():
        if not have_mask:
            raise UserError(f"{out} has {LAST} but no {MASK}/{INIT}; delete {out / LAST}")
        try:
            result.checkpoint = load_checkpoint(out / LAST)
        except ValueError as err:
            raise UserError(str(err)) from None
        folder_mask = load_mask(out / MASK)
        if result.checkpoint.get("mask_digest") != mask_digest(folder_mask):
            raise UserError(f"{out / LAST} was trained with another mask than {out / MASK}; "
                            f"delete {out / LAST} to train again")
        if result.checkpoint.get("identity") != config.identity():
            raise UserError(f"{out / LAST} belongs to another configuration; delete it")
        result.state = "resume"
    elif have_mask:
        result.state = "pruned"
    else:
        return result
    folder_mask = load_mask(out / MASK)
    if mode == "train" and not _same_mask(folder_mask, result.mask):
        raise UserError(f"{out} already holds a different mask; choose another --out")
    result.mask = folder_mask
    result.init_source = out / INIT
    result.rewind_source = out / LOTTERY_DIR / REWIND
    return result


def _leftover(path: Path) -> bool:
    """A temporary file of an atomic write that was killed (``.config.yaml.abc123``)."""
    return path.name.startswith(".") and any(
        path.name.startswith(f".{name}.") for name in (CONFIG, INIT, SPLIT, MASK, PRUNE_HISTORY,
                                                       LAYERS, HISTORY, LAST, METRICS))


def _same_mask(a: Mask, b: Mask | None) -> bool:
    return b is not None and set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def mask_digest(mask: Mask) -> str:
    h = hashlib.sha256()
    for name in sorted(mask):
        h.update(name.encode())
        h.update(mask[name].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_config_for_mask(base: RunConfig, mask: Mask, *, seed: int | None = None) -> RunConfig:
    """``base`` with its ``prune`` section (and seed) taken from a saved mask's metadata."""
    meta = mask.metadata
    criterion = meta.get("criterion")
    if not isinstance(criterion, str) or "theta0_hash" not in meta:
        raise UserError("the mask has no pxprune metadata (criterion, theta_0 hash); make it "
                        "with `pxprune prune` or pxprune.prune")
    sparsity = meta.get("sparsity", mask.sparsity)
    rounds = meta.get("rounds")
    if criterion == DENSE or sparsity == 0:
        changes: dict[str, Any] = {"criterion": DENSE, "sparsity": 0.0, "options": {},
                                   "rounds": None, "shuffle": False}
    else:
        if criterion == LOTTERY:
            rounds = None
        elif criterion not in CRITERIA:
            raise UserError(f"the mask was made by {criterion!r}, which is not registered here")
        elif rounds == CRITERIA.get(criterion).default_rounds:
            rounds = None
        changes = {"criterion": criterion, "options": dict(meta.get("options") or {}),
                   "sparsity": float(sparsity), "rounds": rounds,
                   "scope": meta.get("scope", "global"),
                   "shuffle": base.prune.shuffle or "shuffled_seed" in meta}
    config = with_prune(base, **changes)
    if seed is None:
        seed = meta.get("seed", base.seed)
    return dataclasses.replace(config, seed=int(seed))


# ------------------------------------------------------------------------------ building blocks
@dataclasses.dataclass
class Data:
    spec: DatasetSpec
    train: Dataset | None = None
    test: Dataset | None = None
    split: Subset | None = None
    split_indices: list[int] | None = None


def _base_indices(ds: Dataset, indices: list[int]) -> list[int]:
    """Positions in the underlying full dataset of indices into (nested) Subsets."""
    while isinstance(ds, Subset):
        indices = [int(ds.indices[i]) for i in indices]
        ds = ds.dataset
    return indices


def load_data(config: RunConfig, *, train: bool = True, test: bool = True,
              split: bool = True) -> Data:
    """The training set (with its augmentation), the test set and the pruning split (drawn with
    the eval transform from the training subset). Missing files are a :class:`UserError`."""
    d = config.data
    spec = get_spec(d.name)
    result = Data(spec=spec)

    def make(is_train: bool, augment: bool | None) -> Dataset:
        try:
            ds = create_dataset(d.name, root=d.root, train=is_train, download=d.download,
                                augment=augment)
            if is_train and d.train_subset is not None:
                ds = train_subset(ds, d.train_subset, seed=0)
            return ds
        except DatasetNotFoundError as err:
            raise UserError(str(err)) from None
        except (ValueError, OSError) as err:
            raise UserError(f"cannot read {d.name} under {d.root}: {err}") from None

    if train:
        result.train = make(True, None)
    if test:
        result.test = make(False, None)
    if split:
        twin = make(True, False)
        try:
            result.split = pruning_split(twin, d.per_class, seed=config.seed)
        except ValueError as err:
            raise UserError(str(err)) from None
        result.split_indices = _base_indices(twin, list(result.split.indices))
    return result


def build_model(config: RunConfig, spec: DatasetSpec, *, stream: str = "init") -> nn.Module:
    """The configured model on the CPU, drawn from the ``init`` (theta_0) or ``reinit`` stream."""
    kwargs = dict(num_classes=spec.num_classes, pretrained=config.model.pretrained,
                  input_size=spec.input_size)
    try:
        if stream == "init":
            return create_model(config.model.name, seed=config.seed, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(config.seed, stream))
            return create_model(config.model.name, seed=None, **kwargs)
    except (ValueError, OSError) as err:
        raise UserError(str(err)) from None


def save_init(path: Path, model: nn.Module, config: RunConfig) -> str:
    digest = state_hash(model)
    atomic_torch_save({"format": INIT_FORMAT, "version": 1, "model": config.model.name,
                 "theta0_hash": digest, "state_dict": plain_state_dict(model)}, path)
    return digest


def load_init(path: Path, model: nn.Module) -> str:
    """Load theta_0 from ``init.pt`` into ``model``; returns its hash (UserError if broken)."""
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


def pruning_batches(split: Subset, spec: DatasetSpec, batch_size: int = 256) -> Any:
    """The split as a list of (inputs, targets) batches, or a non-shuffling DataLoader when it
    would not fit comfortably in memory."""
    loader = DataLoader(split, batch_size=batch_size, shuffle=False)
    if len(split) * math.prod(spec.input_size) * 4 > MATERIALISE_BYTES:
        return loader
    return [(x, y) for x, y in loader]


def final_mask(mask: Mask, config: RunConfig) -> Mask:
    """The mask that is trained: shuffled within layers when ``prune.shuffle`` (once)."""
    if config.prune.shuffle and "shuffled_seed" not in mask.metadata:
        return mask.shuffled(config.seed)
    return mask


def dense_mask(model: nn.Module, config: RunConfig, theta0: str) -> Mask:
    params = prunable_parameters(model)
    ones = {n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in params.items()}
    return Mask(ones, metadata={
        "criterion": DENSE, "options": {}, "sparsity": 0.0, "rounds": 0, "scope": "global",
        "seed": config.seed, "split_hash": None, "theta0_hash": theta0,
        "input_size": None, "prune_seconds": 0.0,
        "versions": {"pxprune": __version__, "torch": torch.__version__},
    })


def run_pruning(model: nn.Module, config: RunConfig, batches: Any,
                observer: Observer) -> tuple[Mask, list[list[int]]]:
    """Prune with the configured criterion; returns the mask and the prune history rows
    (round, kept per layer), round 0 being the dense network."""
    p = config.prune
    names = list(prunable_parameters(model))
    full = [p_.numel() for p_ in prunable_parameters(model).values()]
    rows: list[list[int]] = [[0, *full]]
    rounds = p.rounds if p.rounds is not None else CRITERIA.get(p.criterion).default_rounds

    def progress(t: int, total: int, mask: Mask) -> None:
        rows.append([t, *(int(mask[n].sum()) for n in names)])
        observer.prune_round(t, total)

    observer.prune_start(rounds)
    try:
        mask = prune_model(model, p.criterion, batches, sparsity=p.sparsity, rounds=p.rounds,
                           scope=p.scope, seed=config.seed, progress=progress, **p.options)
    except (ValueError, TypeError) as err:
        raise UserError(f"pruning with {p.criterion} failed: {err}") from None
    finally:
        observer.prune_end()
    return mask, rows


def _load_level(path: Path, key: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a broken level file is simply trained again
        return None
    if not isinstance(payload, dict) or any(payload.get(k) != v for k, v in key.items()):
        return None
    return payload.get("model")


def run_lottery(model: nn.Module, config: RunConfig, data: Data, device: torch.device,
                out: Path, observer: Observer) -> tuple[Mask, list[list[int]]]:
    """``pxprune.lottery`` with the recipe's training at every level. Each level's trained
    weights go to ``lottery/level<k>.pt``; a level whose file matches (same mask, same starting
    weights) is loaded instead of trained again, so a stopped lottery run resumes per level.
    On return ``model`` holds theta_k (theta_0 unless ``rewind_step``)."""
    from ..lottery import levels_for
    from ..lottery import lottery as find_ticket

    opts = {**LOTTERY_OPTIONS, **config.prune.options}
    names = list(prunable_parameters(model))
    rows: list[list[int]] = [[0, *(p.numel() for p in prunable_parameters(model).values())]]
    levels = levels_for(config.prune.sparsity, opts["rate"])
    epochs = config.train.epochs
    calls: list[int] = []

    def train_fn(m: nn.Module, mask: Mask, *, max_steps: int | None = None) -> None:
        level = len(calls) if opts["rewind_step"] > 0 else len(calls) + 1
        calls.append(level)
        if level >= 2:
            rows.append([level - 1, *(int(mask[n].sum()) for n in names)])
        key = {"format": "pxprune.lottery_level", "level": level, "mask": mask_digest(mask),
               "start": state_hash(m), "max_steps": max_steps}
        cached = _load_level(out / LOTTERY_DIR / f"level{level}.pt", key)
        if cached is not None:
            load_plain_state_dict(m, cached)
        else:
            trainer = make_trainer(m, data, config, device)
            if max_steps is None:
                for epoch in range(1, epochs + 1):
                    observer.epoch_start(epoch, epochs, trainer.steps_per_epoch)
                    stats = trainer.train_epoch(on_step=observer.step)
                    observer.epoch_end({"epoch": epoch, "lr": stats.lr,
                                        "train_loss": stats.loss, "train_acc": stats.acc,
                                        "test_loss": None, "test_acc": None,
                                        "seconds": stats.seconds})
            else:
                left = max_steps
                while left > 0:
                    left -= trainer.train_epoch(max_steps=left, on_step=observer.step).steps
            atomic_torch_save({**key, "model": plain_state_dict(m)},
                        out / LOTTERY_DIR / f"level{level}.pt")
        if level >= 1:
            observer.prune_round(level, levels)

    observer.prune_start(levels)
    start = time.perf_counter()
    try:
        mask = find_ticket(model, train_fn, sparsity=config.prune.sparsity, rate=opts["rate"],
                           rewind_step=opts["rewind_step"], scope=config.prune.scope)
    except (ValueError, TypeError) as err:
        raise UserError(f"lottery failed: {err}") from None
    finally:
        observer.prune_end()
    rows.append([levels, *(int(mask[n].sum()) for n in names)])
    mask.metadata.update(seed=config.seed, prune_seconds=time.perf_counter() - start)
    return mask, rows


def write_layers(path: Path, report: Report) -> None:
    write_csv(path, LAYER_COLUMNS, ([row[c] for c in LAYER_COLUMNS] for row in report.as_dicts()))


def _tensorboard(out: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - the tensorboard package is optional
        return None
    return SummaryWriter(log_dir=str(out / TB), purge_step=purge_step)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"bad --device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    return dev


def make_trainer(model: nn.Module, data: Data, config: RunConfig,
                 device: torch.device | str = "cpu") -> Trainer:
    """The configured :class:`Trainer` of ``model`` on ``data``'s training and test sets."""
    t = config.train
    return Trainer(
        model, data.train, data.test, num_classes=data.spec.num_classes, epochs=t.epochs,
        batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
        nesterov=t.nesterov, schedule=t.schedule, milestones=t.milestones, amp=t.amp,
        seed=config.seed, device=device,
    )


def _history_row(epoch: int, stats: EpochStats, ev: EvalStats) -> dict[str, Any]:
    return {"epoch": epoch, "lr": stats.lr, "train_loss": stats.loss, "train_acc": stats.acc,
            "test_loss": ev.loss, "test_acc": ev.acc, "seconds": stats.seconds}


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for row in read_csv(path):
        try:
            epoch = int(row["epoch"])
        except (KeyError, ValueError):
            continue
        if epoch <= upto:
            rows.append({"epoch": epoch, **{c: float(row[c]) for c in HISTORY_COLUMNS[1:]}})
    return rows


# ------------------------------------------------------------------------------ execution
def execute(p: Plan, *, observer: Observer | None = None,
            device: str | torch.device | None = None) -> dict[str, Any] | None:
    """Carry out a :func:`plan`; returns metrics.json's content (None for ``prune``)."""
    if p.state == "finished":
        return p.metrics
    obs = observer or Observer()
    config, out = p.config, p.out
    device = resolve_device(device)
    need_split = p.state == "new"
    lottery = config.prune.criterion == LOTTERY
    rewind_step = int(config.prune.options.get("rewind_step", 0)) if lottery else 0
    need_train = p.mode != "prune" or (lottery and p.state == "new")
    data = load_data(config, train=need_train, test=need_train, split=need_split)
    model = build_model(config, data.spec)
    mask = p.mask
    if mask is not None:
        try:
            mask.check_fits(model)
        except ValueError as err:
            raise UserError(str(err)) from None
    if p.init_source is not None:
        theta0 = load_init(p.init_source, model)
    else:
        theta0 = state_hash(model)
    if mask is not None and mask.metadata.get("theta0_hash") not in (None, theta0):
        where = p.init_source or f"{config.model.name} with seed {config.seed}"
        raise UserError(f"the mask was made from another theta_0 than {where}; train it with "
                        "its own init.pt beside it, or the model and seed it was pruned from")
    if mask is not None and rewind_step > 0 and p.state != "resume":
        # a lottery ticket trains from theta_k, the weights after rewind_step steps
        init_state = plain_state_dict(model)
        _load_rewind(p.rewind_source, model, mask, rewind_step)
        if p.state == "new":
            rewind_state = plain_state_dict(model)
            load_plain_state_dict(model, init_state)  # init.pt below is theta_0

    if p.state == "new":
        obs.begin(p.state, 0)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG, config.to_yaml())
        save_init(out / INIT, model, config)
        write_json(out / SPLIT, {
            "per_class": config.data.per_class, "train_subset": config.data.train_subset,
            "seed": config.seed, "indices": data.split_indices,
            "hash": split_hash(data.split_indices),
        })
        names = list(prunable_parameters(model))
        if p.mode == "train":
            rows = _copied_history(p.source_history, names) or [
                [int(mask.metadata.get("rounds") or 0), *(int(mask[n].sum()) for n in names)]]
        elif config.prune.criterion == DENSE:
            mask = dense_mask(model, config, theta0)
            rows = [[0, *(int(mask[n].sum()) for n in names)]]
        elif lottery:
            model.to(device)
            mask, rows = run_lottery(model, config, data, device, out, obs)
            model.cpu()
        else:
            model.to(device)
            batches = pruning_batches(data.split, data.spec)
            mask, rows = run_pruning(model, config, batches, obs)
            model.cpu()
        if rewind_step > 0:
            if p.mode == "train":
                load_plain_state_dict(model, rewind_state)
            save_init(out / LOTTERY_DIR / REWIND, model, config)
        mask = final_mask(mask, config)
        report = mask.report(model, data.spec.input_size)
        write_csv(out / PRUNE_HISTORY, ["round", *names], rows)
        write_layers(out / LAYERS, report)
        mask.save(out / MASK)  # last: with init.pt, its presence means "pruned"
        if p.mode == "prune":
            return None
    else:
        mask = final_mask(mask, config)
        report = mask.report(model, data.spec.input_size)
    return _train(p, config, data, model, mask, report, device, obs)


def _load_rewind(source: Path | None, model: nn.Module, mask: Mask, rewind_step: int) -> None:
    if source is None or not source.is_file():
        raise UserError(f"the lottery mask rewinds to step {rewind_step}, but there is no "
                        f"{LOTTERY_DIR}/{REWIND} beside it")
    if load_init(source, model) != mask.metadata.get("rewind_hash"):
        raise UserError(f"{source} is not the rewind point this lottery mask was made from")


def _copied_history(path: Path | None, names: list[str]) -> list[list[int]] | None:
    if path is None:
        return None
    try:
        rows = read_csv(path)
        return [[int(r["round"]), *(int(r[n]) for n in names)] for r in rows]
    except (OSError, KeyError, ValueError):
        return None


def _train(p: Plan, config: RunConfig, data: Data, model: nn.Module, mask: Mask,
           report: Report, device: torch.device, obs: Observer) -> dict[str, Any]:
    out = p.out
    ckpt = p.checkpoint
    if ckpt is not None:
        try:
            load_plain_state_dict(model, ckpt["model"])
        except ValueError as err:
            raise UserError(f"{out / LAST}: {err}") from None
    elif config.train.reinit:
        fresh = build_model(config, data.spec, stream="reinit")
        model.load_state_dict(fresh.state_dict())
    model.to(device)
    if config.prune.criterion != DENSE:
        mask.apply(model)
    trainer = make_trainer(model, data, config, device)
    history: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    if ckpt is not None:
        try:
            trainer.load_state_dict(ckpt, model_loaded=True)
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(f"{out / LAST} does not fit this run ({err}); delete it") from None
        history = _read_history(out / HISTORY, trainer.epoch)
        last = ckpt.get("last")
    if p.state != "new":
        obs.begin(p.state, trainer.epoch)
    tb = _tensorboard(out, purge_step=trainer.epoch + 1 if ckpt is not None else None)
    try:
        for epoch in range(trainer.epoch + 1, config.train.epochs + 1):
            obs.epoch_start(epoch, config.train.epochs, trainer.steps_per_epoch)
            stats = trainer.train_epoch(on_step=obs.step)
            ev = trainer.evaluate()
            row = _history_row(epoch, stats, ev)
            history.append(row)
            write_csv(out / HISTORY, HISTORY_COLUMNS, ([r[c] for c in HISTORY_COLUMNS]
                                                      for r in history))
            if tb is not None:
                for key in HISTORY_COLUMNS[1:]:
                    tb.add_scalar(key, row[key], epoch)
                tb.flush()
            last = {"train_loss": stats.loss, "test_loss": ev.loss, "test_acc": ev.acc,
                    "test_acc5": ev.acc5}
            state = trainer.state_dict()
            state.update(last=last, identity=config.identity(), mask_digest=mask_digest(mask))
            save_checkpoint(out / LAST, state)
            obs.epoch_end(row)
    finally:
        if tb is not None:
            tb.close()
    assert last is not None
    metrics = {
        "criterion": config.prune.criterion,
        "criterion_options": dict(config.prune.options),
        "sparsity": mask.sparsity,
        "density": mask.density,
        "effective_density": report.effective_density,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "test_acc": last["test_acc"],
        "test_acc5": last["test_acc5"],
        "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "prune_seconds": float(mask.metadata.get("prune_seconds") or 0.0),
        "train_seconds": float(sum(r["seconds"] for r in history)),
        "empty_layers": list(report.empty_layers),
        "flops_fraction": report.flops_fraction,
        "versions": versions(),
    }
    write_json(out / METRICS, metrics)
    return metrics


def evaluate_run(out: str | Path, *, device: str | torch.device | None = None) -> dict[str, Any]:
    """Evaluate a run folder's network on the test set: the weights of ``last.pt`` (its epoch),
    or theta_0 under the mask (epoch 0) when it has not trained yet. Writes nothing."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no run folder at {out}")
    config = read_config(out)
    mask = load_mask(out / MASK)
    ckpt = None
    if (out / LAST).is_file():
        try:
            ckpt = load_checkpoint(out / LAST)
        except ValueError as err:
            raise UserError(str(err)) from None
    device = resolve_device(device)
    data = load_data(config, train=False, test=True, split=False)
    model = build_model(config, data.spec)
    try:
        mask.check_fits(model)
    except ValueError as err:
        raise UserError(str(err)) from None
    if ckpt is not None:
        try:
            load_plain_state_dict(model, ckpt["model"])
        except ValueError as err:
            raise UserError(f"{out / LAST}: {err}") from None
    else:
        load_init(out / INIT, model)
        if config.prune.criterion == LOTTERY and (out / LOTTERY_DIR / REWIND).is_file():
            load_init(out / LOTTERY_DIR / REWIND, model)
        if config.train.reinit:
            model.load_state_dict(build_model(config, data.spec, stream="reinit").state_dict())
    model.to(device)
    if config.prune.criterion != DENSE:
        mask.apply(model)
    t = config.train
    loader = make_loader(data.test, batch_size=t.batch_size, shuffle=False,
                         workers=default_workers(device), device=device)
    start = time.perf_counter()
    ev = evaluate(model, loader, num_classes=data.spec.num_classes,
                  amp=resolve_amp(t.amp, device), device=device)
    return {"run": str(out), "epoch": int(ckpt["epoch"]) if ckpt else 0,
            "criterion": config.prune.criterion, "density": mask.density,
            "test_acc": ev.acc, "test_acc5": ev.acc5, "test_loss": ev.loss,
            "samples": ev.samples, "seconds": time.perf_counter() - start}
