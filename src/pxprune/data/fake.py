"""Fake data for tests: an in-memory dataset and tiny files in every real on-disk format.

``FAKE_WRITERS[name](root)`` writes both splits of a registered dataset under ``root`` so that
``create_dataset(name, root=root)`` loads them; labels cycle through the first classes so every
present class has the same number of examples. Nothing here touches the network.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pxprune.data.idx import write_idx


class FakeImageDataset(Dataset):
    """``length`` random normal images of ``input_size`` with labels ``i % num_classes``."""

    def __init__(
        self,
        length: int = 8,
        input_size: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        *,
        seed: int = 0,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn((length, *input_size), generator=g)
        self.targets = torch.arange(length) % num_classes
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], int(self.targets[index])


def _labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % num_classes).astype(np.uint8 if num_classes <= 256 else np.int64)


def write_fake_fashion_mnist(
    root: str | Path,
    *,
    n_train: int = 20,
    n_test: int = 10,
    compress: bool = False,
    seed: int = 0,
) -> Path:
    """IDX files in ``<root>/FashionMNIST/raw/`` (``.gz`` if ``compress``); returns that folder."""
    raw = Path(root) / "FashionMNIST" / "raw"
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", _labels(n, 10))
    return raw


def write_cifar_pickle(path: str | Path, entry: dict, *, protocol: int = 2) -> Path:
    """Pickle one CIFAR batch dict (``data``, ``labels`` or ``fine_labels``, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    return path


def _cifar_entry(n: int, num_classes: int, label_key: str, rng: np.random.Generator) -> dict:
    return {
        "batch_label": "fake batch",
        label_key: [int(x) for x in np.arange(n) % num_classes],
        "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_fake_cifar10(
    root: str | Path, *, per_batch: int = 4, n_test: int = 10, seed: int = 0
) -> Path:
    """``<root>/cifar-10-batches-py/`` with five training batches and a test batch."""
    base = Path(root) / "cifar-10-batches-py"
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        write_cifar_pickle(base / f"data_batch_{i}", _cifar_entry(per_batch, 10, "labels", rng))
    write_cifar_pickle(base / "test_batch", _cifar_entry(n_test, 10, "labels", rng))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    write_cifar_pickle(base / "batches.meta", {"label_names": names, "num_vis": 3072})
    return base


def write_fake_cifar100(
    root: str | Path, *, n_train: int = 20, n_test: int = 10, seed: int = 0
) -> Path:
    """``<root>/cifar-100-python/`` with ``train``, ``test`` and ``meta`` (fine, coarse labels)."""
    base = Path(root) / "cifar-100-python"
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = _cifar_entry(n, 100, "fine_labels", rng)
        entry["coarse_labels"] = [label // 5 for label in entry["fine_labels"]]
        write_cifar_pickle(base / name, entry)
    write_cifar_pickle(
        base / "meta",
        {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": list("abc")},
    )
    return base


def _write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_fake_tinyimagenet(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_class: int = 2,
    n_val: int = 6,
    seed: int = 0,
) -> Path:
    """``<root>/tiny-imagenet-200/`` in the official zip layout with 64x64 JPEGs."""
    base = Path(root) / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    wnids = [f"n{index:08d}" for index in range(num_classes)][::-1]  # unsorted, like the real file
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for wnid in wnids:
        boxes = []
        for k in range(per_class):
            name = f"{wnid}_{k}.JPEG"
            _write_jpeg(base / "train" / wnid / "images" / name, rng, (64, 64))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines = []
    for k in range(n_val):
        name = f"val_{k}.JPEG"
        _write_jpeg(base / "val" / "images" / name, rng, (64, 64))
        lines.append(f"{name}\t{sorted(wnids)[k % num_classes]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return base


def write_fake_imagenet(
    root: str | Path,
    *,
    num_classes: int = 2,
    per_class: int = 2,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
) -> Path:
    """``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` (ImageFolder layout), small JPEGs."""
    base = Path(root) / "imagenet"
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(num_classes):
            for k in range(per_class):
                _write_jpeg(base / split / f"n{c:08d}" / f"{split}_{c}_{k}.JPEG", rng, size)
    return base


def write_fake_voc2012(root: str | Path, *, train: int = 6, val: int = 3, size: int = 40,
                       seed: int = 0) -> Path:
    """``<root>/VOCdevkit/VOC2012/`` in the real layout: the synthetic VOC of
    ``pxprune.data.voc_synthetic`` made from a fake Fashion-MNIST (JPEGs, palette PNGs with 255
    borders, ImageSets); returns the VOC2012 folder."""
    from pxprune.data.voc_synthetic import write_synthetic_voc

    source = Path(root) / "_fmnist"
    write_fake_fashion_mnist(source, n_train=20, n_test=10, seed=seed)
    return write_synthetic_voc(Path(root), train=train, val=val, size=size, seed=seed,
                               fmnist_root=source)


FAKE_WRITERS: Mapping[str, Callable[[Path], Path]] = MappingProxyType(
    {
        "fashion-mnist": write_fake_fashion_mnist,
        "cifar10": write_fake_cifar10,
        "cifar100": write_fake_cifar100,
        "tinyimagenet": write_fake_tinyimagenet,
        "imagenet": write_fake_imagenet,
        "voc2012": write_fake_voc2012,
    }
)
