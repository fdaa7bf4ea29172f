"""Splitting each global batch over the processes of a data-parallel run.

``train.batch_size`` is the *global* batch: a recipe means the same at any number of processes.
:class:`RankBatches` draws the global order exactly as the single-process loader does (a
``RandomSampler`` on the run's data generator, batched by ``train.batch_size``) and hands each
process its contiguous slice of every global batch, so the samples of one optimisation step are
the same set at any world size, and a run resumed with another number of processes continues the
same data order. We write this instead of using ``torch.utils.data.DistributedSampler`` because
that sampler permutes per process and pads the epoch with repeated samples: its global batches
depend on the world size and its last batch counts some samples twice.

Each process's loss is weighted by ``world * local / global`` (:meth:`RankBatches.loss_weights`)
so that DistributedDataParallel's average of the per-process gradients is the gradient of the
global batch's mean loss, also when the last global batch does not split evenly. A last global
batch with fewer samples than processes is skipped (one process would get none).

Evaluation shards the test set by stride (:func:`shard`): every sample exactly once, no padding;
the task's metric sums are then added across processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler, Sampler, SequentialSampler, Subset


class RankBatches(Sampler[list[int]]):
    """This process's slice (``rank`` of ``world``) of each global batch of ``batch_size``
    indices of ``dataset``, in the order of a shuffling loader on ``generator`` (sequential
    without one)."""

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int, world: int,
                 generator: torch.Generator | None = None) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} processes")
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} does not split evenly over {world} "
                             "processes")
        base = (RandomSampler(dataset, generator=generator) if generator is not None
                else SequentialSampler(dataset))
        self.batches = BatchSampler(base, batch_size, drop_last=False)
        self.n = len(dataset)  # type: ignore[arg-type]
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def global_sizes(self) -> list[int]:
        """The size of every global batch that is used, in order."""
        full, last = divmod(self.n, self.batch_size)
        return [self.batch_size] * full + ([last] if last >= self.world else [])

    def loss_weights(self) -> list[float]:
        """Per step, the factor on this process's mean loss that makes the average over
        processes the global batch's mean."""
        weights = []
        for size in self.global_sizes():
            lo, hi = self._bounds(size)
            weights.append(self.world * (hi - lo) / size)
        return weights

    def _bounds(self, size: int) -> tuple[int, int]:
        return self.rank * size // self.world, (self.rank + 1) * size // self.world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) < self.world:
                continue
            lo, hi = self._bounds(len(batch))
            yield batch[lo:hi]

    def __len__(self) -> int:
        return len(self.global_sizes())


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every ``world``-th sample from ``rank``: the shards cover the dataset exactly once."""
    if world == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world))  # type: ignore[arg-type]


def contiguous_shard(items: Sequence[int], rank: int, world: int) -> list[int]:
    """This process's contiguous part of ``items`` (sizes differ by at most one)."""
    n = len(items)
    return list(items[rank * n // world:(rank + 1) * n // world])


def rank_seed(seed: int, rank: int) -> int:
    """A per-process seed for augmentation and dropout: ``seed`` itself on rank 0 (so one
    process draws what a single-process run draws), a distinct mix of both elsewhere."""
    if rank == 0:
        return seed
    g = torch.Generator().manual_seed(seed)
    for _ in range(rank):
        value = int(torch.randint(0, 2**62, (), generator=g))
    return value
