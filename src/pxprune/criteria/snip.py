"""SNIP: connection sensitivity at initialisation. Also the loss helpers GraSP shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._scoped import scratch_buffers, substituted
from ..paths import output_tensor
from .base import Context, Criterion, DataOptions, register_criterion

IGNORE_INDEX = 255  # the "void" label of segmentation targets (VOC, Cityscapes)

_DROPOUT = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


@contextlib.contextmanager
def train_mode_pass(ctx: Context, leaves: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Train mode with batch statistics, scratch running statistics, ``leaves`` in place of the
    scored weights, gradients on, and the global RNG restored afterwards.

    Dropout modules are switched to eval: a random mask would make the scores depend on torch's
    global generator (and in GraSP differ between the two passes). The caller's training flags are
    restored by the API; no tensor of the model is written.
    """
    model = ctx.model
    model.train()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.eval()
    devices = []
    if ctx.device.type == "cuda":
        index = ctx.device.index
        devices = [index if index is not None else torch.cuda.current_device()]
    with (
        torch.random.fork_rng(devices=devices),
        torch.enable_grad(),
        substituted(model, {**{n: b.to(ctx.dtype) if b.is_floating_point() else b
                            for n, b in scratch_buffers(model).items()},
                            **{n: t for n, t in ctx.cast.items() if n not in leaves}, **leaves}),
    ):
        yield


def as_input(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Floating inputs in the dtype the criterion computes in (float32 for a half model)."""
    return x.to(ctx.dtype) if x.is_floating_point() and x.dtype != ctx.dtype else x


def summed_cross_entropy(
    output: object, targets: torch.Tensor | None, *, criterion: str, temperature: float = 1.0,
    select: object = None,
) -> tuple[torch.Tensor, int]:
    """The cross-entropy of ``output / temperature`` summed over the micro-batch, and the number of
    terms it sums: samples for a classifier's (N, K) output with (N,) class indices, labelled
    pixels for a segmentation output (N, K, H, W) with (N, H, W) indices (255 ignored). Dividing
    the summed gradients by the summed counts gives the mean over the whole split."""
    out = output_tensor(output, select)
    if targets is None:
        raise TypeError(f"criterion {criterion!r} needs targets: pass batches of (inputs, targets)")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"criterion {criterion!r} needs class-index targets (integers), got {targets.dtype}; "
            "pass labels such as y.argmax(1), not one-hot vectors or probabilities"
        )
    targets = targets.to(device=out.device, dtype=torch.long)
    if out.dim() == 2 and tuple(targets.shape) == (out.shape[0],):
        ignore = None
    elif out.dim() >= 3 and tuple(targets.shape) == (out.shape[0], *out.shape[2:]):
        ignore = IGNORE_INDEX
    else:
        raise ValueError(
            f"criterion {criterion!r}: targets of shape {tuple(targets.shape)} do not fit outputs "
            f"of shape {tuple(out.shape)}; a classifier's (N, K) outputs need (N,) class indices, "
            "a segmentation model's (N, K, H, W) outputs need (N, H, W) indices (255 = ignore)"
        )
    k = out.shape[1]
    labelled = targets if ignore is None else targets[targets != ignore]
    count = labelled.numel()
    if count and (int(labelled.min()) < 0 or int(labelled.max()) >= k):
        raise ValueError(
            f"criterion {criterion!r}: targets must be class indices in [0, {k - 1}]"
            + (" or 255 (ignored)" if ignore is not None else "")
            + f", got values in [{int(labelled.min())}, {int(labelled.max())}]"
        )
    logits = out / temperature if temperature != 1.0 else out
    if ignore is None:
        loss = F.cross_entropy(logits, targets, reduction="sum")
    else:
        loss = F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore)
    return loss, count


def mean_loss_gradient(
    ctx: Context, leaves: Sequence[torch.Tensor], *, criterion: str, temperature: float = 1.0
) -> tuple[list[torch.Tensor], int]:
    """dL/d(leaves) for L the mean cross-entropy over the whole split, accumulated micro-batch by
    micro-batch (call inside :func:`train_mode_pass`) and over the processes' shards when several
    score together. Returns the detached gradients and the number of loss terms N (of the whole
    split)."""
    total = [torch.zeros_like(t, requires_grad=False) for t in leaves]
    count = 0
    for x, y in ctx.batches:
        out = ctx.model(as_input(x, ctx))
        loss, n = summed_cross_entropy(out, y, criterion=criterion, temperature=temperature,
                                       select=ctx.output)
        count += n
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, list(leaves), allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc += g
    ctx.all_sum_(*total)  # the other processes' shards: the mean is over the whole split
    count = ctx.global_count(count)
    if count == 0:
        raise ValueError(
            f"criterion {criterion!r}: every target is ignored (255), so the loss is undefined; "
            "pass a split with labelled pixels"
        )
    return [t / count for t in total], count


@register_criterion
class SNIP(Criterion):
    """SNIP (Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019).

    Equation: the connection sensitivity ``S_j = |dL(c * theta)/dc_j|`` at ``c = 1``, i.e.
    ``S_j = |theta_j * dL/dtheta_j|``, evaluated at the masked weights ``theta * M`` (so pruned
    weights score 0 and contribute nothing). The paper's division by ``sum_k S_k`` is a positive
    global factor; the API's normalisation replaces it. L is the cross-entropy averaged over the
    whole split: every sample weighs 1/N whatever ``micro_batch`` (for segmentation outputs
    (N, K, H, W): the mean over all labelled pixels of the split, label 255 ignored).

    Data: the pruning split with class-index targets (``needs_targets``). Mode: train mode, so
    BatchNorm normalises with each micro-batch's statistics: on a network with BatchNorm the
    scores legitimately depend on how the split is chunked into micro-batches and batches (which
    samples share a batch), though not on the order of the batches; on a BN-free network they
    do not depend on chunking, batching or sample order (tested). Running statistics are never
    updated (scratch copies are substituted);
    dropout is off. Gradients are taken with ``torch.autograd.grad`` on substituted leaves, so no
    ``.grad`` of the model is touched. Cost per round: one forward and one backward pass over the
    split. Options: ``micro_batch`` (default 64).
    """

    name = "snip"
    Options = DataOptions
    default_rounds = 1
    uses_data = True
    needs_targets = True

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        leaves = ctx.masked(mask, grad=True)
        with train_mode_pass(ctx, leaves):
            grads, _ = mean_loss_gradient(ctx, list(leaves.values()), criterion=self.name)
        return {n: (w.detach() * g).abs() for (n, w), g in zip(leaves.items(), grads, strict=True)}
