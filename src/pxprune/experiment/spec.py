"""Criterion specs and run-folder names (docs/design/CONTRACTS.md section 6).

A spec is ``name``, ``name[key=value,...]`` (values are YAML scalars) or the folder form
``name--key=value--key=value``, optionally followed by ``+shuffled`` and/or ``+reinit``. Options
equal to their defaults are dropped; the folder name lists the rest with sorted keys:
``px[classifier=signed,bn=train]`` -> ``px--bn=train--classifier=signed``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from .errors import UserError

SUFFIXES = {"+shuffled": "shuffle", "+reinit": "reinit"}

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclasses.dataclass(frozen=True)
class CriterionSpec:
    """A parsed ``--criterion``: the bare registered name, its options as given, and the
    sanity-check switches named by ``+shuffled`` / ``+reinit``."""

    name: str
    options: dict[str, Any]
    shuffle: bool = False
    reinit: bool = False


def yaml_scalar(text: str) -> Any:
    """``text`` read as one YAML value (``true``, ``3``, ``0.5``, ``null``, ``[1, 2]``, ``abc``)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside square brackets (``px[a=1,b=2],snip`` -> two parts)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"unbalanced ']' in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise UserError(f"unbalanced '[' in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def split_criteria(text: str) -> list[str]:
    """``--criteria px[bn=train],snip,random`` -> the three specs (commas inside brackets kept)."""
    parts = split_top_level(text)
    if any(not p for p in parts):
        raise UserError(f"empty criterion in {text!r}; separate criteria with single commas")
    return parts


def _pairs(text: str, sep: str, spec: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in split_top_level(text, sep) if sep == "," else text.split(sep):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(
                f"bad criterion option {item!r} in {spec!r}: write key=value, "
                "e.g. px[classifier=signed,bn=train]"
            )
        if key in options:
            raise UserError(f"criterion option {key!r} given twice in {spec!r}")
        options[key] = yaml_scalar(value.strip())
    return options


def parse_criterion(spec: str) -> CriterionSpec:
    """Parse one criterion spec (syntax only; :func:`normalise_options` checks the options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("empty criterion; give a name such as px (see `pxprune list criteria`)")
    text = spec.strip()
    flags = {"shuffle": False, "reinit": False}
    changed = True
    while changed:
        changed = False
        for suffix, flag in SUFFIXES.items():
            if text.endswith(suffix):
                text = text[: -len(suffix)]
                flags[flag] = True
                changed = True
    if "[" in text:
        if not text.endswith("]"):
            raise UserError(f"bad criterion spec {spec!r}: options go last in brackets, "
                            "e.g. px[classifier=signed]")
        name, _, inner = text[:-1].partition("[")
        options = _pairs(inner, ",", spec)
    elif "--" in text:
        name, _, rest = text.partition("--")
        options = _pairs(rest, "--", spec)
    else:
        name, options = text, {}
    name = name.strip()
    if not name or not _NAME.match(name):
        raise UserError(f"bad criterion spec {spec!r}; see `pxprune list criteria`")
    return CriterionSpec(name=name, options=options, **flags)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def normalise_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The criterion's options that differ from their defaults, validated, keys sorted (by its
    mask source). An unknown criterion names the registered ones; an unknown or bad option names
    the valid ones."""
    from .sources import source_for

    return source_for(name).options(options)


def format_value(value: Any) -> str:
    """A value as written in folder names (YAML-like: ``true``, ``null``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def criterion_label(
    name: str, options: Mapping[str, Any] | None = None, *, shuffle: bool = False,
    reinit: bool = False,
) -> str:
    """The run's folder / report-row name: ``px--bn=train--classifier=signed+shuffled``."""
    label = name + "".join(f"--{k}={format_value(options[k])}" for k in sorted(options or {}))
    if shuffle:
        label += "+shuffled"
    if reinit:
        label += "+reinit"
    return label


def sparsity_label(sparsity: float) -> str:
    """``0.982`` -> ``"0.982"``, ``0.36`` -> ``"0.36"``, ``0.0`` -> ``"0"`` (no trailing zeros)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or math.isnan(sparsity):
        raise ValueError(f"sparsity must be a number, got {sparsity!r}")
    text = f"{float(sparsity):.12f}".rstrip("0").rstrip(".")
    return text or "0"
