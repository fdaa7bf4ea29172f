"""Which weights are prunable, their canonical names, and what a prune covers.

Prunable weights are chosen by module type, never by name substrings, in kinds:

| kind | modules | tensors |
| --- | --- | --- |
| ``conv`` | ``nn.Conv1d/2d/3d`` | ``weight`` |
| ``linear`` | ``nn.Linear`` (the final classifier and attention output projections included) | ``weight`` |
| ``conv_transpose`` | ``nn.ConvTranspose1d/2d/3d`` | ``weight`` |
| ``attention`` | ``nn.MultiheadAttention`` | ``in_proj_weight`` (or ``q/k/v_proj_weight``) |
| ``embedding`` | ``nn.Embedding``, ``nn.EmbeddingBag`` | ``weight`` |
| ``recurrent`` | ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` | ``weight_ih_l*``, ``weight_hh_l*``, ... |

Each criterion declares the kinds it can score (``Criterion.kinds``); the others are reported as
not covered. Biases and normalisation layers are never pruned. A tensor shared by several modules
(``b.weight = a.weight``) is one prunable weight under its first name in ``named_parameters()``
order; its other names are aliases that masks apply to as well.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable

import torch
from torch import nn

KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "conv_transpose": (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
    "attention": (nn.MultiheadAttention,),
    "embedding": (nn.Embedding, nn.EmbeddingBag),
    "recurrent": (nn.RNNBase,),
}
ALL_KINDS = frozenset(KINDS)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = KINDS["conv"] + KINDS["linear"]
"""The conv and linear modules (what every criterion scores)."""

_WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod)\.")
_PARAMETRIZED = re.compile(r"parametrizations\.([^.]+)\.original$")
_TORCH_PRUNE = re.compile(r"((?:^|\.)(?:weight|in_proj_weight|[qkv]_proj_weight|weight_[ih]h_l\d+\w*))_orig$")


def canonical_name(name: str) -> str:
    """Strip ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile),
    ``parametrizations.<p>.original`` and torch.nn.utils.prune's ``_orig`` so that names match the
    plain model's ``named_parameters()``."""
    if ("module." not in name and "_orig_mod." not in name and "parametrizations." not in name
            and not name.endswith("_orig")):
        return name  # the common case, without regular expressions (this runs per tensor per pass)
    previous = None
    while previous != name:
        previous = name
        name = _WRAPPERS.sub(r"\1", name)
    name = _PARAMETRIZED.sub(r"\1", name)
    return _TORCH_PRUNE.sub(r"\1", name)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel/DDP/torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _attrs(module: nn.Module) -> list[str]:
    """The prunable tensor attributes of one module."""
    if isinstance(module, nn.MultiheadAttention):
        if getattr(module, "_qkv_same_embed_dim", True):
            return ["in_proj_weight"]
        return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    if isinstance(module, nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith("weight")]
    return ["weight"]


def kind_of(module: nn.Module) -> str | None:
    for kind, types in KINDS.items():
        if isinstance(module, types):
            return kind
    return None


def leaf(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The leaf tensor behind a module's attribute: the ``original`` under a parametrization (an
    applied pxprune mask), ``<attr>_orig`` under torch.nn.utils.prune, else the attribute."""
    if hasattr(module, "parametrizations") and attr in module.parametrizations:
        return module.parametrizations[attr].original
    orig = module._parameters.get(f"{attr}_orig")
    if orig is not None:
        return orig
    t = getattr(module, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def weight_tensor(module: nn.Module) -> torch.Tensor:
    """The leaf tensor holding a module's ``weight``."""
    t = leaf(module, "weight")
    assert t is not None
    return t


@dataclasses.dataclass(frozen=True)
class PrunableWeight:
    """One prunable tensor: where it lives and, for a shared tensor, the other places."""

    name: str
    module: nn.Module
    attr: str
    kind: str
    aliases: tuple[tuple[nn.Module, str, str], ...] = ()

    @property
    def tensor(self) -> torch.Tensor:
        t = leaf(self.module, self.attr)
        assert t is not None
        return t

    def places(self) -> list[tuple[nn.Module, str]]:
        return [(self.module, self.attr)] + [(m, a) for m, a, _ in self.aliases]


