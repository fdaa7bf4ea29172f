"""ImageNet (ILSVRC-2012) in the ImageFolder layout ``<root>/imagenet/{train,val}/<wnid>/*``.

Train (docs/design/PAPER.md section 1, MoCo-v2 style): RandomResizedCrop(224, scale (0.2, 1)),
RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), horizontal flip; test: Resize 256 +
CenterCrop 224. ImageNet mean/std. The images cannot be downloaded automatically (licence).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pxprune.data.base import DatasetNotFoundError, DatasetSpec, register_dataset

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

SPEC = DatasetSpec(
    name="imagenet",
    num_classes=1000,
    input_size=(3, 224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


def imagenet_transform(spec: DatasetSpec, *, augment: bool) -> Callable[[Any], torch.Tensor]:
    """The paper's ImageNet pipeline on a PIL image (augmentation draws from torch's RNG)."""
    from torchvision.transforms import v2  # lazy: torchvision takes seconds to import

    steps: list[Callable]
    if augment:
        steps = [
            v2.RandomResizedCrop(224, scale=(0.2, 1.0), antialias=True),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


@register_dataset(SPEC)
def build_imagenet(root: Path, *, train: bool, download: bool, augment: bool) -> ImageFolder:
    """One split of ImageNet through torchvision's ImageFolder (``download`` cannot help here)."""
    del download
    base = root / "imagenet"
    folder = base / ("train" if train else "val")
    classes = _class_dirs(folder)
    if not classes:
        raise DatasetNotFoundError(
            f"ImageNet not found: put the ILSVRC-2012 images in {base}/train/<wnid>/ and "
            f"{base}/val/<wnid>/ (ImageFolder layout; they cannot be downloaded automatically)"
        )
    if not train:
        train_classes = _class_dirs(base / "train")
        if train_classes and train_classes != classes:
            raise ValueError(
                f"ImageNet class folders differ between {base}/train and {base}/val "
                f"({len(train_classes)} vs {len(classes)}); labels would not match: give both "
                "splits the same <wnid> folders"
            )
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(folder), transform=imagenet_transform(SPEC, augment=augment))
