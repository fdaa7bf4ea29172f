"""Training a run's masked network epoch by epoch into its folder, and its final metrics.

Every epoch writes history.csv (the task's columns), TensorBoard scalars and ``last.pt`` (the
complete state), so a run killed at any point resumes and ends with exactly the metrics of an
uninterrupted one. metrics.json holds the run's identity, the task's final metrics
(``Task.metric_columns``), timings, the per-layer summary and versions.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..masks import Mask
from ..platform import SINGLE, Platform
from ..report import Report
from ..train import Trainer, load_plain_state_dict
from .config import RunConfig
from .data import Data
from .errors import UserError
from .folder import LAST, RunFolder

WALL_TIMES = ("prune_seconds", "train_seconds")


def versions() -> dict[str, str]:
    import torchvision

    return {"pxprune": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def mask_digest(mask: Mask) -> str:
    h = hashlib.sha256()
    for name in sorted(mask):
        h.update(name.encode())
        h.update(mask[name].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_trainer(model: nn.Module, data: Data, config: RunConfig,
                 device: torch.device | str = "cpu", platform: Platform = SINGLE) -> Trainer:
    """The configured :class:`Trainer` of ``model`` on ``data``'s training and test sets."""
    t = config.train
    try:
        return Trainer(
            model, data.train, data.test, num_classes=data.spec.num_classes, epochs=t.epochs,
            batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
            nesterov=t.nesterov, schedule=t.schedule, milestones=t.milestones, amp=t.amp,
            seed=config.seed, device=device, task=data.task, platform=platform,
            sync_bn=t.sync_bn, backbone_lr=t.backbone_lr,
        )
    except ValueError as err:
        if platform.world_size > 1 or t.backbone_lr is not None:
            # the batch does not split, sync_bn off a GPU, no backbone for backbone_lr
            raise UserError(str(err)) from None
        raise


def metric_keys(task: Any) -> tuple[str, ...]:
    """metrics.json's keys, in order, for a task."""
    return ("criterion", "criterion_options", "sparsity", "density", "effective_density",
            "seed", "epochs", *task.metric_columns, "prune_seconds", "train_seconds",
            "empty_layers", "flops_fraction", "world_size", "versions")


def train_run(folder: RunFolder, config: RunConfig, data: Data, model: nn.Module, mask: Mask,
              report: Report, *, apply_mask: bool, checkpoint: Mapping[str, Any] | None,
              device: torch.device, observer: Any, begin_state: str | None,
              platform: Platform = SINGLE) -> dict[str, Any]:
    """Train ``model`` (holding the starting weights, or the checkpoint's) under ``mask`` from
    where the folder stopped; write metrics.json; return it. With several processes every one
    trains and only the primary writes (history, TensorBoard, last.pt, metrics.json)."""
    writes = platform.is_primary
    task = data.task
    columns = task.history_columns
    if checkpoint is not None:
        try:
            load_plain_state_dict(model, checkpoint["model"])
        except ValueError as err:
            raise UserError(f"{folder / LAST}: {err}") from None
    model.to(device)
    if apply_mask:
        mask.apply(model)
    trainer = make_trainer(model, data, config, device, platform)
    history: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    if checkpoint is not None:
        try:
            trainer.load_state_dict(dict(checkpoint), model_loaded=True)
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(f"{folder / LAST} does not fit this run ({err}); delete it") from None
        history = folder.read_history(columns, trainer.epoch)
        last = checkpoint.get("last")
    if begin_state is not None:
        observer.begin(begin_state, trainer.epoch)
    tb = (folder.tensorboard(purge_step=trainer.epoch + 1 if checkpoint is not None else None)
          if writes else None)
    digest = mask_digest(mask)
    try:
        for epoch in range(trainer.epoch + 1, config.train.epochs + 1):
            observer.epoch_start(epoch, config.train.epochs, trainer.steps_per_epoch)
            stats = trainer.train_epoch(on_step=observer.step)
            ev = trainer.evaluate()
            row = {"epoch": epoch, "lr": stats.lr, **stats.values,
                   **{c: ev.values.get(c) for c in task.eval_columns}, "seconds": stats.seconds}
            history.append(row)
            if writes:
                folder.write_history(columns, history)
            if tb is not None:
                for key in columns[1:]:
                    if row[key] is not None:
                        tb.add_scalar(key, row[key], epoch)
                tb.flush()
            last = {**{c: stats.values.get(c) for c in task.train_columns}, **ev.values}
            state = trainer.state_dict()
            state.update(last=last, identity=config.identity(), mask_digest=digest)
            if writes:
                folder.save_checkpoint(state)
            observer.epoch_end(row)
    finally:
        if tb is not None:
            tb.close()
    assert last is not None
    values = {
        "criterion": config.prune.criterion,
        "criterion_options": dict(config.prune.options),
        "sparsity": mask.sparsity,
        "density": mask.density,
        "effective_density": report.effective_density,
        "seed": config.seed,
        "epochs": config.train.epochs,
        **{c: last.get(c) for c in task.metric_columns},
        "prune_seconds": float(mask.metadata.get("prune_seconds") or 0.0),
        "train_seconds": float(sum(r["seconds"] for r in history)),
        "empty_layers": list(report.empty_layers),
        "flops_fraction": report.flops_fraction,
        "world_size": platform.world_size,
        "versions": versions(),
    }
    metrics = {k: values[k] for k in metric_keys(task)}
    if writes:
        folder.write_metrics(metrics)
    return metrics
