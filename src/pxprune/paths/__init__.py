"""Path copies of a network, run on the user's own forward code.

PX (and SynFlow, SynFlow-L2, the effective-mask report) evaluate *copies* of the network that share
its architecture but change what every operation means: activations become recorded gates or the
identity, BatchNorm becomes a per-channel linear map, biases vanish, pooling coefficients change.
Rather than rebuilding the model, the user's ``forward`` runs under a scoped
``torch.overrides.TorchFunctionMode`` (:class:`PathMode`) while the prunable weights are substituted
by the copy's tensors (``pxprune._scoped.substituted``). Nothing global survives the ``with`` block,
even on error.

The parts, each in its own module:

- ``spec``: :class:`CopySpec`, what each kind of operation means in one pass;
- ``scale``: the exponent bookkeeping that keeps all-ones copies finite, with its one invariant;
- ``tape``: the gates a real pass records and a data copy replays;
- ``table``: torch function -> handler; ``handlers``: one function per kind of operation;
- ``mode``: :class:`PathMode`, the dispatch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .mode import PathMode
from .scale import ScaledSum, ldexp
from .spec import REAL, CopySpec
from .tape import Gate, GateMismatchError, GateTape

__all__ = [
    "REAL",
    "CopySpec",
    "Gate",
    "GateMismatchError",
    "GateTape",
    "PathMode",
    "PathTheoryWarning",
    "ScaledSum",
    "WarnOnce",
    "ldexp",
    "output_tensor",
]


class PathTheoryWarning(UserWarning):
    """An operation outside the path theory (GELU, LayerNorm, attention, ...) was met."""


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a path copy scores: the output itself, ``out["out"]`` of a dict (torchvision
    segmentation models), or the first element of a tuple/list."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the model returned {type(out).__name__}; pxprune needs a tensor, a dict with 'out', "
        "or a tuple whose first element is the output tensor"
    )


class WarnOnce:
    """Collects operations outside the path theory and warns once per name."""

    def __init__(
        self, criterion: str, treatment: str = "the copies run it on the values they stand for"
    ) -> None:
        self.criterion = criterion
        self.treatment = treatment
        self.seen: set[str] = set()

    def __call__(self, what: str) -> None:
        if what not in self.seen:
            self.seen.add(what)
            warnings.warn(
                f"{self.criterion}: {what} is outside the path theory (bias-free ReLU networks); "
                f"{self.treatment} (docs/design/PX.md, 'Beyond the theory')",
                PathTheoryWarning,
                stacklevel=4,
            )
