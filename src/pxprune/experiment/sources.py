"""Mask sources: where a run's mask comes from, one class each (docs/design/EXTENDING.md).

| source | ``--criterion`` | the mask | trains to make it | applied in training |
| --- | --- | --- | --- | --- |
| :class:`Pruned` | a registered criterion (``px``, ...) | ``pxprune.prune`` on the split | no | yes |
| :class:`Dense` | ``dense`` (or sparsity 0) | all ones | no | no |
| :class:`Lottery` | ``lottery[rate=0.2,rewind_step=0]`` | iterative magnitude pruning | yes | yes |
| :class:`FromFile` | ``pxprune train --mask FILE`` | a saved mask | no | as its source |

A source validates its own part of the configuration (:meth:`MaskSource.normalise`), makes the
mask and its prune history (:meth:`MaskSource.make`), and names the weights training starts from
when they are not theta_0 (:meth:`MaskSource.rewind_file`). Nothing outside this module tests
for ``dense`` or ``lottery``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import __version__
from ..criteria import CRITERIA, make_options, non_default_options
from ..masks import Mask, state_hash
from ..platform import SINGLE, Platform
from ..registry import Registry
from ..selection import prunable_parameters
from .errors import UserError
from .spec import _plain

if TYPE_CHECKING:
    from .config import RunConfig
    from .data import Data
    from .folder import RunFolder
    from .run import Observer

DENSE = "dense"
"""The unpruned network (sparsity 0): also the reference row of sweeps and reports."""
LOTTERY = "lottery"
LOTTERY_OPTIONS = {"rate": 0.2, "rewind_step": 0}


@dataclasses.dataclass
class MakeContext:
    """What a source may use to make a mask: ``model`` holds theta_0 (on ``device``)."""

    config: RunConfig
    folder: RunFolder
    model: nn.Module
    data: Data
    device: torch.device
    observer: Observer
    theta0: str
    platform: Platform = SINGLE
    """Several processes (``torchrun``): each makes the mask with the others."""


class MaskSource:
    """One way of making a run's mask."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """One line for ``pxprune list criteria`` (empty: not a ``--criterion``)."""
    applied: ClassVar[bool] = True
    """Whether training multiplies the weights by the mask."""
    trains: ClassVar[bool] = False
    """Whether making the mask needs the training set (and trains)."""
    data_parallel: ClassVar[bool] = True
    """Whether several processes of one run can make the mask together."""

    def options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options that differ from their defaults, validated, keys sorted."""
        if options:
            raise UserError(f"criterion {self.name!r} takes no options")
        return {}

    def normalise(self, prune: dict[str, Any], *, explicit_sparsity: bool) -> dict[str, Any]:
        """This source's rules for the ``prune`` section (sparsity, options, rounds)."""
        prune["options"] = self.options(prune["options"])
        return prune

    def default_rounds(self, config: RunConfig) -> int:
        return 1

    def criterion_rounds(self) -> int | None:
        """The criterion's own default number of rounds (None: the source has no criterion)."""
        return None

    def make(self, ctx: MakeContext) -> tuple[Mask, list[list[int]]]:
        raise NotImplementedError

    def rewind_file(self, folder: RunFolder, config: RunConfig) -> Path | None:
        """The weights training starts from instead of theta_0 (None: theta_0)."""
        return None

    def after_make(self, ctx: MakeContext) -> None:
        """Files a source keeps beside the mask (the lottery's rewind point)."""


SOURCES: Registry[MaskSource] = Registry(
    "mask source", pattern=r"[a-z][a-z0-9_]*",
    rule="lower-case letters, digits and _ (it is given as --criterion NAME)")


def register_source(cls: type[MaskSource]) -> type[MaskSource]:
    SOURCES.add(cls.name, cls())
    return cls


def source_for(criterion: str) -> MaskSource:
    """The source of ``--criterion NAME``: a registered source, else a registered criterion."""
    if criterion in SOURCES and criterion in CRITERIA:
        raise UserError(f"{criterion!r} is registered both as a criterion and as a mask source; "
                        "rename one of them")
    if criterion in SOURCES and criterion != FromFile.name:
        return SOURCES.get(criterion)
    if criterion in CRITERIA:
        return Pruned(criterion)
    names = ", ".join(n for n in SOURCES.names() if n != FromFile.name)
    raise UserError(
        f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA.names())}; or "
        f"{names} (see `pxprune list criteria`)"
    )


