"""``Trainer``: one network, its optimizer, schedule, scaler and data order, epoch by epoch,
with a complete, resumable state (docs/design/CONTRACTS.md section 5: ``last.pt``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..seeding import generator
from .checkpoint import global_rng_state, load_plain_state_dict, plain_state_dict
from .loop import (
    EpochStats,
    EvalStats,
    default_workers,
    evaluate,
    make_loader,
    make_optimizer,
    make_scheduler,
    resolve_amp,
    seeded_rng,
    train_epoch,
)


class Trainer:
    """Train ``model`` (already masked with ``mask.apply``, already on ``device``) with SGD.

    With ``channels_last`` (the default) a model with 4-D weights and its inputs use that memory
    layout (about 20% faster on CPUs with oneDNN, and what tensor cores want); the values
    computed are those of the same network. Data order and augmentation come from the ``data``
    stream of ``seed``: every epoch first draws
    its own seed from that generator (used for torch's global RNG inside ``fork_rng``), then the
    sampler draws the order from it. :meth:`state_dict` holds everything needed to continue
    bit-identically: model (plain names), optimizer, scheduler, scaler, epoch, RNG states.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset,
        *,
        num_classes: int,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool = False,
        schedule: str = "cosine",
        milestones: Sequence[int] = (),
        amp: str = "auto",
        seed: int = 0,
        device: torch.device | str = "cpu",
        workers: int | None = None,
        channels_last: bool = True,
        task: Any = None,
    ) -> None:
        from .loop import _task

        self.model = model
        self.task = _task(task)
        self.memory_format = None
        if channels_last and any(p.dim() == 4 for p in model.parameters()):
            self.memory_format = torch.channels_last
            model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.num_classes = num_classes
        self.epochs = epochs
        self.amp = resolve_amp(amp, self.device)
        self.generator = generator(seed, "data")
        workers = default_workers(self.device) if workers is None else workers
        self.train_loader = make_loader(
            train_set, batch_size=batch_size, shuffle=True, generator=self.generator,
            workers=workers, device=self.device,
        )
        self.test_loader = make_loader(
            test_set, batch_size=batch_size, shuffle=False, workers=workers, device=self.device
        )
        if len(self.train_loader) == 0:
            raise ValueError("the training set is empty")
        self.optimizer = make_optimizer(
            model, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
        self.scheduler = make_scheduler(
            self.optimizer, schedule=schedule, epochs=epochs,
            steps_per_epoch=len(self.train_loader), milestones=milestones,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.scaler)
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def train_epoch(
        self, *, on_step: Callable[[], None] | None = None, max_steps: int | None = None
    ) -> EpochStats:
        """Train one epoch (or its first ``max_steps`` batches) and count it."""
        epoch_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        with seeded_rng(epoch_seed, self.device):
            stats = train_epoch(
                self.model, self.train_loader, self.optimizer, self.scheduler,
                scaler=self.scaler, amp=self.amp, device=self.device, task=self.task,
                on_step=on_step, max_steps=max_steps, memory_format=self.memory_format,
            )
        self.epoch += 1
        return stats

    def evaluate(self, *, max_steps: int | None = None) -> EvalStats:
        return evaluate(
            self.model, self.test_loader, num_classes=self.num_classes, amp=self.amp,
            device=self.device, task=self.task, max_steps=max_steps,
            memory_format=self.memory_format,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"data": self.generator.get_state(), "global": global_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any], *, model_loaded: bool = False) -> None:
        """Continue from :meth:`state_dict`. The model must be masked exactly as when it was
        saved; pass ``model_loaded=True`` when its weights were loaded before masking.

        Only the data generator is restored: every epoch reseeds torch's global RNG from it inside
        ``fork_rng``, so the saved global states are a record, not an input."""
        if not model_loaded:
            load_plain_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["rng"]["data"])
        self.epoch = int(state["epoch"])
