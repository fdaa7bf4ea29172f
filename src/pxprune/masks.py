"""Masks are data: ``{canonical parameter name: bool tensor}`` (docs/design/CONTRACTS.md section 2)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._io import atomic_save, load_payload
from .batches import _bytes
from .selection import PrunableWeight, canonical_name, prunable_weights, unwrap

FORMAT = "pxprune.mask"
FORMAT_VERSION = 1
PACKED_VERSION = 2
"""Version 2 stores every mask bit-packed (eight weights a byte): ``Mask.save(path, packed=True)``."""


class MaskParametrization(nn.Module):
    """``weight -> weight * mask``: pruned weights are 0 in every forward and get zero gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def _is_masked(module: nn.Module, attr: str | None = None) -> bool:
    if not parametrize.is_parametrized(module):
        return False
    attrs = [attr] if attr is not None else list(module.parametrizations)
    return any(
        a in module.parametrizations
        and any(isinstance(p, MaskParametrization) for p in module.parametrizations[a])
        for a in attrs
    )


def state_hash(model: nn.Module, names: list[str] | None = None) -> str:
    """sha256 of the model's floating tensors (canonical names, sorted): identifies theta_0."""
    h = hashlib.sha256()
    tensors = {canonical_name(n): t for n, t in unwrap(model).state_dict().items()}
    for n in sorted(tensors if names is None else names):
        t = tensors[n]
        if not t.is_floating_point():
            continue
        h.update(n.encode())
        h.update(_bytes(t))
    return h.hexdigest()


class Mask(Mapping[str, torch.Tensor]):
    """A read-only mapping from canonical parameter names to boolean tensors (True keeps).

    ``metadata`` records how it was made (criterion, options, sparsity, rounds, scope, seed, split
    and theta_0 hashes, versions).
    """

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, Any] | None = None
    ):
        items: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"mask entry {name!r} is not a tensor")
            items[canonical_name(name)] = t.detach().to(torch.bool)
        if not items:
            raise ValueError("a mask needs at least one entry")
        self._items = items
        self.metadata: dict[str, Any] = dict(metadata or {})

    # Mapping
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density:.4g})"

    # counting
    @property
    def kept(self) -> int:
        return int(sum(int(torch.count_nonzero(t)) for t in self._items.values()))

    @property
    def total(self) -> int:
        return int(sum(t.numel() for t in self._items.values()))

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def empty_layers(self, model: nn.Module | None = None, input_size=None) -> list[str]:
        """The layers with no weight on a fully kept input-output path (no weight kept, or every
        kept one cut off): the one definition of "empty" (``Report.empty_layers``, prune's
        metadata and warnings). With a model, measured; without, as recorded by ``prune``; a mask
        that has no record counts only the layers with no weight kept."""
        if model is not None:
            return self.report(model, input_size).empty_layers
        recorded = self.metadata.get("empty_layers")
        if recorded is not None:
            return list(recorded)
        return [n for n, t in self._items.items() if not bool(t.any())]

    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: t.to(device) for n, t in self._items.items()}, metadata=self.metadata)

    # model interaction
    def check_fits(self, model: nn.Module) -> dict[str, PrunableWeight]:
        """The weights the mask addresses; ValueError naming the first misfit."""
        weights = prunable_weights(model)
        for name, t in self._items.items():
            if name not in weights:
                raise ValueError(
                    f"the mask does not fit the model: it has {name!r}, which is not a prunable "
                    "weight of this model (was the mask made for another architecture?)"
                )
            shape = tuple(weights[name].tensor.shape)
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"the mask does not fit the model: {name!r} has shape {tuple(t.shape)} in "
                    f"the mask and {shape} in the model"
                )
        return {n: weights[n] for n in self._items}

    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights and keep them zero (a parametrization ``weight * mask``, on
        every module that shares the tensor).

        Applying to a model that already carries a pxprune mask, or a torch.nn.utils.prune one,
        is a ValueError naming the fix."""
        weights = self.check_fits(model)
        if any(_is_masked(m) for m in unwrap(model).modules()):
            raise ValueError(
                "the model already carries a pxprune mask: call mask.bake(model) (or "
                "pxprune.masks.remove(model)) before applying another"
            )
        _refuse_torch_prune(weights)
        for name, w in weights.items():
            tensor = w.tensor
            m = self._items[name].to(tensor.device)
            with torch.no_grad():
                tensor.mul_(m.to(tensor.dtype))
            for module, attr in w.places():
                parametrize.register_parametrization(module, attr, MaskParametrization(m))
        return model

    def bake(self, model: nn.Module) -> nn.Module:
        """Remove the parametrization, leaving plain weights with exact zeros where pruned (a
        shared tensor stays one tensor)."""
        weights = self.check_fits(model)
        for name, w in weights.items():
            for module, attr in w.places():
                if _is_masked(module, attr):
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            tensor = w.tensor
            with torch.no_grad():
                tensor.mul_(self._items[name].to(tensor.device, tensor.dtype))
        return model

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Hand the mask to ``torch.nn.utils.prune`` (``custom_from_mask``: ``<attr>_orig`` and
        ``<attr>_mask``), for tools that expect it; :meth:`from_torch_prune` reads it back."""
        from torch.nn.utils import prune as torch_prune

        for name, w in self.check_fits(model).items():
            m = self._items[name].to(w.tensor.device)
            for module, attr in w.places():
                torch_prune.custom_from_mask(module, attr, m)
        return model

    @classmethod
    def from_torch_prune(cls, model: nn.Module) -> Mask:
        """The mask of every weight pruned with ``torch.nn.utils.prune`` (``<attr>_mask``)."""
        out = {}
        for name, w in prunable_weights(model).items():
            buf = w.module._buffers.get(f"{w.attr}_mask")
            if buf is not None:
                out[name] = buf.detach().bool().clone()
        if not out:
            raise ValueError("the model carries no torch.nn.utils.prune mask (no *_mask buffer)")
        return cls(out, metadata={"criterion": "torch.nn.utils.prune"})

    def shuffled(self, seed: int = 0) -> Mask:
        """The same number kept in every layer, positions permuted at random within each layer
        (the sanity check of Frankle et al., ICLR 2021)."""
        from .seeding import generator

        g = generator(seed, "shuffle")
        out = {}
        for name, t in self._items.items():
            flat = t.reshape(-1).cpu()
            perm = torch.randperm(flat.numel(), generator=g)
            out[name] = flat[perm].view_as(t).to(t.device)
        meta = dict(self.metadata, shuffled_seed=seed)
        return Mask(out, metadata=meta)

    # persistence
    def save(self, path: str | os.PathLike, *, packed: bool = False) -> None:
        """Write atomically; loadable with ``torch.load(..., weights_only=True)``. ``packed``:
        eight weights a byte (for exports; read by :meth:`load` like the plain form)."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "version": PACKED_VERSION if packed else FORMAT_VERSION,
            "metadata": _plain(self.metadata),
        }
        if packed:
            payload["packed"] = {n: {"shape": list(t.shape), "bits": pack_bits(t)}
                                 for n, t in self._items.items()}
        else:
            payload["masks"] = {n: t.cpu() for n, t in self._items.items()}
        atomic_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no mask file at {path}: run `pxprune prune` to make one")
        payload = load_payload(
            path, FORMAT, what="mask", fix="re-create it with `pxprune prune`",
            version=(FORMAT_VERSION, PACKED_VERSION),
        )
        masks = payload.get("masks")
        if payload.get("version") == PACKED_VERSION:
            try:
                masks = {n: unpack_bits(e["bits"], e["shape"])
                         for n, e in (payload.get("packed") or {}).items()}
            except (KeyError, TypeError, ValueError, RuntimeError):
                raise ValueError(f"{path} holds a broken packed mask; re-export it") from None
        if not isinstance(masks, dict) or not masks:
            raise ValueError(f"{path} holds no mask tensors; re-create it with `pxprune prune`")
        return cls(masks, metadata=payload.get("metadata") or {})

    def report(self, model: nn.Module, input_size: tuple[int, ...] | None = None, *,
               batches=None):  # noqa: ANN001
        """The per-layer report (name, shape, kept, total, density, effective kept, MACs) and the
        coverage: which weights of ``model`` the mask covers and which not, and why. The input
        size comes from ``input_size``, else the mask's metadata, else ``batches``."""
        from .report import layer_report

        size = input_size or self.metadata.get("input_size")
        if size is None and batches is not None:
            from .batches import Batches

            size = Batches(batches, device=torch.device("cpu")).first_shape()
        if size is None:
            raise ValueError("report needs input_size=(C, H, W) or batches (the mask records none)")
        return layer_report(model, self, tuple(size), criterion=self.metadata.get("criterion"))


