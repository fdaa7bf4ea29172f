"""Scoped, exception-safe changes to a model: every one is undone on exit, even on error."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .selection import canonical_name, unwrap


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str, str]]:
    """Canonical name -> (owning module, attribute, "param" | "buffer") for every tensor."""
    table: dict[str, tuple[nn.Module, str, str]] = {}
    for mod_name, module in unwrap(model).named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, p in module._parameters.items():
            if p is not None:
                table.setdefault(canonical_name(prefix + attr), (module, attr, "param"))
        for attr, b in module._buffers.items():
            if b is not None:
                table.setdefault(canonical_name(prefix + attr), (module, attr, "buffer"))
    return table


@contextlib.contextmanager
def substituted(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Run the model with some parameters/buffers replaced by other tensors, by canonical name.

    Nothing is written into the model's own tensors; the originals are put back on exit. Under a
    parametrization the ``original`` is replaced (so a user's applied mask still multiplies).
    """
    table = _owners(model)
    saved: list[tuple[dict, str, object]] = []
    try:
        for name, tensor in tensors.items():
            try:
                module, attr, kind = table[name]
            except KeyError:
                raise KeyError(f"the model has no parameter or buffer named {name!r}") from None
            store = module._parameters if kind == "param" else module._buffers
            saved.append((store, attr, store[attr]))
            store[attr] = tensor
        yield
    finally:
        for store, attr, original in reversed(saved):
            store[attr] = original


@contextlib.contextmanager
def frozen_state(model: nn.Module, *, training: bool | None = None) -> Iterator[None]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit.

    ``training=False`` puts the whole model in eval mode inside the block, ``True`` in train mode.
    """
    modules = list(model.modules())
    flags = [m.training for m in modules]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if training is not None:
            model.train(training)
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


def scratch_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every buffer (BN running statistics, counters), to substitute while a train-mode
    pass would otherwise update the model's own statistics."""
    return {canonical_name(n): b.clone() for n, b in unwrap(model).named_buffers()}


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def recorded_calls(model: nn.Module) -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """Record ``(weight name, output shape)`` of every prunable module's forward, in call order
    (forward hooks, removed on exit). Unlike tensor identities, this sees through
    parametrizations (an applied mask) and wrappers."""
    from .selection import prunable_modules

    calls: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in prunable_modules(model).items():
        def hook(mod, inputs, output, name=name):  # noqa: ANN001
            out = output[0] if isinstance(output, tuple | list) else output
            if isinstance(out, torch.Tensor):
                calls.append((name, tuple(out.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def positions_per_sample(calls: list[tuple[str, tuple[int, ...]]], model: nn.Module) -> dict[str, int]:
    """Output positions per sample and channel of each prunable module (for MAC counts)."""
    from .selection import prunable_modules

    modules = prunable_modules(model)
    out: dict[str, int] = {}
    for name, shape in calls:
        if not shape:
            continue
        linear = isinstance(modules[name], nn.Linear)
        channels = shape[-1] if linear else (shape[1] if len(shape) > 1 else 1)
        out[name] = math.prod(shape) // max(1, shape[0] * channels) if len(shape) > 1 else 1
    return out


class _TwiceDifferentiable(torch.overrides.TorchFunctionMode):
    """Runs the ops whose backward PyTorch cannot differentiate again in an equal form that it
    can. ``hardsigmoid``'s backward has no derivative (``hardswish``'s has); ``relu6(x + 3) / 6``
    is the same function with the same gradient almost everywhere, and its second derivative is
    the true one (zero)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.hardsigmoid:
            x = args[0]
            inplace = args[1] if len(args) > 1 else kwargs.get("inplace", False)
            out = torch.nn.functional.relu6(x + 3.0) / 6.0
            return x.copy_(out) if inplace else out
        return func(*args, **kwargs)


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Scope in which a model's forward can be differentiated twice (GraSP's Hessian-gradient
    product): attention runs in its math form (the fused kernels have no double backward) and
    ``hardsigmoid`` in an equal form that has one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), _TwiceDifferentiable():
        yield
