"""The demo (docs/design/CONTRACTS.md section 8): PX, random pruning and the dense network, one recipe, one
seed, in ``<out>/{px,random,dense}/``; finished runs are reused. Criteria are looked up by name
in the registry when the runs are planned, so an unregistered one is a :class:`UserError`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..tables import markdown_table
from .config import RunConfig, with_prune
from .errors import UserError
from .run import Plan, plan, run_label
from .sources import DENSE, Dense, dense_changes, source_for
from .spec import parse_criterion

DEMO_RECIPE = "demo"
DEMO_CRITERIA = ("px", "random", DENSE)
DEMO_OUT = Path("runs") / "demo"


def demo_config(config: RunConfig, criterion: str) -> RunConfig:
    """``config`` with its criterion replaced by a spec such as ``px`` or
    ``px[classifier=signed]`` (``dense``: sparsity 0); rounds are kept."""
    spec = parse_criterion(criterion)
    if isinstance(source_for(spec.name), Dense):
        if spec.options or spec.shuffle or spec.reinit:
            raise UserError("the dense row takes no options, +shuffled or +reinit")
        return with_prune(config, **dense_changes())
    changed = with_prune(config, criterion=spec.name, options=spec.options,
                         shuffle=spec.shuffle or config.prune.shuffle)
    if spec.reinit:
        changed = dataclasses.replace(changed,
                                      train=dataclasses.replace(changed.train, reinit=True))
    return changed


def demo_plans(config: RunConfig, out: str | Path = DEMO_OUT,
               criteria: Sequence[str] = DEMO_CRITERIA) -> list[tuple[str, Plan]]:
    """Validate every run of the demo before any of them starts."""
    out = Path(out)
    plans = []
    for spec in criteria:
        cfg = demo_config(config, spec)
        name = run_label(cfg)
        plans.append((name, plan(cfg, out / name)))
    return plans


def demo_table(results: Sequence[tuple[str, Mapping[str, Any]]], metric: str = "test_acc") -> str:
    """One markdown table, a row per run: the task's primary metric, density, pruning and
    training seconds."""
    return markdown_table(
        ["run", metric, "density", "prune_s", "train_s"],
        [[name, f"{m[metric]:.4f}", f"{m['density']:.4f}", f"{m['prune_seconds']:.1f}",
          f"{m['train_seconds']:.1f}"] for name, m in results],
        align=["", "r", "r", "r", "r"],
    )
