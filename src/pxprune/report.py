"""Per-layer reports of a mask: density, effective density and MACs (docs/design/CONTRACTS.md section 2).

A weight is *effective* when it lies on at least one fully kept input-to-output path. One
forward/backward of a reachability copy decides it exactly: weights are the mask (0/1), activations
and max-pool windows are open, BatchNorm is the identity, biases are 0, and values and gradients are
clamped to {0, 1} after every growing operation (so nothing overflows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ._scoped import frozen_state, model_device, positions_per_sample, recorded_calls, substituted
from .paths import CopySpec, PathMode, output_tensor
from .selection import ALL_KINDS, KINDS, Coverage, coverage, prunable_weights, unwrap

REACH = CopySpec(
    activation="identity",
    maxpool="sum",
    bn="linear",
    bn_power=0,
    coef_power=0,
    drop_bias=True,
    scaling="binary",
)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    shape: tuple[int, ...]
    kept: int
    total: int
    effective_kept: int
    dense_macs: int
    masked_macs: int

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def effective_density(self) -> float:
        return self.effective_kept / self.total

    @property
    def empty(self) -> bool:
        return self.kept == 0 or self.effective_kept == 0


@dataclasses.dataclass(frozen=True)
class Report:
    """The rows, one per masked weight, and ``coverage``: which weights of the model the mask
    covers and which it leaves out, and why (as in ``prune``'s metadata and warning)."""

    rows: list[LayerRow]
    coverage: Coverage | None = None

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def effective_kept(self) -> int:
        return sum(r.effective_kept for r in self.rows)

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def effective_density(self) -> float:
        return self.effective_kept / self.total

    @property
    def flops_fraction(self) -> float:
        dense = sum(r.dense_macs for r in self.rows)
        return sum(r.masked_macs for r in self.rows) / dense if dense else 1.0

    @property
    def empty_layers(self) -> list[str]:
        return [r.name for r in self.rows if r.empty]

    def as_dicts(self) -> list[dict]:
        return [
            {
                "name": r.name,
                "shape": "x".join(map(str, r.shape)),
                "kept": r.kept,
                "total": r.total,
                "density": r.density,
                "effective_kept": r.effective_kept,
                "effective_density": r.effective_density,
                "dense_macs": r.dense_macs,
                "masked_macs": r.masked_macs,
                "empty": r.empty,
            }
            for r in self.rows
        ]

    def to_markdown(self) -> str:
        from .tables import markdown_table

        rows = []
        for r in self.rows:
            macs = r.masked_macs / r.dense_macs if r.dense_macs else 1.0
            rows.append([r.name, "x".join(map(str, r.shape)), r.kept, r.total, f"{r.density:.4f}",
                         f"{r.effective_density:.4f}", f"{macs:.4f}", "**EMPTY**" if r.empty else ""])
        rows.append(["**total**", "", self.kept, self.total, f"{self.density:.4f}",
                     f"{self.effective_density:.4f}", f"{self.flops_fraction:.4f}",
                     f"{len(self.empty_layers)} empty"])
        table = markdown_table(
            ["layer", "shape", "kept", "total", "density", "effective", "MACs kept", ""], rows,
            align=["", "", "r", "r", "r", "r", "r", ""])
        if self.coverage is None:
            return table
        return f"{table}\n\nCoverage: {self.coverage.summary()}"


def effective_masks(
    model: nn.Module, mask: Mapping[str, torch.Tensor], input_size: tuple[int, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(name -> bool tensor of effective weights, name -> output positions per sample)."""
    model = unwrap(model)
    every = prunable_weights(model)
    device = model_device(model)
    weights = {}
    leaves = {}
    for name, entry in every.items():
        w = entry.tensor.detach()
        m = mask[name].to(device, w.dtype) if name in mask else torch.ones_like(w)
        t = m.clone().requires_grad_(True)
        weights[name] = t
        leaves[name] = t
    ids = {id(t): n for n, t in weights.items()}
    with frozen_state(model, training=False), torch.enable_grad(), substituted(model, weights):
        with PathMode(REACH, weight_names=ids, substituted_only=True) as mode, \
                recorded_calls(model) as calls:
            x = mode.track(torch.ones((1, *input_size), device=device))
            out = output_tensor(model(x))
            grads = torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
    eff = {}
    for (name, t), g in zip(leaves.items(), grads, strict=True):
        kept = mask[name].to(device) if name in mask else torch.ones_like(t, dtype=torch.bool)
        eff[name] = (kept & (g != 0)) if g is not None else torch.zeros_like(kept)
    return eff, positions_per_sample(calls, model)


def mask_coverage(model: nn.Module, mask: Mapping[str, torch.Tensor],
                  criterion: str | None = None) -> Coverage:
    """What ``mask`` covers of ``model``'s parameters, in ``prune``'s words: a weight a registered
    ``criterion`` cannot score is said so; another weight left out is "excluded" (or "not in the
    mask" when the criterion is unknown, e.g. a mask made elsewhere)."""
    from .criteria import CRITERIA

    known = criterion is not None and criterion in CRITERIA
    kinds = CRITERIA.get(criterion).kinds if known else ALL_KINDS
    covered = coverage(model, list(mask), kinds=kinds, criterion=criterion or "the criterion")
    if known:
        return covered
    why = {n: (c, "not in the mask" if w == "excluded" else w)
           for n, (c, w) in covered.not_covered.items()}
    return dataclasses.replace(covered, not_covered=why)


def layer_report(
    model: nn.Module, mask: Mapping[str, torch.Tensor], input_size: tuple[int, ...], *,
    criterion: str | None = None,
) -> Report:
    """The per-layer report of ``mask`` on ``model``, with its :func:`mask_coverage`."""
    try:
        eff, positions = effective_masks(model, mask, input_size)
    except RuntimeError as err:
        if not any(isinstance(m, KINDS["embedding"]) for m in unwrap(model).modules()):
            raise
        raise ValueError(
            "the per-layer report runs the model on all-ones real-valued inputs to find the effective "
            f"weights, which an nn.Embedding fed token ids cannot take ({str(err).splitlines()[0]}); "
            "for what the mask covers use pxprune.report.mask_coverage(model, mask)"
        ) from None
    rows = []
    for name in mask:
        t = mask[name]
        pos = positions.get(name, 0)
        rows.append(
            LayerRow(
                name=name,
                shape=tuple(t.shape),
                kept=int(torch.count_nonzero(t)),
                total=t.numel(),
                effective_kept=int(torch.count_nonzero(eff[name])),
                dense_macs=pos * t.numel(),
                masked_macs=pos * int(torch.count_nonzero(t)),
            )
        )
    return Report(rows, coverage=mask_coverage(model, mask, criterion))
