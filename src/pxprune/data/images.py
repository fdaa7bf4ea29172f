"""Shared pieces of the image-file datasets (Tiny-ImageNet, ImageNet): decoding and a file list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file with PIL as RGB (some Tiny-ImageNet JPEGs are greyscale)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def image_files(directory: Path) -> list[Path]:
    """The image files directly inside ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFiles(Dataset):
    """A list of (image path, label) decoded lazily; ``targets`` holds the labels."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        *,
        transform: Callable[[Image.Image], torch.Tensor],
        classes: Sequence[str] = (),
    ) -> None:
        self.samples = list(samples)
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.transform = transform
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label
