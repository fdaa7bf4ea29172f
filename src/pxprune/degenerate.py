"""Degenerate scores are an error, not a mask.

A global threshold removes the lowest scores first and breaks ties by parameter order, so a round
whose scores are zero in a whole layer (or everywhere) would empty that layer (or the earliest
layers) for no reason a criterion saw. The first round, on the dense (or given) mask, is where this
means a defect of the setting rather than a layer that earlier rounds cut off; later rounds only
check that not every score is zero (there, a layer that earlier rounds emptied is named: layer
collapse). The message names the layers and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .paths.scale import abs_max


class DegenerateScoresError(ValueError):
    """A round's scores cannot make a mask (all zero, or zero in a whole layer). ``layers``: the
    layers whose scores are all 0; ``zero_initialised``: the weights that are entirely 0."""

    def __init__(self, message: str, *, layers: list[str] | None = None,
                 zero_initialised: list[str] | None = None) -> None:
        super().__init__(message)
        self.layers = list(layers or [])
        self.zero_initialised = list(zero_initialised or [])


class ZeroScoresWarning(UserWarning):
    """Much of a layer scores exactly 0 in the first round (it goes first, in index order)."""


# a layer where more than this share of the kept weights scores exactly 0 in the first round
PARTIAL = 0.25


def _zero_weights(ctx) -> list[str]:  # noqa: ANN001
    return [n for n, w in ctx.all_weights.items() if w.numel() and abs_max(w) == 0]


def _listed(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _attribute(name: str) -> str:
    """Python that reaches parameter ``name`` of ``model`` (``model.4.weight`` is no Python)."""
    path, _, leaf = name.rpartition(".")
    if not path or all(part.isidentifier() for part in path.split(".")):
        return f"model.{name}"
    return f"model.get_submodule({path!r}).{leaf}"


def _warn_partial(criterion: str, crit, ctx, scores, mask) -> None:  # noqa: ANN001
    partial, names = [], []
    for n, s in scores.items():
        kept = int(torch.count_nonzero(mask[n]))
        if kept:
            zeros = kept - int(torch.count_nonzero(s.masked_fill(~mask[n], 1)))
            if zeros > PARTIAL * kept:
                partial.append(f"{n} ({zeros / kept:.0%})")
                names.append(n)
    if partial:
        import warnings

        reason = _off_every_path(ctx, scores, mask, names)
        if reason is None and hasattr(crit, "explain_zero"):
            reason = crit.explain_zero(ctx, names)
        warnings.warn(
            f"{criterion}: part of {_listed(partial)} scores exactly 0 and goes first, in index "
            f"order{': ' + reason if reason else ''}",
            ZeroScoresWarning,
            stacklevel=4,
        )


def _off_every_path(ctx, scores, mask, names: list[str]) -> str | None:  # noqa: ANN001
    """The reason when the zero-scored weights are on no input-output path of the network at
    this input size (a kernel tap that only ever meets padding: a dilated convolution on a small
    feature map), which no criterion can rank; None when some of them are on a path."""
    size = ctx.input_size
    if size is None and ctx.batches is not None:
        size = ctx.batches.first_shape()
    if size is None:
        return None
    from .report import effective_masks

    try:
        effective, _ = effective_masks(ctx.model, mask, tuple(size))
    except Exception:  # noqa: BLE001 - an explanation must never turn a warning into an error
        return None
    for n in names:
        zero = (scores[n] == 0) & mask[n].to(scores[n].device)
        if bool((zero & effective[n].to(zero.device)).any()):
            return None
    return (
        f"{'they are' if len(names) > 1 else 'it is'} on no input-output path at this input size "
        f"({'x'.join(map(str, size))}): kernel taps that only ever meet padding (a dilated "
        "convolution on a small feature map) or units the input never reaches, which no "
        "criterion can rank; score larger inputs, or exclude them"
    )


def check_scores(
    criterion: str,
    crit,  # noqa: ANN001
    ctx,  # noqa: ANN001
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    *,
    first: bool,
) -> None:
    """Raise :class:`DegenerateScoresError` for all-zero scores, or (first round) for a scored
    layer whose kept weights all score exactly 0."""
    tops = {n: abs_max(scores[n]) if scores[n].numel() else 0.0 for n in scores}
    everywhere = all(t == 0 for t in tops.values())
    if not everywhere and not first:
        return
    zero = [n for n in scores if tops[n] == 0 and bool(mask[n].any())]
    if not zero:
        if first:
            _warn_partial(criterion, crit, ctx, scores, mask)
        return
    what = "every score" if everywhere else f"every score of {_listed(zero)}"
    known = crit.degenerate_reason() if hasattr(crit, "degenerate_reason") else None
    if known:
        raise DegenerateScoresError(f"{criterion}: {what} is 0: {known}", layers=zero)
    emptied = [n for n in scores if mask[n].numel() and not bool(mask[n].any())]
    if everywhere and not first and emptied:
        raise DegenerateScoresError(
            f"{criterion}: every score is 0 because an earlier round pruned all of "
            f"{_listed(emptied)}, which cuts every path (layer collapse): prune in more rounds "
            f"(rounds=) or to a lower sparsity, or exclude {'them' if len(emptied) > 1 else 'it'} "
            f"(exclude={emptied[:5]!r})",
            layers=emptied,
        )
    dead = _zero_weights(ctx)
    if dead:
        raise DegenerateScoresError(
            f"{criterion}: {what} is 0 because {_listed(dead)} "
            f"{'is' if len(dead) == 1 else 'are'} zero-initialised (every weight 0), which cuts "
            "every path and gradient through it: re-initialise it before pruning, e.g. "
            f"torch.nn.init.normal_({_attribute(dead[0])}, std=0.01)",
            layers=zero, zero_initialised=dead,
        )
    reason = crit.explain_zero(ctx, zero) if hasattr(crit, "explain_zero") else None
    if reason:
        raise DegenerateScoresError(f"{criterion}: {what} is 0: {reason}", layers=zero)
    raise DegenerateScoresError(
        f"{criterion}: {what} is 0, so the threshold would empty "
        f"{'layers in parameter order' if everywhere else 'those layers'} for no reason the "
        f"criterion saw: exclude {'them' if len(zero) > 1 else 'it'} "
        f"(exclude={zero[:5]!r}) or use another criterion",
        layers=zero,
    )