def prunable_weights(model: nn.Module, kinds: Iterable[str] | None = None) -> dict[str, PrunableWeight]:
    """Canonical name -> :class:`PrunableWeight`, in ``named_parameters()`` order (the tie order
    of thresholding); a shared tensor once, with its aliases."""
    chosen = ALL_KINDS if kinds is None else frozenset(kinds)
    plain = unwrap(model)
    found: dict[int, tuple[str, PrunableWeight]] = {}
    for mod_name, module in plain.named_modules(remove_duplicate=False):
        kind = kind_of(module)
        if kind is None or kind not in chosen:
            continue
        for attr in _attrs(module):
            t = leaf(module, attr)
            if t is None:
                continue
            name = f"{mod_name}.{attr}" if mod_name else attr
            key = id(t)
            if key in found:
                first, entry = found[key]
                if entry.module is not module or entry.attr != attr:
                    found[key] = (first, dataclasses.replace(
                        entry, aliases=entry.aliases + ((module, attr, name),)))
                continue
            found[key] = (name, PrunableWeight(name, module, attr, kind))
    order = {id(p): i for i, p in enumerate(plain.parameters())}
    entries = sorted(found.items(), key=lambda kv: order.get(kv[0], len(order)))
    return {name: entry for _, (name, entry) in entries}


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Canonical weight name -> module, for the conv and linear weights (``named_modules()``
    order)."""
    return {n: e.module for n, e in prunable_weights(model, {"conv", "linear"}).items()}


Pattern = str | type[nn.Module]


def _match(patterns: Iterable[Pattern] | Pattern | None, weights: dict[str, PrunableWeight],
           what: str) -> set[str]:
    if patterns is None:
        return set()
    if isinstance(patterns, str | type):
        patterns = [patterns]
    names = list(weights)
    chosen: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, type):
            if not issubclass(pattern, nn.Module):
                raise TypeError(f"{what}: {pattern!r} is not an nn.Module type")
            hits = {n for n, e in weights.items()
                    if isinstance(e.module, pattern) or any(isinstance(m, pattern) for m, _, _ in e.aliases)}
            label = pattern.__name__
        else:
            pattern = canonical_name(pattern)
            hits = {n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
            label = repr(pattern)
        if not hits:
            raise ValueError(
                f"{what} {label} matches no prunable parameter; prunable parameters are: "
                f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
            )
        chosen |= hits
    return chosen


def prunable_parameters(
    model: nn.Module,
    include: Iterable[Pattern] | Pattern | None = None,
    exclude: Iterable[Pattern] | Pattern | None = None,
    *,
    kinds: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Canonical name -> leaf tensor of every prunable, non-excluded weight of the given kinds.

    The order is that of ``named_parameters()`` (used to break ties). ``include`` / ``exclude``
    are exact names, fnmatch patterns or module types (``nn.Conv2d``); each must match at least
    one prunable weight."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("scripted models cannot be pruned: pass the plain nn.Module instead")
    weights = prunable_weights(model, kinds)
    if not weights:
        raise ValueError(
            "the model has nothing to prune: pxprune prunes the weights of convolutions, linear "
            "layers (and attention, embedding, recurrent layers), and this model has none"
        )
    keep = set(weights)
    if include is not None:
        keep = _match(include, weights, "include")
    keep -= _match(exclude, weights, "exclude")
    if not keep:
        raise ValueError("include/exclude leave no prunable parameter; loosen them")
    return {n: e.tensor for n, e in weights.items() if n in keep}


@dataclasses.dataclass(frozen=True)
class Coverage:
    """What a prune covers: ``prunable`` weights scored, of ``total`` parameters, and the weight
    tensors left out (name -> (count, why)); biases and normalisation are never pruned."""

    prunable: int
    total: int
    not_covered: dict[str, tuple[int, str]]
    fixed: int  # biases, normalisation, embeddings of positions...

    def as_dict(self) -> dict:
        return {"prunable": self.prunable, "total": self.total, "fixed": self.fixed,
                "not_covered": {n: {"count": c, "why": w} for n, (c, w) in self.not_covered.items()}}

    def summary(self) -> str:
        line = f"prunable {_millions(self.prunable)} of {_millions(self.total)} parameters"
        if self.not_covered:
            items = sorted(self.not_covered.items(), key=lambda kv: -kv[1][0])
            shown = ", ".join(f"{n} {_millions(c)} ({w})" for n, (c, w) in items[:4])
            more = f" and {len(items) - 4} more" if len(items) > 4 else ""
            line += f"; not covered: {shown}{more}"
        return line


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def coverage(model: nn.Module, scored: Iterable[str], *, kinds: Iterable[str], criterion: str) -> Coverage:
    """Which weights ``criterion`` (of ``kinds``) scores, and which it leaves out, and why."""
    scored = set(scored)
    plain = unwrap(model)
    every = prunable_weights(plain)
    supported = frozenset(kinds)
    seen = {id(e.tensor) for e in every.values()}
    not_covered: dict[str, tuple[int, str]] = {}
    for name, e in every.items():
        if name in scored:
            continue
        why = "excluded" if e.kind in supported else f"{criterion} cannot score {e.kind} weights"
        not_covered[name] = (e.tensor.numel(), why)
    total = fixed = 0
    for n, p in plain.named_parameters():
        total += p.numel()
        if id(p) not in seen:
            if p.dim() >= 2:
                not_covered[canonical_name(n)] = (p.numel(), "not a prunable kind")
            else:
                fixed += p.numel()
    prunable = sum(every[n].tensor.numel() for n in scored if n in every)
    return Coverage(prunable=prunable, total=total, not_covered=not_covered, fixed=fixed)
