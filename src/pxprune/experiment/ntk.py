"""``pxprune ntk``: the empirical NTK of a run's network at initialisation.

The network is the one training starts from: theta_0 from ``init.pt`` (or the re-initialised
weights of a ``+reinit`` run, or the rewind point of a lottery ticket), with ``mask.pt``; the
inputs are a class-balanced part of the run's pruning split (``split.json``, with the eval
transform). :func:`pxprune.analysis.ntk_summary` computes the traces and spectra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..analysis import ntk_summary
from ..data import DatasetNotFoundError, create_dataset, split_hash, targets_of
from ..masks import Mask
from .config import RunConfig
from .data import build_model, load_data
from .errors import UserError
from .files import read_json, write_json
from .folder import INIT, MASK, SPLIT, RunFolder, load_mask, load_theta0
from .run import read_config, resolve_device, run_label
from .sources import mask_label, source_for

NTK_FILE = "ntk.json"
DEFAULT_SAMPLES = 100


def balanced(indices: Sequence[int], labels: Sequence[int], n: int) -> list[int]:
    """``n`` of ``indices`` taken round-robin over their classes (in order within a class), so
    a part of the split covers every class; sorted."""
    by_class: dict[int, list[int]] = {}
    for i, y in zip(indices, labels, strict=True):
        by_class.setdefault(int(y), []).append(int(i))
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)


def _split_inputs(config: RunConfig, indices: list[int], samples: int) -> torch.Tensor:
    from .data import config_task, dataset_kwargs

    d = config.data
    task = config_task(config)
    if task.name != "classification":
        raise UserError(f"`pxprune ntk` reads a classifier's NTK; {config.data.name} is a "
                        f"{task.name} dataset (every pixel would be an output)")
    try:
        full = create_dataset(d.name, root=d.root, train=True, download=d.download,
                              augment=False, **dataset_kwargs(config))
    except DatasetNotFoundError as err:
        raise UserError(str(err)) from None
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read {d.name} under {d.root}: {err}") from None
    if indices and max(indices) >= len(full):
        raise UserError(f"the pruning split does not fit {d.name} under {d.root} "
                        f"(index {max(indices)} of {len(full)} examples)")
    labels = targets_of(Subset(full, indices)).tolist()
    chosen = balanced(indices, labels, samples)
    return torch.stack([full[i][0] for i in chosen])


def _read_split(out: Path) -> list[int]:
    path = out / SPLIT
    if not path.is_file():
        raise UserError(f"{out} has no {SPLIT}; it is not a pruned run folder")
    try:
        data = read_json(path)
        indices = [int(i) for i in data["indices"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is unreadable; prune the run again") from None
    if data.get("hash") not in (None, split_hash(indices)):
        raise UserError(f"{path} is corrupt (its indices do not match its hash)")
    if not indices:
        raise UserError(f"{path} holds no indices")
    return indices


def _check_options(samples: int, probes: int, top: int) -> None:
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    if probes < 2:
        raise UserError(f"--probes must be at least 2 (for a standard error), got {probes}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")


def _summary(model: torch.nn.Module, inputs: torch.Tensor, mask: Mask, device: torch.device,
             **options: Any) -> dict[str, Any]:
    model.to(device)
    dense = mask.density >= 1.0
    try:
        result = ntk_summary(model, inputs.to(device), None if dense else mask, **options)
    except (ValueError, TypeError) as err:
        raise UserError(f"the NTK failed: {err}") from None
    return result.to_json_dict()


def run_ntk(out: str | Path, *, samples: int = DEFAULT_SAMPLES, probes: int = 64, top: int = 10,
            exact_limit: float = 5e8, seed: int = 0,
            device: str | torch.device | None = None) -> dict[str, Any]:
    """The NTK summary of a run folder's network at initialisation, as ntk.json holds it: the
    keys of :class:`~pxprune.analysis.NTKResult` plus the run's identity. ``seed`` seeds the
    Hutchinson probes (used only above ``exact_limit``)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no run folder at {out}")
    _check_options(samples, probes, top)
    config = read_config(out)
    if not (out / MASK).is_file() or not (out / INIT).is_file():
        raise UserError(f"{out} has no {MASK} and {INIT}; prune it first (pxprune prune)")
    mask = load_mask(out / MASK)
    indices = _read_split(out)
    device = resolve_device(device)
    inputs = _split_inputs(config, indices, samples)
    data = load_data(config, train=False, test=False, split=False)
    model = build_model(config, data.spec)
    try:
        mask.check_fits(model)
    except ValueError as err:
        raise UserError(f"{out / MASK}: {err}") from None
    theta0, weights = RunFolder(out).starting_weights(
        model, config, source=source_for(config.prune.criterion), mask=mask, spec=data.spec)
    result = _summary(model, inputs, mask, device, probes=probes, top=top,
                      exact_limit=exact_limit, seed=seed)
    result.update(run=str(out), criterion=run_label(config), sparsity=mask.sparsity,
                  density=mask.density, seed=config.seed, weights=weights, theta0_hash=theta0)
    return result


def mask_ntk(config: RunConfig, mask_file: str | Path, *, run_seed: int | None = None,
             samples: int = DEFAULT_SAMPLES, probes: int = 64, top: int = 10,
             exact_limit: float = 5e8, seed: int = 0,
             device: str | torch.device | None = None) -> dict[str, Any]:
    """The NTK summary of a saved mask on ``config``'s model (the form ``--recipe R --mask F``):
    theta_0 from ``init.pt`` beside the mask, else rebuilt from the model and the run seed
    (``run_seed``, default the mask's own; the hash must match the mask's); inputs from the
    pruning split of that seed. ``seed`` seeds the Hutchinson probes."""
    mask_file = Path(mask_file)
    _check_options(samples, probes, top)
    mask = load_mask(mask_file)
    if run_seed is None:
        run_seed = mask.metadata.get("seed", config.seed)
    if isinstance(run_seed, bool) or not isinstance(run_seed, int) or run_seed < 0:
        raise UserError(f"bad run seed {run_seed!r}; give --seed K")
    config = dataclasses.replace(config, seed=run_seed)
    device = resolve_device(device)
    data = load_data(config, train=False, test=False, split=True)
    assert data.split_indices is not None
    inputs = _split_inputs(config, data.split_indices, samples)
    model = build_model(config, data.spec)
    try:
        mask.check_fits(model)
    except ValueError as err:
        raise UserError(f"{mask_file}: {err}") from None
    beside = mask_file.parent / INIT
    theta0 = load_theta0(model, beside if beside.is_file() else None)
    if mask.metadata.get("theta0_hash") not in (None, theta0):
        where = beside if beside.is_file() else f"{config.model.name} with seed {config.seed}"
        raise UserError(f"the mask was made from another theta_0 than {where}; give the seed "
                        "it was pruned with (--seed) or keep its init.pt beside it")
    result = _summary(model, inputs, mask, device, probes=probes, top=top,
                      exact_limit=exact_limit, seed=seed)
    result.update(run=None, mask=str(mask_file),
                  criterion=mask_label(mask),
                  sparsity=mask.sparsity, density=mask.density, seed=config.seed,
                  weights="theta_0", theta0_hash=theta0)
    return result


def write_ntk(path: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` atomically as JSON."""
    path = Path(path)
    write_json(path, result)
    return path
