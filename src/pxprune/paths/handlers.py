"""What each kind of torch operation means in a path copy: one function per kind.

Every handler has the signature ``handler(mode, func, args, kwargs)`` and is looked up by
``pxprune.paths.table``. A handler either runs the operation as it is (nothing tracked, or an
operation the spec leaves alone), or computes the copy's meaning of it and registers the exponent
(and magnitude bound) of *its own output* with ``mode.scale`` (the invariant of
``pxprune.paths.scale``).

Kinds, by how they treat a power-of-two scale ``2**e`` of their operands:

- homogeneous (shape ops, ``abs``, ``max``, dropout in eval, interpolation, ...): ``f(2**e x) =
  2**e f(x)``, so the output keeps the exponent and the bound;
- additive (``add``, ``cat``, ``where``, ...): operands (and value scalars) are aligned to the
  largest exponent first;
- products and quotients: exponents add or subtract; matmul-like products also grow (renormalise);
- linear maps with weights (conv, linear), sums and pooling: grow by a known factor;
- gates (ReLU family, max-pool) and BatchNorm: what the spec says (``pxprune.paths.spec``);
- everything else is *not* homogeneous (sigmoid, softmax, LayerNorm, ``clamp`` at a non-zero value,
  ...): it is given the true values of its operands (an error where they would overflow) and its
  output carries exponent 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

from .scale import ldexp, log2_bound
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
    """An operation that is not homogeneous: it sees the values the copy stands for."""
    if not mode.scale.active or _first_tracked(mode, args, kwargs) is None:
        return func(*args, **kwargs)
    name = _name(func)
    if mode.warn is not None:
        mode.warn(mode.outside_name(func))

    def real(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and mode.scale.tracked(t):
            return mode.scale.true_value(t, name or "an operation")
        return t

    if is_inplace(name) and args and isinstance(args[0], torch.Tensor):
        x = args[0]
        if x in mode.shared:
            return out_of_place(mode, func, args, kwargs)
        if mode.scale.tracked(x):  # in place: the tensor itself becomes its true value
            real(x)  # the overflow check
            if mode.scale.exponent(x):
                ldexp(x, mode.scale.exponent(x), inplace=True)
            mode.scale.register(x, 0, None)
        args = (x, *tree_map(real, args[1:]))
        kwargs = tree_map(real, kwargs)
    else:
        args, kwargs = _map(real, args, kwargs)
    return _mark(mode, func(*args, **kwargs), 0, None)


# value arguments of additive operations that may be Python numbers (scaled with the operands)
_VALUE_ARGS = {
    "where": ((1, "input"), (2, "other")),
    "__setitem__": ((2, "value"),),
    "pad": ((3, "value"),),
    "masked_fill": ((2, "value"),),
    "masked_fill_": ((2, "value"),),
    "cat": (), "concat": (), "concatenate": (), "stack": (), "hstack": (), "vstack": (), "dstack": (),
}
_DEFAULT_VALUE_ARGS = ((1, "other"),)


def additive(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Sums, concatenations, selections: align every floating operand to the largest exponent."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    tensors = _floats(args, kwargs)
    if not any(mode.scale.tracked(t) for t in tensors):
        return func(*args, **kwargs)
    name = _name(func)
    inplace = is_inplace(name)
    if inplace and tensors and tensors[0] in mode.shared:
        return out_of_place(mode, func, args, kwargs)
    if mode.scale.binary:
        out = func(*args, **kwargs)
        return _mark(mode, out, 0, None)
    exps = {id(t): mode.scale.exponent(t) for t in tensors}
    target = max(exps.values())
    scalar_slots = _VALUE_ARGS.get(name, _DEFAULT_VALUE_ARGS)
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


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_SELECTING = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "where",
              "maximum", "minimum", "fmax", "fmin", "max", "min", "__setitem__", "pad",
              "masked_fill", "masked_fill_"}


def out_of_place(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """An in-place operation on a tensor that is shared with the model's input of an identity
    (see ``batch_norm``): run the out-of-place version instead."""
    name = _name(func)
    base = name[3:-2] if name.startswith("__i") else name[:-1]  # "__iadd__", "add_" -> "add"
    op = getattr(torch.Tensor, base, None)
    if op is None:
        raise NotImplementedError(f"in-place {name} on a shared tensor in a path copy")
    return mode.__torch_function__(op, (), args, kwargs)


def product(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Elementwise products: exponents add, bounds add."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other")
    ta, tb = mode.scale.tracked(a), mode.scale.tracked(b)
    if not (ta or tb):
        return func(*args, **kwargs)
    name = _name(func)
    if is_inplace(name) and a in mode.shared:
        return out_of_place(mode, func, args, kwargs)
    if mode.scale.binary:
        return _mark(mode, func(*args, **kwargs), 0, None)
    e = (mode.scale.exponent(a) if ta else 0) + (mode.scale.exponent(b) if tb else 0)
    bound = _bound_of(mode, a) if a is not None else None
    bb = _bound_of(mode, b)
    bound = None if bound is None or bb is None else bound + bb
    return _mark(mode, func(*args, **kwargs), e, bound)


def _bound_of(mode, v: Any) -> float | None:  # noqa: ANN001
    if isinstance(v, torch.Tensor):
        return mode.scale.bound(v) if mode.scale.tracked(v) else None
    if _is_number(v):
        return log2_bound(abs(float(v)))
    return None


def quotient(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Elementwise quotients: exponents subtract (``__rtruediv__`` is ``other / self``)."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other")
    ta, tb = mode.scale.tracked(a), mode.scale.tracked(b)
    if not (ta or tb):
        return func(*args, **kwargs)
    name = _name(func)
    if is_inplace(name) and a in mode.shared:
        return out_of_place(mode, func, args, kwargs)
    if mode.scale.binary:
        return _mark(mode, func(*args, **kwargs), 0, None)
    ea = mode.scale.exponent(a) if ta else 0
    eb = mode.scale.exponent(b) if tb else 0
    e = eb - ea if name == "__rtruediv__" else ea - eb
    if kwargs.get("rounding_mode") is not None:  # floor/trunc division is not homogeneous
        return true_values(mode, func, args, kwargs)
    return _mark(mode, func(*args, **kwargs), e, None)


def matmul(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """Matrix products (and einsum): exponents of the operands add; the output grows."""
    if not mode.scale.active:
        return func(*args, **kwargs)
    tensors = _floats(args, kwargs)
    tracked = [t for t in tensors if mode.scale.tracked(t)]
    if not tracked:
        return func(*args, **kwargs)
    out = func(*args, **kwargs)
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
_CONVS = {"conv1d", "conv2d", "conv3d"}


def linear_map(mode, func, args: tuple, kwargs: dict):  # noqa: ANN001
    """conv1d/2d/3d and linear: biases dropped (or scaled with the input), positions recorded."""
    spec = mode.spec
    if not (mode.weight_names or mode.scale.active or spec.drop_bias):
        return func(*args, **kwargs)  # a real pass
    name = _name(func)
    b = arguments(func, args, kwargs)
    x, w, bias = b.pop("input"), b.pop("weight"), b.pop("bias", None)
    wname = mode.weight_names.get(id(w))
    if wname is not None:
        mode.order.append(wname)
    if spec.drop_bias and wname not in mode.keep_bias:
        bias = None
    tracked = mode.scale.tracked(x)
    if bias is not None and tracked:
        if mode.scale.binary:
            bias = (bias != 0).to(bias.dtype)
        else:
            bias = ldexp(bias, -mode.scale.exponent(x))
    out = func(x, w, bias, **b)
    if wname is not None:
        channels = out.shape[1] if name in _CONVS else out.shape[-1]
        mode.positions[wname] = out.numel() // max(1, out.shape[0] * channels)
    if not tracked:
        return out
    bound = None
    if mode.scale.lazy and bias is None:
        bx = mode.scale.bound(x)
        bw = mode.weight_bound(w)
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
        if tracked:
            bx = mode.scale.bound(x)
            mode.scale.register(out, mode.scale.exponent(x), None if bx is None else bx + grow)
        return out
    if how == "identity":
        if inplace:
            return x
        out = x.clone()
        if tracked:
            mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
        return out
    if tracked and kind == "hardtanh" and not mode.scale.binary:
        return true_values(mode, func, args, kwargs)  # saturation at a value: not homogeneous
    out = func(*args, **kwargs)
    if tracked:
        mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
    return out


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
        mode.tape.record(Gate("max_pool", tuple(x.shape), idx))
        return (out, idx) if with_indices else out
    if how == "gather":
        idx = mode.tape.next("max_pool", tuple(x.shape)).data
        out = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        if tracked:
            mode.scale.register(out, mode.scale.exponent(x), mode.scale.bound(x))
    elif how == "sum":
        dil = b["dilation"]
        if any(d != 1 for d in (dil if isinstance(dil, tuple | list) else [dil])):
            raise NotImplementedError("path copies of dilated max-pooling are not implemented")
        out = sum_pool(dims, x, b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"])
        if tracked:
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
