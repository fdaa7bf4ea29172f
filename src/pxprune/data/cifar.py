"""CIFAR-10 and CIFAR-100 from the python-pickle release (docs/design/PAPER.md section 1).

We read ``cifar-10-batches-py/`` and ``cifar-100-python/`` ourselves: torchvision's classes check
md5 sums, which tiny test files (and re-packed copies) fail. The unpickler only admits the numpy
array constructors the real files use, so a tampered file cannot run code.
Train: RandomCrop(32, padding=4) + horizontal flip; both splits normalised per channel.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pxprune.data.base import DatasetNotFoundError, DatasetSpec, register_dataset

CIFAR10_SPEC = DatasetSpec(
    name="cifar10",
    num_classes=10,
    input_size=(3, 32, 32),
    mean=(0.491, 0.482, 0.447),
    std=(0.247, 0.243, 0.262),
)
CIFAR100_SPEC = DatasetSpec(
    name="cifar100",
    num_classes=100,
    input_size=(3, 32, 32),
    mean=(0.507, 0.487, 0.441),
    std=(0.267, 0.256, 0.276),
)

# (module, name) pairs that numpy arrays pickled by any numpy / Python version reduce to
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"corrupt CIFAR file {path}: {why}; delete it and re-download the archive")


def read_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> (uint8 Nx3x32x32, int64 N)."""
    try:
        with open(path, "rb") as f:
            # latin1 as for Python-2 pickles: keys become str, array payloads stay intact
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError:
        raise
    except Exception as exc:  # garbage bytes make pickle fail in many ways
        raise _corrupt(path, f"not a CIFAR pickle ({exc})") from None
    if not isinstance(entry, dict):
        raise _corrupt(path, f"holds a {type(entry).__name__}, not a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise _corrupt(path, f"keys {sorted(map(str, entry))}, expected 'data' and {label_key!r}")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.ndim != 1 or len(labels) != len(data):
        raise _corrupt(path, f"{len(data)} images but labels of shape {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


class CIFAR(Dataset):
    """CIFAR images held as uint8 (N, 3, 32, 32); items are ``(float32 3x32x32, int label)``."""

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor],
        classes: Sequence[str] = (),
    ) -> None:
        self.data = data
        self.targets = targets
        self.transform = transform
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data[index]), int(self.targets[index])


def cifar_transform(spec: DatasetSpec, *, augment: bool) -> Callable[[Any], torch.Tensor]:
    """The paper's CIFAR pipeline on a uint8 CHW tensor (augmentation draws from torch's RNG)."""
    from torchvision.transforms import v2  # lazy: torchvision takes seconds to import

    steps: list[Callable] = [v2.ToImage()]
    if augment:
        steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def _meta_names(path: Path, key: str) -> list[str]:
    if not path.is_file():
        return []
    try:
        with open(path, "rb") as f:
            meta = _ArrayUnpickler(f, encoding="latin1").load()
        return [str(n) for n in meta[key]]
    except Exception:  # class names are cosmetic; a bad meta file must not block training
        return []


def _build(
    root: Path,
    *,
    spec: DatasetSpec,
    folder: str,
    files: list[str],
    label_key: str,
    meta: tuple[str, str],
    archive: str,
    augment: bool,
    download: Callable[[], object] | None,
) -> CIFAR:
    base = root / folder
    missing = [f for f in files if not (base / f).is_file()]
    if missing and download is not None:
        download()
        missing = [f for f in files if not (base / f).is_file()]
    if missing:
        title = "CIFAR-10" if spec.num_classes == 10 else "CIFAR-100"
        raise DatasetNotFoundError(
            f"{title} not found ({base}/ lacks {', '.join(missing)}): unpack {archive} so that "
            f"{base}/ exists, or set data.download=true"
        )
    parts = [read_cifar_batch(base / f, label_key) for f in files]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise _corrupt(base, f"labels outside 0..{spec.num_classes - 1}")
    return CIFAR(
        images,
        labels,
        transform=cifar_transform(spec, augment=augment),
        classes=_meta_names(base / meta[0], meta[1]),
    )


def _downloader(cls_name: str, root: Path, train: bool) -> Callable[[], object]:
    def fetch() -> object:
        import torchvision

        try:
            return getattr(torchvision.datasets, cls_name)(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetNotFoundError(
                f"{cls_name} download failed ({first}); put the unpacked archive in {root}/"
            ) from exc

    return fetch


@register_dataset(CIFAR10_SPEC)
def build_cifar10(root: Path, *, train: bool, download: bool, augment: bool) -> CIFAR:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/``."""
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _build(
        root,
        spec=CIFAR10_SPEC,
        folder="cifar-10-batches-py",
        files=files,
        label_key="labels",
        meta=("batches.meta", "label_names"),
        archive="cifar-10-python.tar.gz",
        augment=augment,
        download=_downloader("CIFAR10", root, train) if download else None,
    )


@register_dataset(CIFAR100_SPEC)
def build_cifar100(root: Path, *, train: bool, download: bool, augment: bool) -> CIFAR:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/``."""
    return _build(
        root,
        spec=CIFAR100_SPEC,
        folder="cifar-100-python",
        files=["train" if train else "test"],
        label_key="fine_labels",
        meta=("meta", "fine_label_names"),
        archive="cifar-100-python.tar.gz",
        augment=augment,
        download=_downloader("CIFAR100", root, train) if download else None,
    )
