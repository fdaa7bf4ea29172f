"""One run: a short pipeline into a run folder (docs/design/CONTRACTS.md, "Run folders").

    plan -> starting weights -> mask -> train -> evaluate -> metrics

:func:`plan` checks the configuration against the output folder without building a model or
reading data (a folder holding a different run, or files that are not a run, is a
:class:`UserError`) and picks the mask source (``pxprune.experiment.sources``); :func:`execute`
does the work and reports progress to an :class:`Observer` (the library never prints). Resume
rules: a folder with ``metrics.json`` is finished; with ``last.pt`` training continues from it and
ends with exactly the metrics of an uninterrupted run; with ``mask.pt`` and ``init.pt`` (a
``prune`` folder, or a run stopped before its first epoch ended) the mask is reused; otherwise
everything restarts from pruning.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..masks import Mask
from ..platform import SINGLE, Platform
from ..selection import prunable_parameters
from ..train.loop import default_workers, evaluate, make_loader, resolve_amp
from .config import RunConfig, with_prune
from .data import build_model, load_data
from .errors import UserError
from .folder import INIT, METRICS, RunFolder, load_mask, load_theta0, read_config_dict, same_config
from .folder import checkpoint_fits as _checkpoint_fits
from .sources import FromFile, MakeContext, MaskSource, source_for, train_config_changes
from .spec import criterion_label, sparsity_label
from .training import mask_digest, metric_keys, train_run

METRIC_KEYS = metric_keys(__import__("pxprune.tasks", fromlist=["x"]).get_task("classification"))
"""metrics.json's keys for a classification run."""


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


def run_label(config: RunConfig) -> str:
    """The folder / report-row name of a configuration's criterion (``px--bn=train+shuffled``)."""
    p = config.prune
    return criterion_label(p.criterion, p.options, shuffle=p.shuffle, reinit=config.train.reinit)


