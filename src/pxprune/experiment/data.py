"""A run's data and model: the training set, the test set, the pruning split (the task's rule,
with the eval transform, from the training subset), and the model built from the seed's streams."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import DatasetNotFoundError, create_dataset, data_source, get_spec, train_subset
from ..data.base import AdaptedInputs, DatasetSpec
from ..models import create_model
from ..seeding import stream_seed
from ..tasks import Task, get_task
from .config import RunConfig
from .errors import UserError

MATERIALISE_BYTES = 1 << 30
"""Pruning splits up to this size are held in memory; larger ones are re-read every round."""


@dataclasses.dataclass
class Data:
    spec: DatasetSpec
    train: Dataset | None = None
    test: Dataset | None = None
    split: Subset | None = None
    split_indices: list[int] | None = None
    source: str | None = None
    """Where the files were found (recorded in config.yaml's provenance)."""
    normalization: str = "dataset"
    """Whose statistics normalise the inputs: ``dataset`` or a checkpoint format (``spec.mean``
    and ``spec.std`` hold them)."""

    @property
    def task(self) -> Task:
        return get_task(self.spec.task)


def config_task(config: RunConfig) -> Task:
    """The task of a configuration: its dataset's."""
    return get_task(get_spec(config.data.name).task)


def _base_indices(ds: Dataset, indices: list[int]) -> list[int]:
    """Positions in the underlying full dataset of indices into (nested) Subsets."""
    while isinstance(ds, Subset):
        indices = [int(ds.indices[i]) for i in indices]
        ds = ds.dataset
    return indices


def input_spec(config: RunConfig) -> tuple[DatasetSpec, str]:
    """The dataset's spec as the model sees it: normalised with the pre-trained weights'
    statistics (``data.normalize: weights`` with ``model.pretrained``) and resized to
    ``data.image_size``; and whose statistics those are (``dataset`` or a checkpoint format)."""
    d = config.data
    spec = get_spec(d.name)
    whose = "dataset"
    if d.normalize == "weights" and config.model.pretrained is not None:
        from ..models.pretrained import weights_statistics

        try:
            mean, std, whose = weights_statistics(config.model.pretrained)
        except ValueError as err:
            raise UserError(str(err)) from None
        if len(mean) != spec.input_size[0]:
            raise UserError(f"{d.name} has {spec.input_size[0]} input channels but the weights' "
                            f"statistics have {len(mean)}; set data.normalize: dataset")
        if (tuple(mean), tuple(std)) != (tuple(spec.mean), tuple(spec.std)):
            spec = dataclasses.replace(spec, mean=tuple(mean), std=tuple(std))
    side = d.image_size if d.image_size is not None else d.crop_size
    if side is not None:
        spec = dataclasses.replace(spec, input_size=(spec.input_size[0], side, side))
    return spec, whose


def dataset_kwargs(config: RunConfig) -> dict[str, Any]:
    """The dataset's own options of a configuration (``data.options``, ``data.crop_size``)."""
    d = config.data
    kwargs = dict(d.options)
    if d.crop_size is not None:
        kwargs["crop_size"] = d.crop_size
    return kwargs


def load_data(config: RunConfig, *, train: bool = True, test: bool = True,
              split: bool = True) -> Data:
    """The training set (with its augmentation), the test set and the pruning split (drawn with
    the eval transform from the training subset), normalised and sized as :func:`input_spec`
    says. Missing files are a :class:`UserError`."""
    d = config.data
    base = get_spec(d.name)
    spec, whose = input_spec(config)
    result = Data(spec=spec, normalization=whose)

    def make(is_train: bool, augment: bool | None) -> Dataset:
        try:
            ds = create_dataset(d.name, root=d.root, train=is_train, download=d.download,
                                augment=augment, **dataset_kwargs(config))
            if result.source is None:
                result.source = data_source(ds)
            if (spec.mean, spec.std) != (base.mean, base.std) or d.image_size is not None:
                # before the subset, so that indices still reach the files
                ds = AdaptedInputs(ds, base, mean=spec.mean, std=spec.std, size=d.image_size)
            if is_train and d.train_subset is not None:
                ds = train_subset(ds, d.train_subset, seed=0)
            return ds
        except DatasetNotFoundError as err:
            raise UserError(str(err)) from None
        except (ValueError, OSError, TypeError) as err:
            raise UserError(f"cannot read {d.name} under {d.root}: {err}") from None

    if train:
        result.train = make(True, None)
    if test:
        result.test = make(False, None)
    if split:
        twin = make(True, False)
        try:
            result.split = result.task.pruning_split(twin, d.per_class, config.seed)
        except ValueError as err:
            raise UserError(str(err)) from None
        result.split_indices = _base_indices(twin, list(result.split.indices))
    return result


def build_model(config: RunConfig, spec: DatasetSpec, *, stream: str = "init") -> nn.Module:
    """The configured model on the CPU, drawn from the ``init`` (theta_0) or ``reinit`` stream."""
    kwargs = dict(num_classes=spec.num_classes, pretrained=config.model.pretrained,
                  input_size=spec.input_size)
    try:
        if stream == "init":
            return create_model(config.model.name, seed=config.seed, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(config.seed, stream))
            return create_model(config.model.name, seed=None, **kwargs)
    except (ValueError, OSError) as err:
        raise UserError(str(err)) from None


def pruning_batches(split: Subset, spec: DatasetSpec, batch_size: int = 256) -> Any:
    """The split as a list of (inputs, targets) batches, or a non-shuffling DataLoader when it
    would not fit comfortably in memory."""
    loader = DataLoader(split, batch_size=batch_size, shuffle=False)
    if len(split) * math.prod(spec.input_size) * 4 > MATERIALISE_BYTES:
        return loader
    return [(x, y) for x, y in loader]
