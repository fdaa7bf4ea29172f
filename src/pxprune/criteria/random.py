"""Random pruning: the baseline every criterion at initialisation must beat."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import Context, Criterion, NoOptions, register_criterion


@register_criterion
class Random(Criterion):
    """Random scores (the usual baseline, e.g. Frankle et al., "Pruning Neural Networks at
    Initialization: Why are We Missing the Mark?", ICLR 2021).

    Equation: ``S_j ~ U[0, 1)`` i.i.d. for every scored weight; already-pruned weights score 0.

    Draws come from ``ctx.generator`` (the seed's "criterion" stream, on the CPU, then moved to the
    model's device), never from torch's global generator. Every call draws fresh values for every
    weight (pruned or not), so a whole ``prune`` call is a deterministic function of ``seed``, the
    same on every device; with several rounds each round re-ranks the survivors at random.

    Data: none (``batches`` are ignored). Mode: the model is never run. Cost per round: one
    uniform draw per scored weight.
    """

    name = "random"
    Options = NoOptions
    default_rounds = 1
    uses_data = False
    needs_targets = False

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = {}
        for n, p in ctx.params.items():
            draw = torch.rand(p.shape, generator=ctx.generator, dtype=torch.float32)
            draw = draw.to(p.device)
            scores[n] = torch.where(mask[n], draw, torch.zeros((), device=p.device))
        return scores
