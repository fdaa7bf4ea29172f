"""The gate tape: what the real pass recorded, replayed by call index in the data copy."""

from __future__ import annotations

import dataclasses

import torch


class GateMismatchError(RuntimeError):
    """The replayed pass called different activations than the recorded one."""


@dataclasses.dataclass
class Gate:
    """One recorded gate: ``kind`` ("relu", "leaky_relu", "hardtanh", "max_pool"), the shape of the
    gated input, and ``data`` (bool open/closed per element, or the argmax indices of a max-pool)."""

    kind: str
    shape: tuple[int, ...]
    data: torch.Tensor
    slope: float = 0.0


class GateTape:
    """Gates in call order. A recording pass appends; a replaying pass takes them back one by one,
    checking kind and shape, and ``finish`` checks that every recorded gate was used."""

    def __init__(self, gates: list[Gate] | None = None) -> None:
        self.gates: list[Gate] = gates if gates is not None else []
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.gates)

    def record(self, gate: Gate) -> None:
        self.gates.append(gate)

    def next(self, kind: str, shape: tuple[int, ...]) -> Gate:
        i = self.cursor
        self.cursor += 1
        if i >= len(self.gates):
            raise GateMismatchError(
                f"activation call #{i} ({kind} on {shape}) was not in the recorded pass, which had "
                f"{len(self.gates)}: the forward must call the same activations in the same order "
                "for every input (no data-dependent control flow)"
            )
        g = self.gates[i]
        if g.kind != kind or g.shape != shape:
            raise GateMismatchError(
                f"activation call #{i}: recorded {g.kind} on {g.shape}, replayed {kind} on {shape}: "
                "the forward must call the same activations in the same order for every input"
            )
        return g

    def finish(self) -> None:
        if self.cursor != len(self.gates):
            raise GateMismatchError(
                f"the replayed pass made {self.cursor} activation calls, the recorded one "
                f"{len(self.gates)}: the forward must call the same activations for every input"
            )
