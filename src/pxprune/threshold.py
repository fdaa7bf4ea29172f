"""The one place that turns scores into masks (CONTRACTS.md section 3).

Counting: sparsity s in [0, 1) is the fraction of prunable weights removed. Round t of T prunes in
total n_t = floor(round((1 - (1 - s) ** (t / T)) * m, 9)) weights, exactly floor(round(s * m, 9)) at
t = T, made non-decreasing (SynFlow's exponential schedule). Masks never grow. Each round removes the
n_t - n_(t-1) lowest-scoring kept weights; among equal scores the earlier weight (parameter order in
``named_parameters()``, then flat index) goes first. ``scope="layerwise"`` applies the same rule per
layer with its own m_l.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

SCOPES = ("global", "layerwise")


def resolve_sparsity(sparsity: float | None, density: float | None) -> float:
    """Exactly one of sparsity/density; density d becomes s = round(1 - d, 12) once."""
    if (sparsity is None) == (density is None):
        raise ValueError("give exactly one of sparsity= (fraction removed) or density= (kept)")
    if density is not None:
        _check_fraction(density, "density", lower_open=True)
        return round(1.0 - float(density), 12)
    _check_fraction(sparsity, "sparsity", lower_open=False)
    return float(sparsity)


def _check_fraction(value: object, what: str, *, lower_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if lower_open:
        ok = 0.0 < value <= 1.0
        rng = "(0, 1]"
    else:
        ok = 0.0 <= value < 1.0
        rng = "[0, 1)"
    if not ok:
        hint = " (0.98 means 98% of the weights are removed)" if what == "sparsity" else ""
        raise ValueError(f"{what} must be in {rng}, got {value!r}{hint}")


def check_rounds(rounds: object) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds must be a positive integer, got {rounds!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return rounds


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    return scope


def pruned_counts(m: int, sparsity: float, rounds: int) -> list[int]:
    """n_1..n_T: the total number of weights pruned after each round."""
    final = math.floor(round(sparsity * m, 9))
    counts = []
    running = 0
    for t in range(1, rounds + 1):
        n = (
            final
            if t == rounds
            else math.floor(round((1.0 - (1.0 - sparsity) ** (t / rounds)) * m, 9))
        )
        running = max(running, min(n, final))
        counts.append(running)
    return counts


def _prune_lowest(scores: torch.Tensor, kept: torch.Tensor, k: int) -> torch.Tensor:
    """Remove the k lowest-scoring kept entries of flat ``scores`` (earlier first among ties)."""
    if k <= 0:
        return kept
    idx = kept.nonzero().squeeze(1)
    if k >= idx.numel():
        return torch.zeros_like(kept)
    vals = scores[idx]
    if torch.isnan(vals).any():
        raise ValueError("scores contain NaN; the criterion produced invalid values")
    kth = torch.kthvalue(vals.cpu(), k).values.to(vals.device)
    below = vals < kth
    n_below = int(below.sum())
    ties = (vals == kth).nonzero().squeeze(1)[: k - n_below]
    drop = below
    drop[ties] = True
    out = kept.clone()
    out[idx[drop]] = False
    return out


def prune_step(
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    target: int | Mapping[str, int],
    *,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """One round: prune kept weights until ``target`` are pruned in total (per layer when
    ``scope="layerwise"``, where ``target`` maps names to counts). Returns the new mask."""
    check_scope(scope)
    names = list(mask)
    if set(scores) != set(names):
        raise ValueError("scores and mask cover different parameters")
    if scope == "layerwise":
        out = {}
        for n in names:
            kept = mask[n].reshape(-1)
            k = int(target[n]) - int((~kept).sum())  # type: ignore[index]
            flat = scores[n].reshape(-1).to(torch.float64)
            out[n] = _prune_lowest(flat, kept, k).view_as(mask[n])
        return out
    kept = torch.cat([mask[n].reshape(-1).cpu() for n in names])
    flat = torch.cat([scores[n].detach().reshape(-1).cpu().to(torch.float64) for n in names])
    k = int(target) - int((~kept).sum())  # type: ignore[arg-type]
    new = _prune_lowest(flat, kept, k)
    out, start = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = new[start : start + size].view_as(mask[n]).to(mask[n].device)
        start += size
    return out


def targets(mask: Mapping[str, torch.Tensor], sparsity: float, rounds: int, scope: str) -> list:
    """The per-round targets for ``prune_step``: ints (global) or name -> int (layerwise)."""
    if scope == "global":
        m = sum(t.numel() for t in mask.values())
        counts = pruned_counts(m, sparsity, rounds)
        if m - counts[-1] <= 0:
            raise ValueError(f"sparsity {sparsity} keeps no weight of {m}; lower it")
        return counts
    per = {n: pruned_counts(t.numel(), sparsity, rounds) for n, t in mask.items()}
    if all(t.numel() - per[n][-1] <= 0 for n, t in mask.items()):
        raise ValueError(f"sparsity {sparsity} keeps no weight; lower it")
    return [{n: per[n][i] for n in mask} for i in range(rounds)]
