"""The entry points: ``score`` and ``prune`` (docs/design/CONTRACTS.md section 1)."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from . import __version__, threshold
from ._scoped import frozen_state, model_device
from .batches import Batches
from .criteria import CRITERIA, Context, Criterion, make_options, non_default_options
from .criteria.base import Reduce
from .degenerate import check_scores
from .masks import Mask, state_hash
from .paths import output_tensor
from .paths.scale import abs_max
from .report import effective_masks
from .seeding import generator
from .selection import KINDS, canonical_name, coverage, prunable_parameters, unwrap

log = logging.getLogger("pxprune")

ProgressFn = Callable[[int, int, Mask], None]


def list_criteria() -> list[str]:
    """The registered criterion names."""
    return CRITERIA.names()


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _check_kinds(cls: type[Criterion], model: nn.Module, include) -> None:  # noqa: ANN001
    """An include= that names only weights the criterion cannot score is an error naming why."""
    if include is None:
        return
    from .selection import prunable_weights

    every = prunable_weights(model)
    patterns = [include] if isinstance(include, str | type) else list(include)
    for pattern in patterns:
        try:
            hits = _match_one(pattern, every)
        except ValueError:
            continue  # reported by prunable_parameters
        if hits and all(every[n].kind not in cls.kinds for n in hits):
            kinds = sorted({every[n].kind for n in hits})
            able = [c for c in CRITERIA.names() if set(kinds) <= CRITERIA.get(c).kinds]
            raise ValueError(
                f"{cls.name} cannot score {'/'.join(kinds)} weights ({sorted(hits)[0]}): "
                f"{', '.join(able)} can, or leave them out"
            )


def _check_ids(cls: type[Criterion], data: Batches | None) -> None:
    """Token ids reach only criteria that run the model on the user's inputs (those that score
    embeddings); the others feed the network real-valued inputs of their own, which an embedding
    cannot take."""
    if data is None or not data.indices or "embedding" in cls.kinds or not data.takes_ids():
        return
    able = [c for c in CRITERIA.names() if "embedding" in CRITERIA.get(c).kinds]
    raise ValueError(
        f"{cls.name} cannot score a model fed token ids (integer inputs to an nn.Embedding): it "
        f"runs the network on real-valued inputs of its own. Use {', '.join(able)}, or give "
        f"{cls.name} the layers after the embedding (a model fed embedded float inputs)"
    )


class _Index:
    """``output=<int>``: an index into a tuple/list output; out of range is an error saying how
    many outputs there are (other outputs get ``output_tensor``'s messages)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return repr(self.index)

    def __call__(self, out: Any) -> torch.Tensor:
        if isinstance(out, tuple | list) and not -len(out) <= self.index < len(out):
            raise IndexError(
                f"output={self.index}: the model returns {len(out)} outputs (a {type(out).__name__}); "
                f"pass an index from 0 to {len(out) - 1}"
            )
        return output_tensor(out, self.index)


def _match_one(pattern, every):  # noqa: ANN001, ANN202
    from .selection import _match

    return _match([pattern], every, "include")


def _setup(
    model: nn.Module,
    criterion: str,
    batches: Any,
    *,
    include,
    exclude,
    seed: int,
    options: Mapping[str, Any],
    output: Any = None,
    reduce: Reduce | None = None,
) -> tuple[Criterion, Context]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(criterion, str):
        raise TypeError(
            f"criterion must be a registered name (str), got {type(criterion).__name__}"
        )
    if reduce is not None and not callable(reduce):
        raise TypeError(
            f"reduce must be a function reduce(tensor, op='sum') such as platform.all_reduce_, "
            f"got {type(reduce).__name__}"
        )
    cls = CRITERIA.get(criterion)
    options = dict(options)
    input_size = options.get("input_size")
    opts = make_options(cls, options)
    plain = unwrap(model)
    _check_kinds(cls, plain, include)
    params = prunable_parameters(plain, include, exclude, kinds=cls.kinds)
    all_weights = prunable_parameters(plain, kinds=cls.kinds)
    device = model_device(plain)
    model_dtype = _model_dtype(plain)
    work = torch.float32 if model_dtype in (torch.bfloat16, torch.float16) else (model_dtype or torch.float32)
    cast = {}
    if model_dtype != work:  # half-precision models are scored in float32 copies
        for n, t in list(plain.named_parameters()) + list(plain.named_buffers()):
            if t.is_floating_point() and t.dtype != work:
                cast[canonical_name(n)] = t.detach().to(work)
    data = None
    if batches is not None and (cls.uses_data or input_size is None):
        data = Batches(
            batches,
            device=device,
            # "auto" is resolved by the criterion's setup (PX measures its activations)
            micro_batch=mb if isinstance(mb := getattr(opts, "micro_batch", 64), int) else 64,
            need_targets=cls.needs_targets,
            criterion=criterion,
            dtype=model_dtype,
            indices=any(isinstance(m, KINDS["embedding"]) for m in plain.modules()),
        )
        data.check_deterministic()
        _check_ids(cls, data)
    elif cls.uses_data:
        data = Batches(None, device=device, criterion=criterion)  # raises a TypeError
    ctx = Context(
        model=plain,
        params=params,
        all_weights=all_weights,
        batches=data,
        seed=seed,
        generator=generator(seed, "criterion", device="cpu"),
        device=device,
        input_size=tuple(input_size) if input_size is not None else None,
        dtype=work,
        cast=cast,
        output=_Index(output) if isinstance(output, int) and not isinstance(output, bool) else output,
        reduce=reduce,
    )
    crit = cls(opts)
    return crit, ctx


def _normalise(
    raw: Mapping[str, torch.Tensor], names: Iterable[str], criterion: str
) -> dict[str, torch.Tensor]:
    """float32 scores divided by the largest absolute score (all-zero scores stay zeros)."""
    names = list(names)
    tops = {}
    for n in names:
        t = raw[n].detach()
        top = abs_max(t)
        if not math.isfinite(top):  # NaN and inf propagate into the max-norm
            raise FloatingPointError(f"criterion {criterion!r} produced non-finite scores in {n!r}")
        tops[n] = top
    top = max(tops.values(), default=0.0)
    out = {}
    for n in names:
        t = raw[n].detach()
        if t.dtype != torch.float32:
            t = (t.to(torch.float64) / top).to(torch.float32) if top > 0 else t.to(torch.float32)
        else:
            t = t / top if top > 0 else t.clone()
        out[n] = t
    return out


def _digest_value(digest: str) -> int:
    """The first 62 bits of a hex digest: a number that int64 reductions carry exactly."""
    return int(digest[:16], 16) >> 2


def _agree(reduce: Reduce, digest: str, what: str, fix: str, device: torch.device) -> int:
    """Check that every process holds the same ``digest`` (a max- and a min-reduction); returns
    the number of processes. A mismatch raises on every process, naming this one's hash."""
    mine = _digest_value(digest)
    t = torch.tensor([mine, -mine, 1], dtype=torch.int64, device=device)
    both = t[:2].clone()
    reduce(both, op="max")
    count = t[2:].clone()
    reduce(count, op="sum")
    high, low = int(both[0]), -int(both[1])
    processes = int(count[0])
    if high != low:
        raise RuntimeError(
            f"the {processes} processes hold different {what} (hash of this process {mine:x}, of "
            f"all from {low:x} to {high:x}): {fix}. Every process raises this error; compare "
            "their hashes (torchrun prefixes each line with its rank) to see which ranks differ"
        )
    return processes


def _check_same_model(ctx: Context, digest: str | None = None) -> int:
    assert ctx.reduce is not None
    return _agree(
        ctx.reduce, digest or state_hash(ctx.model), "models (theta_0)",
        "every process must build the same model (same seed) and pass its own shard of one split",
        ctx.device,
    )


def mask_hash(mask: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a mask's names and bits (names sorted)."""
    h = hashlib.sha256()
    for n in sorted(mask):
        t = mask[n].detach().to(torch.uint8).cpu().contiguous()
        h.update(n.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _mask_dict(
    mask: Mapping[str, torch.Tensor] | None, params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {}
    given = {canonical_name(k): v for k, v in (mask or {}).items()}
    unknown = set(given) - set(params)
    if unknown:
        raise ValueError(
            f"the mask does not fit the model: unknown parameter {sorted(unknown)[0]!r}"
        )
    for n, p in params.items():
        if n in given:
            m = given[n]
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(
                    f"the mask does not fit the model: {n!r} has shape {tuple(m.shape)} in the "
                    f"mask and {tuple(p.shape)} in the model"
                )
            out[n] = m.to(device=p.device, dtype=torch.bool)
        else:
            out[n] = torch.ones_like(p, dtype=torch.bool)
    return out


def score(
    model: nn.Module,
    criterion: str,
    batches: Any = None,
    *,
    mask: Mapping[str, torch.Tensor] | None = None,
    include: Any = None,
    exclude: Any = None,
    output: Any = None,
    seed: int = 0,
    reduce: Reduce | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Scores of every prunable weight under ``criterion`` ("higher keeps"): float32 tensors of each
    parameter's shape, divided by the largest absolute score. The model is left bit-identical.

    ``batches``: see ``pxprune.batches`` (a list of batches, a tensor, an ``(x, y)`` pair, a Dataset
    or a DataLoader without shuffling). ``include``/``exclude``: names, fnmatch patterns or module
    types. ``output``: which tensor of the model's output to score (a key, an index or a function).

    ``reduce``: several processes score together, each passing its own shard of the split and
    the same model, mask and options; ``reduce(tensor, op="sum")`` reduces a tensor in place
    across them ("sum" or "max"), e.g. ``pxprune.platform.from_environment().all_reduce_``. Every
    process then gets the scores of the whole split (to float rounding). A process whose model
    differs raises ``RuntimeError``."""
    crit, ctx = _setup(
        model, criterion, batches, include=include, exclude=exclude, seed=seed, options=options,
        output=output, reduce=reduce,
    )
    if reduce is not None:
        _check_same_model(ctx)
    current = _mask_dict(mask, ctx.params)
    with frozen_state(ctx.model):
        crit.setup(ctx)
        raw = crit.score(ctx, current)
    return _normalise(raw, ctx.params, criterion)


def prune(
    model: nn.Module,
    criterion: str,
    batches: Any = None,
    *,
    sparsity: float | None = None,
    density: float | None = None,
    rounds: int | None = None,
    scope: str = "global",
    include: Any = None,
    exclude: Any = None,
    output: Any = None,
    seed: int = 0,
    progress: ProgressFn | bool | None = None,
    reduce: Reduce | None = None,
    **options: Any,
) -> Mask:
    """Prune ``model`` at initialisation: returns a :class:`Mask`; the model is never modified.

    ``rounds=None`` means the criterion's own default (PX and SynFlow: 100, SNIP/GraSP: 1). Round t
    of T prunes towards density ``d ** (t / T)`` (exponential schedule); counting, ties and scope
    follow ``pxprune.threshold``. ``progress``: True for a tqdm bar, or ``fn(t, T, mask)``.
    ``batches``, ``include``/``exclude`` and ``output`` are as in :func:`score`. The mask's
    metadata states what was covered (``coverage``), and a warning names the weight tensors that
    were not.

    ``reduce``: distributed pruning, as in :func:`score`; thresholding then runs identically in
    every process, and the final masks are checked to be identical (``RuntimeError`` if not).
    ``split_hash`` is then the hash of this process's shard, and ``processes`` their number.
    """
    s = threshold.resolve_sparsity(sparsity, density)
    threshold.check_scope(scope)
    crit, ctx = _setup(
        model, criterion, batches, include=include, exclude=exclude, seed=seed, options=options,
        output=output, reduce=reduce,
    )
    theta0 = state_hash(ctx.model)
    processes = _check_same_model(ctx, theta0) if reduce is not None else None
    rounds = threshold.check_rounds(crit.default_rounds if rounds is None else rounds)
    current = {n: torch.ones_like(p, dtype=torch.bool) for n, p in ctx.params.items()}
    goals = threshold.targets(current, s, rounds, scope)
    start = time.perf_counter()
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc=f"{criterion} {s:.4g}", unit="round", leave=False)
    elif progress is not None and progress is not False and not callable(progress):
        raise TypeError("progress must be True, False, None or a function (t, T, mask)")
    try:
        with frozen_state(ctx.model):
            crit.setup(ctx)
            for t, goal in enumerate(goals, start=1):
                scores = crit.score(ctx, current)
                check_scores(criterion, crit, ctx, scores, current, first=t == 1)
                current = threshold.prune_step(scores, current, goal, scope=scope)
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(t, rounds, Mask(current))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if reduce is not None:
        _agree(reduce, mask_hash(current), "masks",
               "the scores differed between processes (nondeterministic kernels, or inputs that are "
               "not one split's shards)", ctx.device)
    input_size = ctx.input_size
    if input_size is None and ctx.batches is not None:
        input_size = ctx.batches.first_shape()
    covered = coverage(ctx.model, ctx.params, kinds=crit.kinds, criterion=criterion)
    missing = {n: c for n, (c, why) in covered.not_covered.items() if why != "excluded"}
    if missing and sum(missing.values()) > 0.01 * max(1, covered.total):
        log.warning("%s: %s", criterion, covered.summary())
    meta = {
        "criterion": criterion,
        "options": non_default_options(crit.options),
        "sparsity": s,
        "rounds": rounds,
        "scope": scope,
        "seed": seed,
        "split_hash": ctx.batches.digest if ctx.batches is not None else None,
        "theta0_hash": theta0,
        "input_size": list(input_size) if input_size is not None else None,
        "prune_seconds": seconds,
        "versions": {"pxprune": __version__, "torch": torch.__version__},
        "coverage": covered.as_dict(),
    }
    if processes is not None:
        meta["processes"] = processes
    mask = Mask(current, metadata=meta)
    empty = mask.empty_layers()
    if input_size is not None:
        try:
            effective, _ = effective_masks(ctx.model, current, tuple(input_size))
            empty = [n for n in current if not bool(effective[n].any())]
        except Exception as err:  # noqa: BLE001 - the diagnostic must never fail a prune
            log.debug("effective-density check skipped: %s", err)
    mask.metadata["empty_layers"] = empty
    if empty:
        log.warning(
            "%s left %d layer(s) empty or cut off from every input-output path: %s",
            criterion,
            len(empty),
            ", ".join(empty),
        )
    return mask
