"""Fashion-MNIST (the default dataset), read with our own IDX reader (docs/design/CONTRACTS.md section 7).

Lookup: (1) ``<root>/FashionMNIST/raw/`` (torchvision's layout, decompressed or ``.gz``),
(2) Debian's ``dataset-fashion-mnist`` files in ``DEBIAN_DIR``, (3) torchvision's download when
``download=True``. Images stay uint8 in memory; each item is normalised with mean 0.2860 and std
0.3530, padded by 2 px with the normalised zero and repeated to 3 channels: a 3x32x32 float32
tensor. No augmentation (the demo recipe uses none).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pxprune.data.base import DatasetNotFoundError, DatasetSpec, register_dataset
from pxprune.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the four ``.gz`` files."""

MEAN = 0.2860
STD = 0.3530
PAD = 2
SIDE = 28

SPEC = DatasetSpec(
    name="fashion-mnist",
    num_classes=10,
    input_size=(3, SIDE + 2 * PAD, SIDE + 2 * PAD),
    mean=(MEAN,) * 3,
    std=(STD,) * 3,
)

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _split_files(directory: Path, train: bool) -> tuple[Path, Path] | None:
    """The (images, labels) files of one split in ``directory``, raw preferred over ``.gz``."""
    prefix = "train" if train else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        candidates = [directory / stem, directory / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and cross-check an images/labels IDX pair: (uint8 Nx28x28, int64 N)."""
    images = read_idx(images_path, magic=IMAGES_MAGIC)
    labels = read_idx(labels_path, magic=LABELS_MAGIC)
    if tuple(images.shape[1:]) != (SIDE, SIDE):
        raise ValueError(
            f"{images_path}: images are {tuple(images.shape[1:])}, expected {SIDE}x{SIDE}; "
            "this is not a Fashion-MNIST file"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
            "restore the matching pair"
        )
    labels = labels.long()
    if len(labels) and int(labels.max()) >= SPEC.num_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST held as uint8; items are ``(3x32x32 float32 tensor, int label)``.

    ``data`` is the uint8 Nx28x28 tensor and ``targets`` the int64 labels. The transform is a
    lookup table plus a pad, vectorised over a batch in ``__getitems__``.
    """

    classes = CLASSES

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, *, source: Path | None = None):
        if data.dtype != torch.uint8 or data.dim() != 3 or len(data) != len(targets):
            raise ValueError("FashionMNIST needs uint8 images (N, 28, 28) and N labels")
        self.data = data
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.source = source
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        self._lut = ((levels - MEAN) / STD).to(torch.float32)

    def __len__(self) -> int:
        return len(self.data)

    def transform_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 28, 28) -> normalised, padded, 3-channel float32 (B, 3, 32, 32)."""
        b, h, w = images.shape
        out = self._lut[0].expand(b, h + 2 * PAD, w + 2 * PAD).clone()
        out[:, PAD : PAD + h, PAD : PAD + w] = self._lut[images.long()]
        return out.unsqueeze(1).expand(b, 3, h + 2 * PAD, w + 2 * PAD).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        return self.transform_batch(self.data[index].unsqueeze(0))[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        images = self.transform_batch(self.data[idx])
        return list(zip(images.unbind(0), self.targets[idx].tolist(), strict=True))


def _not_found(root: Path, system_dir: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Fashion-MNIST not found: put the IDX files in {root / 'FashionMNIST' / 'raw'}/, "
        f"or `apt-get install dataset-fashion-mnist` (files in {system_dir}/), "
        "or set data.download=true"
    )


@register_dataset(SPEC)
def build_fashion_mnist(
    root: Path,
    *,
    train: bool,
    download: bool,
    augment: bool,
    system_dir: str | Path = DEBIAN_DIR,
) -> FashionMNIST:
    """Find, read and wrap one split of Fashion-MNIST (``augment`` is ignored: none is used)."""
    del augment
    system_dir = Path(system_dir)
    raw_dir = root / "FashionMNIST" / "raw"
    files = _split_files(raw_dir, train) or _split_files(system_dir, train)
    if files is None and download:
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetNotFoundError(
                f"Fashion-MNIST download failed ({first}); put the IDX files in {raw_dir}/ "
                "or `apt-get install dataset-fashion-mnist`"
            ) from exc
        files = _split_files(raw_dir, train)
    if files is None:
        raise _not_found(root, system_dir)
    images, labels = load_idx_pair(*files)
    return FashionMNIST(images, labels, source=files[0].parent)
