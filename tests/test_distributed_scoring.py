"""Distributed scoring (``reduce=``): two gloo processes, each with half of the split, give the
scores and masks of one process with the whole split."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import pxprune
from pxprune.platform import SINGLE, Platform, from_environment

N, WORLD = 12, 2
CASES = {
    # name: (criterion, prune options)
    "px": ("px", {"sparsity": 0.8, "rounds": 4, "micro_batch": 4}),
    "snip": ("snip", {"sparsity": 0.7, "micro_batch": 4}),
    "grasp": ("grasp", {"sparsity": 0.7, "micro_batch": 4}),
}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def _split() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 3, 6, 6, generator=g), torch.randint(0, 5, (N,), generator=g)


def _run(batches, reduce=None, model_seed: int = 0) -> dict:  # noqa: ANN001
    out = {}
    for case, (criterion, opts) in CASES.items():
        model = _model(model_seed)
        mb = opts["micro_batch"]
        out[f"{case}/scores"] = pxprune.score(model, criterion, batches, micro_batch=mb, reduce=reduce)
        mask = pxprune.prune(model, criterion, batches, reduce=reduce, **opts)
        out[f"{case}/mask"] = dict(mask)
        out[f"{case}/processes"] = mask.metadata.get("processes")
    return out


def _worker(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    platform = from_environment("cpu", init_method=store)
    try:
        x, y = _split()
        half = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        # two user batches per shard, one larger than micro_batch
        shard = [(x[half][:5], y[half][:5]), (x[half][5:], y[half][5:])]
        result = _run(shard, platform.all_reduce_)
        result["platform"] = (platform.rank, platform.world_size, platform.is_primary)
        result["gathered"] = platform.all_gather_object(rank * 10)
        t = platform.broadcast_(torch.tensor([float(rank + 1)]), src=1)
        result["broadcast"] = float(t)
        platform.barrier()
        try:  # rank 1 builds another model: both processes must refuse
            pxprune.score(_model(rank), "snip", shard, reduce=platform.all_reduce_)
            result["mismatch"] = None
        except RuntimeError as err:
            result["mismatch"] = str(err)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> list[dict]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("dist")
    store = f"file://{folder / 'store'}"
    mp.spawn(_worker, args=(store, str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def whole() -> dict:
    x, y = _split()
    return _run([(x, y)])


@pytest.mark.parametrize("case", list(CASES))
def test_scores_equal_one_process_with_the_whole_split(distributed, whole, case) -> None:  # noqa: ANN001
    for result in distributed:
        got, want = result[f"{case}/scores"], whole[f"{case}/scores"]
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_masks_identical_to_one_process(distributed, whole, case) -> None:  # noqa: ANN001
    want = whole[f"{case}/mask"]
    for result in distributed:
        got = result[f"{case}/mask"]
        assert all(torch.equal(got[n], want[n]) for n in want)
        assert result[f"{case}/processes"] == WORLD
    assert whole[f"{case}/processes"] is None


def test_multi_round_px_mask_is_real(whole) -> None:  # noqa: ANN001
    mask = whole["px/mask"]
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert 0 < kept < total


def test_platform_collectives(distributed) -> None:  # noqa: ANN001
    assert [r["platform"] for r in distributed] == [(0, 2, True), (1, 2, False)]
    assert all(r["gathered"] == [0, 10] for r in distributed)
    assert all(r["broadcast"] == 2.0 for r in distributed)


def test_different_models_are_refused_on_every_process(distributed) -> None:  # noqa: ANN001
    for r in distributed:
        assert r["mismatch"] is not None and "different models" in r["mismatch"]


def test_single_platform_is_the_identity() -> None:
    t = torch.arange(4.0)
    assert SINGLE.all_reduce_(t) is t and torch.equal(t, torch.arange(4.0))
    assert SINGLE.all_reduce_(t, op="max") is t and torch.equal(t, torch.arange(4.0))
    assert SINGLE.broadcast_(t, src=0) is t and torch.equal(t, torch.arange(4.0))
    assert SINGLE.all_gather_object({"a": 1}) == [{"a": 1}]
    assert SINGLE.barrier() is None
    assert (SINGLE.rank, SINGLE.world_size, SINGLE.local_rank, SINGLE.is_primary) == (0, 1, 0, True)
    with pytest.raises(ValueError, match="op must be"):
        SINGLE.all_reduce_(t, op="mean")
    assert isinstance(SINGLE, Platform)


def test_from_environment_without_torchrun_is_single(monkeypatch) -> None:  # noqa: ANN001
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert from_environment("cpu") is SINGLE


def test_reduce_must_be_callable() -> None:
    x, y = _split()
    with pytest.raises(TypeError, match="reduce must be a function"):
        pxprune.score(_model(), "snip", (x, y), reduce=3)


def test_reduce_with_one_process_changes_nothing() -> None:
    """An identity reduction (one process) gives the plain scores exactly."""
    x, y = _split()
    for criterion in ("px", "snip", "grasp"):
        plain = pxprune.score(_model(), criterion, (x, y), micro_batch=4)
        reduced = pxprune.score(_model(), criterion, (x, y), micro_batch=4, reduce=SINGLE.all_reduce_)
        assert all(torch.equal(plain[n], reduced[n]) for n in plain)
