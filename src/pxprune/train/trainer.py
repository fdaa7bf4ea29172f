"""``Trainer``: one network, its optimizer, schedule, scaler and data order, epoch by epoch,
with a complete, resumable state (docs/design/CONTRACTS.md section 5: ``last.pt``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..platform import SINGLE, Platform
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

    On a ``platform`` of several processes (``torchrun``) the model is wrapped in
    DistributedDataParallel (with ``sync_bn``, its BatchNorm layers synchronised first; CUDA
    only), ``batch_size`` is the global batch split over the processes, each process trains on its
    slice of every global batch and evaluates its shard of the test set, and the metrics are
    summed over all of them (``pxprune.train.distributed``). The state is the same on every
    process, and does not depend on the number of processes.
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
        platform: Platform = SINGLE,
        sync_bn: bool = False,
        backbone_lr: float | None = None,
    ) -> None:
        from .loop import _task

        self.platform = platform
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
        self.net: nn.Module = model
        self.loss_weights: list[float] | None = None
        self.reduce = None
        if platform.world_size == 1:
            self.train_loader = make_loader(
                train_set, batch_size=batch_size, shuffle=True, generator=self.generator,
                workers=workers, device=self.device,
            )
            self.test_loader = make_loader(
                test_set, batch_size=batch_size, shuffle=False, workers=workers,
                device=self.device,
            )
        else:
            self._data_parallel(train_set, test_set, batch_size, workers, sync_bn)
        if len(self.train_loader) == 0:
            raise ValueError("the training set is empty")
        self.optimizer = make_optimizer(
            model, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
            backbone_lr=backbone_lr,
        )
        self.scheduler = make_scheduler(
            self.optimizer, schedule=schedule, epochs=epochs,
            steps_per_epoch=len(self.train_loader), milestones=milestones,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.scaler)
        self.epoch = 0

    def _data_parallel(self, train_set: Dataset, test_set: Dataset, batch_size: int,
                       workers: int, sync_bn: bool) -> None:
        from torch.utils.data import DataLoader

        from .distributed import RankBatches, shard

        platform = self.platform
        world = platform.world_size
        if batch_size % world:
            raise ValueError(
                f"train.batch_size {batch_size} is the global batch and does not split evenly over "
                f"{world} processes; use a multiple of {world} "
                f"(--set train.batch_size={max(world, batch_size // world * world)})"
            )
        if sync_bn:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs GPUs (torch's SyncBatchNorm runs on CUDA); "
                                 "drop --set train.sync_bn=true on the CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        pin = self.device.type == "cuda"
        sampler = RankBatches(train_set, batch_size=batch_size, rank=platform.rank, world=world,
                              generator=self.generator)
        # the loader draws its workers' base seed from the generator before the sampler draws the
        # order, as the single-process loader does: the global order is the same
        self.train_loader = DataLoader(train_set, batch_sampler=sampler, generator=self.generator,
                                       num_workers=workers, pin_memory=pin)
        self.loss_weights = sampler.loss_weights()
        self.test_loader = DataLoader(shard(test_set, platform.rank, world),
                                      batch_size=batch_size // world, shuffle=False,
                                      num_workers=workers, pin_memory=pin)
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.reduce = platform.all_reduce_

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def train_epoch(
        self, *, on_step: Callable[[], None] | None = None, max_steps: int | None = None
    ) -> EpochStats:
        """Train one epoch (or its first ``max_steps`` batches) and count it."""
        from .distributed import rank_seed

        epoch_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        with seeded_rng(rank_seed(epoch_seed, self.platform.rank), self.device), \
                warnings.catch_warnings():
            # DDP's bucket views copy a 1x1 kernel's strides in channels_last, its gradient
            # arrives contiguous: both are dense (only size-1 dimensions differ), so the copy
            # costs what it would anyway and torch's warning says nothing to act on
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            stats = train_epoch(
                self.net, self.train_loader, self.optimizer, self.scheduler,
                scaler=self.scaler, amp=self.amp, device=self.device, task=self.task,
                on_step=on_step, max_steps=max_steps, memory_format=self.memory_format,
                loss_weights=self.loss_weights, reduce=self.reduce,
            )
        self.epoch += 1
        return stats

    def evaluate(self, *, max_steps: int | None = None) -> EvalStats:
        if self.platform.world_size > 1:
            # BatchNorm statistics moved on each process's own slice during the last step; every
            # process evaluates (and rank 0 saves) rank 0's, as DDP's next forward would use
            with torch.no_grad():
                for buffer in self.model.buffers():
                    self.platform.broadcast_(buffer)
        return evaluate(
            self.model, self.test_loader, num_classes=self.num_classes, amp=self.amp,
            device=self.device, task=self.task, max_steps=max_steps,
            memory_format=self.memory_format, reduce=self.reduce,
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
