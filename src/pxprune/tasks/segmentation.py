"""Semantic segmentation: per-pixel cross-entropy ignoring 255, mIoU from one confusion matrix over
the whole evaluation set, pixel accuracy and per-class IoU; the pruning split of N images per class
present (a seeded greedy cover).

The confusion matrix is a :class:`~pxprune.tasks.base.Meter` state summed over batches and, in a
data-parallel run, over processes, so mIoU is computed once from the whole set, never averaged
over batches. Its reduction to IoU is the few lines below rather than torchmetrics'
``MulticlassJaccardIndex`` because the matrix must travel through the run's platform like every
other metric sum; the tests check both agree (classes absent from labels and predictions alike
are left out of the mean, as the reference code's ``nanmean`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pxprune.tasks.base import Meter, Task, register_task

IGNORE_INDEX = 255
"""Label of pixels that count nowhere (object borders, padding): Pascal VOC's convention."""


def _logits(output: Any, target: torch.Tensor) -> torch.Tensor:
    """The (N, K, H, W) logits at the labels' size (bilinear, as the reference code does)."""
    from pxprune.paths import output_tensor

    logits = output_tensor(output)
    if logits.dim() != 4:
        raise ValueError(f"a segmentation model must output (N, K, H, W) logits, got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        logits = nn.functional.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                           align_corners=False)
    return logits


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C[t, p]: pixels of class t predicted as p, over pixels whose label is in [0, K)."""
    valid = (target >= 0) & (target < num_classes)
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_from_confusion(confmat: torch.Tensor) -> tuple[list[float | None], float | None]:
    """Per-class IoU (None for a class absent from labels and predictions) and their mean."""
    c = confmat.double()
    inter = c.diagonal()
    union = c.sum(0) + c.sum(1) - inter
    ious = [float(i / u) if u > 0 else None for i, u in zip(inter, union, strict=True)]
    present = [v for v in ious if v is not None]
    return ious, (sum(present) / len(present) if present else None)


@register_task
class Segmentation(Task):
    """Semantic segmentation with (N, H, W) integer labels, 255 ignored."""

    name = "segmentation"
    primary = "test_miou"
    primary_label = "test mIoU"
    train_columns = ("train_loss", "train_pixel_acc")
    eval_columns = ("test_loss", "test_miou", "test_pixel_acc")
    metric_columns = ("test_miou", "test_pixel_acc", "test_loss", "train_loss", "test_iou")
    summary_columns = ("test_miou", "test_pixel_acc")

    def describe_epoch(self, row: Mapping[str, Any]) -> str:
        test = ("" if row.get("test_miou") is None else
                f" | test loss {row['test_loss']:.4f} mIoU {row['test_miou']:.4f} "
                f"pixel acc {row['test_pixel_acc']:.4f}")
        return f"train loss {row['train_loss']:.4f} pixel acc {row['train_pixel_acc']:.4f}{test}"

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        logits = _logits(output, target)
        if not bool((target != IGNORE_INDEX).any()):  # a crop of borders only: no gradient
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)

    def train_meter(self, device: torch.device | str) -> Meter:
        return Meter({"loss_sum": torch.float64, "correct": torch.int64,
                      "pixels": torch.int64, "batches": torch.int64}).to(device)

    def train_update(self, meter: Meter, output: Any, target: torch.Tensor,
                     loss: torch.Tensor) -> None:
        logits = _logits(output, target)
        valid = target != IGNORE_INDEX
        meter.add(loss_sum=loss.detach().double(), batches=1,
                  correct=((logits.argmax(1) == target) & valid).sum(), pixels=valid.sum())

    def train_compute(self, meter: Meter) -> dict[str, float]:
        if int(meter.batches) == 0:
            raise ValueError("the training loader yielded no batches")
        pixels = int(meter.pixels)
        return {"train_loss": float(meter.loss_sum) / int(meter.batches),
                "train_pixel_acc": int(meter.correct) / pixels if pixels else 0.0}

    def eval_meter(self, num_classes: int, device: torch.device | str) -> Meter:
        meter = Meter({"loss_sum": torch.float64, "pixels": torch.int64, "images": torch.int64})
        meter.add_state("confmat", default=torch.zeros(num_classes, num_classes,
                                                       dtype=torch.int64), dist_reduce_fx="sum")
        meter.num_classes = num_classes
        return meter.to(device)

    def eval_update(self, meter: Meter, output: Any, target: torch.Tensor) -> None:
        logits = _logits(output, target).float()
        target = target.long()
        meter.add(loss_sum=nn.functional.cross_entropy(
                      logits, target, ignore_index=IGNORE_INDEX, reduction="sum").double(),
                  pixels=(target != IGNORE_INDEX).sum(), images=len(target),
                  confmat=confusion_matrix(logits.argmax(1), target, meter.num_classes))

    def eval_compute(self, meter: Meter) -> dict[str, Any]:
        images = int(meter.images)
        if images == 0:
            raise ValueError("the evaluation loader yielded no batches")
        pixels = int(meter.pixels)
        ious, miou = iou_from_confusion(meter.confmat)
        return {
            "test_loss": float(meter.loss_sum) / pixels if pixels else None,
            "test_miou": miou,
            "test_pixel_acc": int(meter.confmat.trace()) / pixels if pixels else None,
            "test_iou": ious,
            "samples": images,
        }

    def pruning_split(self, dataset: Dataset, per_class: int, seed: int) -> Subset:
        return cover_split(dataset, per_class, seed)


def _presence(dataset: Dataset) -> list[set[int]]:
    """The foreground classes in each item's label: read from the label files when the dataset
    can (``classes_present``), else from the items."""
    from pxprune.data import voc

    try:
        return voc.classes_present(dataset)
    except (TypeError, AttributeError):
        out = []
        for i in range(len(dataset)):  # type: ignore[arg-type]
            label = torch.as_tensor(dataset[i][1])
            out.append({int(c) for c in label.unique() if 0 < int(c) != IGNORE_INDEX})
        return out


def cover_split(dataset: Dataset, per_class: int, seed: int) -> Subset:
    """N images per foreground class present: images in a seeded random order are taken while
    they show a class that has fewer than ``per_class`` images so far (a greedy cover; an image
    counts for every class it shows). Classes in fewer images than that give all they have.
    Segmentation datasets have no image labels, so this replaces classification's N per class."""
    if per_class < 1:
        raise ValueError(f"data.per_class must be at least 1, got {per_class}")
    presence = _presence(dataset)
    order = torch.randperm(len(presence), generator=torch.Generator().manual_seed(seed)).tolist()
    counts: dict[int, int] = {}
    chosen = []
    for i in order:
        if any(counts.get(c, 0) < per_class for c in presence[i]):
            chosen.append(i)
            for c in presence[i]:
                counts[c] = counts.get(c, 0) + 1
    if not chosen:
        raise ValueError("no training image shows a foreground class; check the labels")
    return Subset(dataset, sorted(chosen))
