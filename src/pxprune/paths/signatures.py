"""Binding the arguments of an intercepted torch function by parameter name.

Signatures come from the function itself where Python can read them, else from
``torch.overrides.get_testing_overrides()`` (PyTorch's own table of the signatures of every
overridable builtin). Binding is lenient (extra positionals are ignored, keywords pass through), as
both sources omit some keyword-only parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

_CACHE: dict[Any, tuple[tuple[str, ...], dict[str, Any]]] = {}
_OVERRIDES: dict | None = None


def _signature(func: Callable) -> inspect.Signature | None:
    global _OVERRIDES
    try:
        sig = inspect.signature(func)
        kinds = {p.kind for p in sig.parameters.values()}
        if kinds - {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            return sig
    except (TypeError, ValueError):
        pass
    if _OVERRIDES is None:
        _OVERRIDES = torch.overrides.get_testing_overrides()
    dummy = _OVERRIDES.get(func)
    return inspect.signature(dummy) if dummy is not None else None


def _names(func: Callable) -> tuple[tuple[str, ...], dict[str, Any]]:
    try:
        return _CACHE[func]
    except KeyError:
        pass
    sig = _signature(func)
    names: list[str] = []
    defaults: dict[str, Any] = {}
    if sig is not None:
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            name = "input" if not names and p.name == "self" else p.name
            names.append(name)
            if p.default is not p.empty:
                defaults[name] = p.default
    _CACHE[func] = (tuple(names), defaults)
    return _CACHE[func]


def arguments(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Parameter name -> value (defaults filled in); the first parameter is always ``input``."""
    names, defaults = _names(func)
    if not names:
        names = ("input",)
    out = dict(defaults)
    out.update(zip(names, args, strict=False))
    out.update(kwargs)
    if "self" in out and "input" not in out:
        out["input"] = out.pop("self")
    return out
