"""What each kind of torch operation means in a path copy: one function per kind.

Every handler has the signature ``handler(mode, func, args, kwargs)`` and is looked up by
``pxprune.paths.table``. A handler either runs the operation as it is (nothing tracked, or a pass
that leaves it alone), or computes the copy's meaning of it and registers the exponent (and
magnitude bound) of *its own output* with ``mode.scale`` (the invariant of ``pxprune.paths.scale``).

The passes (``CopySpec.activation``) and what they make of an operation on data-dependent tensors:

- ``record`` (the real network): runs it, and puts on the tape what the copies need of the real
  values: ReLU gates, max-pool argmaxes, the derivative of every other elementwise activation,
  the value of a multiplicative coefficient (a sigmoid / hard-sigmoid / softmax output that
  multiplies another data-dependent tensor), the per-sample statistics of a normalisation, the
  probabilities of an attention, the result of a comparison.
- ``replay`` (the PX data copy): the linearisation of the real network around that pass, with
  every data-dependent factor squared: ``x * g**2`` for a gate or activation derivative g, the
  coefficient squared, ``x / sigma**2`` for a normalisation, ``(P * P) @ v`` for an attention; a
  comparison gives the recorded result.
- ``structure`` (the PX weight copy, no sample of its own): the same operations with every
  data-dependent factor 1: gates and activations are the identity, coefficients are ones, a
  normalisation is its weight ``gamma`` (squared with the other fixed coefficients), an attention
  sums over every key it may attend to.
- ``keep`` (SynFlow, SynFlow-L2, plain copies): the real operations on the copy's values
  (normalisations and softmax computed from the mantissas, exactly; others from true values).
- ``identity`` (reachability, ``scaling="binary"``): every operation passes connectivity.

Fixed coefficients c (a Python number, a parameter that multiplies, average pooling, ``mean``,
``-`` and ``alpha=``, a BatchNorm's eval scale, a matrix that is not a substituted weight) contribute
``|c| ** coef_power`` (``CopySpec.coef_power``: 0 in the data copy, 1 in SynFlow, 2 in the weight
copy and SynFlow-L2; None: as they are). What is added without depending on the data (biases,
constants, positional embeddings, a class token) carries no path and is 0 when ``drop_bias``.
A product of two data-dependent tensors of which neither is a coefficient is cut: no path crosses
it (the output is 0 in the copy; ``mode.cut`` names the operation).

How the power-of-two scale ``2**e`` goes through an operation: homogeneous ones (shape ops,
``abs``, ``max``, dropout in eval, interpolation, ...) keep the exponent; additive ones align their
operands to the largest exponent; products add exponents; linear maps, sums and pooling grow;
anything not listed is not homogeneous and is given the true values of its operands (an error
where they would overflow), its output carrying exponent 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

from .scale import abs_max, ldexp, log2_bound
from .signatures import arguments
from .tape import Gate

_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__setitem__"}


def is_inplace(name: str) -> bool:
    return (name.endswith("_") and not name.startswith("__")) or name in _INPLACE_DUNDERS


def _is_flat(args: tuple, kwargs: dict) -> bool:
    return not kwargs and not any(isinstance(a, list | tuple | dict) for a in args)


def _floats(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    flat = args if _is_flat(args, kwargs) else tree_flatten((args, kwargs))[0]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _map(fn: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if _is_flat(args, kwargs):
        return tuple(fn(a) for a in args), kwargs
    return tree_map(fn, (args, kwargs))


def _first_tracked(mode, args: tuple, kwargs: dict) -> torch.Tensor | None:  # noqa: ANN001
    if args and isinstance(args[0], torch.Tensor):
        if mode.scale.tracked(args[0]):
            return args[0]
        if len(args) == 1 and not kwargs:
            return None
    for t in _floats(args, kwargs):
        if mode.scale.tracked(t):
            return t
    return None


def _mark(mode, out: Any, e: int, bound: float | None) -> Any:  # noqa: ANN001
    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            mode.scale.register(out, e, bound)
        return out

    def mark(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            mode.scale.register(t, e, bound)
        return t

    return tree_map(mark, out)


def _name(func) -> str:  # noqa: ANN001
    return getattr(func, "__name__", "")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _linearised(mode) -> bool:  # noqa: ANN001
    """A copy with fixed-coefficient semantics (PX's copies, SynFlow(s), reachability)."""
    return mode.spec.coef_power is not None


def _fixed(mode, c: Any) -> Any:  # noqa: ANN001
    """A fixed coefficient c as the copy sees it: ``|c| ** coef_power`` (0**0 is 0: no path)."""
    p = mode.spec.coef_power
    if mode.scale.binary or p == 0:
        if isinstance(c, torch.Tensor):
            return (c != 0).to(c.dtype if c.is_floating_point() else torch.float32)
        return 1.0 if c != 0 else 0.0
    if isinstance(c, torch.Tensor):
        return c.detach().abs() ** p
    return abs(float(c)) ** p


# ----------------------------------------------------------------------------- generic kinds
def passthrough(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    return func(*args, **kwargs)


def homogeneous(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Degree-1 homogeneous in one tracked operand: the output keeps its exponent and bound.
    With several tracked operands (``torch.max(a, b)``) the operands are aligned first."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    x = _first_tracked(mode, args, kwargs)
    if x is None:
        return func(*args, **kwargs)
    tracked = [t for t in _floats(args, kwargs) if mode.scale.tracked(t)]
    if len(tracked) > 1:
        return additive(mode, func, args, kwargs)
    if mode.scale.binary:
        return _mark(mode, func(*args, **kwargs), 0, None)
    if is_inplace(_name(func)) and x in mode.shared:
        return out_of_place(mode, func, args, kwargs)
    out = func(*args, **kwargs)
    return _mark(mode, out, mode.scale.exponent(x), mode.scale.bound(x))


def homogeneous_outside(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Homogeneous, but not what the path theory would do there (adaptive max-pool): warn."""
    if mode.warn is not None and mode.scale.active and _first_tracked(mode, args, kwargs) is not None:
        mode.warn(mode.outside_name(func))
    return homogeneous(mode, func, args, kwargs)


def true_values(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """An operation that is not homogeneous: it sees the values the copy stands for (in float64
    where they leave the range of the copy's dtype), and its output is renormalised (a proper
    exponent, as after a growing operation), so that a linear map after it cannot overflow."""
    if not mode.scale.active or _first_tracked(mode, args, kwargs) is None:
        return func(*args, **kwargs)
    name = _name(func)
    if mode.warn is not None and not mode.scale.binary:
        mode.warn(mode.outside_name(func))
    criterion = getattr(mode.warn, "criterion", None)
    what = f"{criterion}: {name or 'an operation'}" if criterion else (name or "an operation")
    scale = mode.scale
    if scale.binary:
        return _binary_true_values(mode, func, name, args, kwargs)
    tracked = [t for t in _floats(args, kwargs) if scale.tracked(t)]
    wide = torch.float64 if any(scale.wide(t) for t in tracked) else None
    dtype = tracked[0].dtype if tracked else None  # the mantissas go back to the copy's dtype

    def real(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if scale.tracked(t):
            return scale.true_value(t, what, dtype=wide if t.is_floating_point() else None)
        return t.to(wide) if wide is not None and t.is_floating_point() else t

    def renormalised(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return scale.from_true(t, dtype if wide is not None and dtype is not None else t.dtype)
        return t

    if is_inplace(name) and args and isinstance(args[0], torch.Tensor):
        x = args[0]
        if x in mode.shared:
            return out_of_place(mode, func, args, kwargs)
        base = getattr(torch.Tensor, name[3:-2] if name.startswith("__i") else name[:-1], None)
        if wide is not None and scale.tracked(x) and base is not None:
            # the true values do not fit x's dtype: compute out of place, put the mantissa in x
            rest, kw = tree_map(real, (args[1:], kwargs))
            y = scale.from_true(base(real(x), *rest, **kw), x.dtype)
            x.copy_(y)
            return scale.register(x, scale.exponent(y), scale.bound(y))
        if scale.tracked(x):  # in place: the tensor itself becomes its true value
            e = scale.exponent(x)
            real(x)  # the overflow check
            if e:
                ldexp(x, e, inplace=True)
            scale.register(x, 0, None)
        args = (x, *tree_map(real, args[1:]))
        kwargs = tree_map(real, kwargs)
        # x keeps its true value (exponent 0); what the operation returns is renormalised (a
        # rescale of x in place could change a value autograd saved)
        return tree_map(renormalised, func(*args, **kwargs))
    args, kwargs = _map(real, args, kwargs)
    return tree_map(renormalised, func(*args, **kwargs))


def _binary_true_values(mode, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
    """Reachability: the operation on the {0, 1} values themselves."""
    if is_inplace(name) and args and isinstance(args[0], torch.Tensor):
        x = args[0]
        if x in mode.shared:
            return out_of_place(mode, func, args, kwargs)
        if mode.scale.tracked(x):
            mode.scale.register(x, 0, None)
    return _mark(mode, func(*args, **kwargs), 0, None)


# value arguments of additive operations that may be Python numbers (scaled with the operands)
_VALUE_ARGS = {
    "where": ((1, "input"), (2, "other")),
    "__setitem__": ((2, "value"),),
    "pad": ((3, "value"),),
    "masked_fill": ((2, "value"),),
    "masked_fill_": ((2, "value"),),
    "cat": (), "concat": (), "concatenate": (), "stack": (), "hstack": (), "vstack": (),
    "dstack": (),
}
_DEFAULT_VALUE_ARGS = ((1, "other"),)
_SELECTING = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "where",
              "maximum", "minimum", "fmax", "fmin", "max", "min", "__setitem__", "pad",
              "masked_fill", "masked_fill_"}
_SUBTRACTING = {"sub", "sub_", "subtract", "__sub__", "__isub__", "rsub", "__rsub__"}


def additive(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Sums, concatenations, selections: align every floating operand to the largest exponent.
    In a linearised copy a difference is a sum (the coefficient -1 contributes ``1``), ``alpha``
    is a fixed coefficient, and what does not depend on the data is a bias (0 with ``drop_bias``)."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    tensors = _floats(args, kwargs)
    if not any(mode.scale.tracked(t) for t in tensors):
        return func(*args, **kwargs)
    name = _name(func)
    inplace = is_inplace(name)
    if inplace and tensors and tensors[0] in mode.shared:
        return out_of_place(mode, func, args, kwargs)
    scalar_slots = _VALUE_ARGS.get(name, _DEFAULT_VALUE_ARGS)
    if _linearised(mode):
        args, kwargs = _linear_combination(mode, name, args, kwargs, scalar_slots)
        tensors = _floats(args, kwargs)
    if mode.scale.binary:
        out = func(*args, **kwargs)
        return _mark(mode, out, 0, None)
    exps = {id(t): mode.scale.exponent(t) for t in tensors}
    target = max(exps.values())
    if inplace and exps[id(tensors[0])] != target:
        ldexp(tensors[0], exps[id(tensors[0])] - target, inplace=True)

    def align(t: Any) -> Any:
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            return t
        if (inplace and t is tensors[0]) or exps[id(t)] == target:
            return t
        return ldexp(t, exps[id(t)] - target)

    args, kwargs = _map(align, args, kwargs)
    if target != 0:
        args, kwargs = list(args), dict(kwargs)
        for pos, key in scalar_slots:
            if pos < len(args) and _is_number(args[pos]):
                args[pos] = args[pos] * 2.0**-target
            elif key in kwargs and _is_number(kwargs[key]):
                kwargs[key] = kwargs[key] * 2.0**-target
        args = tuple(args)
    bounds = []
    for t in tensors:
        b = mode.scale.bound(t) if mode.scale.tracked(t) else None
        bounds.append(None if b is None else b + exps[id(t)] - target)
    bound = None
    if bounds and all(b is not None for b in bounds):
        if name in _SELECTING:
            bound = max(bounds)
        else:  # add/sub: |a + alpha * b| <= |a| + |alpha| |b|
            alpha = abs(float(kwargs.get("alpha", 1)))
            bound = log2_bound(sum(2.0**b for b in bounds) * max(1.0, alpha))
    out = func(*args, **kwargs)
    return _mark(mode, out, target, bound)


def _linear_combination(mode, name: str, args: tuple, kwargs: dict, slots) -> tuple[tuple, dict]:  # noqa: ANN001
    """The operands of an additive operation as a linearised copy sees them."""
    drop = mode.spec.drop_bias

    def bias(t: Any) -> Any:
        if drop and isinstance(t, torch.Tensor) and t.is_floating_point() and not mode.scale.tracked(t):
            if mode.scale.binary and t.requires_grad:
                return t  # reachability: a branch computed from weights (a position bias) counts
            return torch.zeros_like(t)
        return t

    args, kwargs = _map(bias, args, kwargs)
    args, kwargs = list(args), dict(kwargs)
    if drop:
        for pos, key in slots:
            if pos < len(args) and _is_number(args[pos]):
                args[pos] = 0.0
            elif key in kwargs and _is_number(kwargs[key]):
                kwargs[key] = 0.0
    if "alpha" in kwargs:
        kwargs["alpha"] = _fixed(mode, kwargs["alpha"])
    if name in _SUBTRACTING:
        kwargs["alpha"] = -float(kwargs.get("alpha", 1.0))  # a - b (alpha) -> a + b |alpha|^p
    return tuple(args), kwargs


def out_of_place(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """An in-place operation on a tensor that is shared with the input of an identity (see
    ``batch_norm``): run the out-of-place version instead."""
    name = _name(func)
    base = name[3:-2] if name.startswith("__i") else name[:-1]  # "__iadd__", "add_" -> "add"
    op = getattr(torch.Tensor, base, None)
    if op is None:
        raise NotImplementedError(f"in-place {name} on a shared tensor in a path copy")
    return mode.__torch_function__(op, (), args, kwargs)


def _bound_of(mode, v: Any) -> float | None:  # noqa: ANN001
    if isinstance(v, torch.Tensor):
        return mode.scale.bound(v) if mode.scale.tracked(v) else None
    if _is_number(v):
        return log2_bound(abs(float(v)))
    return None


def _cut(mode, func, like: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """A product of two data-dependent tensors that is not a coefficient: no path crosses it.
    The zeros stay tracked, so that what the real pass recorded downstream (a softmax of
    attention scores, say) is still taken back in order."""
    mode.cut.append(_name(func) or repr(func))
    return _mark(mode, torch.zeros_like(like), 0, -math.inf)


def _union(mode, func, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Reachability of a product of two data-dependent tensors: connected through either factor
    (the other is rarely exactly 0, as a squeeze-excitation scale or attention scores are not)."""
    out = func(a, b) + func(a, torch.ones_like(b)) + func(torch.ones_like(a), b)
    return _mark(mode, _binarize(out), 0, None)


def _binary_operands(mode, func, args: tuple, kwargs: dict, *, record=None):  # noqa: ANN001, ANN202
    """The operands of an elementwise binary operation, ``(name, a, b, a tracked, b tracked)``,
    or ``(result,)`` when the operation is done here: the recording pass (``record(a, b)`` sees
    the operands), no scaled copy or no tracked operand (run as it is), an in-place target the
    copy shares with the model (run out of place)."""
    name = _name(func)
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if mode.spec.activation == "record":
        if record is not None:
            record(a, b)
        return (func(*args, **kwargs),)
    ta, tb = (mode.scale.tracked(a), mode.scale.tracked(b)) if mode.scale.active else (False, False)
    if not (ta or tb):
        return (func(*args, **kwargs),)
    if is_inplace(name) and a in mode.shared:
        return (out_of_place(mode, func, args, kwargs),)
    return name, a, b, ta, tb

def product(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Elementwise products: exponents add, bounds add. In a linearised copy a factor that does
    not depend on the data is a fixed coefficient (``|c| ** coef_power``), a recorded coefficient
    is used as it is, and a product of two data-dependent tensors is cut."""
    operands = _binary_operands(mode, func, args, kwargs, record=mode.mark_coefficient)
    if len(operands) == 1:
        return operands[0]
    name, a, b, ta, tb = operands
    if _linearised(mode) and not (ta and tb and mode.spec.activation == "keep"):
        if ta and tb:
            if mode.scale.binary:
                return _union(mode, func, a, b)
            return _cut(mode, func, func(*args, **kwargs))
        x, c = (a, b) if ta else (b, a)
        if not (isinstance(c, torch.Tensor) and c in mode.coefficient_out):
            c = _fixed(mode, c)
        if is_inplace(name):
            out = a.mul_(c)
        else:
            out = torch.mul(x, c)
        if mode.scale.binary:
            return _mark(mode, out, 0, None)
        bx, bc = mode.scale.bound(x), _bound_of(mode, c)
        if isinstance(c, torch.Tensor) and bc is None:
            bc = log2_bound(abs_max(c)) if mode.scale.lazy else None
        return _mark(mode, out, mode.scale.exponent(x), None if bx is None or bc is None else bx + bc)
    if mode.scale.binary:
        return _mark(mode, func(*args, **kwargs), 0, None)
    e = (mode.scale.exponent(a) if ta else 0) + (mode.scale.exponent(b) if tb else 0)
    bound = _bound_of(mode, a) if a is not None else None
    bb = _bound_of(mode, b)
    bound = None if bound is None or bb is None else bound + bb
    return _mark(mode, func(*args, **kwargs), e, bound)


def quotient(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Elementwise quotients: exponents subtract (``__rtruediv__`` is ``other / self``). In a
    linearised copy dividing by a constant is a fixed coefficient; dividing by data is not
    linear (a constant divided by data is an activation, anything else is cut)."""
    operands = _binary_operands(mode, func, args, kwargs)
    if len(operands) == 1:
        return operands[0]
    name, a, b, ta, tb = operands
    if kwargs.get("rounding_mode") is not None:  # floor/trunc division is not homogeneous
        return true_values(mode, func, args, kwargs)
    numerator_tracked = tb if name == "__rtruediv__" else ta
    denominator_tracked = ta if name == "__rtruediv__" else tb
    if _linearised(mode) and not (denominator_tracked and mode.spec.activation == "keep"):
        if denominator_tracked:
            if mode.scale.binary:
                return _union(mode, torch.mul, a, b) if ta and tb else _mark(
                    mode, func(*args, **kwargs), 0, None)
            return _cut(mode, func, func(*args, **kwargs))
        x = a if numerator_tracked and name != "__rtruediv__" else b
        c = b if x is a else a
        coef = _fixed(mode, 1.0 / c if _is_number(c) else 1.0 / c.detach())
        out = x.mul_(coef) if is_inplace(name) else torch.mul(x, coef)
        return _mark(mode, out, mode.scale.exponent(x), None)
    if mode.scale.binary:
        return _mark(mode, func(*args, **kwargs), 0, None)
    ea = mode.scale.exponent(a) if ta else 0
    eb = mode.scale.exponent(b) if tb else 0
    e = eb - ea if name == "__rtruediv__" else ea - eb
    return _mark(mode, func(*args, **kwargs), e, None)


def matmul(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Matrix products (and einsum): exponents of the operands add; the output grows. In a
    linearised copy a matrix that does not depend on the data is a fixed linear map
    (``|W| ** coef_power``), a recorded coefficient (attention probabilities) is used as it is,
    and a product of two data-dependent matrices is cut."""
    if mode.spec.activation == "record":
        ops = [t for t in _floats(args, kwargs)]
        if len(ops) == 2:
            mode.mark_coefficient(ops[0], ops[1])
        return func(*args, **kwargs)
    if not mode.scale.active:
        return func(*args, **kwargs)
    tensors = _floats(args, kwargs)
    tracked = [t for t in tensors if mode.scale.tracked(t)]
    if not tracked:
        return func(*args, **kwargs)
    if _linearised(mode):
        if len(tracked) > 1 and mode.scale.binary and len(tensors) == 2 and _name(func) != "einsum":
            return _union(mode, func, tensors[0], tensors[1])
        if len(tracked) > 1 and not mode.scale.binary and mode.spec.activation != "keep":
            return _cut(mode, func, func(*args, **kwargs))

        def fixed(t: Any) -> Any:
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and not mode.scale.tracked(t)
                    and t not in mode.coefficient_out):
                return _fixed(mode, t)
            return t

        args, kwargs = _map(fixed, args, kwargs)
    out = func(*args, **kwargs)
    if mode.scale.binary:
        return mode.scale.grown(out, 0, None, inplace=False)
    e = sum(mode.scale.exponent(t) for t in tracked)
    return mode.scale.grown(out, e, None, inplace=False)


def reduce_sum(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """``sum``/``cumsum``: the exponent is kept, the bound grows by the number of terms."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    x = _first_tracked(mode, args, kwargs)
    if x is None:
        return func(*args, **kwargs)
    out = func(*args, **kwargs)
    b = mode.scale.bound(x)
    if b is not None and isinstance(out, torch.Tensor):
        terms = x.numel() // max(1, out.numel()) if _name(func) != "cumsum" else max(x.shape or (1,))
        b = b + math.log2(max(1, terms))
    return mode.scale.grown(out, mode.scale.exponent(x), b, inplace=False)


# ----------------------------------------------------------------------------- weights



def linear_map(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """conv1d/2d/3d and linear: biases dropped (or scaled with the input).
    A weight the criterion did not substitute (say a packed attention projection) is a fixed
    linear map of a linearised copy: ``|W| ** coef_power``."""
    spec = mode.spec
    if not (mode.weight_names or mode.scale.active or spec.drop_bias):
        return func(*args, **kwargs)  # a real pass
    b = arguments(func, args, kwargs)
    x, w, bias = b.pop("input"), b.pop("weight"), b.pop("bias", None)
    wname = mode.weight_of(w)
    if spec.drop_bias and wname not in mode.keep_bias:
        bias = None
    tracked = mode.scale.tracked(x)
    if tracked and wname is None and mode.substituted_only and _linearised(mode):
        w = _fixed(mode, w)
    if bias is not None and tracked:
        if mode.scale.binary:
            bias = (bias != 0).to(bias.dtype)
        else:
            bias = ldexp(bias, -mode.scale.exponent(x))
    out = func(x, w, bias, **b)
    if not tracked:
        return out
    bound = None
    if mode.scale.lazy and bias is None:
        bx = mode.scale.bound(x)
        # a transposed convolution's weight is (in, out, k...): an output's fan-in is a column
        bw = mode.weight_bound(w.transpose(0, 1) if _name(func).startswith("conv_transpose") else w)
        if bx is not None and bw is not None:
            bound = bx + bw
    return mode.scale.grown(out, mode.scale.exponent(x), bound, inplace=False)


# ----------------------------------------------------------------------------- gates
def activation(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """ReLU, LeakyReLU, ReLU6/hardtanh in every call style: a gate (record / replay / identity)."""
    name = _name(func)
    b = arguments(func, args, kwargs)
    x = b["input"]
    inplace = bool(b.get("inplace", False)) or name.endswith("_")
    if "negative_slope" in b:
        kind, slope, lo, hi = "leaky_relu", float(b["negative_slope"]), 0.0, math.inf
    elif "min_val" in b:
        kind, slope, lo, hi = "hardtanh", 0.0, float(b["min_val"]), float(b["max_val"])
    elif name.startswith("relu6"):
        kind, slope, lo, hi = "hardtanh", 0.0, 0.0, 6.0
    else:
        kind, slope, lo, hi = "relu", 0.0, 0.0, math.inf
    how = mode.spec.activation
    if how == "record":
        if not mode.depends(x):
            return func(*args, **kwargs)
        shape = tuple(x.shape)
        if kind == "relu":
            out = func(*args, **kwargs)
            with torch.no_grad():
                # relu(x) != 0 exactly where x > 0; the cast is ~3x cheaper than a comparison
                gate = out.bool() if not out.requires_grad else out.detach().bool()
            mode.tape.record(Gate(kind, shape, gate, slope))
            return out
        with torch.no_grad():
            gate = (x > lo) & (x < hi) if kind == "hardtanh" else x > 0
        mode.tape.record(Gate(kind, shape, gate, slope))
        return func(*args, **kwargs)
    tracked = mode.scale.tracked(x)
    if not tracked and how in ("replay", "structure"):
        return func(*args, **kwargs)
    if how == "replay":
        g = mode.tape.next(kind, tuple(x.shape))
        grow = 0.0
        if kind == "leaky_relu":
            factor = torch.where(g.data, 1.0, g.slope * g.slope).to(x.dtype)
            grow = max(0.0, math.log2(g.slope * g.slope)) if g.slope else 0.0
        else:
            # a bool factor takes a slow mixed-dtype path on the CPU; its uint8 view does not
            factor = g.data.view(torch.uint8)
        out = x.mul_(factor) if inplace and x not in mode.shared else x * factor
        bx = mode.scale.bound(x)
        mode.scale.register(out, mode.scale.exponent(x), None if bx is None else bx + grow)
        return out
    if how == "structure":
        mode.tape.next_structure(kind, tuple(x.shape))
        how = "identity"
    if how == "identity":
        if inplace:
            return x
        out = x.clone()
        if tracked:
            mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
        return out
    if tracked and kind == "hardtanh" and not mode.scale.binary:
        if _linearised(mode):  # SynFlow: saturation is ignored (an all-ones net saturates)
            return activation(mode, F.relu, (x,), {"inplace": inplace})
        return true_values(mode, func, args, kwargs)  # saturation at a value: not homogeneous
    out = func(*args, **kwargs)
    if tracked:
        mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
    return out


# elementwise activations (and other elementwise functions of one tensor) that are not ReLU-like
COEFFICIENT_CAPABLE = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "tanh", "tanh_"}


def elementwise(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """GELU, SiLU, sigmoid, tanh, hard-swish, ``exp``, ``pow``, ``clamp``, ...: in PX's copies a gate
    equal to the derivative at the real pre-activation (or, for a sigmoid / hard-sigmoid / tanh
    whose output multiplies other data, a recorded coefficient); the real function elsewhere."""
    name = _name(func)
    how = mode.spec.activation
    x = args[0] if args else kwargs.get("input")
    if how == "record":
        if not (isinstance(x, torch.Tensor) and mode.depends(x)) or not x.is_floating_point():
            return func(*args, **kwargs)
        return _record_elementwise(mode, func, name, x, args, kwargs)
    if not mode.scale.active or not mode.scale.tracked(x):
        return func(*args, **kwargs) if mode.scale.active else true_values(mode, func, args, kwargs)
    if mode.scale.binary:
        return _mark(mode, x if _inplace_call(name, kwargs) else x.clone(), 0, None)
    if how not in ("replay", "structure"):
        return true_values(mode, func, args, kwargs)  # the real function (it warns)
    _warn(mode, func)
    take = mode.tape.next if how == "replay" else mode.tape.next_structure
    g = take("act", tuple(x.shape))
    if g.kind == "coef":
        return _coefficient(mode, g, x)
    inplace = _inplace_call(name, kwargs)
    if how == "structure":
        out = x if inplace else x.clone()
        return _mark(mode, out, mode.scale.exponent(x), mode.scale.bound(x))
    factor = g.data  # the derivative squared
    out = x.mul_(factor) if inplace and x not in mode.shared else x * factor
    bx = mode.scale.bound(x)
    return _mark(mode, out, mode.scale.exponent(x), None if bx is None else bx + g.slope)


def _warn(mode, func) -> None:  # noqa: ANN001
    if mode.warn is not None:
        mode.warn(mode.outside_name(func))


def _inplace_call(name: str, kwargs: dict) -> bool:
    return is_inplace(name) or bool(kwargs.get("inplace", False))


def _record_elementwise(mode, func, name: str, x: torch.Tensor, args: tuple, kwargs: dict):  # noqa: ANN001
    shape = tuple(x.shape)
    if name in COEFFICIENT_CAPABLE:
        out = func(*args, **kwargs)
        gate = Gate("act", shape, torch.empty(0), 0.0, extra={"out": out.detach(), "func": func,
                                                             "args": args[1:], "kwargs": kwargs})
        index = mode.tape.record(gate)
        mode.provenance[out] = index
        return out
    base = getattr(torch.Tensor, name[:-1], None) if is_inplace(name) else func
    kw = {k: v for k, v in kwargs.items() if k != "inplace"}
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        y = base(xr, *args[1:], **kw)
        (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
    g2 = (g * g).detach()
    top = abs_max(g2)
    mode.tape.record(Gate("act", shape, g2, log2_bound(top) if top > 0 else 0.0))
    if _inplace_call(name, kwargs):
        return func(*args, **kwargs)
    return y.detach()


def _derivative_of(gate: Gate) -> None:
    """Turn a coefficient-capable entry that was never used as a coefficient into a gate."""
    out, func = gate.extra["out"], gate.extra["func"]
    name = _name(func)
    base = getattr(torch.Tensor, name[:-1], None) if is_inplace(name) else func
    # the input is not kept: for sigmoid, hard-sigmoid and tanh the derivative follows from y
    if name.startswith("sigmoid"):
        g = out * (1 - out)
    elif name.startswith("tanh"):
        g = 1 - out * out
    else:  # hard-sigmoid: 1/6 inside (0, 1), 0 where saturated
        g = ((out > 0) & (out < 1)).to(out.dtype) / 6.0
    del base
    g2 = g * g
    top = abs_max(g2)
    gate.data, gate.slope = g2, (log2_bound(top) if top > 0 else 0.0)
    gate.extra = {}


def _coefficient(mode, gate: Gate, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The value of a recorded coefficient in this copy: squared (data copy) or ones (weight
    copy), as a constant the products use as it is."""
    if mode.spec.activation == "replay":
        c = gate.extra["out"].to(x.dtype)
        c = c * c
    else:
        c = torch.ones_like(x)
    mode.coefficient_out[c] = True
    return c


def softmax(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """softmax / log_softmax: in PX's copies a coefficient (attention probabilities); in SynFlow
    the real softmax, computed from the mantissas (shifted by the maximum: exact, no overflow)."""
    name = _name(func)
    how = mode.spec.activation
    x = args[0] if args else kwargs.get("input")
    b = arguments(func, args, kwargs)
    dim = b.get("dim")
    if how == "record":
        out = func(*args, **kwargs)
        if isinstance(x, torch.Tensor) and mode.depends(x):
            index = mode.tape.record(Gate("coef", tuple(x.shape), torch.empty(0),
                                          extra={"out": out.detach()}))
            mode.provenance[out] = index
        return out
    if not mode.scale.active or not mode.scale.tracked(x):
        return func(*args, **kwargs)
    if mode.scale.binary:
        # never 0 (softmax of anything is positive), and every output of a row depends on every
        # input of the row: ones forward, connectivity back to the row's inputs
        out = _binarize(torch.ones_like(x) + x.sum(dim, keepdim=True).expand_as(x))
        return _mark(mode, out, 0, None)
    _warn(mode, func)
    if how in ("replay", "structure"):
        g = mode.tape.next("coef", tuple(x.shape)) if how == "replay" else mode.tape.next_structure(
            "coef", tuple(x.shape))
        return _coefficient(mode, g, x)
    e = mode.scale.exponent(x)
    shifted = x - x.amax(dim, keepdim=True)
    t = ldexp(shifted.to(torch.float64), e).to(x.dtype) if e else shifted
    out = func(t, dim) if name in ("softmax", "log_softmax") else func(t, *args[1:], **kwargs)
    return _mark(mode, out, 0, None)


def _binarize(t: torch.Tensor) -> torch.Tensor:
    from .scale import _Binarize

    return _Binarize.apply(t)


def comparison(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Comparisons and other non-floating results of data-dependent tensors: the copies take
    the real network's result (so that ``torch.where`` selects what the real network selected)."""
    how = mode.spec.activation
    if how == "record":
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and mode.depends(t) for t in _floats(args, kwargs)):
            if isinstance(out, torch.Tensor) and not out.is_floating_point():
                mode.tape.record(Gate("cond", tuple(out.shape), out))
        return out
    if how in ("replay", "structure") and _first_tracked(mode, args, kwargs) is not None:
        out_shape = None
        g = mode.tape.next("cond", out_shape) if how == "replay" else mode.tape.next_structure("cond", None)
        return g.data
    return true_values(mode, func, args, kwargs)


_NORMS = {"layer_norm": 1, "group_norm": 2, "instance_norm": 3, "rms_norm": 4}


def normalisation(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """LayerNorm, GroupNorm, InstanceNorm, RMSNorm, ``F.normalize``: a per-sample linear map with
    the real statistics, ``x -> gamma * x / sigma`` (centring and beta dropped, as BatchNorm's shift):
    1/sigma is data (squared in the data copy, 1 in the weight copy), gamma a fixed coefficient.
    SynFlow: the real normalisation, which is scale-invariant (computed from the mantissa)."""
    name = _name(func)
    how = mode.spec.activation
    b = arguments(func, args, kwargs)
    x = b["input"]
    if how == "record":
        if not mode.depends(x):
            return func(*args, **kwargs)
        inv = _inverse_sigma(name, x, b)
        mode.tape.record(Gate("norm", tuple(x.shape), (inv * inv).detach()))
        return func(*args, **kwargs)
    if not mode.scale.active or not mode.scale.tracked(x):
        return func(*args, **kwargs)
    if mode.scale.binary:
        return _mark(mode, x.clone(), 0, None)
    weight = b.get("weight")
    _warn(mode, func)
    if how in ("replay", "structure"):
        if how == "replay":
            g = mode.tape.next("norm", tuple(x.shape))
            out = x * g.data.to(x.dtype)
        else:
            mode.tape.next_structure("norm", tuple(x.shape))
            out = x.clone() if weight is None else x * _norm_weight(name, weight, x, mode)
        return _mark(mode, out, mode.scale.exponent(x), None)
    if _linearised(mode):  # SynFlow family: the real (scale-invariant) normalisation
        e = mode.scale.exponent(x)
        eps = float(b.get("eps", 1e-5) or 1e-5)
        kw = dict(b)
        kw.pop("input")
        kw["eps"] = math.ldexp(eps, -e if name == "normalize" else -2 * e)
        if weight is not None:
            kw["weight"] = _fixed(mode, weight)
        if "bias" in kw:
            kw["bias"] = None
        out = func(x, **kw)
        return _mark(mode, out, 0, None)
    return true_values(mode, func, args, kwargs)


def _inverse_sigma(name: str, x: torch.Tensor, b: dict) -> torch.Tensor:
    """1 / sqrt(var + eps) of the real input, broadcastable to it (``normalize``: 1 / ||x||)."""
    eps = float(b.get("eps", 1e-5) or 1e-5)
    with torch.no_grad():
        if name == "normalize":
            p, dim = b.get("p", 2.0), b.get("dim", 1)
            return 1.0 / torch.linalg.vector_norm(x, ord=p, dim=dim, keepdim=True).clamp_min(
                float(b.get("eps", 1e-12)))
        if name == "layer_norm":
            n = len(b["normalized_shape"]) if not isinstance(b["normalized_shape"], int) else 1
            dims = tuple(range(x.dim() - n, x.dim()))
            return torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
        if name == "rms_norm":
            n = len(b["normalized_shape"]) if not isinstance(b["normalized_shape"], int) else 1
            dims = tuple(range(x.dim() - n, x.dim()))
            return torch.rsqrt((x * x).mean(dims, keepdim=True) + eps)
        if name == "group_norm":
            g = int(b["num_groups"])
            v = x.reshape(x.shape[0], g, -1).var(-1, unbiased=False, keepdim=True)
            inv = torch.rsqrt(v + eps)  # (N, G, 1)
            per = x.shape[1] // g
            inv = inv.repeat_interleave(per, 1).reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
            return inv
        dims = tuple(range(2, x.dim()))  # instance norm
        return torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)


def _norm_weight(name: str, weight: torch.Tensor, x: torch.Tensor, mode) -> torch.Tensor:  # noqa: ANN001
    w = _fixed(mode, weight.to(x.dtype))
    if name in ("group_norm", "instance_norm"):
        return w.reshape(1, -1, *([1] * (x.dim() - 2)))
    return w


def attention(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """scaled_dot_product_attention ``softmax(q k^T / sqrt(d) + mask) v``: the probabilities P
    are a coefficient (the query/key branch carries no path): ``(P * P) @ v`` in the data copy,
    a sum over every key a query may attend to in the weight copy. SynFlow: the real attention
    from the mantissas (exact softmax). Reachability: connectivity through values, queries, keys."""
    how = mode.spec.activation
    b = arguments(func, args, kwargs)
    q, k, v = b.get("query", args[0] if args else None), b.get("key"), b.get("value")
    mask, causal = b.get("attn_mask"), bool(b.get("is_causal", False))
    scale = b.get("scale")
    if how == "record":
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and mode.depends(t) for t in (q, k, v)):
            probs = _probabilities(q, k, mask, causal, scale)
            mode.tape.record(Gate("attn", tuple(v.shape), probs))
        return out
    if not mode.scale.active or not any(mode.scale.tracked(t) for t in (q, k, v)):
        return func(*args, **kwargs)
    if mode.scale.binary:  # values reach every query they may attend to; queries and keys too
        ones = _support(q.shape[-2], k.shape[-2], mask, causal, v.dtype, v.device)
        rows = (q @ k.transpose(-2, -1)).sum(-1, keepdim=True)
        out = _binarize(ones @ v + rows)
        return _mark(mode, out, 0, None)
    _warn(mode, func)
    if how in ("replay", "structure"):
        if how == "replay":
            g = mode.tape.next("attn", tuple(v.shape))
            mix = (g.data * g.data).to(v.dtype)
        else:
            mode.tape.next_structure("attn", tuple(v.shape))
            mix = _support(q.shape[-2], k.shape[-2], mask, causal, v.dtype, v.device)
        if not mode.scale.tracked(v):
            return torch.zeros_like(func(*args, **kwargs))
        out = mix @ v
        return mode.scale.grown(out, mode.scale.exponent(v), None, inplace=False)
    if _linearised(mode):  # SynFlow: the real attention, exactly, from the mantissas
        eq = mode.scale.exponent(q) if mode.scale.tracked(q) else 0
        ek = mode.scale.exponent(k) if mode.scale.tracked(k) else 0
        d = q.shape[-1]
        s = (q @ k.transpose(-2, -1)).to(torch.float64)
        s = s - s.amax(-1, keepdim=True)
        s = ldexp(s, eq + ek) * (scale if scale is not None else d**-0.5)
        if mask is not None:
            s = s + (mask.to(torch.float64) if mask.is_floating_point()
                     else torch.zeros_like(s).masked_fill(~mask, -math.inf))
        if causal:
            s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), -math.inf)
        p = torch.softmax(s, -1).to(v.dtype)
        out = p @ v
        if mode.scale.tracked(v):
            return mode.scale.grown(out, mode.scale.exponent(v), None, inplace=False)
        return out
    return true_values(mode, func, args, kwargs)


def _probabilities(q, k, mask, causal: bool, scale) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if mask is not None:
            s = s + mask if mask.is_floating_point() else s.masked_fill(~mask, -math.inf)
        if causal:
            keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
            s = s.masked_fill(~keep, -math.inf)
        return torch.softmax(s, -1)


def _support(lq: int, lk: int, mask, causal: bool, dtype, device) -> torch.Tensor:  # noqa: ANN001
    """Ones where a query may attend to a key (every pair, unless a bool mask or causality)."""
    ones = torch.ones(lq, lk, dtype=dtype, device=device)
    if causal:
        ones = ones.tril()
    if mask is not None and not mask.is_floating_point():
        ones = ones * mask.to(dtype)
    elif mask is not None:
        ones = ones * torch.isfinite(mask).to(dtype)
    return ones


def multi_head_attention(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """``F.multi_head_attention_forward``, decomposed into its projections and a scaled dot-product
    attention that the mode handles one by one (the common configurations; others are refused)."""
    b = arguments(func, args, kwargs)
    query, key, value = b["query"], b["key"], b["value"]
    if not any(isinstance(t, torch.Tensor) and (mode.depends(t) if mode.spec.activation == "record"
                                                 else mode.scale.tracked(t)) for t in (query, key, value)):
        return func(*args, **kwargs)
    unsupported = [n for n in ("bias_k", "bias_v") if b.get(n) is not None]
    if b.get("add_zero_attn"):
        unsupported.append("add_zero_attn")
    if b.get("need_weights") and mode.spec.activation != "record":
        pass  # the copies return no attention weights (None)
    if unsupported:
        raise NotImplementedError(
            f"path copies of nn.MultiheadAttention with {', '.join(unsupported)} are not "
            "implemented: exclude the attention layers or use a criterion that is not path-based"
        )
    with mode:
        out = _mha(b)
    return out


def _mha(b: dict) -> tuple[torch.Tensor, None]:
    query, key, value = b["query"], b["key"], b["value"]
    lq, n, e = query.shape
    h = int(b["num_heads"])
    d = e // h
    if b.get("use_separate_proj_weight"):
        bias = b["in_proj_bias"]
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        q = F.linear(query, b["q_proj_weight"], bq)
        k = F.linear(key, b["k_proj_weight"], bk)
        v = F.linear(value, b["v_proj_weight"], bv)
    else:
        w, bias = b["in_proj_weight"], b["in_proj_bias"]
        wq, wk, wv = w.chunk(3) if w is not None else (None, None, None)
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    lk = k.shape[0]
    q = q.reshape(lq, n * h, d).transpose(0, 1).reshape(n, h, lq, d)
    k = k.reshape(lk, n * h, d).transpose(0, 1).reshape(n, h, lk, d)
    v = v.reshape(lk, n * h, d).transpose(0, 1).reshape(n, h, lk, d)
    mask = b.get("attn_mask")
    kpm = b.get("key_padding_mask")
    if kpm is not None:
        pad = kpm.reshape(n, 1, 1, lk)
        pad = ~pad if pad.dtype == torch.bool else pad
        mask = pad if mask is None else (mask & pad if mask.dtype == torch.bool else mask + pad)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(b.get("is_causal")))
    out = out.permute(2, 0, 1, 3).reshape(lq, n, e)
    out = F.linear(out, b["out_proj_weight"], b["out_proj_bias"])
    return out, None


# ----------------------------------------------------------------------------- pooling
_MAXPOOL_DIMS = {1: F.max_pool1d_with_indices, 2: F.max_pool2d_with_indices, 3: F.max_pool3d_with_indices}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _one(v: Any) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)


def sum_pool(dims: int, x: torch.Tensor, kernel, stride, padding, ceil_mode) -> torch.Tensor:  # noqa: ANN001
    """Sum over every window (zero padding): average pooling with divisor 1."""
    if dims == 1:
        return F.avg_pool2d(
            x.unsqueeze(-2),
            (1, _one(kernel)),
            (1, _one(stride or kernel)),
            (0, _one(padding)),
            ceil_mode,
            True,
            1,
        ).squeeze(-2)
    return _AVGPOOL[dims](x, kernel, stride, padding, ceil_mode, True, 1)


def _window(kernel: Any, dims: int) -> int:
    k = kernel if isinstance(kernel, tuple | list) else (kernel,) * dims
    return math.prod(int(v) for v in k)


def maxpool(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Max-pooling: record the argmax, gather at it, sum over the window, or run as it is."""
    name = _name(func)
    dims = int(name.split("max_pool")[1][0])
    b = arguments(func, args, kwargs)
    with_indices = name.endswith("with_indices") or bool(b.pop("return_indices", False))
    b.pop("return_indices", None)
    x = b.pop("input")
    how = mode.spec.maxpool
    tracked = mode.scale.tracked(x)
    idx = None
    if how == "record":
        out, idx = _MAXPOOL_DIMS[dims](x, **b)
        if mode.depends(x):
            mode.tape.record(Gate("max_pool", tuple(x.shape), idx))
        return (out, idx) if with_indices else out
    if how == "gather" and tracked:
        idx = mode.tape.next("max_pool", tuple(x.shape)).data
        out = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
    elif how == "sum" and tracked:
        if mode.spec.activation == "structure":
            mode.tape.next_structure("max_pool", tuple(x.shape))
        dil = b["dilation"]
        if any(d != 1 for d in (dil if isinstance(dil, tuple | list) else [dil])):
            raise NotImplementedError("path copies of dilated max-pooling are not implemented")
        out = sum_pool(dims, x, b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"])
        bx = mode.scale.bound(x)
        bound = None if bx is None else bx + math.log2(_window(b["kernel_size"], dims))
        out = mode.scale.grown(out, mode.scale.exponent(x), bound, inplace=False)
    else:
        out, idx = _MAXPOOL_DIMS[dims](x, **b)
        if tracked:
            mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
    if with_indices:
        return out, (idx if idx is not None else torch.zeros_like(out, dtype=torch.long))
    return out


# ----------------------------------------------------------------------------- fixed linear maps
def batch_norm(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """BatchNorm as the spec says: as it is, a per-channel linear map, or batch statistics."""
    spec = mode.spec
    if spec.bn == "keep":
        return true_values(mode, func, args, kwargs)
    b = arguments(func, args, kwargs)
    x = b["input"]
    shape = [1, -1] + [1] * (x.dim() - 2)
    tracked = mode.scale.tracked(x)
    if spec.bn == "batch":
        eps = float(b["eps"])
        if tracked and not mode.scale.binary:
            eps = math.ldexp(eps, -2 * mode.scale.exponent(x))
        w, bias = b["weight"], b["bias"]
        out = F.batch_norm(
            x,
            None,
            None,
            None if w is None else w.to(x.dtype),
            None if bias is None else bias.to(x.dtype),
            True,
            0.0,
            eps,
        )
        if tracked:
            mode.scale.register(out, 0, None)
        return out
    if spec.bn_power == 0:
        return mode.alias(x)
    rv = b["running_var"]
    if rv is None:
        raise ValueError(
            "a BatchNorm without running statistics (track_running_stats=False) has no "
            "eval form: give the model running statistics, or use px with bn='train'"
        )
    w = b["weight"]
    key = (id(rv), id(w), spec.bn_power, float(b["eps"]), x.dtype)
    hit = mode.coefficients.get(key)
    if hit is None:  # BN statistics do not change while a criterion scores: once per call
        scale = torch.rsqrt(rv.to(x.dtype) + b["eps"])
        if w is not None:
            scale = scale * w.detach().to(x.dtype)
        scale = scale.abs() ** spec.bn_power
        hit = mode.coefficients[key] = (rv, w, scale)  # rv, w kept alive: their ids stay theirs
    out = x * hit[2].view(shape)
    if tracked:
        mode.scale.register(out, mode.scale.exponent(x), None)
    return out


def _coef_carry(mode, x: torch.Tensor, out: torch.Tensor, terms: int) -> torch.Tensor:  # noqa: ANN001
    """Register a pooled output (coefficients <= 1, at most ``terms`` terms per output)."""
    if not mode.scale.tracked(x):
        return out
    bx = mode.scale.bound(x)
    bound = None if bx is None else bx + math.log2(max(1, terms))
    if mode.spec.coef_power == 0:
        return mode.scale.grown(out, mode.scale.exponent(x), bound, inplace=False)
    mode.scale.register(out, mode.scale.exponent(x), bound)
    return out


def avg_pool(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Average pooling: coefficient c = 1/divisor per output contributes ``c**coef_power``."""
    if mode.spec.coef_power is None:
        return homogeneous(mode, func, args, kwargs)
    dims = int(_name(func)[-2])
    b = arguments(func, args, kwargs)
    x = b.pop("input")
    window = (b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"])
    summed = sum_pool(dims, x, *window)
    if mode.spec.coef_power == 0:
        out = summed
    else:
        ones = torch.ones_like(x[:1, :1])
        if dims == 1:  # avg_pool1d takes no divisor_override
            b.pop("divisor_override", None)
        coef = _AVGPOOL[dims](ones, **b) / sum_pool(dims, ones, *window)
        out = summed * coef**mode.spec.coef_power
    return _coef_carry(mode, x, out, _window(b["kernel_size"], dims))


_SEPARABLE = ("linear", "bilinear", "bicubic", "trilinear")


def _axis_coefficients(func, b: dict, x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:  # noqa: ANN001
    """C[o, i]: the coefficient of input position i in output position o along spatial ``axis``,
    read by interpolating the identity along that axis alone with the call's own settings."""
    dims = x.dim() - 2
    n_in = x.shape[2 + axis]
    # the other axes have length 2, kept: torch's antialiased kernels mishandle length 1
    shape = [1, n_in] + [2] * dims
    shape[2 + axis] = n_in
    view = [1, n_in] + [1] * dims
    view[2 + axis] = n_in
    eye = torch.eye(n_in, dtype=x.dtype, device=x.device).view(view).expand(shape)
    kw = {k: b[k] for k in ("mode", "align_corners", "antialias") if k in b}
    if b.get("scale_factor") is not None and not b.get("recompute_scale_factor"):
        scale = b["scale_factor"]
        scale = scale[axis] if isinstance(scale, list | tuple) else scale
        factors = [1.0] * dims
        factors[axis] = float(scale)
        kw["scale_factor"] = tuple(factors)
    else:
        size = [2] * dims
        size[axis] = n_out
        kw["size"] = tuple(size)
    out = func(eye.contiguous(), **kw)  # (1, n_in, ..., n_out on axis, ...)
    index = [0, slice(None)] + [0] * dims
    index[2 + axis] = slice(None)
    return out[tuple(index)].t()


def interpolate(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Linear, bilinear, bicubic and trilinear interpolation: a fixed linear map, a product of one
    coefficient per spatial axis. Path coefficient c contributes ``c**coef_power`` (1 where c is
    not 0 in PX's data copy, ``c**2`` in its weight copy), applied axis by axis (the elementwise
    power of a separable map is separable). Nearest modes have coefficients 0 and 1 (homogeneous
    as they are); ``area`` is adaptive average pooling."""
    b = arguments(func, args, kwargs)
    if mode.spec.coef_power is not None and b.get("mode") == "area":
        x = b["input"]
        size = tuple(func(*args, **kwargs).shape[2:])
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[x.dim() - 3]
        return adaptive_avg_pool(mode, pool, (x, size), {})
    if mode.spec.coef_power is None or b.get("mode") not in _SEPARABLE:
        return homogeneous(mode, func, args, kwargs)
    x = b["input"]
    real = func(*args, **kwargs)
    out, terms = x, 1
    with torch.no_grad():
        coefs = [_axis_coefficients(func, b, x.detach(), a, real.shape[2 + a])
                 for a in range(x.dim() - 2)]
    for axis, c in enumerate(coefs):
        c = (c != 0).to(x.dtype) if mode.spec.coef_power == 0 else c**mode.spec.coef_power
        terms *= int((c != 0).sum(1).max())
        out = torch.movedim(torch.tensordot(out, c, dims=([2 + axis], [1])), -1, 2 + axis)
    return _coef_carry(mode, x, out, terms)


def adaptive_avg_pool(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    if mode.spec.coef_power is None:
        return homogeneous(mode, func, args, kwargs)
    dims = int(_name(func)[-2])
    x = args[0] if args else kwargs["input"]
    avg = func(*args, **kwargs)
    counts = torch.ones((), dtype=x.dtype, device=x.device)
    view = [1] * avg.dim()
    largest = 1
    for axis, (n_in, n_out) in enumerate(zip(x.shape[-dims:], avg.shape[-dims:], strict=True)):
        i = torch.arange(n_out, device=x.device)
        start = torch.div(i * n_in, n_out, rounding_mode="floor")
        end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
        shape = list(view)
        shape[avg.dim() - dims + axis] = n_out
        counts = counts * (end - start).to(x.dtype).view(shape)
        largest *= -(-n_in // n_out) + 1
    out = avg * counts ** (1 - mode.spec.coef_power)
    return _coef_carry(mode, x, out, largest)


def mean(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    if mode.spec.coef_power is None:
        return homogeneous(mode, func, args, kwargs)
    b = arguments(func, args, kwargs)
    x = b["input"]
    out = func(*args, **kwargs)
    dim = b.get("dim")
    if dim is None:
        n = x.numel()
    else:
        dims = dim if isinstance(dim, tuple | list) else [dim]
        n = math.prod(x.shape[d] for d in dims)
    out = out * float(n) ** (1 - mode.spec.coef_power)
    return _coef_carry(mode, x, out, n)


def negation(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """``-x``: in a linearised copy the coefficient -1 contributes ``|-1| ** coef_power = 1``."""
    x = args[0] if args else kwargs.get("input")
    if mode.scale.active and mode.scale.tracked(x) and _linearised(mode):
        out = x if is_inplace(_name(func)) else x.clone()
        return _mark(mode, out, mode.scale.exponent(x), mode.scale.bound(x))
    return homogeneous(mode, func, args, kwargs)
