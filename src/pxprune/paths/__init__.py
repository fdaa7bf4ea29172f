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


def output_tensor(out: Any, select: Any = None) -> torch.Tensor:
    """The tensor a criterion scores from a model's output.

    ``select``: a key (dict output), an index (tuple/list output), an attribute name, or a
    callable ``out -> tensor``. Without it: the output itself; of a dict, ``"out"`` (torchvision
    segmentation models), ``"logits"``, or its only tensor; an object's ``.logits``; the first
    element of a tuple/list."""
    if select is not None:
        if callable(select):
            picked = select(out)
        elif isinstance(out, dict):
            if select not in out:
                raise KeyError(f"output={select!r}: the model's output has keys {sorted(out)}")
            picked = out[select]
        elif isinstance(out, tuple | list) and isinstance(select, int):
            picked = out[select]
        elif isinstance(select, str) and hasattr(out, select):
            picked = getattr(out, select)
        else:
            raise TypeError(f"output={select!r} does not select from a {type(out).__name__}")
        if not isinstance(picked, torch.Tensor):
            raise TypeError(f"output={select!r} selects a {type(picked).__name__}, not a tensor")
        return picked
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("out", "logits"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the model returned {type(out).__name__}; pxprune needs a tensor, a dict with 'out' or "
        "'logits', or a tuple whose first element is the output tensor: say which with output="
        "(a key, an index or a function)"
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
