"""The pruning split (N examples per class, paper [I7]) and the fixed training subset.

Seeds (docs/design/CONTRACTS.md section 4): the pruning split draws from the ``split`` stream of ``seed``;
the training subset draws from the *first child* of that stream,
``SeedSequence(seed).spawn(6)[1].spawn(1)[0]``, so the two never reuse the same random numbers.
Callers draw the training subset with seed 0 for every run seed, then the pruning split from it.
Both depend only on the labels and the length, so a subset drawn from an augmented dataset has
the same indices as one drawn from its eval-transform twin (build the pruning split from that).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pxprune.data.base import targets_of
from pxprune.seeding import STREAMS, generator, stream_seed


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def pruning_split(dataset: Dataset, per_class: int = 10, seed: int = 0) -> Subset:
    """``per_class`` examples of every class, drawn without replacement with the ``split`` stream.

    Classes are ``0 .. max label``; each needs at least ``per_class`` examples. The Subset's indices
    (positions in ``dataset``, which may itself be a Subset) are sorted.
    """
    per_class = _check_count("per_class", per_class)
    labels = targets_of(dataset)
    if labels.numel() == 0:
        raise ValueError("cannot draw a pruning split from an empty dataset")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative, found {int(labels.min())}")
    counts = torch.bincount(labels)
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        shown = ", ".join(f"{c} ({int(counts[c])} examples)" for c in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise ValueError(
            f"pruning split needs {per_class} examples per class but class(es) {shown}{more} have "
            "fewer; lower data.per_class or use more training data"
        )
    g = generator(seed, "split")
    by_class = torch.argsort(labels, stable=True)
    ends = torch.cumsum(counts, 0).tolist()
    chosen = []
    start = 0
    for end in ends:
        members = by_class[start:end]
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
        start = end
    indices = torch.cat(chosen).sort().values.tolist()
    return Subset(dataset, indices)


def _subset_seed(seed: int) -> int:
    stream_seed(seed, "split")  # validates seed
    child = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))[STREAMS.index("split")]
    state = child.spawn(1)[0].generate_state(2, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def train_subset(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """A fixed random subset of ``n`` examples (sorted indices); its seed: see the module note."""
    n = _check_count("train_subset", n)
    total = len(dataset)  # type: ignore[arg-type]
    if n > total:
        raise ValueError(
            f"train_subset {n} is larger than the dataset ({total} examples); lower "
            "data.train_subset or set it to null"
        )
    g = torch.Generator().manual_seed(_subset_seed(seed))
    indices = torch.randperm(total, generator=g)[:n].sort().values.tolist()
    return Subset(dataset, indices)


def split_hash(indices: Sequence[int] | torch.Tensor | Subset) -> str:
    """SHA-256 hex digest of an index list, written as compact JSON (``[3,17,42]``)."""
    if isinstance(indices, Subset):
        indices = indices.indices
    text = json.dumps([int(i) for i in indices], separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()