def normalise_prune(prune: dict[str, Any], *, explicit_sparsity: bool) -> dict[str, Any]:
    """Validate a ``prune`` section: the sparsity, then the source's own rules. A sparsity of 0
    is the dense network whatever the criterion (whose name is still checked)."""
    s = prune["sparsity"]
    if not 0.0 <= s < 1.0:
        raise UserError(
            f"impossible sparsity {s!r}: it must be in [0, 1) (0.982 removes 98.2% of the weights)"
        )
    source = source_for(prune["criterion"])
    if s == 0.0 and not isinstance(source, Dense):
        source.options(prune["options"])
        source = SOURCES.get(DENSE)
        prune.update(criterion=DENSE, options={})
        explicit_sparsity = False
    prune = source.normalise(prune, explicit_sparsity=explicit_sparsity)
    if prune["rounds"] is not None and prune["rounds"] < 1:
        raise UserError(f"prune.rounds must be >= 1 or null, got {prune['rounds']}")
    return prune


def dense_changes() -> dict[str, Any]:
    """The ``prune`` changes that make a configuration the dense run."""
    return {"criterion": DENSE, "sparsity": 0.0, "options": {}, "rounds": None, "shuffle": False}


def history_start(model: nn.Module) -> list[int]:
    """Round 0 of a prune history: every weight of every layer."""
    return [0, *(p.numel() for p in prunable_parameters(model).values())]


def counts(mask: Mask, names: list[str]) -> list[int]:
    return [int(torch.count_nonzero(mask[n])) for n in names]


# ------------------------------------------------------------------------------ the sources
class Pruned(MaskSource):
    """A registered criterion, through ``pxprune.prune`` on the run's pruning split."""

    name = "criterion"

    def __init__(self, criterion: str | None = None) -> None:
        self.criterion = criterion

    def options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        cls = CRITERIA.get(self.criterion)
        try:
            opts = make_options(cls, dict(options))
        except (TypeError, ValueError) as err:
            raise UserError(str(err)) from None
        kept = non_default_options(opts)
        return {k: _plain(kept[k]) for k in sorted(kept)}

    def default_rounds(self, config: RunConfig) -> int:
        rounds = config.prune.rounds
        return rounds if rounds is not None else CRITERIA.get(self.criterion).default_rounds

    def criterion_rounds(self) -> int | None:
        return CRITERIA.get(self.criterion).default_rounds

    def make(self, ctx: MakeContext) -> tuple[Mask, list[list[int]]]:
        from ..api import prune as prune_model
        from .data import pruning_batches

        p = ctx.config.prune
        model = ctx.model
        names = list(prunable_parameters(model))
        rows: list[list[int]] = [history_start(model)]

        def progress(t: int, total: int, mask: Mask) -> None:
            rows.append([t, *counts(mask, names)])
            ctx.observer.prune_round(t, total)

        ctx.observer.prune_start(self.default_rounds(ctx.config))
        split, reduce = ctx.data.split, None
        platform = ctx.platform
        if platform.world_size > 1:
            # each process scores its contiguous part of the split; the criterion adds the parts
            # exactly (pxprune.prune's reduce=) and every process checks it holds the same mask
            from torch.utils.data import Subset

            from ..train.distributed import contiguous_shard

            split = Subset(split, contiguous_shard(range(len(split)), platform.rank,
                                                   platform.world_size))
            reduce = platform.all_reduce_
        batches = pruning_batches(split, ctx.data.spec)
        try:
            mask = prune_model(model, p.criterion, batches, sparsity=p.sparsity, rounds=p.rounds,
                               scope=p.scope, seed=ctx.config.seed, progress=progress,
                               reduce=reduce, **p.options)
        except (ValueError, TypeError) as err:
            raise UserError(f"pruning with {p.criterion} failed: {err}") from None
        finally:
            ctx.observer.prune_end()
        return mask, rows


@register_source
class Dense(MaskSource):
    """The unpruned network: an all-ones mask that training does not apply."""

    name = DENSE
    summary = "no pruning: sparsity 0"
    applied = False

    def options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        if options:
            raise UserError("criterion 'dense' (no pruning) takes no options")
        return {}

    def normalise(self, prune: dict[str, Any], *, explicit_sparsity: bool) -> dict[str, Any]:
        if prune["sparsity"] > 0 and explicit_sparsity:
            raise UserError(
                f"criterion 'dense' means no pruning, but sparsity {prune['sparsity']} was asked "
                "for; drop --sparsity or choose a criterion (see `pxprune list criteria`)"
            )
        if prune["shuffle"]:
            raise UserError("prune.shuffle needs a sparsity > 0 (a dense run has nothing to shuffle)")
        prune.update(sparsity=0.0, options=self.options(prune["options"]), rounds=None)
        return prune

    def make(self, ctx: MakeContext) -> tuple[Mask, list[list[int]]]:
        params = prunable_parameters(ctx.model)
        ones = {n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in params.items()}
        mask = Mask(ones, metadata={
            "criterion": DENSE, "options": {}, "sparsity": 0.0, "rounds": 0, "scope": "global",
            "seed": ctx.config.seed, "split_hash": None, "theta0_hash": ctx.theta0,
            "input_size": None, "prune_seconds": 0.0,
            "versions": {"pxprune": __version__, "torch": torch.__version__},
        })
        return mask, [[0, *counts(mask, list(params))]]


