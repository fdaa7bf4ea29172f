"""Path eXclusion (PX): Iurada, Ciccone, Tommasi, "Finding Lottery Tickets in Vision Models via
Data-driven Spectral Foresight Pruning", CVPR 2024 (arXiv 2406.01820). What is computed is specified
in docs/design/PX.md; this docstring summarises it.

For a bias-free ReLU network every output is a sum over input-to-output paths p,
``f_k(x) = sum_p v_p(theta) a_p(x) x_s(p)``. Two path copies of the network give

- ``z1[n, k]`` (data copy, no gradient): every prunable weight replaced by its mask value, input
  ``x * x``, every activation multiplied by the square of the gate the *real* network had on that
  same input (ReLU/LeakyReLU/hardtanh derivative; max-pool gathers the recorded argmax);
- ``z2[k]`` (weight copy, one all-ones sample): weights ``M * theta**2``, activations removed,
  max-pool summed over its window;

and ``R = sum_{n,k} z1[n,k] z2[k]``. The score of prunable weight j is
``S_j = theta_j**2 * dR/d(theta_j**2) = sum_{n,k} z1[n,k] sum_{p in P_k, p contains j} v_p**2 >= 0``,
its share of the path bound on the NTK trace (``sum_j dR/d(theta_j**2)`` is the row-wise bound).

Choices (docs/design/PX.md section 3): BatchNorm is a per-channel linear map (``bn="eval"``:
scale 1 in the data copy, ``(gamma/sqrt(var+eps))**2`` in the weight copy, shifts 0), chosen by
module type; biases are 0; fixed linear maps with coefficient c (average pooling, ``mean``)
contribute 1 in the data copy and c**2 in the weight copy; bilinear interpolation is left as it is
(an approximation). ReLU6/hardtanh gates also close saturated paths, so there the path identity is
approximate. Beyond ReLU nets (GELU, SE gates, norms, attention) PX scores the linearisation of the
real network around the split (docs/design/PX.md section 5). Each copy carries exact power-of-two
exponents per tensor (``pxprune.paths``), so no model overflows in float32.

What the default implies, and the docs must say: with ``classifier="path"`` the classifier's data-copy
weights are all ones in the first round, so every output k receives the same z1 and the first-round
ranking *equals* the data-free L2 path-norm score (``synflow_l2``) exactly; the data only enter later
rounds, through the masks. More generally the data enter only through ``Z1[k] = sum_n z1[n,k]``
(K numbers): two splits with equal Z1 give identical scores. ``pxprune.masks.overlap`` against a
``synflow_l2`` mask measures how data-driven a PX mask really is.

Options:
    classifier: "path" (default, the paper's description) or "signed" (approximates the reference
        code: the classifier, found as the prunable module executed last or by ``classifier_name``,
        keeps its real signed weights and its bias in both copies; scores ``|theta^2 dR/d(theta^2)|``
        for the others and ``|dR/dW| W^2`` for the classifier).
    classifier_name: the classifier module's name as in ``named_modules()`` (only with "signed").
    bn: "eval" (default) or "train" (approximates the reference code: BatchNorm uses its real gamma,
        beta and each copy's own batch statistics; degenerate, with a warning; exempt from the
        exactness guarantee; the weight copy gets two identical all-ones samples, running statistics
        are never touched, and unlike the reference, BNs are chosen by type, not by name).
    micro_batch: split the user's batches into chunks of at most this many samples; the scores do
        not depend on it. "auto" (default): 64 on a GPU; on the CPU as many samples (at most 256)
        as keep the largest activation of a chunk under 24 MiB (measured by the one-sample probe):
        larger chunks make glibc map fresh pages for every activation, which costs more than the
        arithmetic (ResNet-50 at 224 px: 7 samples, about 25% faster than 32).
    dtype: "float32" (default) or "float64" for the copies (the exactness reference).

Data: the pruning split (10 images per class in the paper), targets unused. Mode: every module in
eval mode. Cost per round: two forward passes over the split (real network for the gates, data copy)
plus one forward/backward of one sample; no model copies.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping

import torch

from .._scoped import recorded_calls, substituted
from ..paths import REAL, CopySpec, GateTape, PathMode, ScaledSum, WarnOnce
from ..paths.mode import AliasHazard
from ..selection import canonical_name, prunable_modules
from .base import Context, Criterion, register_criterion

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class PXDegenerateWarning(UserWarning):
    """bn="train" reproduces the reference code's degenerate weight copy."""


