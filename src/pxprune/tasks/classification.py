"""Classification: cross-entropy, top-1 (and top-5 with more than 10 classes) accuracy as
fractions, the pruning split of N examples per class (docs/design/CONTRACTS.md section 7)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pxprune.tasks.base import Meter, Task, register_task


def _logits(output: Any) -> torch.Tensor:
    from pxprune.paths import output_tensor

    return output_tensor(output)


@register_task
class Classification(Task):
    """Image classification with integer labels."""

    name = "classification"
    primary = "test_acc"
    primary_label = "test accuracy"
    train_columns = ("train_loss", "train_acc")
    eval_columns = ("test_loss", "test_acc")
    metric_columns = ("test_acc", "test_acc5", "test_loss", "train_loss")
    summary_columns = ("test_acc", "test_acc5")

    def describe_epoch(self, row: Mapping[str, Any]) -> str:
        test = ("" if row.get("test_acc") is None else
                f" | test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}")
        return f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}{test}"

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(_logits(output), target)

    def train_meter(self, device: torch.device | str) -> Meter:
        return Meter({"loss_sum": torch.float64, "correct": torch.int64, "seen": torch.int64}).to(device)

    def train_update(self, meter: Meter, output: Any, target: torch.Tensor,
                     loss: torch.Tensor) -> None:
        logits = _logits(output)
        meter.add(loss_sum=loss.detach().double() * len(target),
                  correct=(logits.argmax(1) == target).sum(), seen=len(target))

    def train_compute(self, meter: Meter) -> dict[str, float]:
        seen = int(meter.seen)
        if seen == 0:
            raise ValueError("the training loader yielded no batches")
        return {"train_loss": float(meter.loss_sum) / seen, "train_acc": int(meter.correct) / seen}

    def eval_meter(self, num_classes: int, device: torch.device | str) -> Meter:
        meter = Meter({"loss_sum": torch.float64, "top1": torch.int64, "top5": torch.int64,
                       "seen": torch.int64}).to(device)
        meter.num_classes = num_classes
        return meter

    def eval_update(self, meter: Meter, output: Any, target: torch.Tensor) -> None:
        logits = _logits(output).float()
        k = min(5, meter.num_classes)
        best = logits.topk(k, dim=1).indices
        meter.add(loss_sum=nn.functional.cross_entropy(logits, target, reduction="sum").double(),
                  top1=(best[:, 0] == target).sum(), top5=(best == target[:, None]).any(dim=1).sum(),
                  seen=len(target))

    def eval_compute(self, meter: Meter) -> dict[str, float | None]:
        seen = int(meter.seen)
        if seen == 0:
            raise ValueError("the evaluation loader yielded no batches")
        return {
            "test_loss": float(meter.loss_sum) / seen,
            "test_acc": int(meter.top1) / seen,
            "test_acc5": int(meter.top5) / seen if meter.num_classes > 10 else None,
            "samples": seen,
        }

    def pruning_split(self, dataset: Dataset, per_class: int, seed: int) -> Subset:
        from pxprune.data import pruning_split

        return pruning_split(dataset, per_class, seed=seed)
