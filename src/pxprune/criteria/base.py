"""The criterion contract: a criterion only *scores* ("higher keeps"); thresholding, schedules and
scope live in ``pxprune.threshold``. Each criterion is a class registered by name, with a frozen
``Options`` dataclass of its documented options and its paper's number of rounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..batches import Batches
from ..registry import Registry
from ..selection import ALL_KINDS

if TYPE_CHECKING:
    from ..paths import ScaledSum

Reduce = Callable[..., Any]
"""``reduce(tensor, op="sum")``: reduces ``tensor`` in place across processes, ``op`` "sum" or "max"
(``pxprune.platform.Platform.all_reduce_`` is one)."""


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A criterion without options."""


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Options shared by every criterion that reads ``batches``."""

    micro_batch: int = 64

    def __post_init__(self) -> None:
        if (
            isinstance(self.micro_batch, bool)
            or not isinstance(self.micro_batch, int)
            or (self.micro_batch < 1)
        ):
            raise ValueError(f"micro_batch must be a positive integer, got {self.micro_batch!r}")


@dataclasses.dataclass(frozen=True)
class InputSizeOptions:
    """Options of data-free criteria: the input shape when no ``batches`` are given."""

    input_size: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None:
            size = tuple(self.input_size)
            if not size or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size
            ):
                raise ValueError(
                    f"input_size must be a tuple of positive ints like (3, 32, 32), got {self.input_size!r}"
                )
            object.__setattr__(self, "input_size", size)


@dataclasses.dataclass
class Context:
    """What a criterion may read while scoring. ``params`` are the scored (prunable, not excluded)
    weight leaves by canonical name; ``all_weights`` every prunable weight of the kinds the
    criterion scores (excluded ones too, which path criteria still treat as path layers).

    ``dtype`` is the dtype the criterion computes in: the model's, or float32 for a bfloat16 or
    float16 model (``cast`` then holds float32 copies of every other floating parameter and
    buffer, to substitute with the scored weights). ``output`` selects the tensor of the model's
    output that is scored (``pxprune.paths.output_tensor``)."""

    model: nn.Module
    params: dict[str, torch.Tensor]
    all_weights: dict[str, torch.Tensor]
    batches: Batches | None
    seed: int
    generator: torch.Generator
    device: torch.device
    input_size: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.float32
    cast: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    output: Any = None
    reduce: Reduce | None = None

    def all_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor in place across processes (one reduction for tensors of one dtype)."""
        if self.reduce is None or not tensors:
            return
        if len({t.dtype for t in tensors}) > 1 or len(tensors) == 1:
            for t in tensors:
                self._reduce_into(t)
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.reduce(flat, op="sum")
        start = 0
        for t in tensors:
            t.copy_(flat[start : start + t.numel()].view_as(t))
            start += t.numel()

    def _reduce_into(self, t: torch.Tensor) -> None:
        assert self.reduce is not None
        if t.is_contiguous():
            self.reduce(t, op="sum")
        else:
            c = t.contiguous()
            self.reduce(c, op="sum")
            t.copy_(c)

    def global_count(self, count: int) -> int:
        """``count`` summed over processes (e.g. the samples of the whole split)."""
        if self.reduce is None:
            return count
        t = torch.tensor([count], dtype=torch.int64, device=self.device)
        self.reduce(t, op="sum")
        return int(t.item())

    def all_sum_scaled(self, total: ScaledSum) -> None:
        """Sum a :class:`pxprune.paths.ScaledSum` across processes (see ``ScaledSum.reduce_``)."""
        if self.reduce is not None:
            total.reduce_(self.reduce)

    def output_of(self, out: Any) -> torch.Tensor:
        from ..paths import output_tensor

        return output_tensor(out, self.output)

    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input: from ``input_size`` or the first batch."""
        if self.input_size is not None:
            return self.input_size
        if self.batches is None:
            raise TypeError(
                "this criterion needs the input shape: pass batches or input_size=(C, H, W)"
            )
        return self.batches.first_shape()

    def masked(
        self, mask: Mapping[str, torch.Tensor], *, grad: bool = False
    ) -> dict[str, torch.Tensor]:
        """theta * M for every scored weight, in ``dtype`` (leaves requiring grad when ``grad``)."""
        out = {}
        for n, p in self.params.items():
            w = p.detach().to(self.dtype) * mask[n].to(self.dtype)
            out[n] = w.requires_grad_(grad)
        return out


class Criterion:
    """Base class. Subclasses set ``name``, ``Options``, ``default_rounds``, ``uses_data``,
    ``needs_targets`` and implement ``score``; ``setup`` runs once per ``prune``/``score`` call."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    kinds: ClassVar[frozenset[str]] = ALL_KINDS
    """The kinds of weights it can score (``pxprune.selection``); others are not covered."""
    default_rounds: ClassVar[int] = 1
    uses_data: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        self.options = options

    def setup(self, ctx: Context) -> None:
        """Per-call preparation (shapes, classifier detection, ...)."""

    def score(self, ctx: Context, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def explain_zero(self, ctx: Context, names: list[str]) -> str | None:
        """Why every score of ``names`` is 0, with the fix, when the criterion knows (see
        ``pxprune.degenerate``); None for the generic message."""
        return None

    def degenerate_reason(self) -> str | None:
        """A reason, with the fix, that explains any degenerate round of this configuration
        (e.g. an option known to give round-off scores); it takes precedence over every other
        explanation in ``pxprune.degenerate``. None when there is none."""
        return None


CRITERIA: Registry[type[Criterion]] = Registry(
    "criterion", pattern=r"[a-z][a-z0-9_]*",
    rule="lower-case letters, digits and _ (it becomes part of run folder names and specs)")


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    CRITERIA.add(cls.name, cls)
    return cls


def option_names(cls: type[Criterion]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Options)]


def make_options(cls: type[Criterion], options: Mapping[str, Any]) -> Any:
    """Build the criterion's Options; an unknown option is a TypeError listing the valid ones."""
    valid = option_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise TypeError(
            f"criterion {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {listed}"
        )
    return cls.Options(**options)


def non_default_options(options: Any) -> dict[str, Any]:
    """The options that differ from their defaults (for folder names and metadata)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value != default:
            out[f.name] = value
    return out
