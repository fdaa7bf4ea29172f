"""The one place that turns scores into masks (docs/design/CONTRACTS.md section 3).

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
from torch.utils.weak import WeakTensorKeyDictionary

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


def _reference_prune_lowest(scores: torch.Tensor, kept: torch.Tensor, k: int) -> torch.Tensor:
    """The specification of ``_prune_lowest`` in plain float64 (kept for the property tests)."""
    if k <= 0:
        return kept
    idx = kept.nonzero().squeeze(1)
    if k >= idx.numel():
        return torch.zeros_like(kept)
    vals = scores[idx].to(torch.float64)
    if torch.isnan(vals).any():
        raise ValueError("scores contain NaN; the criterion produced invalid values")
    kth = torch.kthvalue(vals.cpu(), k).values.to(vals.device)
    below = vals < kth
    ties = (vals == kth).nonzero().squeeze(1)[: k - int(below.sum())]
    drop = below
    drop[ties] = True
    out = kept.clone()
    out[idx[drop]] = False
    return out


# kept counts of the masks this module made, so that the next round need not count them again
# (validated by the tensor's version counter: an in-place change invalidates the entry)
_COUNTS = WeakTensorKeyDictionary()


def _count(kept: torch.Tensor) -> int:
    hit = _COUNTS.get(kept)
    if hit is not None and hit[0] == kept._version:
        return hit[1]
    return int(torch.count_nonzero(kept))  # (bool .sum() is an order of magnitude slower)


def _remember(kept: torch.Tensor, count: int) -> torch.Tensor:
    if not kept.is_inference():
        _COUNTS[kept] = (kept._version, count)
    return kept


_DIRECT = 1 << 22  # up to this many kept entries the selection runs on all of them


def _candidates(
    flats: list[torch.Tensor], kepts: list[torch.Tensor], k: int, n_kept: int
) -> list[torch.Tensor]:
    """Per tensor, the flat indices (ascending) of kept entries that include the k lowest-scoring
    ones over all tensors and every entry tied with the k-th. Large problems: a strided sample
    gives an upper estimate u of the k-th score, and the candidates are the kept entries <= u
    (checked to be at least k, else the estimate is raised); the estimate only affects speed,
    never the result."""
    if n_kept > _DIRECT:
        total = sum(f.numel() for f in flats)
        stride = max(1, total // (1 << 20))
        sample = torch.cat(
            [f[::stride][m[::stride]].to(torch.float64) for f, m in zip(flats, kepts, strict=True)]
        )
        m = sample.numel()
        for margin in (0.001, 0.01, 0.05, 0.25):
            j = math.ceil((k / n_kept + margin) * m)
            if m == 0 or j >= m:
                break
            upper = torch.kthvalue(sample, j).values
            out = []
            for f, kept in zip(flats, kepts, strict=True):
                # not (f > u): NaN scores become candidates too, so the caller sees them
                chosen = (f > upper.to(f.dtype) if f.dtype != torch.float64 else f > upper)
                chosen.logical_not_()
                chosen &= kept
                out.append(chosen.nonzero().squeeze(1))
            if sum(i.numel() for i in out) >= k:
                return out
    return [kept.nonzero().squeeze(1) for kept in kepts]


def _select(
    flats: list[torch.Tensor], kepts: list[torch.Tensor], k: int, counts: list[int]
) -> tuple[list[torch.Tensor], list[int]]:
    """Remove the k lowest-scoring kept entries over all the flat tensors (ties: earlier tensor,
    then earlier index, first). The scores are compared in their own dtypes (exactly as their
    float64 images would be), on their devices; no concatenation of all scores is made.
    Returns the new flat masks and their kept counts."""
    n_kept = sum(counts)
    if k <= 0:
        return kepts, counts
    if k >= n_kept:
        return [torch.zeros_like(m) for m in kepts], [0] * len(kepts)
    flats = [f if f.is_floating_point() else f.to(torch.float64) for f in flats]
    idx = _candidates(flats, kepts, k, n_kept)  # kept NaN scores are always among them
    dtype = torch.float64 if any(f.dtype == torch.float64 for f in flats) else flats[0].dtype
    device = kepts[0].device
    vals = torch.cat([f[i].to(device, dtype) for f, i in zip(flats, idx, strict=True)])
    if bool(torch.isnan(vals).any()):
        raise ValueError("scores contain NaN; the criterion produced invalid values")
    kth = torch.kthvalue(vals, k).values
    drop = vals < kth
    need = k - int(torch.count_nonzero(drop))
    if need > 0:
        drop[(vals == kth).nonzero().squeeze(1)[:need]] = True
    out, left, start = [], [], 0
    for kept, i, c in zip(kepts, idx, counts, strict=True):
        piece = drop[start : start + i.numel()].to(i.device)
        start += i.numel()
        new = kept.clone()
        gone = i[piece]
        new[gone] = False
        out.append(new)
        left.append(c - gone.numel())
    return out, left


def _prune_lowest(
    scores: torch.Tensor, kept: torch.Tensor, k: int, n_kept: int | None = None
) -> torch.Tensor:
    """Remove the k lowest-scoring kept entries of flat ``scores`` (earlier first among ties),
    exactly as ``_reference_prune_lowest`` does."""
    if n_kept is None:
        n_kept = _count(kept)
    return _select([scores], [kept], k, [n_kept])[0][0]


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
    flats = {n: scores[n].detach().reshape(-1).to(mask[n].device) for n in names}
    kepts = {n: mask[n].reshape(-1) for n in names}
    counts = {n: _count(mask[n]) for n in names}
    if scope == "layerwise":
        out = {}
        for n in names:
            k = int(target[n]) - (kepts[n].numel() - counts[n])  # type: ignore[index]
            (new,), (left,) = _select([flats[n]], [kepts[n]], k, [counts[n]])
            out[n] = _remember(new.view_as(mask[n]), left)
        return out
    n_kept = sum(counts.values())
    k = int(target) - (sum(m.numel() for m in kepts.values()) - n_kept)  # type: ignore[arg-type]
    new, left = _select([flats[n] for n in names], [kepts[n] for n in names], k,
                        [counts[n] for n in names])
    return {
        n: _remember(t.view_as(mask[n]), c) for n, t, c in zip(names, new, left, strict=True)
    }


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