@register_source
class Lottery(MaskSource):
    """``pxprune.lottery`` (iterative magnitude pruning with rewinding, Frankle et al.) with the
    recipe's training at every level; ``lottery/level<k>.pt`` keeps each level's trained weights
    (a stopped run resumes per level) and ``lottery/rewind.pt`` theta_k."""

    name = LOTTERY
    summary = "iterative magnitude pruning with rewinding; trains at every level"
    trains = True
    data_parallel = False

    def options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(LOTTERY_OPTIONS))
        if unknown:
            raise UserError(f"criterion 'lottery' has no option {', '.join(map(repr, unknown))}; "
                            f"its options are: {', '.join(LOTTERY_OPTIONS)}")
        rate = options.get("rate", LOTTERY_OPTIONS["rate"])
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
            raise UserError(f"lottery rate must be in (0, 1), got {rate!r}")
        step = options.get("rewind_step", LOTTERY_OPTIONS["rewind_step"])
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UserError(f"lottery rewind_step must be a non-negative integer, got {step!r}")
        given = {"rate": float(rate), "rewind_step": step}
        return {k: v for k, v in sorted(given.items()) if v != LOTTERY_OPTIONS[k]}

    def normalise(self, prune: dict[str, Any], *, explicit_sparsity: bool) -> dict[str, Any]:
        prune["options"] = self.options(prune["options"])
        prune["rounds"] = None  # its levels follow from the rate
        return prune

    @staticmethod
    def rewind_step(config: RunConfig) -> int:
        return int(config.prune.options.get("rewind_step", LOTTERY_OPTIONS["rewind_step"]))

    def default_rounds(self, config: RunConfig) -> int:
        from ..lottery import levels_for

        rate = config.prune.options.get("rate", LOTTERY_OPTIONS["rate"])
        return levels_for(config.prune.sparsity, rate)

    def rewind_file(self, folder: RunFolder, config: RunConfig) -> Path | None:
        return folder.rewind if self.rewind_step(config) > 0 else None

    def make(self, ctx: MakeContext) -> tuple[Mask, list[list[int]]]:
        from ..lottery import lottery as find_ticket
        from ..train import load_plain_state_dict, plain_state_dict
        from .files import atomic_torch_save
        from .training import make_trainer, mask_digest

        config, folder, obs = ctx.config, ctx.folder, ctx.observer
        opts = {**LOTTERY_OPTIONS, **config.prune.options}
        model = ctx.model
        names = list(prunable_parameters(model))
        rows: list[list[int]] = [history_start(model)]
        levels = self.default_rounds(config)
        epochs = config.train.epochs
        calls: list[int] = []

        def train_fn(m: nn.Module, mask: Mask, *, max_steps: int | None = None) -> None:
            level = len(calls) if opts["rewind_step"] > 0 else len(calls) + 1
            calls.append(level)
            if level >= 2:
                rows.append([level - 1, *counts(mask, names)])
            key = {"format": "pxprune.lottery_level", "level": level, "mask": mask_digest(mask),
                   "start": state_hash(m), "max_steps": max_steps}
            path = folder.lottery / f"level{level}.pt"
            cached = _load_level(path, key)
            if cached is not None:
                load_plain_state_dict(m, cached)
            else:
                trainer = make_trainer(m, ctx.data, config, ctx.device)
                if max_steps is None:
                    for epoch in range(1, epochs + 1):
                        obs.epoch_start(epoch, epochs, trainer.steps_per_epoch)
                        stats = trainer.train_epoch(on_step=obs.step)
                        obs.epoch_end({"epoch": epoch, "lr": stats.lr, **stats.values,
                                       **{c: None for c in ctx.data.task.eval_columns},
                                       "seconds": stats.seconds})
                else:
                    left = max_steps
                    while left > 0:
                        left -= trainer.train_epoch(max_steps=left, on_step=obs.step).steps
                atomic_torch_save({**key, "model": plain_state_dict(m)}, path)
            if level >= 1:
                obs.prune_round(level, levels)

        obs.prune_start(levels)
        start = time.perf_counter()
        try:
            mask = find_ticket(model, train_fn, sparsity=config.prune.sparsity,
                               rate=opts["rate"], rewind_step=opts["rewind_step"],
                               scope=config.prune.scope)
        except (ValueError, TypeError) as err:
            raise UserError(f"lottery failed: {err}") from None
        finally:
            obs.prune_end()
        rows.append([levels, *counts(mask, names)])
        mask.metadata.update(seed=config.seed, prune_seconds=time.perf_counter() - start)
        return mask, rows

    def after_make(self, ctx: MakeContext) -> None:
        """On return of :meth:`make` the model holds theta_k: keep it as the rewind point."""
        if self.rewind_step(ctx.config) > 0:
            from .folder import save_weights

            save_weights(ctx.folder.rewind, ctx.model, ctx.config)