def _refuse_torch_prune(weights: Mapping[str, PrunableWeight]) -> None:
    """Two masks on one weight (``weight_orig * weight_mask`` and ours) would be ambiguous."""
    for w in weights.values():
        for module, attr, name in [(w.module, w.attr, w.name), *w.aliases]:
            if f"{attr}_orig" in module._parameters:
                raise ValueError(
                    f"{name} is still pruned by torch.nn.utils.prune ({attr}_orig and "
                    f"{attr}_mask): call torch.nn.utils.prune.remove(module, {attr!r}) on each "
                    "pruned module first (keeping its zeros), or use mask.to_torch_prune(model) "
                    "to stay with torch.nn.utils.prune"
                )


def _plain(value: Any) -> Any:
    """Metadata restricted to what ``weights_only`` loading accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value if value is None else bool(value)
    for kind in (int, float, str):  # plain builtins only (TorchVersion, numpy scalars are not)
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def remove(model: nn.Module) -> nn.Module:
    """Remove every pxprune mask parametrization, leaving the masked (zeroed) weights."""
    for module in unwrap(model).modules():
        for attr in list(getattr(module, "parametrizations", {}) or {}):
            if _is_masked(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def ones_like_model(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


@dataclasses.dataclass(frozen=True)
class Overlap:
    """How much two masks agree. ``shared``: kept by both / kept by the smaller of the two;
    ``jaccard``: kept by both / kept by either; ``layers``: ``shared`` per layer."""

    shared: float
    jaccard: float
    layers: dict[str, float]


def overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Overlap:
    if set(a) != set(b):
        raise ValueError("the masks cover different parameters")
    both = either = smaller = 0
    layers = {}
    for n in a:
        x, y = a[n].bool().cpu(), b[n].bool().cpu()
        if x.shape != y.shape:
            raise ValueError(f"the masks disagree on the shape of {n!r}")
        i, u = int((x & y).sum()), int((x | y).sum())
        s = min(int(x.sum()), int(y.sum()))
        layers[n] = i / s if s else 1.0
        both, either, smaller = both + i, either + u, smaller + s
    return Overlap(
        shared=both / smaller if smaller else 1.0,
        jaccard=both / either if either else 1.0,
        layers=layers,
    )


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, eight entries a byte (the first entry in the highest bit, as
    ``numpy.packbits``), padded with zeros to a whole byte."""
    flat = mask.detach().reshape(-1).to("cpu", torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`pack_bits`."""
    n = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (n + 7) // 8:
        raise ValueError(f"{bits.numel()} bytes cannot hold a mask of shape {tuple(shape)}")
    flat = (bits.view(-1, 1) & _BIT_WEIGHTS) != 0
    return flat.reshape(-1)[:n].reshape(tuple(shape)).clone()
