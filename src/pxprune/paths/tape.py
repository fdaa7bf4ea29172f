"""The tape: what the real pass recorded, taken back by call index in the copies."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


class GateMismatchError(RuntimeError):
    """The replayed pass called different operations than the recorded one."""


@dataclasses.dataclass
class Gate:
    """One recorded entry, in call order.

    ``kind``: "relu", "leaky_relu", "hardtanh" (``data``: bool open/closed per element),
    "max_pool" (argmax indices), "act" (another elementwise activation: ``data`` is its derivative
    squared, ``slope`` log2 of its largest value), "coef" (a multiplicative coefficient: the real
    value in ``extra["out"]``), "norm" (``data``: 1/sigma**2, broadcastable), "attn" (``data``: the
    attention probabilities), "cond" (``data``: the real result of a comparison). ``shape`` is the
    shape of the input.
    """

    kind: str
    shape: tuple[int, ...] | None
    data: torch.Tensor
    slope: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# a coefficient-capable activation is recorded as "act" and becomes "coef" when it multiplies data
_SAME = {"act": {"act", "coef"}, "coef": {"coef", "act"}}


class GateTape:
    """Entries in call order. A recording pass appends; a replaying pass (the data copy, same
    batch) takes them back one by one, checking kind and shape; a structure pass (the weight copy,
    one sample) checks kind and the shape past the batch dimension. ``finish`` checks that every
    entry was used."""

    def __init__(self, gates: list[Gate] | None = None) -> None:
        self.gates: list[Gate] = gates if gates is not None else []
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.gates)

    def record(self, gate: Gate) -> int:
        self.gates.append(gate)
        return len(self.gates) - 1

    def _take(self, kind: str, shape: tuple[int, ...] | None, same_batch: bool) -> Gate:
        i = self.cursor
        self.cursor += 1
        if i >= len(self.gates):
            raise GateMismatchError(
                f"activation call #{i} ({kind} on {shape}) was not in the recorded pass, which had "
                f"{len(self.gates)}: the forward must call the same activations in the same order "
                "for every input (no data-dependent control flow)"
            )
        g = self.gates[i]
        kinds = _SAME.get(kind, {kind})
        bad_shape = False
        if shape is not None and g.shape is not None:
            bad_shape = g.shape != shape if same_batch else g.shape[1:] != shape[1:]
        if g.kind not in kinds or bad_shape:
            raise GateMismatchError(
                f"activation call #{i}: recorded {g.kind} on {g.shape}, replayed {kind} on {shape}: "
                "the forward must call the same activations in the same order for every input"
            )
        return g

    def next(self, kind: str, shape: tuple[int, ...] | None) -> Gate:
        return self._take(kind, shape, same_batch=True)

    def next_structure(self, kind: str, shape: tuple[int, ...] | None) -> Gate:
        return self._take(kind, shape, same_batch=False)

    def finish(self) -> None:
        if self.cursor != len(self.gates):
            raise GateMismatchError(
                f"the replayed pass made {self.cursor} activation calls, the recorded one "
                f"{len(self.gates)}: the forward must call the same activations for every input"
            )

    def close(self) -> None:
        """After recording: a coefficient-capable activation that multiplied no data is a gate."""
        from .handlers import _derivative_of

        for g in self.gates:
            if g.kind == "act" and "out" in g.extra:
                _derivative_of(g)

    def structure(self) -> GateTape:
        """A copy holding kinds and shapes only (and coefficients' shapes): for weight copies."""
        kept = []
        for g in self.gates:
            data = g.data if g.kind == "cond" else torch.empty(0)
            kept.append(Gate(g.kind, g.shape, data, g.slope, {}))
        return GateTape(kept)
