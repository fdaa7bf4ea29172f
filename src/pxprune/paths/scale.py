"""Exponent bookkeeping for the scaled path copies.

All-ones weights grow activations by about fan_in per layer (2e49 after ResNet-20, beyond float64
after ResNet-152), so a copy cannot run on raw values. Each tracked tensor carries an exact
power-of-two exponent instead.

**The invariant** (the only one): a tracked tensor ``t`` stands for the value ``t * 2**exponent(t)``,
and, when ``bound(t)`` is not None, ``|t| <= 2**bound(t)`` elementwise.

Every operation that makes a tensor out of tracked operands registers *its output's* exponent
(``pxprune.paths.handlers``), and an exponent is only ever read from the tensor it was registered for.
So reading ``exponent(x)`` and using it for ``y = f(x)`` is wrong whenever ``f`` is itself tracked:
inside a copy ``x.sum(0)`` is a growing operation that renormalises and gets an exponent of its own.
Either take ``exponent(y)``, or compute ``f`` outside the copy.

Renormalising multiplies a mantissa by ``2**-e`` (exact) so that its largest magnitude is in [0.5, 1).
*Eager* scaling does it after every growing operation (convolutions, linear maps, sums, matmuls),
which keeps gradients through the copy balanced; it costs one reduction and one multiply per growing
operation. *Lazy* scaling (the PX data copy: large batches, no gradient) propagates a static upper
bound instead (a convolution of mask weights grows by at most its fan-in) and renormalises only when
the bound leaves a safe range, or is unknown. Both compute the same numbers up to round-off; lazy
never overflows (the bound is an upper bound) and keeps every value that eager keeps.

An operation that is not homogeneous (GELU in SynFlow's copy, an unknown operation) is given the
values its operands stand for (``true_value``), in float64 where they leave the safe range of the
copy's dtype (``wide``), and its output is renormalised (``from_true``) like a growing operation's,
so that the linear maps after it see mantissas. Only values beyond float64 are refused, with a
:class:`PathOverflowError` that says what helps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary


class _Binarize(torch.autograd.Function):
    """Forward: 1 where x != 0; backward: 1 where the incoming gradient != 0 (reachability)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (x != 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (grad != 0).to(grad.dtype)


def ldexp(x: torch.Tensor, e: int, *, inplace: bool = False) -> torch.Tensor:
    """x * 2**e, exactly, for any int e (in steps the tensor's dtype can represent)."""
    while e != 0:
        step = max(-100, min(100, e))
        x = x.mul_(2.0**step) if inplace else x * 2.0**step
        inplace = True  # later steps act on the fresh tensor
        e -= step
    return x


# lazy scaling keeps |mantissa| within 2**+-safe: half the exponent range, so that one more
# operation (a conv of fan-in up to 2**60) cannot overflow
_SAFE = {torch.float64: 512, torch.float32: 64, torch.bfloat16: 64, torch.float16: 8}


def abs_max(t: torch.Tensor) -> float:
    """max |t| (0 for an empty tensor). ``aminmax`` is one pass and, on the CPU, several times
    faster than ``vector_norm(ord=inf)``; NaN and inf come through."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t.detach())
    return max(-float(lo), float(hi))


def log2_bound(value: float) -> float:
    """log2 of a non-negative magnitude (-inf for 0)."""
    return math.log2(value) if value > 0 else -math.inf


class Scaling:
    """No scaling: nothing is tracked, values are what they are."""

    active = False
    binary = False
    lazy = False

    def track(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def tracked(self, t: Any) -> bool:
        return False

    def exponent(self, t: torch.Tensor) -> int:
        return 0

    def bound(self, t: torch.Tensor) -> float | None:
        return None

    def register(self, t: torch.Tensor, e: int, bound: float | None = None) -> torch.Tensor:
        return t

    def grown(self, t: torch.Tensor, e: int, bound: float | None, *, inplace: bool) -> torch.Tensor:
        return t


class PowerOfTwo(Scaling):
    """Per-tensor power-of-two exponents (the invariant above), eager or lazy."""

    active = True

    def __init__(self, *, lazy: bool = False) -> None:
        self.lazy = lazy
        self._state = WeakTensorKeyDictionary()  # tensor -> (exponent, bound or None)

    def tracked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self._state

    def exponent(self, t: torch.Tensor) -> int:
        s = self._state.get(t)
        return 0 if s is None else s[0]

    def bound(self, t: torch.Tensor) -> float | None:
        s = self._state.get(t)
        return None if s is None else s[1]

    def register(self, t: torch.Tensor, e: int, bound: float | None = None) -> torch.Tensor:
        self._state[t] = (e, bound)
        return t

    def track(self, x: torch.Tensor) -> torch.Tensor:
        """Register an input (exponent 0) and return it renormalised."""
        return self.normalise(self.register(x, 0), inplace=False)

    def grown(self, t: torch.Tensor, e: int, bound: float | None, *, inplace: bool) -> torch.Tensor:
        """Register the output of a growing operation; renormalise it if the policy says so."""
        self._state[t] = (e, bound)
        if self.lazy and bound is not None:
            safe = _SAFE.get(t.dtype, 8)
            if -safe < bound < safe:
                return t
        return self.normalise(t, inplace=inplace)

    def normalise(self, t: torch.Tensor, *, inplace: bool) -> torch.Tensor:
        """Rescale so that the largest magnitude lies in [0.5, 1); the exponent absorbs the shift."""
        e_in = self.exponent(t)
        m = abs_max(t)
        if not math.isfinite(m):
            raise FloatingPointError(
                "a path copy produced a non-finite value; please report this model to pxprune"
            )
        e = math.frexp(m)[1] if m > 0 else 0
        if e != 0:
            t = ldexp(t, -e, inplace=inplace)
        self._state[t] = (e_in + e, 0.0 if m > 0 else -math.inf)
        return t

    def true_value(self, t: torch.Tensor, what: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The value ``t`` stands for, as a plain tensor (in ``dtype``, default ``t``'s own); a
        :class:`PathOverflowError` if it is not representable there."""
        e = self.exponent(t)
        src = t if dtype is None or dtype == t.dtype else t.to(dtype)
        out = ldexp(src, e) if e else src
        if e > 0 and not bool(torch.isfinite(out).all()):
            raise PathOverflowError(overflow_message(what, out.dtype, e + math.frexp(abs_max(t))[1]))
        return out

    def wide(self, t: torch.Tensor) -> bool:
        """Whether the value ``t`` stands for leaves the safe range of ``t``'s dtype (then an
        operation that needs true values takes them in float64)."""
        if t.dtype == torch.float64:
            return False
        m = abs_max(t)
        if m == 0 or not math.isfinite(m):
            return False
        magnitude = math.frexp(m)[1] + self.exponent(t)
        safe = _SAFE.get(t.dtype, 8)
        return not -safe < magnitude < safe

    def from_true(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Register the output of an operation on true values: renormalised (exact) like the
        output of a growing operation, then cast to ``dtype``, so that the linear maps after it
        see mantissas. Infinities (a ``-inf`` fill) stay as they are; the finite entries set e."""
        m = abs_max(t)
        if not math.isfinite(m):
            finite = t.detach()[torch.isfinite(t.detach())]
            m = abs_max(finite.abs()) if finite.numel() else 0.0
        e = math.frexp(m)[1] if m > 0 else 0
        if e:
            t = ldexp(t, -e)
        if t.dtype != dtype:
            t = t.to(dtype)
        self._state[t] = (e, 0.0 if m > 0 else -math.inf)
        return t


class PathOverflowError(FloatingPointError, ValueError):
    """An operation outside the path theory needs the true values of a path copy, and they are
    beyond float64 (a ``ValueError`` too: the command line reports it as a user error)."""


def overflow_message(what: str, dtype: torch.dtype, e: int) -> str:
    """Why a copy's true values cannot be taken, and what helps: no option does (the values are
    taken in float64 already, and every prunable weight is in the copy, excluded or not)."""
    return (
        f"{what} needs the true values of the path copy, and they overflow "
        f"{str(dtype).replace('torch.', '')} (about 2**{e}; they grow with the depth and width of "
        "the model, and no option of the criterion changes them): use a criterion that is not "
        "path-based for this model (snip, grasp, magnitude)"
    )


class Binary(Scaling):
    """Reachability: values and gradients clamped to {0, 1} after every growing operation."""

    active = True
    binary = True

    def __init__(self) -> None:
        self._state = WeakTensorKeyDictionary()

    def tracked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self._state

    def register(self, t: torch.Tensor, e: int = 0, bound: float | None = None) -> torch.Tensor:
        self._state[t] = True
        return t

    def track(self, x: torch.Tensor) -> torch.Tensor:
        return self.grown(x, 0, None, inplace=False)

    def grown(self, t: torch.Tensor, e: int, bound: float | None, *, inplace: bool) -> torch.Tensor:
        if inplace:
            with torch.no_grad():
                t.copy_((t != 0).to(t.dtype))
        else:
            t = _Binarize.apply(t)
        self._state[t] = True
        return t

    def true_value(self, t: torch.Tensor, what: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        return t


def make_scaling(kind: str, *, lazy: bool = False) -> Scaling:
    if kind == "exp":
        return PowerOfTwo(lazy=lazy)
    if kind == "binary":
        return Binary()
    return Scaling()


_NO_EXPONENT = -(2**62)


class ScaledSum:
    """An exact running sum of scaled tensors ``t * 2**e`` (e.g. PX's data term over chunks)."""

    def __init__(self) -> None:
        self.mantissa: torch.Tensor | None = None
        self.exponent = 0

    def add(self, t: torch.Tensor, e: int) -> None:
        m = abs_max(t)
        if not math.isfinite(m):
            raise FloatingPointError("a path copy produced a non-finite value")
        if m == 0:
            if self.mantissa is None:
                self.mantissa, self.exponent = torch.zeros_like(t), e
            return
        shift = math.frexp(m)[1]
        t, e = ldexp(t, -shift), e + shift  # |t| in [0.5, 1)
        if self.mantissa is None:
            self.mantissa, self.exponent = t, e
            return
        top = max(self.exponent, e)
        self.mantissa = ldexp(self.mantissa, self.exponent - top) + ldexp(t, e - top)
        self.exponent = top

    def reduce_(self, reduce: Any) -> None:
        """Sum across processes in place: ``reduce(tensor, op)`` reduces a tensor in place over
        every process. The largest exponent is agreed on first (a max-reduction), each mantissa is
        rescaled to it (exact powers of two), then the mantissas are summed: the same arithmetic
        as :meth:`add`, so no process's share overflows or is lost to another's exponent. Every
        process must hold at least one term."""
        if self.mantissa is None:
            raise ValueError("an empty ScaledSum cannot be reduced: every process needs data")
        empty = abs_max(self.mantissa) == 0  # its exponent means nothing: it must not win the max
        e = torch.tensor([_NO_EXPONENT if empty else self.exponent], dtype=torch.int64,
                         device=self.mantissa.device)
        reduce(e, op="max")
        top = int(e.item())
        if top == _NO_EXPONENT:  # zero everywhere
            return
        m = self.mantissa.clone() if empty else ldexp(self.mantissa, self.exponent - top)
        if m is self.mantissa:
            m = m.clone()
        reduce(m, op="sum")
        self.mantissa, self.exponent = m, top
