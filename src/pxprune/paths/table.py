"""The table from torch function to handler (``pxprune.paths.handlers``).

Names are resolved against ``torch``, ``torch.Tensor``, ``torch.nn.functional`` and
``torch._C._nn``, so every call style of an operation (``F.relu``, ``torch.relu``,
``Tensor.relu_``, ``nn.ReLU``) lands on the same handler. A function not in the table is resolved
once by its ``__name__`` (and cached); a name nobody listed gets ``true_values``: an unknown
operation never sees a rescaled value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import handlers as h

Handler = Callable

# operations outside the path theory, named as the warning says
OUTSIDE = {
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
    "log_softmax": "softmax",
    "adaptive_max_pool1d": "adaptive max-pool",
    "adaptive_max_pool2d": "adaptive max-pool",
    "adaptive_max_pool3d": "adaptive max-pool",
}

_KINDS: dict[Handler, tuple[str, ...]] = {
    h.passthrough: (
        # metadata, autograd plumbing and constructors: no value of a copy is read
        "size", "dim", "ndimension", "numel", "nelement", "__len__", "stride", "storage_offset",
        "is_floating_point", "is_complex", "is_contiguous", "data_ptr", "element_size",
        "get_device", "requires_grad_", "retain_grad", "register_hook", "backward", "grad",
        "__set__", "__hash__", "__format__", "__repr__", "__bool__", "is_nonzero",
        "zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "new_zeros",
        "new_ones", "new_empty", "isfinite", "isnan", "isinf", "sign", "signbit", "argmax",
        "argmin", "argsort", "nonzero", "count_nonzero", "__reduce_ex__", "__deepcopy__",
        "untyped_storage", "storage", "is_leaf", "_is_view",
    ),
    h.homogeneous: (
        "view", "reshape", "flatten", "unflatten", "__getitem__", "permute", "transpose",
        "swapaxes", "swapdims", "contiguous", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_",
        "expand", "expand_as", "split", "split_with_sizes", "tensor_split", "chunk", "unbind",
        "t", "narrow", "select", "view_as", "reshape_as", "movedim", "moveaxis", "clone",
        "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
        "repeat", "repeat_interleave", "tile", "roll", "flip", "fliplr", "flipud", "rot90",
        "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
        "upsample_nearest", "upsample_bilinear", "dropout", "dropout1d",
        "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "identity",
        "abs", "absolute", "__abs__", "amax", "amin", "max", "min",
        "gather", "index_select", "masked_select", "take", "take_along_dim", "diagonal", "diag",
        "tril", "triu", "sort", "topk", "unfold", "fold",
    ),
    h.homogeneous_outside: ("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
    h.additive: (
        "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "subtract", "__sub__",
        "__rsub__", "__isub__", "rsub", "cat", "concat", "concatenate", "stack", "hstack",
        "vstack", "dstack", "where", "maximum", "minimum", "fmax", "fmin", "__setitem__",
        "pad", "masked_fill", "masked_fill_",
    ),
    h.negation: ("neg", "neg_", "negative", "__neg__"),
    h.product: ("mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"),
    h.elementwise: (
        "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu",
        "selu_", "celu", "celu_", "softplus", "mish", "mish_", "hardswish", "hardswish_",
        "hardsigmoid", "hardsigmoid_", "logsigmoid", "softsign", "tanhshrink", "hardshrink",
        "softshrink", "threshold", "threshold_", "exp", "exp_", "exp2", "expm1", "log", "log1p",
        "log2", "log10", "sqrt", "sqrt_", "rsqrt", "pow", "pow_", "__pow__", "square", "reciprocal",
        "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_",
        "sin", "cos", "erf", "erfc", "sinh", "cosh", "atan", "asinh", "sign_", "rrelu",
    ),
    h.softmax: ("softmax", "log_softmax", "_softmax"),
    h.comparison: (
        "gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__", "__eq__",
        "__ne__", "greater", "less", "greater_equal", "less_equal", "not_equal", "isclose",
    ),
    h.normalisation: ("layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize"),
    h.attention: ("scaled_dot_product_attention",),
    h.multi_head_attention: ("multi_head_attention_forward",),
    h.quotient: ("div", "div_", "__truediv__", "__itruediv__", "__rtruediv__", "true_divide", "divide"),
    h.matmul: (
        "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "dot", "outer", "ger", "einsum",
        "inner", "tensordot", "vdot", "mv", "kron",
    ),
    h.reduce_sum: ("sum", "nansum", "cumsum"),
    h.linear_map: ("conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d",
                   "conv_transpose3d"),
    h.activation: (
        "relu", "relu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "relu6", "relu6_",
    ),
    h.maxpool: (
        "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
        "max_pool2d_with_indices", "max_pool3d_with_indices",
    ),
    h.batch_norm: ("batch_norm",),
    h.avg_pool: ("avg_pool1d", "avg_pool2d", "avg_pool3d"),
    h.adaptive_avg_pool: ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"),
    h.mean: ("mean",),
    h.interpolate: ("interpolate", "upsample"),
}

BY_NAME: dict[str, Handler] = {name: handler for handler, names in _KINDS.items() for name in names}

# properties read through ``Tensor.<name>.__get__``: values (views) or metadata
_VALUE_PROPERTIES = {"T", "mT", "H", "mH", "data", "real"}

_NAMESPACES = (torch, torch.Tensor, F, torch._C._nn)

TABLE: dict[Callable, Handler] = {
    torch.autograd.grad: h.passthrough,
    torch.autograd.backward: h.passthrough,
}
for _name, _handler in BY_NAME.items():
    for _space in _NAMESPACES:
        _f = getattr(_space, _name, None)
        if callable(_f):
            TABLE.setdefault(_f, _handler)


def resolve(func: Callable) -> Handler:
    """The handler of ``func`` (cached in ``TABLE``)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        prop = getattr(getattr(func, "__self__", None), "__name__", "")
        handler = h.homogeneous if prop in _VALUE_PROPERTIES else h.passthrough
    else:
        handler = BY_NAME.get(name, h.true_values)
    try:
        TABLE[func] = handler
    except TypeError:  # unhashable callables are resolved every time
        pass
    return handler


def outside_name(func: Callable) -> str:
    name = getattr(func, "__name__", "") or repr(func)
    return OUTSIDE.get(name, name)
