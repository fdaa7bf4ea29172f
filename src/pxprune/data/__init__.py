"""Datasets (specs, builders, lookup), the pruning split and fake data for tests.

``create_dataset("fashion-mnist", root="data", train=True)`` gives items
``(float32 tensor of get_spec(name).input_size, int label)``; ``pruning_split`` draws the N
examples per class that data-dependent criteria score on (docs/design/CONTRACTS.md sections 4 and 7).
"""

from pxprune.data import cifar, fashion_mnist, imagenet, tinyimagenet, voc  # noqa: F401  (registers)
from pxprune.data.base import (
    DATASETS,
    DatasetNotFoundError,
    DatasetSpec,
    create_dataset,
    data_source,
    dataset_options,
    get_spec,
    list_datasets,
    register_dataset,
    targets_of,
)
from pxprune.data.fake import FAKE_WRITERS, FakeImageDataset
from pxprune.data.idx import read_idx, write_idx
from pxprune.data.split import pruning_split, split_hash, train_subset

__all__ = [
    "DATASETS",
    "FAKE_WRITERS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "FakeImageDataset",
    "create_dataset",
    "data_source",
    "dataset_options",
    "get_spec",
    "list_datasets",
    "pruning_split",
    "register_dataset",
    "read_idx",
    "split_hash",
    "targets_of",
    "train_subset",
    "write_idx",
]
