"""Tiny-ImageNet (200 classes, 64x64): the official zip unpacked at ``<root>/tiny-imagenet-200/``.

Layout: ``wnids.txt``; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (tab separated: file name, wnid, bounding box). ``train=False`` is the
labelled val split (the official test split has no labels). Class indices follow the sorted wnids,
as ImageFolder on ``train/`` would give. Train: RandomResizedCrop(64, scale (0.1, 1), ratio
(0.8, 1.25)) + horizontal flip; test: no resize. Both are normalised (docs/design/PAPER.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pxprune.data.base import DatasetNotFoundError, DatasetSpec, register_dataset
from pxprune.data.images import ImageFiles, image_files

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"

SPEC = DatasetSpec(
    name="tinyimagenet",
    num_classes=200,
    input_size=(3, 64, 64),
    mean=(0.480, 0.448, 0.397),
    std=(0.276, 0.269, 0.282),
)


def tinyimagenet_transform(spec: DatasetSpec, *, augment: bool) -> Callable[[Any], torch.Tensor]:
    """The paper's Tiny-ImageNet pipeline on a PIL image (augmentation draws from torch's RNG)."""
    from torchvision.transforms import v2  # lazy: torchvision takes seconds to import

    steps: list[Callable] = []
    if augment:
        steps += [
            v2.RandomResizedCrop(64, scale=(0.1, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"broken Tiny-ImageNet file {path}: {why}; unzip {FOLDER}.zip again")


def read_wnids(base: Path) -> list[str]:
    """The sorted class ids listed in ``wnids.txt``."""
    path = base / "wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise _corrupt(path, "empty or with repeated wnids")
    return sorted(wnids)


def _train_samples(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for label, wnid in enumerate(classes):
        folder = base / "train" / wnid / "images"
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            raise _corrupt(folder, "no images for this class")
        samples += [(path, label) for path in files]
    return samples


def _val_samples(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    index = {wnid: label for label, wnid in enumerate(classes)}
    annotations = base / "val" / "val_annotations.txt"
    samples: list[tuple[Path, int]] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise _corrupt(annotations, f"line {number} has no known wnid: {line[:80]!r}")
        samples.append((base / "val" / "images" / fields[0], index[fields[1]]))
    if not samples:
        raise _corrupt(annotations, "no annotations")
    return samples


@register_dataset(SPEC)
def build_tinyimagenet(root: Path, *, train: bool, download: bool, augment: bool) -> ImageFiles:
    """One split of Tiny-ImageNet, decoded lazily with PIL."""
    base = root / FOLDER
    needed = [base / "wnids.txt", base / ("train" if train else "val/val_annotations.txt")]
    if download and not all(p.exists() for p in needed):
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(URL, download_root=str(root))
        except Exception as exc:  # network errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetNotFoundError(
                f"Tiny-ImageNet download failed ({first}); unzip {URL} into {root}/"
            ) from exc
    if not all(p.exists() for p in needed):
        raise DatasetNotFoundError(
            f"Tiny-ImageNet not found: unzip {FOLDER}.zip ({URL}) into {root}/ so that "
            f"{base / 'wnids.txt'} exists, or set data.download=true"
        )
    classes = read_wnids(base)
    samples = _train_samples(base, classes) if train else _val_samples(base, classes)
    return ImageFiles(
        samples, transform=tinyimagenet_transform(SPEC, augment=augment), classes=classes
    )