def default_out(config: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<recipe>/<criterion label>/<sparsity>/seed<k>/``."""
    return (Path(root) / config.recipe / run_label(config) / sparsity_label(config.prune.sparsity)
            / f"seed{config.seed}")


def read_config(out: Path) -> RunConfig:
    """The configuration a run folder was made with."""
    return RunFolder(out).read_config()


# ------------------------------------------------------------------------------ planning
@dataclasses.dataclass
class Plan:
    """What :func:`execute` will do. ``state``: ``new`` (prune from scratch), ``pruned`` (reuse
    mask.pt), ``resume`` (continue from last.pt) or ``finished``."""

    config: RunConfig
    out: Path
    mode: str
    state: str
    source: MaskSource
    mask: Mask | None = None
    init_source: Path | None = None
    checkpoint: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


def plan(config: RunConfig, out: str | Path | None = None, *, mode: str = "run",
         mask: Mask | None = None, mask_file: Path | None = None) -> Plan:
    """Check ``out`` against ``config`` (``mode``: run, prune or train; ``train`` gives the
    ``mask`` loaded from ``mask_file``). Reads only small files and checkpoints."""
    if mode not in ("run", "prune", "train"):
        raise ValueError(f"unknown mode {mode!r}")
    folder = RunFolder(Path(out) if out is not None else default_out(config))
    if mode == "train":
        assert mask is not None and mask_file is not None
        source: MaskSource = FromFile(mask, Path(mask_file))
    else:
        source = source_for(config.prune.criterion)
    result = Plan(config=config, out=folder.path, mode=mode, state="new", source=source)
    if mode == "train":
        result.mask = mask
        if (Path(mask_file).parent / INIT).is_file():
            result.init_source = Path(mask_file).parent / INIT
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"--out {folder.path} is a file; give a folder")
    if folder.is_empty():
        return result
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{folder.path} is not empty and holds no pxprune run (no config.yaml); "
                        "choose another --out")
    diff = same_config(folder.read_config_dict("; choose another --out"), config)
    if diff:
        raise UserError(f"{folder.path} holds a different run ({diff}); choose another --out or "
                        "delete that folder")
    if folder.finished():
        result.metrics = folder.read_metrics()
        result.state = "finished"
        return result
    if mode == "prune":
        if folder.pruned():
            result.mask = folder.load_mask()
            result.state = "finished"
        return result
    if folder.has_checkpoint():
        if not folder.pruned():
            raise UserError(f"{folder.path} has last.pt but no mask.pt/init.pt; delete "
                            f"{folder / 'last.pt'}")
        result.checkpoint = folder.load_checkpoint()
        _checkpoint_fits(result.checkpoint, mask_digest(folder.load_mask()), config.identity(),
                         folder / "last.pt")
        result.state = "resume"
    elif folder.pruned():
        result.state = "pruned"
    else:
        return result
    folder_mask = folder.load_mask()
    if mode == "train" and not _same_mask(folder_mask, result.mask):
        raise UserError(f"{folder.path} already holds a different mask; choose another --out")
    result.mask = folder_mask
    result.init_source = folder / INIT
    return result


def _same_mask(a: Mask, b: Mask | None) -> bool:
    return b is not None and set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def train_config_for_mask(base: RunConfig, mask: Mask, *, seed: int | None = None) -> RunConfig:
    """``base`` with its ``prune`` section (and seed) taken from a saved mask's metadata."""
    config = with_prune(base, **train_config_changes(mask, base.prune.shuffle))
    if seed is None:
        seed = mask.metadata.get("seed", base.seed)
    return dataclasses.replace(config, seed=int(seed))


def final_mask(mask: Mask, config: RunConfig) -> Mask:
    """The mask that is trained: shuffled within layers when ``prune.shuffle`` (once)."""
    if config.prune.shuffle and "shuffled_seed" not in mask.metadata:
        return mask.shuffled(config.seed)
    return mask


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


def _check_mask(mask: Mask | None, model: torch.nn.Module, theta0: str, where: str) -> None:
    if mask is None:
        return
    try:
        mask.check_fits(model)
    except ValueError as err:
        raise UserError(str(err)) from None
    if mask.metadata.get("theta0_hash") not in (None, theta0):
        raise UserError(f"the mask was made from another theta_0 than {where}; train it with "
                        "its own init.pt beside it, or the model and seed it was pruned from")


# ------------------------------------------------------------------------------ execution
def execute(p: Plan, *, observer: Observer | None = None,
            device: str | torch.device | None = None,
            platform: Platform = SINGLE) -> dict[str, Any] | None:
    """Carry out a :func:`plan`; returns metrics.json's content (None for ``prune``).

    ``platform``: one of several processes (``torchrun``; every process plans, then meets the
    others at a barrier, then executes). They score together, each on its part of the pruning
    split, and agree on one mask; they train data-parallel; only the primary writes files."""
    if p.state == "finished":
        return p.metrics
    obs = observer or Observer()
    config, folder, source = p.config, RunFolder(p.out), p.source
    device = platform.device if platform.distributed else resolve_device(device)
    world = platform.world_size
    if config.train.batch_size % world and p.mode != "prune":
        raise UserError(
            f"train.batch_size {config.train.batch_size} is the global batch and does not split "
            f"evenly over {world} processes; use a multiple of {world} "
            f"(--set train.batch_size={max(world, config.train.batch_size // world * world)})")
    if world > 1 and p.state == "new" and not source.data_parallel:
        raise UserError(f"criterion {config.prune.criterion} trains to make its mask in one "
                        "process; run it without torchrun")
    writes = platform.is_primary
    need_train = p.mode != "prune" or (source.trains and p.state == "new")
    data = load_data(config, train=need_train, test=need_train, split=p.state == "new")
    model = build_model(config, data.spec)
    theta0 = load_theta0(model, p.init_source)
    where = str(p.init_source or f"{config.model.name} with seed {config.seed}")
    _check_mask(p.mask, model, theta0, where)
    mask = p.mask
    if p.state == "new":
        obs.begin(p.state, 0)
        if writes:
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_config(config, _provenance(config, data, model))
            folder.save_init(model, config)
            from ..data import split_hash

            folder.write_split(config, data.split_indices, split_hash(data.split_indices))
        ctx = MakeContext(config=config, folder=folder, model=model, data=data, device=device,
                          observer=obs, theta0=theta0, platform=platform)
        model.to(device)
        made, rows = source.make(ctx)
        source.after_make(ctx)
        model.cpu()
        mask = final_mask(made, config)
        report = mask.report(model, data.spec.input_size)
        if writes:
            folder.write_pruned(mask, list(prunable_parameters(model)), rows, report)
        platform.barrier()
        if p.mode == "prune":
            return None
    else:
        assert mask is not None
        mask = final_mask(mask, config)
        report = mask.report(model, data.spec.input_size)
    if p.checkpoint is None:
        # a source that trains to make its mask (the lottery) leaves the model moved off theta_0
        folder.starting_weights(model, config, source=source, mask=mask, spec=data.spec,
                                theta0=None if p.state == "new" else theta0)
    metrics = train_run(folder, config, data, model, mask, report, apply_mask=source.applied,
                        checkpoint=p.checkpoint, device=device, observer=obs,
                        begin_state=None if p.state == "new" else p.state, platform=platform)
    platform.barrier()
    return metrics


def _provenance(config: RunConfig, data: Any, model: torch.nn.Module) -> dict[str, Any] | None:
    """config.yaml's ``provenance``: where the data was found; with pre-trained weights, what was
    loaded (source, layout and how it was known, sha256, whether the head is new) and the
    statistics and size the inputs were given."""
    out: dict[str, Any] = {}
    if data.source:
        out["data_found"] = data.source
    weights = getattr(model, "pretrained_weights", None)
    if weights is not None:
        out["pretrained"] = weights.to_dict()
    if weights is not None or config.data.image_size is not None:
        out["inputs"] = {"normalization": data.normalization, "mean": list(data.spec.mean),
                         "std": list(data.spec.std), "size": list(data.spec.input_size)}
    return out or None


# ------------------------------------------------------------------------------ evaluation
def evaluate_run(out: str | Path, *, device: str | torch.device | None = None) -> dict[str, Any]:
    """Evaluate a run folder's network on the test set: the weights of ``last.pt`` (its epoch),
    or the starting weights under the mask (epoch 0) when it has not trained yet. Writes
    nothing."""
    folder = RunFolder(Path(out))
    if not folder.path.is_dir():
        raise UserError(f"no run folder at {folder.path}")
    config = folder.read_config()
    mask = folder.load_mask()
    ckpt = folder.load_checkpoint() if folder.has_checkpoint() else None
    device = resolve_device(device)
    data = load_data(config, train=False, test=True, split=False)
    model = build_model(config, data.spec)
    try:
        mask.check_fits(model)
    except ValueError as err:
        raise UserError(str(err)) from None
    source = source_for(config.prune.criterion)
    if ckpt is not None:
        from ..train import load_plain_state_dict

        try:
            load_plain_state_dict(model, ckpt["model"])
        except ValueError as err:
            raise UserError(f"{folder / 'last.pt'}: {err}") from None
    else:
        folder.starting_weights(model, config, source=source, mask=mask, spec=data.spec)
    model.to(device)
    if source.applied:
        mask.apply(model)
    t = config.train
    loader = make_loader(data.test, batch_size=t.batch_size, shuffle=False,
                         workers=default_workers(device), device=device)
    start = time.perf_counter()
    ev = evaluate(model, loader, num_classes=data.spec.num_classes, task=data.task,
                  amp=resolve_amp(t.amp, device), device=device)
    return {"run": str(folder.path), "epoch": int(ckpt["epoch"]) if ckpt else 0,
            "criterion": config.prune.criterion, "density": mask.density, **ev.values,
            "samples": ev.samples, "seconds": time.perf_counter() - start}


__all__ = [
    "METRICS", "METRIC_KEYS", "Observer", "Plan", "default_out", "evaluate_run", "execute",
    "final_mask", "load_mask", "plan", "read_config", "read_config_dict", "resolve_device",
    "run_label", "train_config_for_mask",
]
