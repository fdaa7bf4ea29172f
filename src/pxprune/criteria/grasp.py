"""GraSP: Gradient Signal Preservation at initialisation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from .._scoped import twice_differentiable
from .base import Context, Criterion, DataOptions, register_criterion
from .snip import as_input, mean_loss_gradient, summed_cross_entropy, train_mode_pass


@dataclasses.dataclass(frozen=True)
class GraSPOptions(DataOptions):
    temperature: float = 200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"grasp: temperature must be a positive number, got {t!r}")
        object.__setattr__(self, "temperature", float(t))


@register_criterion
class GraSP(Criterion):
    """GraSP (Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
    Flow", ICLR 2020).

    Equation: the paper removes the weights with the largest ``S(-theta) = -theta * (H g)``, where
    ``g = dL/dtheta`` and ``H = d^2L/dtheta^2`` (so ``H g`` is the gradient of ``g^T g / 2`` with
    ``g`` held fixed in one factor). As a "higher keeps" score this is ``S_j = theta_j (H g)_j``,
    signed, at the masked weights ``theta * M`` (pruned weights score 0 and contribute nothing); H
    and g are restricted to the scored weights. L is the cross-entropy of the logits divided by
    ``temperature`` (T = 200 by default, the paper's setting), averaged over the whole split
    (each sample weighs 1/N whatever ``micro_batch``; segmentation: the mean over labelled pixels).

    Computation: pass 1 accumulates ``g`` over the micro-batches and detaches it; pass 2, per
    micro-batch b, takes the gradient (with ``create_graph``) of the summed loss L_b, forms
    ``g . dL_b/dtheta`` and differentiates it again; ``H g = sum_b d(g . dL_b/dtheta)/dtheta / N``.
    Memory is that of one micro-batch's double backward.

    Data: the pruning split with class-index targets (``needs_targets``). Mode: train mode
    (BatchNorm batch statistics per micro-batch: on a network with BatchNorm the scores depend on
    which samples share a micro-batch; on a BN-free network they do not depend on chunking,
    batching or sample order, as tested), running statistics never updated (scratch copies),
    dropout off; gradients by ``torch.autograd.grad`` only, no ``.grad`` touched. Cost per round:
    two forward passes, one backward and one double backward over the split (about four times
    SNIP). Options: ``micro_batch`` (default 64), ``temperature`` (default 200).
    """

    name = "grasp"
    Options = GraSPOptions
    default_rounds = 1
    uses_data = True
    needs_targets = True

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        leaves = ctx.masked(mask, grad=True)
        tensors = list(leaves.values())
        with train_mode_pass(ctx, leaves), twice_differentiable():
            g, count = mean_loss_gradient(ctx, tensors, criterion=self.name, temperature=t)
            hg = [torch.zeros_like(w, requires_grad=False) for w in tensors]
            for x, y in ctx.batches:
                loss, _ = summed_cross_entropy(ctx.model(as_input(x, ctx)), y, criterion=self.name,
                                               temperature=t, select=ctx.output)
                if not loss.requires_grad:
                    continue
                grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
                terms = [(gb * gs).sum() for gb, gs in zip(grads, g, strict=True) if gb is not None]
                if not terms:
                    continue
                dot = torch.stack(terms).sum()
                if not dot.requires_grad:  # dL_b/dtheta does not depend on the scored weights
                    continue
                for acc, h in zip(hg, torch.autograd.grad(dot, tensors, allow_unused=True),
                                  strict=True):
                    if h is not None:
                        acc += h
            ctx.all_sum_(*hg)  # the other processes' shards; count is already the global one
        return {n: w.detach() * h / count for (n, w), h in zip(leaves.items(), hg, strict=True)}
