"""Path copies of a network, run on the user's own forward code.

PX (and SynFlow, SynFlow-L2, the effective-mask report) evaluate *copies* of the network that share
its architecture but change what every operation means: activations become recorded gates or the
identity, BatchNorm becomes a per-channel linear map, biases vanish, pooling coefficients change.
Rather than rebuilding the model, we run the user's ``forward`` under a scoped
``torch.overrides.TorchFunctionMode`` (:class:`PathMode`) that intercepts those operations, while the
prunable weights are substituted by the copy's tensors (``_scoped.substituted``). Nothing global
survives the ``with`` block, even on error.

Numeric range: all-ones weights grow activations by ~fan_in per layer (2e49 after ResNet-20). In the
copies every tracked tensor carries an exact power-of-two exponent (a 0-d int32 tensor on the same
device): after every growing operation (conv, linear, additive merges, sum pooling) the mantissa is
rescaled by ``2**-e`` so that its largest magnitude lies in [0.5, 1). Additive operations align their
operands' exponents first. Multiplying by a power of two is exact, so the copies compute the same
numbers as an infinite-range evaluation, up to ordinary round-off.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary


class PathTheoryWarning(UserWarning):
    """An operation outside the path theory (GELU, LayerNorm, attention, ...) was left as it is."""


class GateMismatchError(RuntimeError):
    """The replayed pass called different activations than the recorded one."""


@dataclasses.dataclass(frozen=True)
class CopySpec:
    """What every intercepted operation means in one pass.

    - ``activation``: "record" (real pass: run it, remember the gate), "replay" (multiply by the
      recorded gate squared), "identity", or "keep" (run it as it is).
    - ``maxpool``: "record", "gather" (take the recorded argmax), "sum" (every window position is
      a path), or "keep".
    - ``bn``: "keep" (as the model runs it), "linear" (eval form: scale ``|gamma/sqrt(var+eps)|**
      bn_power``, shift 0), or "batch" (real gamma/beta with this pass's batch statistics, running
      statistics untouched).
    - ``coef_power``: fixed linear maps (average pooling, ``mean``) with coefficient c contribute
      ``c**coef_power``: 0 in the PX data copy (sum), 2 in the weight copy, None leaves them as is.
    - ``drop_bias``: conv/linear biases are 0 (except for weights in ``keep_bias``).
    - ``scaling``: "none", "exp" (power-of-two exponents) or "binary" (values clamped to {0, 1}
      after every growing op, gradients likewise: reachability).
    """

    activation: str = "keep"
    maxpool: str = "keep"
    bn: str = "keep"
    bn_power: int = 1
    coef_power: int | None = None
    drop_bias: bool = False
    scaling: str = "none"


REAL = CopySpec(activation="record", maxpool="record")

_RELUS = {"relu", "relu_"}
_INPLACE_NAMES = {"__iadd__", "__isub__", "__imul__", "__itruediv__"}
_SHAPE_OPS = {
    "view",
    "reshape",
    "flatten",
    "__getitem__",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "split",
    "chunk",
    "unbind",
    "t",
    "narrow",
    "select",
    "view_as",
    "reshape_as",
    "unflatten",
    "movedim",
    "clone",
    "detach",
    "to",
    "float",
    "double",
    "type",
    "cpu",
    "cuda",
    "squeeze_",
    "unsqueeze_",
    "pad",
    "repeat",
    "tile",
    "roll",
    "flip",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "dropout",
    "dropout2d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "identity",
}
_MULT = {
    "mul",
    "mul_",
    "__mul__",
    "__rmul__",
    "__imul__",
    "multiply",
    "matmul",
    "__matmul__",
    "__rmatmul__",
    "mm",
    "bmm",
    "dot",
    "outer",
}
_DIV = {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
# ops after which a scaled copy renormalises (additive merges grow at most 2x: the next conv does)
_GROWING = {
    "conv1d",
    "conv2d",
    "conv3d",
    "linear",
    "sum",
    "matmul",
    "__matmul__",
    "mm",
    "bmm",
    "einsum",
    "addmm",
}
_OUTSIDE = {
    "gelu": "GELU",
    "silu": "SiLU",
    "hardswish": "Hardswish",
    "mish": "Mish",
    "elu": "ELU",
    "selu": "SELU",
    "celu": "CELU",
    "softplus": "Softplus",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "hardsigmoid": "Hardsigmoid",
    "layer_norm": "LayerNorm",
    "group_norm": "GroupNorm",
    "instance_norm": "InstanceNorm",
    "scaled_dot_product_attention": "attention",
    "multi_head_attention_forward": "attention",
    "softmax": "softmax",
    "conv_transpose1d": "ConvTranspose",
    "conv_transpose2d": "ConvTranspose",
    "conv_transpose3d": "ConvTranspose",
    "adaptive_max_pool1d": "adaptive max-pool",
    "adaptive_max_pool2d": "adaptive max-pool",
    "adaptive_max_pool3d": "adaptive max-pool",
}
_PASSTHROUGH = {
    torch.autograd.grad,
    torch.autograd.backward,
    torch.Tensor.backward,
    torch.Tensor.requires_grad_,
    torch.Tensor.size,
    torch.Tensor.dim,
}
_CONVS = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}
_MAXPOOLS = {
    F.max_pool1d: 1,
    F.max_pool2d: 2,
    F.max_pool3d: 3,
    F.max_pool1d_with_indices: 1,
    F.max_pool2d_with_indices: 2,
    F.max_pool3d_with_indices: 3,
}
_MAXPOOL_IDX = {
    1: F.max_pool1d_with_indices,
    2: F.max_pool2d_with_indices,
    3: F.max_pool3d_with_indices,
}
_AVGPOOL = {
    "avg_pool1d": (F.avg_pool1d, 1),
    "avg_pool2d": (F.avg_pool2d, 2),
    "avg_pool3d": (F.avg_pool3d, 3),
}
_ADAPTIVE_AVG = {"adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3}


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, args, strict=False))
    out.update(kwargs)
    return out


@dataclasses.dataclass
class Gate:
    kind: str
    shape: tuple[int, ...]
    data: torch.Tensor
    slope: float = 0.0


class _Binarize(torch.autograd.Function):
    """Forward: 1 where x != 0; backward: 1 where the incoming gradient != 0 (reachability)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (x != 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (grad != 0).to(grad.dtype)


class PathMode(TorchFunctionMode):
    """Intercepts one forward pass of a model and gives its operations the meaning of ``spec``.

    ``gates`` is filled in a "record" pass and consumed, by call index, in a "replay" pass (count,
    kind and shape are checked). ``weight_names`` maps ``id`` of substituted prunable weight tensors
    to their names: it records the execution order (``self.order``) and output positions per weight
    (``self.positions``), and ``keep_bias`` names the weights whose bias a copy keeps.
    """

    def __init__(
        self,
        spec: CopySpec,
        *,
        gates: list[Gate] | None = None,
        weight_names: dict[int, str] | None = None,
        keep_bias: frozenset[str] = frozenset(),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.gates = gates if gates is not None else []
        self.cursor = 0
        self.weight_names = weight_names or {}
        self.keep_bias = keep_bias
        self.order: list[str] = []
        self.positions: dict[str, int] = {}
        self._exp = WeakTensorKeyDictionary()
        self._shared = WeakTensorKeyDictionary()
        self._warn = warn

    # ----------------------------------------------------------------- exponents
    def track(self, x: torch.Tensor) -> torch.Tensor:
        """Register an input tensor (exponent 0) and return it, rescaled if the pass scales."""
        if self.spec.scaling == "none":
            return x
        self._exp[x] = 0
        return self._renorm(x, inplace=False)

    def exponent(self, x: torch.Tensor) -> int:
        return self._exp.get(x, 0)

    def _renorm(self, x: torch.Tensor, *, inplace: bool) -> torch.Tensor:
        if self.spec.scaling == "binary":
            if inplace:
                with torch.no_grad():
                    x.copy_((x != 0).to(x.dtype))
                return x
            out = _Binarize.apply(x)
            self._exp[out] = 0
            return out
        e_in = self.exponent(x)
        m = float(torch.linalg.vector_norm(x.detach(), ord=math.inf))
        if not math.isfinite(m):
            raise FloatingPointError(
                "a path copy produced a non-finite value; please report this model to pxprune"
            )
        e = math.frexp(m)[1] if m > 0 else 0
        if e != 0:
            x = _ldexp(x, -e, inplace=inplace)
        self._exp[x] = e_in + e
        return x

    # ----------------------------------------------------------------- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _PASSTHROUGH:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        spec = self.spec
        if func in _MAXPOOLS:
            return self._maxpool(func, args, kwargs)
        if name in _RELUS or func in (F.leaky_relu, F.hardtanh, F.relu6, F.leaky_relu_):
            return self._activation(func, name, args, kwargs)
        if func is F.batch_norm and spec.bn != "keep":
            return self._batch_norm(args, kwargs)
        if name in _CONVS or func is F.linear:
            return self._linear(func, name, args, kwargs)
        if name in _OUTSIDE and self._warn is not None:
            self._warn(_OUTSIDE[name])
        if spec.scaling == "none" and spec.coef_power is None:
            return func(*args, **kwargs)
        if spec.coef_power is not None:
            if name in _AVGPOOL:
                return self._avg_pool(name, args, kwargs)
            if name in _ADAPTIVE_AVG:
                return self._adaptive_avg(func, name, args, kwargs)
            if name == "mean":
                return self._mean(func, args, kwargs)
        if spec.scaling == "none":
            return func(*args, **kwargs)
        return self._generic(func, name, args, kwargs)

    def _generic(self, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]
        tracked = [t for t in tensors if t in self._exp]
        if not tracked:
            return func(*args, **kwargs)
        inplace = name.endswith("_") and not name.startswith("__") or name in _INPLACE_NAMES
        if inplace and tensors and tensors[0] in self._shared:
            return self._out_of_place(func, name, args, kwargs)
        if self.spec.scaling == "binary":
            out = func(*args, **kwargs)
            return self._tag(out, tracked[0], name in _GROWING, inplace)
        if name in _MULT or name in _DIV:
            exps = [self.exponent(t) for t in tensors[:2]]
            e = exps[0]
            if len(exps) > 1:
                e = exps[0] + exps[1] if name in _MULT else exps[0] - exps[1]
            out = func(*args, **kwargs)
            return self._assign(out, e, name in _GROWING, inplace)
        if name in _SHAPE_OPS or len(tensors) == 1:
            out = func(*args, **kwargs)
            return self._assign(out, self.exponent(tracked[0]), name in _GROWING, inplace)
        # additive: align every floating operand to the largest exponent
        exps = {id(t): self.exponent(t) for t in tensors}
        target = max(exps.values())
        if inplace and exps[id(tensors[0])] != target:
            _ldexp(tensors[0], exps[id(tensors[0])] - target, inplace=True)

        def align(t: Any) -> Any:
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                return t
            if (inplace and t is tensors[0]) or exps[id(t)] == target:
                return t
            return _ldexp(t, exps[id(t)] - target, inplace=False)

        args, kwargs = tree_map(align, (args, kwargs))
        out = func(*args, **kwargs)
        return self._assign(out, target, name in _GROWING, inplace)

    def _out_of_place(self, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
        base = name[3:-2] if name.startswith("__i") else name[:-1]  # "__iadd__", "add_" -> "add"
        op = getattr(torch.Tensor, base, None)
        if op is None:
            raise NotImplementedError(f"in-place {name} on a shared tensor in a path copy")
        return self.__torch_function__(op, (), args, kwargs)

    def _tag(self, out: Any, like: torch.Tensor, growing: bool, inplace: bool) -> Any:
        e = self.exponent(like)
        return self._assign(out, e, growing, inplace)

    def _assign(self, out: Any, e: int, growing: bool, inplace: bool) -> Any:
        def mark(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self._exp[t] = e
                if growing:
                    return self._renorm(t, inplace=inplace)
            return t

        return tree_map(mark, out)

    # ----------------------------------------------------------------- weights
    def _linear(self, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
        if name in _CONVS:
            b = _bind(
                args,
                kwargs,
                ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                {"bias": None},
            )
        else:
            b = _bind(args, kwargs, ("input", "weight", "bias"), {"bias": None})
        x, w, bias = b["input"], b["weight"], b["bias"]
        wname = self.weight_names.get(id(w))
        if wname is not None:
            self.order.append(wname)
        if self.spec.drop_bias and wname not in self.keep_bias:
            bias = None
        if bias is not None and self.spec.scaling == "exp" and x in self._exp:
            bias = _ldexp(bias, -self.exponent(x), inplace=False)
        if bias is not None and self.spec.scaling == "binary":
            bias = (bias != 0).to(bias.dtype)
        b["bias"] = bias
        x = b.pop("input")
        w = b.pop("weight")
        out = func(x, w, **b)
        if wname is not None:
            channels = out.shape[1] if name in _CONVS else out.shape[-1]
            self.positions[wname] = out.numel() // max(1, out.shape[0] * channels)
        if self.spec.scaling == "none" or x not in self._exp:
            return out
        self._exp[out] = self.exponent(x)
        return self._renorm(out, inplace=False)

    # ----------------------------------------------------------------- gates
    def _next_gate(self, kind: str, shape: tuple[int, ...]) -> Gate:
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
        """Check that a replay pass consumed every recorded gate."""
        if self.spec.activation == "replay" and self.cursor != len(self.gates):
            raise GateMismatchError(
                f"the replayed pass made {self.cursor} activation calls, the recorded one "
                f"{len(self.gates)}: the forward must call the same activations for every input"
            )

    def _activation(self, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
        x = args[0] if args else kwargs["input"]
        if name in _RELUS:
            kind, slope = "relu", 0.0
            inplace = name == "relu_" or bool(
                _bind(args, kwargs, ("input", "inplace"), {"inplace": False})["inplace"]
            )
        elif func in (F.leaky_relu, F.leaky_relu_):
            b = _bind(
                args,
                kwargs,
                ("input", "negative_slope", "inplace"),
                {"negative_slope": 0.01, "inplace": False},
            )
            kind, slope, inplace = "leaky_relu", float(b["negative_slope"]), bool(b["inplace"])
            inplace = inplace or func is F.leaky_relu_
        else:
            if func is F.relu6:
                b = _bind(args, kwargs, ("input", "inplace"), {"inplace": False})
                lo, hi = 0.0, 6.0
            else:
                b = _bind(
                    args,
                    kwargs,
                    ("input", "min_val", "max_val", "inplace"),
                    {"min_val": -1.0, "max_val": 1.0, "inplace": False},
                )
                lo, hi = float(b["min_val"]), float(b["max_val"])
            kind, slope, inplace = "hardtanh", 0.0, bool(b["inplace"])
        mode = self.spec.activation
        if mode == "record":
            with torch.no_grad():
                gate = (x > lo) & (x < hi) if kind == "hardtanh" else x > 0
            self.gates.append(Gate(kind, tuple(x.shape), gate, slope))
            return func(*args, **kwargs)
        if mode == "replay":
            g = self._next_gate(kind, tuple(x.shape))
            if kind == "leaky_relu":
                factor = torch.where(g.data, 1.0, g.slope * g.slope).to(x.dtype)
            else:
                factor = g.data
            out = x.mul_(factor) if inplace and x not in self._shared else x * factor
            if self.spec.scaling != "none" and x in self._exp:
                self._exp[out] = self.exponent(x)
            return out
        if mode == "identity":
            if inplace:
                return x
            out = x.clone()
            if x in self._exp:
                self._exp[out] = self.exponent(x)
            return out
        out = func(*args, **kwargs)
        if x in self._exp:
            self._exp[out] = self.exponent(x)
        return out

    def _maxpool(self, func, args: tuple, kwargs: dict):  # noqa: ANN001
        dims = _MAXPOOLS[func]
        b = _bind(
            args,
            kwargs,
            (
                "input",
                "kernel_size",
                "stride",
                "padding",
                "dilation",
                "ceil_mode",
                "return_indices",
            ),
            {
                "stride": None,
                "padding": 0,
                "dilation": 1,
                "ceil_mode": False,
                "return_indices": False,
            },
        )
        with_indices = func in (
            F.max_pool1d_with_indices,
            F.max_pool2d_with_indices,
            F.max_pool3d_with_indices,
        ) or bool(b["return_indices"])
        x = b.pop("input")
        b.pop("return_indices")
        mode = self.spec.maxpool
        if mode == "record":
            out, idx = _MAXPOOL_IDX[dims](x, **b)
            self.gates.append(Gate("max_pool", tuple(x.shape), idx))
            return (out, idx) if with_indices else out
        if mode == "gather":
            g = self._next_gate("max_pool", tuple(x.shape))
            idx = g.data
            out = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
            e = self.exponent(x) if x in self._exp else None
        elif mode == "sum":
            dil = b["dilation"]
            if any(d != 1 for d in (dil if isinstance(dil, tuple | list) else [dil])):
                raise NotImplementedError("path copies of dilated max-pooling are not implemented")
            pool = _AVGPOOL[f"avg_pool{dims}d"][0]
            out = _sum_pool(pool, x, b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"])
            e = self.exponent(x) if x in self._exp else None
            if e is not None and self.spec.scaling != "none":
                self._exp[out] = e
                out = self._renorm(out, inplace=False)
                e = None
            idx = None
        else:
            out, idx = _MAXPOOL_IDX[dims](x, **b)
            e = self.exponent(x) if x in self._exp else None
        if e is not None:
            self._exp[out] = e
        if with_indices:
            return out, (idx if idx is not None else torch.zeros_like(out, dtype=torch.long))
        return out

    # ----------------------------------------------------------------- fixed linear maps
    def _batch_norm(self, args: tuple, kwargs: dict):
        b = _bind(
            args,
            kwargs,
            (
                "input",
                "running_mean",
                "running_var",
                "weight",
                "bias",
                "training",
                "momentum",
                "eps",
            ),
            {
                "running_mean": None,
                "running_var": None,
                "weight": None,
                "bias": None,
                "training": False,
                "momentum": 0.1,
                "eps": 1e-5,
            },
        )
        x = b["input"]
        shape = [1, -1] + [1] * (x.dim() - 2)
        e = self.exponent(x) if x in self._exp else None
        if self.spec.bn == "batch":
            eps = float(b["eps"])
            if e is not None and self.spec.scaling == "exp":
                eps = math.ldexp(eps, -2 * e)
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
            if e is not None:
                self._exp[out] = 0
            return out
        power = self.spec.bn_power
        if power == 0:
            # the identity: hand back the input itself and remember that it is shared, so that a
            # later "in-place" op on it runs out of place (see _generic / _activation)
            self._shared[x] = True
            return x
        else:
            rv = b["running_var"]
            if rv is None:
                raise ValueError(
                    "a BatchNorm without running statistics (track_running_stats=False) has no "
                    "eval form: give the model running statistics, or use px with bn='train'"
                )
            scale = torch.rsqrt(rv.to(x.dtype) + b["eps"])
            if b["weight"] is not None:
                scale = scale * b["weight"].detach().to(x.dtype)
            scale = scale.abs() ** power
            out = x * scale.view(shape)
        if e is not None:
            self._exp[out] = e
        return out

    def _avg_pool(self, name: str, args: tuple, kwargs: dict):
        pool, _ = _AVGPOOL[name]
        b = _bind(
            args,
            kwargs,
            (
                "input",
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            ),
            {
                "stride": None,
                "padding": 0,
                "ceil_mode": False,
                "count_include_pad": True,
                "divisor_override": None,
            },
        )
        x = b.pop("input")
        window = (b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"])
        summed = _sum_pool(pool, x, *window)
        if self.spec.coef_power == 0:
            out = summed
        else:
            # coefficient 1/divisor per output position: (average of ones) / (sum of ones)
            ones = torch.ones_like(x[:1, :1])
            if name == "avg_pool1d":  # avg_pool1d takes no divisor_override
                b.pop("divisor_override")
            coef = pool(ones, **b) / _sum_pool(pool, ones, *window)
            out = summed * coef**self.spec.coef_power
        return self._carry(x, out, growing=self.spec.coef_power == 0)

    def _adaptive_avg(self, func, name: str, args: tuple, kwargs: dict):  # noqa: ANN001
        dims = _ADAPTIVE_AVG[name]
        x = args[0] if args else kwargs["input"]
        avg = func(*args, **kwargs)
        counts = torch.ones((), dtype=x.dtype, device=x.device)
        in_sizes = x.shape[-dims:]
        out_sizes = avg.shape[-dims:]
        view = [1] * avg.dim()
        for axis, (n_in, n_out) in enumerate(zip(in_sizes, out_sizes, strict=True)):
            i = torch.arange(n_out, device=x.device)
            start = torch.div(i * n_in, n_out, rounding_mode="floor")
            end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
            shape = list(view)
            shape[avg.dim() - dims + axis] = n_out
            counts = counts * (end - start).to(x.dtype).view(shape)
        out = avg * counts ** (1 - self.spec.coef_power)
        return self._carry(x, out, growing=self.spec.coef_power == 0)

    def _mean(self, func, args: tuple, kwargs: dict):  # noqa: ANN001
        b = _bind(args, kwargs, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
        x = b["input"]
        out = func(*args, **kwargs)
        if b["dim"] is None:
            n = x.numel()
        else:
            dims = b["dim"] if isinstance(b["dim"], tuple | list) else [b["dim"]]
            n = math.prod(x.shape[d] for d in dims)
        out = out * float(n) ** (1 - self.spec.coef_power)
        return self._carry(x, out, growing=self.spec.coef_power == 0)

    def _carry(self, x: torch.Tensor, out: torch.Tensor, *, growing: bool) -> torch.Tensor:
        if self.spec.scaling == "none" or x not in self._exp:
            return out
        self._exp[out] = self.exponent(x)
        return self._renorm(out, inplace=False) if growing else out


def _ldexp(x: torch.Tensor, e: int, *, inplace: bool) -> torch.Tensor:
    """x * 2**e, exactly, for any int e (in steps the tensor's dtype can represent)."""
    while e != 0:
        step = max(-100, min(100, e))
        x = x.mul_(2.0**step) if inplace else x * 2.0**step
        inplace = True  # later steps act on the fresh tensor
        e -= step
    return x


def _one(v: Any) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)


def _sum_pool(pool, x: torch.Tensor, kernel, stride, padding, ceil_mode) -> torch.Tensor:  # noqa: ANN001
    if pool is F.avg_pool1d:
        return F.avg_pool2d(
            x.unsqueeze(-2),
            (1, _one(kernel)),
            (1, _one(stride or kernel)),
            (0, _one(padding)),
            ceil_mode,
            True,
            1,
        ).squeeze(-2)
    return pool(x, kernel, stride, padding, ceil_mode, True, 1)


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

    def __init__(self, criterion: str) -> None:
        self.criterion = criterion
        self.seen: set[str] = set()

    def __call__(self, what: str) -> None:
        if what not in self.seen:
            self.seen.add(what)
            warnings.warn(
                f"{self.criterion}: {what} is outside the path theory (bias-free ReLU networks); "
                "it is left as it is in the path copies, so scores are approximate",
                PathTheoryWarning,
                stacklevel=4,
            )
