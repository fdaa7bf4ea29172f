"""The pruning data as criteria see it: re-iterable, validated, moved to a device, micro-batched.

What ``batches`` may be (the forms people have):

- a list or tuple of batches, each an input tensor or an ``(inputs, targets)`` pair;
- one input tensor, or one ``(inputs, targets)`` pair of tensors (a single batch);
- a map-style ``Dataset`` or ``Subset`` of items ``x`` or ``(x, y)``: taken in index order and
  batched ``micro_batch`` at a time (``pxprune.data.pruning_split(dataset)`` gives one);
- a ``DataLoader`` (or any re-iterable object yielding batches) without shuffling.

Every round must see the same data: a one-shot iterator (a generator) is refused, and so is a
``DataLoader`` that shuffles; a random augmentation is caught by comparing the first batch of two
iterations. Inputs are moved to the model's device; their dtype must be the model's (no silent
cast: uint8 images, float64 inputs to a float32 model are an error naming the fix), except integer
(int64, int32) inputs to a model with an ``nn.Embedding`` or ``nn.EmbeddingBag``: token ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler


def _is_pair(obj: Any) -> bool:
    """``(inputs, targets)`` of one batch (not two batches of inputs)."""
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        return False
    x, y = obj
    if not (isinstance(x, torch.Tensor) and x.dim() >= 2):
        return False
    if isinstance(y, torch.Tensor):
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            return False
        return not y.is_floating_point() or y.shape != x.shape
    return False


def _split(item: object, criterion: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, Mapping):
        x = next((item[k] for k in ("image", "images", "input", "inputs", "x", "pixel_values")
                  if k in item), None)
        y = next((item[k] for k in ("label", "labels", "target", "targets", "y") if k in item), None)
        if isinstance(x, torch.Tensor):
            return x, (y if y is None or isinstance(y, torch.Tensor) else torch.as_tensor(y))
    if isinstance(item, tuple | list) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
        y = item[1] if len(item) > 1 else None
        if y is not None and not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        return item[0], y
    raise TypeError(
        f"{criterion or 'the criterion'}: each batch must be an input tensor or an (inputs, targets) "
        f"pair, got {type(item).__name__}"
    )


class Batches:
    """The user's ``batches`` (see the module docstring). Iterating yields ``(x, y)`` micro-batches
    of at most ``micro_batch`` samples on ``device`` (``y`` is None without targets); larger user
    batches are split, smaller ones are not merged."""

    def __init__(
        self,
        batches: Any,
        *,
        device: torch.device,
        micro_batch: int = 64,
        need_targets: bool = False,
        criterion: str = "",
        dtype: torch.dtype | None = None,
        indices: bool = False,
    ) -> None:
        """``dtype``: the model's (inputs must have it); ``indices``: the model takes integer
        inputs too (it has an embedding)."""
        if batches is None:
            raise TypeError(
                f"criterion {criterion!r} needs data: pass batches, e.g. a list of (inputs, targets)"
            )
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
        self.criterion = criterion
        self._dataset: Dataset | None = None
        if isinstance(batches, torch.Tensor) or _is_pair(batches) or isinstance(batches, Mapping):
            self._source: Any = [batches]
        elif isinstance(batches, DataLoader):
            if isinstance(batches.sampler, RandomSampler):
                raise ValueError(
                    f"{self._who()}: the DataLoader shuffles, but every round must see the same "
                    "data: pass DataLoader(dataset, batch_size=..., shuffle=False)"
                )
            self._source = batches
        elif isinstance(batches, Dataset) and not isinstance(batches, IterableDataset):
            if not hasattr(batches, "__len__"):
                raise TypeError(f"{self._who()}: a map-style Dataset needs __len__")
            self._dataset = batches
            self._source = None
        elif isinstance(batches, Iterable):
            if iter(batches) is batches:  # a generator or an iterator: one pass only
                raise TypeError(
                    f"{self._who()}: batches can only be read once (a generator or iterator), but "
                    "every round reads them again: pass a list (e.g. list(batches)), a Dataset or "
                    "a DataLoader"
                )
            self._source = batches
        else:
            raise TypeError(
                "batches must be a list of (inputs, targets) pairs or of input tensors, a tensor, "
                f"a Dataset or a DataLoader; got {type(batches).__name__}"
            )
        self.device = device
        self.dtype = dtype
        self.indices = indices
        self.micro_batch = micro_batch
        self.need_targets = need_targets
        self.num_samples: int | None = None
        self.sample_shape: tuple[int, ...] | None = None
        self.digest: str | None = None

    def _who(self) -> str:
        return f"criterion {self.criterion!r}" if self.criterion else "batches"

    # ------------------------------------------------------------------ sources
    def _raw(self) -> Iterator[object]:
        """The user's batches as they come (a Dataset is batched here, in index order)."""
        if self._dataset is None:
            yield from self._source
            return
        n = len(self._dataset)
        for start in range(0, n, self.micro_batch):
            items = [self._dataset[i] for i in range(start, min(n, start + self.micro_batch))]
            xs, ys = zip(*(_split(it, self.criterion) for it in items), strict=True)
            x = torch.stack([torch.as_tensor(v) for v in xs])
            y = None if any(v is None for v in ys) else torch.stack([torch.as_tensor(v) for v in ys])
            yield (x, y) if y is not None else x

    def _check(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                f"inputs must be batched (N, ...) with N >= 1, got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if self.need_targets and y is None:
            raise TypeError(
                f"criterion {self.criterion!r} needs targets: pass batches of (inputs, targets)"
            )
        if self.dtype is not None and x.dtype != self.dtype and not self._ids(x):
            if not x.is_floating_point() and self.indices:
                fix = "pass token ids for its embedding as x.long() (images as x.float() / 255)"
            elif not x.is_floating_point():
                fix = "convert them as the model expects, e.g. x.float() / 255 and normalise"
            else:
                fix = f"pass x.to({self.dtype}) (or convert the model)"
            raise TypeError(
                f"{self._who()}: the inputs are {str(x.dtype).replace('torch.', '')} but the model "
                f"is {str(self.dtype).replace('torch.', '')}: {fix}"
            )

    def _ids(self, x: torch.Tensor) -> bool:
        """Token ids (int64 or int32, what ``nn.Embedding`` takes) for a model with an embedding;
        uint8 stays an image."""
        return self.indices and x.dtype in (torch.int64, torch.int32)

    def _first_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        for item in self._raw():
            return _split(item, self.criterion)
        raise ValueError("batches yielded no data: pass a non-empty list of (inputs, targets)")

    def check_deterministic(self) -> None:
        """The first batch twice: a random augmentation or a changing sampler is an error."""
        if self._dataset is None and isinstance(self._source, list | tuple):
            return  # tensors in a list do not change
        a = self._first_batch()
        b = self._first_batch()
        same = a[0].shape == b[0].shape and torch.equal(a[0], b[0])
        if same and a[1] is not None and b[1] is not None:
            same = torch.equal(a[1], b[1])
        if not same:
            raise ValueError(
                f"{self._who()}: two passes over the batches gave different first batches (a random "
                "augmentation or a shuffling sampler?), but every round must see the same data: "
                "use the evaluation transform and no shuffling, or pass a fixed list of tensors"
            )

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        count = 0
        first = self.digest is None
        h = hashlib.sha256() if first else None
        for item in self._raw():
            x, y = _split(item, self.criterion)
            self._check(x, y)
            if self.sample_shape is None:
                self.sample_shape = tuple(x.shape[1:])
            if h is not None:
                h.update(_bytes(x))
                if y is not None:
                    h.update(_bytes(y))
            for start in range(0, x.shape[0], self.micro_batch):
                xs = x[start : start + self.micro_batch].to(self.device, non_blocking=True)
                ys = None if y is None else y[start : start + self.micro_batch].to(self.device)
                count += xs.shape[0]
                yield xs, ys
        if count == 0:
            raise ValueError("batches yielded no data: pass a non-empty list of (inputs, targets)")
        if self.num_samples is None:
            self.num_samples = count
            if h is not None:
                self.digest = h.hexdigest()
        elif count != self.num_samples:
            raise ValueError(
                "batches must yield the same data every round: pass a list, or a DataLoader "
                "without shuffling or a sampler that changes"
            )

    def first_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample, reading the first batch if needed."""
        if self.sample_shape is None:
            x, y = self._first_batch()
            self._check(x, y)
            self.sample_shape = tuple(x.shape[1:])
        return self.sample_shape

    def takes_ids(self) -> bool:
        """Whether the inputs are integer token ids (reading the first batch)."""
        return self._ids(self._first_batch()[0])


def _bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (numpy has no bfloat16)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
