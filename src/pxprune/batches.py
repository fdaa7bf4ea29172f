"""The pruning data as criteria see it: re-iterable, validated, moved to a device, micro-batched."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import torch


class Batches:
    """Wrap the user's ``batches`` (a list of ``(inputs, targets)`` or ``inputs``, or a DataLoader
    without shuffling/augmentation). Iterating yields ``(x, y)`` micro-batches of at most
    ``micro_batch`` samples on ``device`` (``y`` is None when no targets were given); larger user
    batches are split, smaller ones are not merged. The data must be identical every round."""

    def __init__(
        self,
        batches: Iterable,
        *,
        device: torch.device,
        micro_batch: int = 64,
        need_targets: bool = False,
        criterion: str = "",
    ) -> None:
        if batches is None:
            raise TypeError(
                f"criterion {criterion!r} needs data: pass batches, e.g. a list of (inputs, targets)"
            )
        if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
            raise TypeError(
                "batches must be an iterable of (inputs, targets) pairs or of input tensors "
                "(wrap a single tensor in a list: [x])"
            )
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
        self._source = batches
        self.device = device
        self.micro_batch = micro_batch
        self.need_targets = need_targets
        self.criterion = criterion
        self.num_samples: int | None = None
        self.sample_shape: tuple[int, ...] | None = None
        self.digest: str | None = None

    def _split(self, item: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif (
            isinstance(item, tuple | list) and len(item) >= 1 and isinstance(item[0], torch.Tensor)
        ):
            x = item[0]
            y = item[1] if len(item) > 1 else None
            if y is not None and not isinstance(y, torch.Tensor):
                y = torch.as_tensor(y)
        else:
            raise TypeError(
                f"each batch must be an input tensor or an (inputs, targets) pair, got {type(item).__name__}"
            )
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                f"inputs must be batched (N, ...) with N >= 1, got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if self.need_targets and y is None:
            raise TypeError(
                f"criterion {self.criterion!r} needs targets: pass batches of (inputs, targets)"
            )
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        count = 0
        first = self.digest is None
        h = hashlib.sha256() if first else None
        for item in self._source:
            x, y = self._split(item)
            if self.sample_shape is None:
                self.sample_shape = tuple(x.shape[1:])
            if h is not None:
                h.update(x.detach().cpu().contiguous().numpy().tobytes())
                if y is not None:
                    h.update(y.detach().cpu().contiguous().numpy().tobytes())
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
            for item in self._source:
                x, _ = self._split(item)
                self.sample_shape = tuple(x.shape[1:])
                break
            else:
                raise ValueError(
                    "batches yielded no data: pass a non-empty list of (inputs, targets)"
                )
        return self.sample_shape