@dataclasses.dataclass(frozen=True)
class PXOptions:
    classifier: str = "path"
    classifier_name: str | None = None
    bn: str = "eval"
    micro_batch: int | str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.classifier not in ("path", "signed"):
            raise ValueError(f"px: classifier must be 'path' or 'signed', got {self.classifier!r}")
        if self.bn not in ("eval", "train"):
            raise ValueError(f"px: bn must be 'eval' or 'train', got {self.bn!r}")
        if self.classifier_name is not None and self.classifier != "signed":
            raise ValueError("px: classifier_name= only applies with classifier='signed'")
        if isinstance(self.dtype, torch.dtype):
            names = {v: k for k, v in _DTYPES.items()}
            if self.dtype not in names:
                raise ValueError(f"px: dtype must be float32 or float64, got {self.dtype}")
            object.__setattr__(self, "dtype", names[self.dtype])
        if self.dtype not in _DTYPES:
            raise ValueError(f"px: dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.micro_batch != "auto" and (
            isinstance(self.micro_batch, bool)
            or not isinstance(self.micro_batch, int)
            or (self.micro_batch < 1)
        ):
            raise ValueError(f"micro_batch must be a positive integer or 'auto', got {self.micro_batch!r}")


_AUTO_BYTES = 24 * 2**20


