"""NTK-SAP: Wang, Li, Sun, "NTK-SAP: Improving Neural Network Pruning by Aligning Training
Dynamics", ICLR 2023 (arXiv 2304.02840).

NTK-SAP keeps the weights that matter most for the trace of the fixed-weight NTK, estimated by a
finite difference and averaged over random weights and random inputs (weight- and
data-agnostic):

    J(M) = sum_{r=1..R} || f(z_r; M * theta'_r) - f(z_r; M * (theta'_r + eps * delta_r)) ||^2
    S_j  = |dJ/dM_j| * 1[M_j != 0]

``E_delta ||f(theta + eps delta) - f(theta)||^2 ~= eps^2 ||df/dtheta||_F^2 = eps^2 tr(NTK)``.
Each draw r uses its own fresh ``theta'_r`` (Kaiming-normal, "new input, new weight"),
``delta_r ~ N(0, I)`` on the scored (prunable, non-excluded) weights and Gaussian inputs
``z_r ~ N(0, 1)``; both networks are masked by the same M, so the mask saliency ``|dJ/dM|`` adds
the contributions of both (``theta'_j dJ/dw1_j + (theta'_j + eps delta_j) dJ/dw2_j``); pruned
weights score 0.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

from .._scoped import substituted
from ..selection import PRUNABLE_TYPES
from .base import Context, Criterion, InputSizeOptions, register_criterion
from .px import reject_compiled

_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm,
)
_RUNNING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ntksap: {what} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NTKSAPOptions(InputSizeOptions):
    """Defaults from the NTK-SAP code and its sample script (see the criterion's docstring)."""

    epsilon: float = 0.01
    reinits: int = 5
    batch_size: int = 256
    samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not (
            math.isfinite(eps) and eps > 0
        ):
            raise ValueError(f"ntksap: epsilon must be a positive number, got {eps!r}")
        _positive_int(self.reinits, "reinits")
        _positive_int(self.batch_size, "batch_size")
        if self.samples is not None:
            _positive_int(self.samples, "samples")


def _leaf(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The tensor stored for ``module.<attr>`` (the ``original`` under a parametrization)."""
    if hasattr(module, "parametrizations") and attr in module.parametrizations:
        return module.parametrizations[attr].original
    return module._parameters.get(attr)


@register_criterion
class NTKSAP(Criterion):
    """NTK-SAP (Wang, Li, Sun, ICLR 2023, arXiv 2304.02840): the multi-sampled finite-difference
    estimate of the NTK trace over random re-initialisations and Gaussian inputs,
    scored as ``S_j = |dJ/dm_j| * 1[m_j != 0]`` with

        J = sum_r || f(z_r; M * theta'_r) - f(z_r; M * (theta'_r + epsilon * delta_r)) ||^2 .

    Everything runs on a private deep copy of the model made once per ``prune``/``score`` call; the
    caller's weights, BatchNorm statistics, momentum, flags and ``requires_grad`` are never touched.
    In the copy every conv/linear weight is redrawn for each draw r from Kaiming-normal
    (``nn.init.kaiming_normal_`` defaults: fan-in, gain sqrt(2)), biases are 0, normalisation
    layers have weight 1 and bias 0, and BatchNorm running statistics are reset and then set by one
    no-grad pass in train mode (momentum 1, so they are exactly that batch's statistics; only the
    BatchNorm modules switch to train mode, so dropout stays off) on the masked unperturbed
    network and the draw's noise input; both evaluations then run in eval mode and share those
    statistics. ``delta_r ~ N(0, I)`` perturbs the scored weights only (NTK-SAP perturbs its masked
    parameters). All draws (weights, perturbations, inputs) come from one ``torch.Generator`` on the
    model's device seeded from the criterion stream of ``seed``: deterministic for a seed on a
    given device; every round draws fresh ones.

    Options and their source (the public NTK-SAP code, github.com/YiteWang/NTK-SAP):
        epsilon: perturbation size (default 0.01: the ``--ntksap_epsilon`` default of the NTK-SAP
            code; the paper's appendix compares other values).
        reinits: R, the number of repeats (default 5: ``--ntksap_R 5`` in its sample script
            ``scripts/run.sh``; the argparse default is 1).
        batch_size: Gaussian inputs per draw (default 256: ``--prune-batch-size``).
        samples: Gaussian inputs per repeat. NTK-SAP replaces every batch of its pruning loader
            (10 x classes training images at ``--prune-batch-size`` 256) by ``randn_like`` of it,
            with a fresh re-initialisation per batch ("new input, new weight"). Default None: as
            many as the pruning split holds (so with 10 images per class it is NTK-SAP's loader,
            one draw per batch of ``batch_size``), or one batch of ``batch_size`` when no batches
            are given.
        input_size: (C, H, W) of the inputs when no batches are given.

    Data: none (Gaussian inputs; the split only gives the input shape and, by default, the number
    of noise samples). Mode: eval for both evaluations, train-mode BatchNorm for the statistics
    pass. Cost per round: ``reinits * ceil(samples / batch_size)`` draws, each one no-grad forward
    (statistics), two forwards and one backward through both, on up to ``batch_size`` inputs; one
    model copy per call. Schedule: NTK-SAP prunes iteratively with SynFlow's exponential schedule;
    default 100 rounds, as SynFlow (a public reproduction reports T = 100 for the paper's CIFAR-100
    and Tiny-ImageNet runs); NTK-SAP's own CIFAR-10 sample script uses 20 (``--prune-epochs 20``):
    pass ``rounds=20`` to reproduce that.
    """

    name = "ntksap"
    Options = NTKSAPOptions
    default_rounds = 100
    uses_data = False
    kinds = frozenset({"conv", "linear", "conv_transpose", "attention", "recurrent"})

    def setup(self, ctx: Context) -> None:
        opts: NTKSAPOptions = self.options
        reject_compiled(ctx.model, "ntksap")
        self.shape = tuple(ctx.sample_shape())
        total = opts.samples
        if total is None:
            total = self._split_size(ctx) if ctx.batches is not None else opts.batch_size
        self.chunks = [min(opts.batch_size, total - i) for i in range(0, total, opts.batch_size)]
        net = copy.deepcopy(ctx.model).to(ctx.dtype)
        for p in net.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.norms: list[nn.Module] = []
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, PRUNABLE_TYPES):
                    bias = _leaf(module, "bias")
                    if bias is not None:
                        bias.zero_()
                elif isinstance(module, _NORMS):
                    weight, bias = _leaf(module, "weight"), _leaf(module, "bias")
                    if weight is not None:
                        weight.fill_(1.0)
                    if bias is not None:
                        bias.zero_()
                    if isinstance(module, _RUNNING) and module.track_running_stats:
                        module.momentum = 1.0
                        self.norms.append(module)
        net.eval()
        self.net = net
        self.dtype = ctx.dtype
        self.shapes = {n: tuple(w.shape) for n, w in ctx.all_weights.items()}
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        self.gen = torch.Generator(device=ctx.device)
        self.gen.manual_seed(seed)
        self.device = ctx.device

    @staticmethod
    def _split_size(ctx: Context) -> int:
        assert ctx.batches is not None
        if ctx.batches.num_samples is None:
            for _ in ctx.batches:
                pass
        assert ctx.batches.num_samples is not None
        # several processes: the whole split's size (every process then draws the same noise)
        return ctx.global_count(ctx.batches.num_samples)

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape, dtype=self.dtype, device=self.device)
        return t.normal_(0.0, 1.0, generator=self.gen)

    def _kaiming(self, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape, dtype=self.dtype, device=self.device)
        return nn.init.kaiming_normal_(t, generator=self.gen)

    def _set_statistics(self, weights: Mapping[str, torch.Tensor], z: torch.Tensor) -> None:
        """Running statistics := the batch statistics of this draw (train-mode BN, momentum 1)."""
        if not self.norms:
            return
        try:
            for m in self.norms:
                m.reset_running_stats()
                m.train()
            with torch.no_grad(), substituted(self.net, weights):
                self.net(z)
        finally:
            for m in self.norms:
                m.eval()

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        eps = float(self.options.epsilon)
        m = {n: mask[n].to(self.dtype).requires_grad_(True) for n in ctx.params}
        acc = {n: torch.zeros_like(v) for n, v in m.items()}
        for _ in range(self.options.reinits):
            for b in self.chunks:
                theta = {n: self._kaiming(s) for n, s in self.shapes.items()}
                delta = {n: self._normal(self.shapes[n]) for n in m}
                z = self._normal((b, *self.shape))
                with torch.enable_grad():
                    w1 = {n: t * m[n] if n in m else t for n, t in theta.items()}
                    self._set_statistics({n: t.detach() for n, t in w1.items()}, z)
                    with substituted(self.net, w1):
                        out1 = ctx.output_of(self.net(z))
                    w2 = {n: (t + eps * delta[n]) * m[n] if n in m else t
                          for n, t in theta.items()}
                    with substituted(self.net, w2):
                        out2 = ctx.output_of(self.net(z))
                    j = (out1 - out2).pow(2).sum()
                    grads = torch.autograd.grad(j, list(m.values()), allow_unused=True)
                for n, g in zip(m, grads, strict=True):
                    if g is not None:
                        acc[n] += g
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return {n: torch.where(mask[n], acc[n].abs(), zero) for n in m}
