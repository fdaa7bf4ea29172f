"""Training and evaluation for any task (``pxprune.tasks``): SGD, step / cosine / poly schedules,
mixed precision. The task gives the loss and the metrics; nothing here assumes a classifier.

Masks are applied before the optimizer is built (``mask.apply(model)``, a parametrization
``weight * mask``): the gradient of a pruned weight is exactly 0 and the weight itself is 0, so
momentum and weight decay never move it. Data order and augmentation come from one
``torch.Generator`` (the run's ``data`` stream, docs/design/CONTRACTS.md section 4): the sampler
draws from it, and each epoch runs under ``torch.random.fork_rng`` seeded from it, so
augmentations (and dropout) are reproducible without touching the caller's global RNG state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

AMP_MODES = ("off", "fp16", "bf16", "auto")
SCHEDULES = ("step", "cosine", "poly")
POLY_POWER = 0.9


@dataclasses.dataclass(frozen=True)
class Amp:
    """Resolved mixed precision: the autocast dtype (None: full precision) and whether a
    GradScaler is used."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def resolve_amp(mode: str, device: torch.device | str) -> Amp:
    """``off|fp16|bf16|auto``; auto is fp16 with a GradScaler on CUDA and off elsewhere."""
    device = torch.device(device)
    if mode not in AMP_MODES:
        raise ValueError(f"unknown amp mode {mode!r}; choose one of: {', '.join(AMP_MODES)}")
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return Amp(None, False)
    if mode == "bf16":
        return Amp(torch.bfloat16, False)
    return Amp(torch.float16, True)


def _autocast(device: torch.device, amp: Amp):
    if amp.dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=amp.dtype)


BACKBONE = "backbone."
"""Parameters under this prefix take ``backbone_lr`` (a segmentation network's encoder)."""


def make_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, nesterov: bool,
    backbone_lr: float | None = None,
) -> torch.optim.SGD:
    """SGD over every trainable parameter (weight decay on all of them, as in open_lth). With
    ``backbone_lr``, parameters whose canonical name starts with ``backbone.`` form a second
    group at that rate (the first group, at ``lr``, is the one history.csv reports)."""
    from ..selection import canonical_name, unwrap

    named = [(canonical_name(n), p) for n, p in unwrap(model).named_parameters()
             if p.requires_grad]
    if backbone_lr is None:
        groups: list[dict] = [{"params": [p for _, p in named]}]
    else:
        backbone = [p for n, p in named if n.startswith(BACKBONE)]
        if not backbone:
            raise ValueError("train.backbone_lr is set but the model has no parameter under "
                             "'backbone.'; leave it null")
        groups = [{"params": [p for n, p in named if not n.startswith(BACKBONE)]},
                  {"params": backbone, "lr": backbone_lr}]
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule. ``step``: lr x ``gamma`` at the start of each milestone epoch;
    ``cosine``: ``0.5 (1 + cos(pi t / T))`` over all T steps (reaching 0 after the last);
    ``poly``: ``(1 - t / T) ** 0.9`` per step (the DeepLab schedule)."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError("a schedule needs at least one epoch of at least one step")
    if schedule == "step":
        bounds = [m * steps_per_epoch for m in milestones]

        def factor(step: int) -> float:
            return gamma ** sum(step >= b for b in bounds)
    elif schedule == "cosine":
        total = epochs * steps_per_epoch

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    elif schedule == "poly":
        total = epochs * steps_per_epoch

        def factor(step: int) -> float:
            return (1.0 - min(step, total) / total) ** POLY_POWER
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def default_workers(device: torch.device | str) -> int:
    """0 on the CPU (the loader would compete with the model for cores), up to 8 on a GPU."""
    if torch.device(device).type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    workers: int = 0,
    device: torch.device | str = "cpu",
) -> DataLoader:
    """A DataLoader; with ``shuffle`` the order (and workers' seeds) come from ``generator``."""
    if shuffle and generator is None:
        raise ValueError("a shuffled loader needs its generator (the run's data stream)")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )


@contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with torch's global CPU (and current CUDA) generator seeded from ``seed``;
    the caller's global state is restored afterwards."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """One training epoch: the task's training metrics (``values``, e.g. train_loss and
    train_acc, means over its samples in train mode), the lr at its first step, the number of
    steps and wall seconds."""

    values: dict[str, float]
    lr: float
    steps: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.values["train_loss"]

    @property
    def acc(self) -> float | None:
        return self.values.get("train_acc")


@dataclasses.dataclass(frozen=True)
class EvalStats:
    """One evaluation: the task's metrics (``values``; classification: test_loss, test_acc and,
    with more than 10 classes, test_acc5, as fractions) over ``samples`` samples."""

    values: dict[str, float | None]
    samples: int

    @property
    def loss(self) -> float:
        return self.values["test_loss"]  # type: ignore[return-value]

    @property
    def acc(self) -> float | None:
        return self.values.get("test_acc")

    @property
    def acc5(self) -> float | None:
        return self.values.get("test_acc5")


def _to(batch: Any, device: torch.device,
        memory_format: torch.memory_format | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    nb = device.type == "cuda"
    x = x.to(device, non_blocking=nb)
    if memory_format is not None and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x, torch.as_tensor(y).to(device, non_blocking=nb)


def _task(task: Any):  # noqa: ANN202
    if task is None or isinstance(task, str):
        from ..tasks import get_task

        return get_task(task or "classification")
    return task


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    scaler: torch.amp.GradScaler,
    amp: Amp,
    device: torch.device | str,
    task: Any = None,
    on_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
    memory_format: torch.memory_format | None = None,
    loss_weights: Sequence[float] | None = None,
    reduce: Callable[..., torch.Tensor] | None = None,
) -> EpochStats:
    """One pass over ``loader`` (or its first ``max_steps`` batches); the schedule steps
    per batch. Data-parallel (``model`` wrapped in DistributedDataParallel): ``loss_weights``
    scales each step's loss (``pxprune.train.distributed``) and ``reduce`` adds the metric sums
    of every process before they are computed."""
    device = torch.device(device)
    task = _task(task)
    model.train()
    start = time.perf_counter()
    lr = float(optimizer.param_groups[0]["lr"])
    meter = task.train_meter(device)
    steps = 0
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        x, y = _to(batch, device, memory_format)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            output = model(x)
            loss = task.loss(output, y)
        weighted = loss if loss_weights is None else loss * loss_weights[steps]
        scaler.scale(weighted).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        with torch.no_grad():
            task.train_update(meter, output, y, loss)
        steps += 1
        if on_step is not None:
            on_step()
    if steps == 0:
        raise ValueError("the training loader yielded no batches")
    if reduce is not None:
        meter.reduce_(reduce)
    return EpochStats(values=task.train_compute(meter), lr=lr, steps=steps,
                      seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    amp: Amp,
    device: torch.device | str,
    task: Any = None,
    max_steps: int | None = None,
    memory_format: torch.memory_format | None = None,
    reduce: Callable[..., torch.Tensor] | None = None,
) -> EvalStats:
    """The task's metrics over ``loader`` in eval mode (classification: mean loss, top-1 and,
    with more than 10 classes, top-5). ``reduce``: each process holds a shard of the test set,
    and the metric sums of all are added before they are computed."""
    device = torch.device(device)
    task = _task(task)
    was_training = model.training
    model.eval()
    try:
        meter = task.eval_meter(num_classes, device)
        for step, batch in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y = _to(batch, device, memory_format)
            with _autocast(device, amp):
                output = model(x)
            task.eval_update(meter, output, y)
    finally:
        model.train(was_training)
    if reduce is not None:
        meter.reduce_(reduce)
    values = task.eval_compute(meter)
    samples = int(values.pop("samples"))
    return EvalStats(values=values, samples=samples)
