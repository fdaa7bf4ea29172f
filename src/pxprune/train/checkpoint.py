"""Checkpoints: plain (baked) state dicts, RNG states, atomic ``last.pt``
(docs/design/CONTRACTS.md section 5).

A masked model carries ``<module>.parametrizations.weight.original`` and the mask buffer; a
checkpoint stores the plain names of the unwrapped model instead (``<module>.weight``, exact zeros
where pruned), so it loads into a fresh model and the mask is re-applied from ``mask.pt``.
Everything in a checkpoint loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_save, load_payload
from ..selection import canonical_name, unwrap

FORMAT = "pxprune.checkpoint"
FORMAT_VERSION = 1

_PARAM_BUFFER = re.compile(r"(^|\.)parametrizations\.[^.]+\.\d+\.")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under canonical names, without mask buffers, on the CPU.

    A parametrized weight is stored as its ``original`` (which the masked optimizer keeps at
    exactly 0 where pruned), i.e. the baked weight."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in unwrap(model).state_dict().items():
        if _PARAM_BUFFER.search(name):
            continue
        out[canonical_name(name)] = tensor.detach().cpu().clone()
    return out


def load_plain_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`plain_state_dict` into the model, masked or not (names and shapes must
    match exactly; a masked weight's ``original`` receives the plain weight)."""
    target = unwrap(model)
    own = {
        canonical_name(k): k for k in target.state_dict() if not _PARAM_BUFFER.search(k)
    }
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(f"the checkpoint does not fit the model ({what})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(shapes[own[name]]):
            raise ValueError(
                f"the checkpoint does not fit the model: {name!r} has shape "
                f"{tuple(tensor.shape)} there and {tuple(shapes[own[name]])} here"
            )
    result = target.load_state_dict({own[n]: t for n, t in state.items()}, strict=False)
    assert not result.unexpected_keys and all(_PARAM_BUFFER.search(k) for k in result.missing_keys)


def global_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python ``random`` states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (from ``Trainer.state_dict``, plus anything plain) atomically."""
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ``ValueError`` when it is not one."""
    payload = load_payload(
        path, FORMAT, what="checkpoint", fix="delete it to train again from the mask",
        version=FORMAT_VERSION,
    )
    for key in ("epoch", "model", "optimizer", "scheduler", "scaler", "rng"):
        if key not in payload:
            raise ValueError(f"{path} lacks {key!r}; delete it to train again from the mask")
    return payload