def _load_level(path: Path, key: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a broken level file is simply trained again
        return None
    if not isinstance(payload, dict) or any(payload.get(k) != v for k, v in key.items()):
        return None
    return payload.get("model")


@register_source
class FromFile(MaskSource):
    """A saved mask (``pxprune train --mask FILE``): its metadata names the source it was made
    by, which decides how it is trained; its init.pt, prune history and rewind point come along
    from beside it."""

    name = "file"

    def __init__(self, mask: Mask | None = None, file: Path | None = None) -> None:
        self.mask = mask
        self.file = file

    def made_by(self) -> MaskSource:
        criterion = str((self.mask.metadata if self.mask is not None else {}).get("criterion")
                        or DENSE)
        return source_for(criterion)

    @property
    def applied(self) -> bool:  # type: ignore[override]
        return self.made_by().applied

    def rewind_file(self, folder: RunFolder, config: RunConfig) -> Path | None:
        return self.made_by().rewind_file(folder, config)

    def make(self, ctx: MakeContext) -> tuple[Mask, list[list[int]]]:
        from .folder import copied_history

        assert self.mask is not None and self.file is not None
        names = list(prunable_parameters(ctx.model))
        rows = copied_history(self.file.parent / "prune_history.csv", names) or [
            [int(self.mask.metadata.get("rounds") or 0), *counts(self.mask, names)]]
        return self.mask, rows

    def after_make(self, ctx: MakeContext) -> None:
        """A ticket that rewinds keeps its rewind point beside the new mask too."""
        assert self.file is not None and self.mask is not None
        if isinstance(self.made_by(), Lottery) and Lottery.rewind_step(ctx.config) > 0:
            from .folder import save_weights

            load_rewind(self.file.parent / "lottery" / "rewind.pt", ctx.model, self.mask)
            save_weights(ctx.folder.rewind, ctx.model, ctx.config)


def load_rewind(path: Path, model: nn.Module, mask: Mask) -> None:
    """Load a lottery ticket's rewind point into ``model``, checking it is the ticket's own."""
    from .folder import load_weights

    if not path.is_file():
        step = (mask.metadata.get("options") or {}).get("rewind_step", "k")
        raise UserError(f"the lottery mask rewinds to step {step}, but there is no "
                        "lottery/rewind.pt beside it")
    if load_weights(path, model) != mask.metadata.get("rewind_hash"):
        raise UserError(f"{path} is not the rewind point this lottery mask was made from")


def train_config_changes(mask: Mask, shuffle: bool) -> dict[str, Any]:
    """The ``prune`` section that trains a saved mask, from its metadata."""
    meta = mask.metadata
    criterion = meta.get("criterion")
    if not isinstance(criterion, str) or "theta0_hash" not in meta:
        raise UserError("the mask has no pxprune metadata (criterion, theta_0 hash); make it "
                        "with `pxprune prune` or pxprune.prune")
    sparsity = meta.get("sparsity", mask.sparsity)
    source = source_for(criterion) if criterion in SOURCES or criterion in CRITERIA else None
    if source is None:
        raise UserError(f"the mask was made by {criterion!r}, which is not registered here")
    if isinstance(source, Dense) or sparsity == 0:
        return dense_changes()
    rounds = meta.get("rounds")
    if isinstance(source, Lottery) or rounds == source.criterion_rounds():
        rounds = None
    return {"criterion": criterion, "options": dict(meta.get("options") or {}),
            "sparsity": float(sparsity), "rounds": rounds,
            "scope": meta.get("scope", "global"), "shuffle": shuffle or "shuffled_seed" in meta}


def mask_label(mask: Mask) -> str:
    """The criterion a saved mask names (``dense`` when it names none)."""
    return str(mask.metadata.get("criterion") or DENSE)
