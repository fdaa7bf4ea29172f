"""Magnitude pruning at initialisation."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import Context, Criterion, NoOptions, register_criterion


@register_criterion
class Magnitude(Criterion):
    """Weight magnitude (Han et al., "Learning both Weights and Connections for Efficient Neural
    Networks", NeurIPS 2015; applied at initialisation as in Frankle et al., ICLR 2021).

    Equation: ``S_j = |theta_j * M_j|``, so already-pruned weights score 0. With several rounds the
    ranking of the survivors never changes: iterating only matters for ``scope="layerwise"`` counts.

    Data: none (``batches`` are ignored). Mode: the model is never run. Cost per round: one
    elementwise pass over the scored weights.
    """

    name = "magnitude"
    Options = NoOptions
    default_rounds = 1
    uses_data = False
    needs_targets = False

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: w.abs() for n, w in ctx.masked(mask).items()}
