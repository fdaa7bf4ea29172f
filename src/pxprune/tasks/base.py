"""The task contract: the loss, the metrics (their names, which is primary, the history and
metrics.json columns) and the pruning-split rule of one kind of problem.

The trainer, the run pipeline, sweeps, reports and plots read these instead of assuming a
classifier. Metrics accumulate in :class:`Meter`, a ``torchmetrics.Metric`` whose states are exact
sums (integer counts, float64 losses) reduced by ``sum`` across processes, so one evaluation over a
distributed test set gives the same numbers as one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torchmetrics
from torch.utils.data import Dataset, Subset

from pxprune.registry import Registry


class Meter(torchmetrics.Metric):
    """Sums of named quantities over batches; ``compute`` turns them into the task's metrics."""

    full_state_update = False

    def __init__(self, sums: Mapping[str, torch.dtype]) -> None:
        super().__init__()
        for name, dtype in sums.items():
            self.add_state(name, default=torch.zeros((), dtype=dtype), dist_reduce_fx="sum")

    def add(self, **values: torch.Tensor | float | int) -> None:
        for name, value in values.items():
            state = getattr(self, name)
            setattr(self, name, state + torch.as_tensor(value, dtype=state.dtype, device=state.device))

    def reduce_(self, reduce: Any) -> None:
        """Add every process's sums in place (``reduce(tensor, op="sum")``, e.g.
        ``Platform.all_reduce_``). We reduce through the run's platform rather than
        torchmetrics' own ``sync`` so that the library keeps one way to talk to other
        processes, the one it is given."""
        for name in self._defaults:
            reduce(getattr(self, name), op="sum")

    def update(self, *args: Any, **kwargs: Any) -> None:  # the task calls add()
        raise NotImplementedError("a Meter is updated by its task")

    def compute(self) -> dict[str, float]:  # the task reads the sums
        raise NotImplementedError("a Meter is computed by its task")


class Task:
    """One kind of problem. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    primary: ClassVar[str] = ""
    """The metrics.json key that reports, plots, sweeps and the demo show (higher is better)."""
    primary_label: ClassVar[str] = ""
    """How the primary metric is called in tables and on plot axes (shown in percent)."""
    train_columns: ClassVar[tuple[str, ...]] = ()
    """history.csv columns of a training epoch (between ``lr`` and the evaluation columns)."""
    eval_columns: ClassVar[tuple[str, ...]] = ()
    """history.csv columns of an evaluation."""
    metric_columns: ClassVar[tuple[str, ...]] = ()
    """metrics.json keys of the final evaluation and training epoch, in order."""
    summary_columns: ClassVar[tuple[str, ...]] = ()
    """The metrics a one-line run table shows (``pxprune run``, ``pxprune eval``)."""

    def describe_epoch(self, row: Mapping[str, Any]) -> str:
        """One progress line for an epoch's history row."""
        parts = [f"{c.replace('_', ' ')} {row[c]:.4f}" for c in (*self.train_columns,
                                                                 *self.eval_columns)
                 if isinstance(row.get(c), float | int)]
        return ", ".join(parts)

    @property
    def history_columns(self) -> tuple[str, ...]:
        return ("epoch", "lr", *self.train_columns, *self.eval_columns, "seconds")

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_meter(self, device: torch.device | str) -> Meter:
        raise NotImplementedError

    def train_update(self, meter: Meter, output: Any, target: torch.Tensor,
                     loss: torch.Tensor) -> None:
        raise NotImplementedError

    def train_compute(self, meter: Meter) -> dict[str, float]:
        raise NotImplementedError

    def eval_meter(self, num_classes: int, device: torch.device | str) -> Meter:
        raise NotImplementedError

    def eval_update(self, meter: Meter, output: Any, target: torch.Tensor) -> None:
        raise NotImplementedError

    def eval_compute(self, meter: Meter) -> dict[str, float | None]:
        """The evaluation's values under this task's ``metric_columns`` names, plus ``"samples"``
        (how many examples were evaluated; the trainer pops it)."""
        raise NotImplementedError

    def pruning_split(self, dataset: Dataset, per_class: int, seed: int) -> Subset:
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task", pattern=r"[a-z][a-z0-9_]*",
                                 rule="lower-case letters, digits and _")


def register_task(cls: type[Task]) -> type[Task]:
    TASKS.add(cls.name, cls())
    return cls


def get_task(name: str) -> Task:
    return TASKS.get(name)


def list_tasks() -> list[str]:
    return TASKS.names()
