"""PathMode: one forward pass of the user's model, with the meaning of a path copy."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from . import table
from .scale import log2_bound, make_scaling
from .spec import CopySpec
from .tape import Gate, GateTape


class AliasHazard(RuntimeError):
    """A tensor and an identity's output that aliases it were both used after one of them was
    changed in place: the pass must be rerun with ``safe_aliasing=True``."""


class PathMode(TorchFunctionMode):
    """Intercepts one forward pass and gives its operations the meaning of ``spec``.

    - ``tape`` (or ``gates``, a list) holds the gates: filled by a "record" pass, consumed by call
      index in a "replay" pass (``finish`` checks that all were used).
    - ``weight_names`` maps ``id`` of substituted prunable weight tensors to their names: the pass
      records their execution order (``order``) and output positions per sample (``positions``);
      ``keep_bias`` names the weights whose bias a copy keeps.
    - ``weight_bounds`` (lazy scaling): ``id`` -> log2 of a bound on the largest absolute row sum
      of a weight (a {0, 1} mask of fan-in n: log2 n); others are measured when needed.
    - ``warn`` is called with the name of every operation outside the path theory.
    - ``coefficients``: a dict that caches per-layer coefficients (BatchNorm's eval scale) across
      the passes of one scoring call; pass the same dict to every pass of that call.
    - ``safe_aliasing``: how an identity (BatchNorm in the PX data copy) hands back its input.
      False: a view of it, and any later use of one of the two after an in-place change through
      the other raises :class:`AliasHazard` (rerun the pass with True). True: the input itself,
      with every later in-place operation on it run out of place (slower: new allocations).

    Dispatch is one table lookup per call (``pxprune.paths.table``).
    """

    def __init__(
        self,
        spec: CopySpec,
        *,
        gates: list[Gate] | GateTape | None = None,
        weight_names: dict[int, str] | None = None,
        keep_bias: frozenset[str] = frozenset(),
        weight_bounds: Mapping[int, float] | None = None,
        warn: Callable[[str], None] | None = None,
        safe_aliasing: bool = False,
        coefficients: dict | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.tape = gates if isinstance(gates, GateTape) else GateTape(gates)
        self.weight_names = weight_names or {}
        self.keep_bias = keep_bias
        self.weight_bounds = dict(weight_bounds or {})
        self.order: list[str] = []
        self.positions: dict[str, int] = {}
        self.scale = make_scaling(spec.scaling, lazy=spec.lazy)
        self.shared = WeakTensorKeyDictionary()
        self.warn = warn
        self.outside_name = table.outside_name
        self.safe_aliasing = safe_aliasing
        self.coefficients = coefficients if coefficients is not None else {}
        self._aliases = WeakTensorKeyDictionary()  # tensor -> version counter as last used by it

    @property
    def gates(self) -> list[Gate]:
        return self.tape.gates

    def track(self, x: torch.Tensor) -> torch.Tensor:
        """Register an input tensor (exponent 0) and return it, rescaled if the pass scales."""
        with torch._C.DisableTorchFunction():  # the bookkeeping itself is not part of the copy
            return self.scale.track(x)

    def exponent(self, x: torch.Tensor) -> int:
        """The exponent of a tracked tensor: ``x`` stands for ``x * 2**exponent(x)``."""
        return self.scale.exponent(x)

    def finish(self) -> None:
        """Check that a replay pass consumed every recorded gate."""
        if self.spec.activation == "replay" or self.spec.maxpool == "gather":
            self.tape.finish()

    def weight_bound(self, w: torch.Tensor) -> float | None:
        """log2 of the largest absolute row sum of a weight (measured once per pass if unknown)."""
        key = id(w)
        if key not in self.weight_bounds:
            rows = w.detach().abs().reshape(w.shape[0], -1).sum(1)
            self.weight_bounds[key] = log2_bound(float(rows.max())) if rows.numel() else -math.inf
        return self.weight_bounds[key]

    def alias(self, x: torch.Tensor) -> torch.Tensor:
        """The output of an identity on ``x`` (see ``safe_aliasing``)."""
        if self.safe_aliasing or x.is_inference():  # inference tensors have no version counter
            self.shared[x] = True
            return x
        with torch._C.DisableTorchFunction():
            v = x.view_as(x)
        if self.scale.tracked(x):
            self.scale.register(v, self.scale.exponent(x), self.scale.bound(x))
        self._aliases[x] = x._version
        self._aliases[v] = v._version
        return v

    def _check_aliases(self, args: tuple) -> None:
        for a in args:
            if isinstance(a, torch.Tensor) and a in self._aliases and a._version != self._aliases[a]:
                raise AliasHazard("a tensor was used after an in-place change through its alias")

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        handler = table.TABLE.get(func)
        if handler is None:
            handler = table.resolve(func)
        if len(self._aliases):
            self._check_aliases(args)
            out = handler(self, func, args, kwargs or {})
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first in self._aliases:
                self._aliases[first] = first._version  # changed through itself: still valid
            return out
        return handler(self, func, args, kwargs or {})
