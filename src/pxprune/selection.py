"""Which parameters are prunable, and their canonical names.

Prunable: the ``weight`` of every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (the final classifier
included), chosen by module type and never by name. Biases and normalisation layers never are.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod)\.")
_PARAMETRIZED = re.compile(r"parametrizations\.([^.]+)\.original$")


def canonical_name(name: str) -> str:
    """Strip ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile) and
    ``parametrizations.<p>.original`` so names match the plain model's ``named_parameters()``."""
    if "module." not in name and "_orig_mod." not in name and "parametrizations." not in name:
        return name  # the common case, without regular expressions (this runs per tensor per pass)
    previous = None
    while previous != name:
        previous = name
        name = _WRAPPERS.sub(r"\1", name)
    return _PARAMETRIZED.sub(r"\1", name)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel/DDP/torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def weight_tensor(module: nn.Module) -> torch.Tensor:
    """The leaf tensor holding a module's weight (the ``original`` under a parametrization)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations["weight"].original
    return module.weight


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Canonical weight name -> module, in ``named_modules()`` order."""
    out: dict[str, nn.Module] = {}
    for name, module in unwrap(model).named_modules():
        if isinstance(module, PRUNABLE_TYPES) and module.weight is not None:
            out[f"{name}.weight" if name else "weight"] = module
    return out


def _match(patterns: Iterable[str] | str | None, names: list[str], what: str) -> set[str]:
    if patterns is None:
        return set()
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        pattern = canonical_name(pattern)
        hits = {n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ValueError(
                f"{what} pattern {pattern!r} matches no prunable parameter; "
                f"prunable parameters are: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
            )
        chosen |= hits
    return chosen


def prunable_parameters(
    model: nn.Module,
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
) -> dict[str, torch.Tensor]:
    """Canonical name -> weight leaf tensor of every prunable, non-excluded parameter.

    The order is that of ``named_parameters()`` (used to break ties). ``include`` / ``exclude`` are
    exact names or fnmatch patterns; each must match at least one prunable parameter.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("scripted models cannot be pruned: pass the plain nn.Module instead")
    modules = prunable_modules(model)
    order = {canonical_name(n): i for i, (n, _) in enumerate(unwrap(model).named_parameters())}
    names = sorted(modules, key=lambda n: order.get(n, len(order)))
    if not names:
        raise ValueError(
            "the model has nothing to prune: pxprune prunes the weights of nn.Conv1d/2d/3d and "
            "nn.Linear modules, and this model has none"
        )
    keep = set(names)
    if include is not None:
        keep = _match(include, names, "include")
    keep -= _match(exclude, names, "exclude")
    if not keep:
        raise ValueError("include/exclude leave no prunable parameter; loosen them")
    return {n: weight_tensor(modules[n]) for n in names if n in keep}
