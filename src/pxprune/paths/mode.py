"""PathMode: one forward pass of the user's model, with the meaning of a path copy."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from . import handlers, table
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
    - ``weight_names`` maps ``id`` of the weight tensors the criterion substituted to their names;
      ``keep_bias`` names the weights whose bias a copy keeps.
    - ``weight_bounds`` (lazy scaling): ``id`` -> log2 of a bound on the largest absolute row sum
      of a weight (a {0, 1} mask of fan-in n: log2 n); others are measured when needed.
    - ``warn`` is called with the name of every operation outside the path theory.
    - ``substituted_only``: the weights in ``weight_names`` are the criterion's; any other weight
      of a linear map is a fixed linear map of the copy (``|W| ** coef_power``).
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
        substituted_only: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.tape = gates if isinstance(gates, GateTape) else GateTape(gates)
        self.weight_names = weight_names or {}
        self.keep_bias = keep_bias
        self.weight_bounds = dict(weight_bounds or {})
        self.scale = make_scaling(spec.scaling, lazy=spec.lazy)
        self.shared = WeakTensorKeyDictionary()
        self.warn = warn
        self.outside_name = table.outside_name
        self.safe_aliasing = safe_aliasing
        self.coefficients = coefficients if coefficients is not None else {}
        self.substituted_only = substituted_only
        self.derived = WeakTensorKeyDictionary()  # weights computed from substituted ones
        self.dependent = WeakTensorKeyDictionary()  # record pass: data-dependent tensors
        self.provenance = WeakTensorKeyDictionary()  # record pass: tensor -> tape index (coefficients)
        self.coefficient_out = WeakTensorKeyDictionary()  # copies: recorded coefficients' values
        self.cut: list[str] = []  # copies: products of two data-dependent tensors that were cut
        self._recording = spec.activation == "record"
        self._aliases = WeakTensorKeyDictionary()  # tensor -> version counter as last used by it

    @property
    def gates(self) -> list[Gate]:
        return self.tape.gates

    def track(self, x: torch.Tensor) -> torch.Tensor:
        """Register an input tensor (exponent 0) and return it, rescaled if the pass scales; a
        recording pass marks it as the data everything else depends on."""
        if self._recording:
            self.dependent[x] = True
            return x
        with torch._C.DisableTorchFunction():  # the bookkeeping itself is not part of the copy
            return self.scale.track(x)

    def depends(self, t: object) -> bool:
        """Record pass: whether ``t`` depends on the tracked input (a copy: whether it is tracked)."""
        if not isinstance(t, torch.Tensor):
            return False
        return t in self.dependent if self._recording else self.scale.tracked(t)

    def mark_coefficient(self, a: object, b: object) -> None:
        """Record pass: a product of two data-dependent tensors; a factor that is the output of a
        coefficient-capable operation (sigmoid, hard-sigmoid, tanh, softmax) becomes a coefficient."""
        if not (self.depends(a) and self.depends(b)):
            return
        ia = self.provenance.get(a) if isinstance(a, torch.Tensor) else None
        ib = self.provenance.get(b) if isinstance(b, torch.Tensor) else None
        for i in (ia, ib):
            if i is not None and self.tape.gates[i].kind in ("act", "coef"):
                self.tape.gates[i].kind = "coef"
                return

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._recording and exc[0] is None:
            self.tape.close()

    def exponent(self, x: torch.Tensor) -> int:
        """The exponent of a tracked tensor: ``x`` stands for ``x * 2**exponent(x)``."""
        return self.scale.exponent(x)

    def finish(self) -> None:
        """Check that a replay pass consumed every recorded gate."""
        if self.spec.activation in ("replay", "structure") or self.spec.maxpool == "gather":
            self.tape.finish()

    def _weight_among(self, args: tuple) -> str | None:
        for a in args:
            if isinstance(a, torch.Tensor) and not self.scale.tracked(a):
                name = self.weight_of(a)
                if name is not None:
                    return name
        return None

    def weight_of(self, w: torch.Tensor) -> str | None:
        """The name of a substituted weight, or of one computed from it."""
        name = self.weight_names.get(id(w))
        return name if name is not None else self.derived.get(w)

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

    def _follow(self, handler, args: tuple, kwargs: dict, out: object) -> None:  # noqa: ANN001
        """Record pass: outputs of an operation on data-dependent tensors depend on the data; a
        shape operation on a coefficient-capable output carries its tape index along."""
        nested = kwargs or any(isinstance(a, list | tuple) for a in args)
        flat = tree_flatten((args, kwargs))[0] if nested else args
        first = None
        for a in flat:
            if isinstance(a, torch.Tensor) and a in self.dependent:
                first = a
                break
        if first is None:
            return
        index = self.provenance.get(first) if handler is handlers.homogeneous else None
        outs, _ = tree_flatten(out)
        for o in outs:
            if isinstance(o, torch.Tensor):
                self.dependent[o] = True
                if index is not None:
                    self.provenance[o] = index

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        handler = table.TABLE.get(func)
        if handler is None:
            handler = table.resolve(func)
        kwargs = kwargs or {}
        if self._recording:
            out = handler(self, func, args, kwargs)
            if handler is not handlers.passthrough:
                self._follow(handler, args, kwargs, out)
            return out
        if len(self.coefficient_out) and handler is handlers.homogeneous:
            out = handler(self, func, args, kwargs)
            if args and isinstance(args[0], torch.Tensor) and args[0] in self.coefficient_out:
                if isinstance(out, torch.Tensor):
                    self.coefficient_out[out] = True
            return out
        if self.weight_names and args:
            name = self._weight_among(args)
            if name is not None:
                # a weight computed from a substituted one (a parametrization, torch.nn.utils.prune's
                # weight_orig * weight_mask, a chunk of a packed projection) is still that weight
                out = handler(self, func, args, kwargs)
                for o in (out if isinstance(out, tuple | list) else (out,)):
                    if isinstance(o, torch.Tensor) and not self.scale.tracked(o):
                        self.derived[o] = name
                return out
        if len(self._aliases):
            self._check_aliases(args)
            out = handler(self, func, args, kwargs or {})
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first in self._aliases:
                self._aliases[first] = first._version  # changed through itself: still valid
            return out
        return handler(self, func, args, kwargs or {})
