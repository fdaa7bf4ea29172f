"""Data-free path-flow criteria: SynFlow (here) and the engine SynFlow-L2 shares (``synflow_l2``).

- ``synflow``: Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020: the synaptic saliency
  ``S(theta) = theta * dR/dtheta`` of the synaptic-flow objective
  ``R = 1^T (prod_l |theta^[l]|) 1``.
- ``synflow_l2``: the L2 path norm of Gebhart, Saxena, Schrater, "A Unified Paths Perspective for
  Pruning at Initialization" (2021), the data-free counterpart of PX (Iurada et al., CVPR 2024):
  ``R2 = sum_k sum_{p in P_k} v_p**2`` and ``S_j = theta_j**2 * dR2/d(theta_j**2)``.

Both run the user's own forward under a path copy (``pxprune.paths``) on one all-ones sample of the
input shape (from the first batch or ``input_size=(C, H, W)``), with every module in eval mode. The
copies carry exact power-of-two exponents per tensor (``scaling="exp"``), so the raw scores are the
true ones times one positive global factor ``2**-e``: rankings are exact and deep nets do not
overflow in float32 (at 64 px and torchvision's init, SynFlow's R is about 2**230 on ResNet-50 and
2**725 on ResNet-152; SynFlow-L2's about 2**138 on ResNet-152).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import torch

from .._scoped import substituted
from ..paths import CopySpec, PathMode, WarnOnce
from .base import Context, Criterion, InputSizeOptions, register_criterion
from .px import reject_compiled

# SynFlow: |theta| weights; BN an eval-form per-channel scale |gamma|/sqrt(var+eps) with shift 0;
# biases 0; every other fixed coefficient |c| (average pooling and ``mean`` are then as they are);
# every operation runs as it is on the copy's values (ReLU and max-pool on values >= 0; GELU,
# sigmoid, LayerNorm (weight |gamma|, no bias), softmax and attention the real functions).
SYNFLOW_SPEC = CopySpec(activation="keep", maxpool="keep", bn="linear", bn_power=1,
                        coef_power=1, drop_bias=True, scaling="exp")

class Flow(NamedTuple):
    """One path-flow evaluation. The true values are ``scores * 2**exponent`` and
    ``total * 2**exponent`` (``total`` is R, the output sum of the copy)."""

    scores: dict[str, torch.Tensor]
    total: float
    exponent: int


class _PathFlow(Criterion):
    """Shared engine: leaves ``u = M * w(theta)`` (``w = |theta|`` or ``theta**2``) requiring
    grad, ``R = sum`` of the copy's output on ones, score ``u * dR/du`` (>= 0) on kept weights."""

    Options = InputSizeOptions
    default_rounds = 100
    uses_data = False
    kinds = frozenset({"conv", "linear", "conv_transpose", "attention"})
    spec: ClassVar[CopySpec]
    power: ClassVar[int]

    def setup(self, ctx: Context) -> None:
        reject_compiled(ctx.model, self.name)
        ctx.model.eval()  # every pass in eval mode; the API restores the caller's flags
        self.shape = tuple(ctx.sample_shape())
        self.warn = WarnOnce(self.name)
        self.weights = {n: w.detach() for n, w in ctx.all_weights.items()}
        self.coefficients: dict = {}  # BatchNorm scales, computed once per call
        self.dtype = ctx.dtype  # float32 for a half-precision model (with ctx.cast)
        self.weights = {n: w.to(self.dtype) for n, w in self.weights.items()}

    def _transform(self, w: torch.Tensor) -> torch.Tensor:
        return w.abs() if self.power == 1 else w * w

    def flow(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> Flow:
        """Scores (raw, times ``2**-exponent``), R and the exponent for one mask."""
        tensors: dict[str, torch.Tensor] = {}
        leaves: dict[str, torch.Tensor] = {}
        for n, w in self.weights.items():
            t = self._transform(w)
            if n in mask:
                t = t * mask[n].to(t.dtype)
            if n in ctx.params:
                t = t.requires_grad_(True)
                leaves[n] = t
            tensors[n] = t
        ones = torch.ones((1, *self.shape), dtype=self.dtype, device=ctx.device)
        try:
            with torch.enable_grad(), substituted(ctx.model, {**ctx.cast, **tensors}), PathMode(
                self.spec, warn=self.warn, coefficients=self.coefficients, substituted_only=True,
                weight_names={id(t): n for n, t in tensors.items()},
            ) as mode:
                out = ctx.output_of(ctx.model(mode.track(ones)))
                exponent = mode.exponent(out)
        except RuntimeError as err:
            raise ValueError(
                f"{self.name}: an all-ones input of shape {self.shape} does not fit the model "
                f"({err}); pass batches the model accepts or input_size=(C, H, W)"
            ) from err
        with torch.enable_grad():
            total = out.sum()
            grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        scores: dict[str, torch.Tensor] = {}
        for (n, u), g in zip(leaves.items(), grads, strict=True):
            if g is None:  # the weight is on no input-to-output path of this forward
                scores[n] = torch.zeros_like(u).detach()
                continue
            s = u.detach() * g
            scores[n] = torch.where(mask[n], s, torch.zeros((), dtype=s.dtype, device=s.device))
        return Flow(scores, float(total.detach()), int(exponent))

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.flow(ctx, mask).scores


@register_criterion
class SynFlow(_PathFlow):
    """SynFlow: Tanaka et al., "Pruning neural networks without any data by iteratively conserving
    synaptic flow", NeurIPS 2020.

    Score (synaptic saliency of the synaptic-flow objective): ``S_j = |theta_j * dR/dtheta_j| =
    |theta_j| * dR/d|theta_j|`` with ``R = sum`` of the output of the network whose prunable
    weights are ``|M * theta|``, on one all-ones input sample. Every score is >= 0; pruned
    weights score 0. In a plain layered bias-free network the scores of every layer sum to R
    (Tanaka's conservation law), which is what makes the iterative schedule avoid layer collapse.

    The network copy (``pxprune.paths``): BatchNorm is the eval-form per-channel scale
    ``|gamma| / sqrt(running_var + eps)`` with shift 0; biases and BN shifts are 0; activations are
    the identity (every value is >= 0, so ReLU/LeakyReLU are the identity there; ReLU6/hardtanh
    saturation is ignored); max-pool keeps its max and average pooling is unchanged. Departure
    from Tanaka's code: it replaces *every* state entry by its absolute value, so biases enter as
    ``|b|`` and BN as ``|gamma|(x - |mean|)/sqrt(|var|+eps) + |beta|``; here paths carry no bias
    (the same choice as PX, docs/design/PX.md section 3), which keeps the path identity and the conservation
    law exact. Power-of-two scaling per tensor keeps ResNet-50/152 finite in float32.

    Data: none (the input shape comes from the first batch or ``input_size=(C, H, W)``).
    Mode: every module in eval mode. Cost per round: one forward and one backward of one sample.
    Default schedule: 100 rounds, exponential (as in the paper).
    """

    name = "synflow"
    spec = SYNFLOW_SPEC
    power = 1
