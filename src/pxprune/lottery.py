"""Iterative magnitude pruning with weight rewinding: the lottery-ticket procedure of Frankle &
Carbin (ICLR 2019) and Frankle et al. ("Linear mode connectivity and the lottery ticket hypothesis",
ICML 2020). Not a criterion: it needs training (docs/design/CONTRACTS.md section 1)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from . import __version__, threshold
from .masks import Mask, remove, state_hash
from .selection import prunable_parameters, unwrap

TrainFn = Callable[..., object]


def levels_for(sparsity: float, rate: float) -> int:
    """Number of levels that remove ``rate`` of the remaining weights until ``sparsity``."""
    if sparsity == 0:
        return 0
    return max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - rate) - 1e-9))


def lottery(
    model: nn.Module,
    train_fn: TrainFn,
    /,
    *,
    sparsity: float,
    rate: float = 0.2,
    rewind_step: int = 0,
    scope: str = "global",
) -> Mask:
    """Find a winning ticket by iterative magnitude pruning with rewinding.

    ``train_fn(model, mask, *, max_steps=None)`` trains ``model`` in place; the model arrives with
    ``mask`` already applied (a parametrization: pruned weights are 0 and stay 0), so ``train_fn``
    must not apply it again. First ``train_fn(model, all-ones mask, max_steps=rewind_step)`` gives
    theta_k (k = 0 skips it); then each level loads theta_k, trains, and removes ``rate`` of the
    remaining weights with the smallest |theta| (the last level clipped to the exact target). On
    return the model holds theta_k without a mask: train it with the returned mask applied.
    """
    s = threshold.resolve_sparsity(sparsity, None)
    threshold.check_scope(scope)
    if not isinstance(rate, int | float) or not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate!r}")
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
        raise ValueError(f"rewind_step must be a non-negative integer, got {rewind_step!r}")
    if not callable(train_fn):
        raise TypeError("train_fn must be callable as train_fn(model, mask, *, max_steps=None)")
    plain = unwrap(model)
    params = prunable_parameters(plain)
    current = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    theta0 = state_hash(plain)
    if rewind_step > 0:
        _train(plain, train_fn, Mask(current), max_steps=rewind_step)
    rewind = copy.deepcopy(plain.state_dict())
    n_levels = levels_for(s, rate)
    total = {n: t.numel() for n, t in current.items()}
    m = sum(total.values())
    for level in range(1, n_levels + 1):
        plain.load_state_dict(rewind)
        _train(plain, train_fn, Mask(current), max_steps=None)
        trained = prunable_parameters(plain)
        scores = {n: trained[n].detach().abs() for n in current}
        density = max(1 - s, (1 - rate) ** level)
        if level == n_levels:
            density = 1 - s
        if scope == "global":
            goal = threshold.pruned_counts(m, 1 - density, 1)[0]
        else:
            goal = {n: threshold.pruned_counts(k, 1 - density, 1)[0] for n, k in total.items()}
        current = threshold.prune_step(scores, current, goal, scope=scope)
    plain.load_state_dict(rewind)
    meta = {
        "criterion": "lottery",
        "options": {"rate": rate, "rewind_step": rewind_step},
        "sparsity": s,
        "rounds": n_levels,
        "scope": scope,
        "seed": None,
        "split_hash": None,
        "theta0_hash": theta0,
        "rewind_hash": state_hash(plain),
        "versions": {"pxprune": __version__, "torch": torch.__version__},
    }
    return Mask(current, metadata=meta)


def _train(model: nn.Module, train_fn: TrainFn, mask: Mask, *, max_steps: int | None) -> None:
    mask.apply(model)
    try:
        train_fn(model, mask, max_steps=max_steps)
    finally:
        remove(model)
