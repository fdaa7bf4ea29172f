"""Dataset specs, the dataset registry, ``create_dataset`` and ``targets_of``.

Each dataset family lives in its own module and registers a ``DatasetSpec`` with a builder
``builder(root, *, train, download, augment, **options) -> Dataset``. Items are
``(float32 tensor of spec.input_size, int label)`` (ImageNet's training crops are 224 px too).
Augmentations draw from torch's global RNG, which a DataLoader seeds in each worker from its own
``generator``: pass ``seeding.generator(seed, "data")`` there for a reproducible data order and
augmentation (with ``num_workers=0``, run the epoch under ``torch.random.fork_rng`` seeded from it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from pxprune.registry import Registry

Builder = Callable[..., Dataset]

_STANDARD_ARGS = ("root", "train", "download", "augment")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message is one line saying where to put them."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a criterion need to know about a dataset's items.

    ``mean`` / ``std`` are the per-channel normalisation of the *output* tensors (one value per
    channel of ``input_size``; Fashion-MNIST repeats its grey statistics three times).
    """

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "classification"
    """The task its items serve (``pxprune.tasks``)."""

    def __post_init__(self) -> None:
        if (
            len(self.input_size) != 3
            or len(self.mean) != self.input_size[0]
            or len(self.std) != self.input_size[0]
        ):
            raise ValueError(f"inconsistent DatasetSpec {self!r}")


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its spec and the function that builds it from files."""

    spec: DatasetSpec
    builder: Builder


DATASETS: Registry[DatasetEntry] = Registry(
    "dataset", pattern=r"(?!.*--)[A-Za-z0-9][A-Za-z0-9_.-]*",
    rule="letters, digits, _, . and - (not --: it separates names from options in folder names)")


def register_dataset(spec: DatasetSpec) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``spec.name``."""

    def decorator(builder: Builder) -> Builder:
        DATASETS.add(spec.name, DatasetEntry(spec, builder))
        return builder

    return decorator


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def get_spec(name: str) -> DatasetSpec:
    """The ``DatasetSpec`` of a registered dataset (``ValueError`` listing the names on a miss)."""
    return DATASETS.get(name).spec


def dataset_options(name: str) -> list[str]:
    """Extra keyword options of a dataset's builder (e.g. fashion-mnist's ``system_dir``)."""
    params = inspect.signature(DATASETS.get(name).builder).parameters
    return sorted(
        p.name
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _STANDARD_ARGS
    )


def create_dataset(
    name: str,
    *,
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    augment: bool | None = None,
    **options: object,
) -> Dataset:
    """Build a registered dataset from files under ``root``.

    ``augment=None`` means the dataset's training augmentation for ``train=True`` and none for the
    test split; ``augment=False`` gives the eval transform (used for the pruning split).
    ``download=True`` fetches what torchvision can fetch when the files are missing.
    ``options`` are dataset-specific (see ``dataset_options``); an unknown one is a ``TypeError``.
    Missing files raise ``DatasetNotFoundError``.
    """
    entry = DATASETS.get(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    augment = train if augment is None else bool(augment)
    root = Path(root).expanduser()
    return entry.builder(
        root, train=bool(train), download=bool(download), augment=augment, **options
    )


class AdaptedInputs(Dataset):
    """A dataset whose inputs are resized and re-normalised: items of ``dataset`` (normalised with
    ``spec.mean``/``spec.std``) come out resized to ``size`` x ``size`` (bilinear, antialiased) and
    normalised with ``mean``/``std`` instead. Used for pre-trained backbones, whose weights expect
    their own statistics and size (docs/design/PRETRAINED.md); labels pass through untouched.
    """

    def __init__(self, dataset: Dataset, spec: DatasetSpec, *, mean: tuple[float, ...],
                 std: tuple[float, ...], size: int | None = None) -> None:
        channels = spec.input_size[0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"{spec.name} has {channels} input channels but the weights' statistics have "
                f"{len(mean)}; set data.normalize: dataset")
        self.dataset = dataset
        self.size = size
        # (x * s_d + m_d - m_w) / s_w, one affine map per channel (it commutes with the resize)
        old_mean, old_std = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.scale = (old_std / torch.tensor(std)).view(-1, 1, 1)
        self.shift = ((old_mean - torch.tensor(mean)) / torch.tensor(std)).view(-1, 1, 1)

    @property
    def targets(self) -> torch.Tensor:
        return targets_of(self.dataset)

    @property
    def source(self) -> str | None:
        return data_source(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        x, *rest = self.dataset[index]
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x.unsqueeze(0), size=(self.size, self.size), mode="bilinear",
                align_corners=False, antialias=True).squeeze(0)
        return (x * self.scale + self.shift, *rest)


def data_source(dataset: Dataset) -> str | None:
    """Where a dataset's files were found (a folder), looking through Subset and ConcatDataset."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, ConcatDataset) and dataset.datasets:
        return data_source(dataset.datasets[0])
    where = getattr(dataset, "source", None) or getattr(dataset, "root", None)
    return str(Path(where).resolve()) if where is not None else None


def targets_of(dataset: Dataset) -> torch.Tensor:
    """The labels of a labelled dataset as a 1-D ``LongTensor``.

    Fast paths: a ``targets`` attribute, ``Subset`` (recursively) and ``ConcatDataset``; otherwise
    every item is read and its second element taken as the label.
    """
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([targets_of(d) for d in dataset.datasets])
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        labels = torch.as_tensor(targets).long().reshape(-1)
        if len(labels) == len(dataset):  # type: ignore[arg-type]
            return labels
    labels_list: list[int] = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ValueError(
                f"{type(dataset).__name__} yields unlabelled items; pass a dataset of "
                "(input, label) pairs or give it a `targets` attribute"
            )
        labels_list.append(int(item[1]))
    return torch.tensor(labels_list, dtype=torch.long)