def _auto_micro_batch(device: torch.device, tape: GateTape, probe: torch.Tensor) -> int:
    """micro_batch="auto": 64 on a GPU; on the CPU the chunk whose largest activation (gated
    tensors of the probe, or the input) stays under 24 MiB, between 1 and 256 samples."""
    if device.type != "cpu":
        return 64
    largest = max([math.prod(g.shape[1:]) for g in tape.gates] + [probe[0].numel()])
    return max(1, min(256, _AUTO_BYTES // max(1, largest * probe.element_size())))


def reject_compiled(model: torch.nn.Module, name: str) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"{name} cannot score a scripted model: pass the plain nn.Module")
    if hasattr(model, "_orig_mod"):
        raise TypeError(
            f"{name} cannot score a torch.compile'd model: pass model._orig_mod (the plain module)"
        )


def _classifier_from_order(order: list[str], candidates: Mapping[str, torch.Tensor]) -> str:
    for name in reversed(order):
        if name in candidates:
            return name
    raise ValueError("no prunable module ran in the forward pass; cannot find the classifier")


@register_criterion
class PX(Criterion):
    __doc__ = __doc__
    name = "px"
    Options = PXOptions
    kinds = frozenset({"conv", "linear", "conv_transpose", "attention"})
    default_rounds = 100
    uses_data = True

    def setup(self, ctx: Context) -> None:
        opts: PXOptions = self.options
        reject_compiled(ctx.model, "px")
        ctx.model.eval()  # every pass in eval mode; the caller's flags are restored by the API
        self.dtype = _DTYPES[opts.dtype]
        self.warn = WarnOnce("px", "PX linearises it around the real network's pass")
        model = ctx.model
        # a cast copy of every floating tensor only when the copies run in another dtype
        self.base: dict[str, torch.Tensor] = {}
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and t.dtype != self.dtype:
                self.base[canonical_name(n)] = t.detach().to(self.dtype)
        self.weights = {n: w.detach().to(self.dtype) for n, w in ctx.all_weights.items()}
        self.squares = {n: w * w for n, w in self.weights.items()}
        # weights whose rows are an output's fan-in (conv, linear, packed attention projections)
        from ..selection import prunable_weights

        kinds = {n: e.kind for n, e in prunable_weights(model).items()}
        self.row_weights = {n for n in self.weights if kinds.get(n) in ("conv", "linear", "attention")}
        self.coefficients: dict = {}  # BatchNorm scales of the weight copy, computed once
        self.shape = ctx.batches.first_shape()
        probe = next(iter(ctx.batches))[0][:1].to(self.dtype)
        tape = GateTape()
        try:
            with (
                torch.no_grad(),
                substituted(model, {**self.base, **self.weights}),
                PathMode(REAL, gates=tape) as mode,
                recorded_calls(model) as calls,
            ):
                model(mode.track(probe))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(
                f"inputs of shape {tuple(probe.shape[1:])} do not fit the model ({err}); pass "
                "batches whose inputs the model accepts, e.g. (N, 3, 32, 32) for CIFAR models"
            ) from None
        if opts.micro_batch == "auto":
            ctx.batches.micro_batch = _auto_micro_batch(ctx.device, tape, probe)
        self.structure = tape.structure()  # what the weight copy replays (kinds, no values)
        self.classifier: str | None = None
        if opts.classifier == "signed":
            if opts.classifier_name is not None:
                wname = canonical_name(opts.classifier_name) + ".weight"
                if wname not in prunable_modules(model):
                    raise ValueError(
                        f"px: classifier_name {opts.classifier_name!r} is not a Conv/Linear module "
                        "of the model (use a name from model.named_modules())"
                    )
                self.classifier = wname
            else:
                self.classifier = _classifier_from_order([n for n, _ in calls], ctx.all_weights)
        if opts.bn == "train":
            warnings.warn(
                "px bn='train' reproduces the reference code's behaviour: with an all-ones batch "
                "every BatchNorm output is constant, so the weight copy's signal is round-off. "
                "Use it only for reproduction studies.",
                PXDegenerateWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ passes
    def _tensors(self, kind: str, mf: Mapping[str, torch.Tensor], ctx: Context):
        """The substituted weights of one pass; ``mf`` is the mask as floats (excluded: absent)."""
        out, leaves = {}, {}
        for n, w in self.weights.items():
            m = mf.get(n)
            signed = n == self.classifier
            if kind == "real" or (kind == "data" and signed):
                out[n] = w * m if m is not None else w
            elif kind == "data":
                out[n] = m if m is not None else torch.ones_like(w)
            else:
                if signed:
                    t = w * m if m is not None else w.clone()
                else:
                    sq = self.squares[n]
                    t = sq * m if m is not None else sq.clone()
                if n in ctx.params:
                    leaves[n] = t.requires_grad_(True)
                out[n] = t
        return out, leaves

    def _float_mask(self, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: mask[n].to(self.dtype) for n in self.weights if n in mask}

    def _spec(self, kind: str) -> CopySpec:
        bn = "batch" if self.options.bn == "train" else "linear"
        if kind == "data":
            return CopySpec(
                activation="replay",
                maxpool="gather",
                bn=bn,
                bn_power=0,
                coef_power=0,
                drop_bias=True,
                scaling="exp",
                lazy=True,  # big batches, no gradient: renormalise only when a bound says so
            )
        return CopySpec(
            activation="structure",
            maxpool="sum",
            bn=bn,
            bn_power=2,
            coef_power=2,
            drop_bias=True,
            scaling="exp",
        )

    def data_term(self, ctx: Context, mf: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Z1 = sum_n z1[n] (one sample's output shape), divided by its largest magnitude.

        Each chunk's output ``out`` stands for ``out * 2**e``; its sum over samples is taken
        outside the copy, so it carries the same exponent, and ``ScaledSum`` adds the chunks
        exactly (then the other processes' sums, when several score together: ``ctx.reduce``).
        (Summing inside the copy would be a tracked, renormalising operation whose result has an
        exponent of its own.)
        """
        real, _ = self._tensors("real", mf, ctx)
        data, _ = self._tensors("data", mf, ctx)
        keep = frozenset({self.classifier}) if self.classifier else frozenset()
        total = ScaledSum()
        for x, _ in ctx.batches:
            x = x.to(self.dtype)
            with torch.no_grad():
                tape = GateTape()
                with substituted(ctx.model, {**self.base, **real}), PathMode(REAL, gates=tape) as mode:
                    ctx.model(mode.track(x))
                out, e = self._data_pass(ctx, data, tape, x, keep)
            total.add(out.sum(0), e)
        ctx.all_sum_scaled(total)  # the other processes' shards of the split
        acc = total.mantissa
        assert acc is not None
        m = float(acc.abs().max())
        if not math.isfinite(m):
            raise FloatingPointError("px: the data term is not finite")
        return acc / m if m > 0 else acc

    def _data_pass(self, ctx: Context, data: Mapping[str, torch.Tensor], tape: GateTape,
                   x: torch.Tensor, keep: frozenset[str]) -> tuple[torch.Tensor, int]:
        """The data copy on ``x * x`` replaying ``tape``: its output and exponent."""
        # mask weights (and the ones of excluded layers) are in [0, 1]: rows sum to <= fan-in
        bounds = {
            id(t): math.log2(max(1, t[0].numel()))
            for n, t in data.items()
            if n != self.classifier and t.dim() > 0 and n in self.row_weights
        }
        for safe in (False, True):
            tape.cursor = 0
            try:
                with (
                    substituted(ctx.model, {**self.base, **data}),
                    PathMode(self._spec("data"), gates=tape, keep_bias=keep, weight_bounds=bounds,
                             warn=self.warn, safe_aliasing=safe, substituted_only=True,
                             weight_names={id(t): n for n, t in data.items()}) as mode,
                ):
                    out = ctx.output_of(ctx.model(mode.track(x * x)))
                    mode.finish()
                    return out, mode.exponent(out)
            except AliasHazard:
                if safe:
                    raise
        raise AssertionError("unreachable")

    def degenerate_reason(self) -> str | None:
        if self.options.bn != "train":
            return None
        # the reference code's defect, not a layer outside the theory or a collapse of ours
        return (
            "with bn='train' (the reference code's behaviour) every BatchNorm output of the weight "
            "copy is constant, so the scores are round-off, here exactly 0, and the reference code "
            "would prune in index order; use bn='eval' (the default)"
        )

    def explain_zero(self, ctx: Context, names: list[str]) -> str | None:
        shown = names[:5]
        return (
            f"{'they are' if len(names) > 1 else 'it is'} on no path of PX's linearised network: "
            "the output reaches the network's output only as a multiplicative coefficient (a "
            "squeeze-excitation scale, attention scores) or through a product of two data-"
            f"dependent tensors, which PX's path bound does not cover; exclude {shown!r}"
            f"{' (and the rest)' if len(names) > 5 else ''} to prune the other layers with PX"
        )

    def _structure(self) -> GateTape:
        tape = self.structure
        tape.cursor = 0
        return tape

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = ctx.model
        mf = self._float_mask(mask)
        z1 = self.data_term(ctx, mf)
        weight, leaves = self._tensors("weight", mf, ctx)
        del mf
        keep = frozenset({self.classifier}) if self.classifier else frozenset()
        n_ones = 2 if self.options.bn == "train" else 1
        ones = torch.ones((n_ones, *self.shape), dtype=self.dtype, device=ctx.device)
        with (
            torch.enable_grad(),
            substituted(model, {**self.base, **weight}),
            PathMode(self._spec("weight"), gates=self._structure(), keep_bias=keep, warn=self.warn,
                     coefficients=self.coefficients, substituted_only=True,
                     weight_names={id(t): n for n, t in weight.items()}) as mode,
        ):
            z2 = ctx.output_of(model(mode.track(ones)))[0]
            mode.finish()
        with torch.enable_grad():
            r = (z1 * z2).sum()
            grads = torch.autograd.grad(r, list(leaves.values()), allow_unused=True)
        scores = {}
        for (n, u), g in zip(leaves.items(), grads, strict=True):
            if g is None:
                scores[n] = torch.zeros_like(u, dtype=torch.float32)
                continue
            u = u.detach()
            if n == self.classifier:
                s = g.abs_().mul_(u).mul_(u)
            elif self.classifier is not None:
                s = g.mul_(u).abs_()
            else:
                s = g.mul_(u)
            # u is 0 where pruned, but 0 * inf would be NaN: pruned weights score exactly 0
            scores[n] = s.masked_fill_(~mask[n], 0)
        return scores
