"""The fast thresholding equals its plain float64 specification, ties and counts included."""

from __future__ import annotations

import pytest
import torch

from pxprune import threshold


def _case(n: int, seed: int, ties: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    if ties == "none":
        scores = torch.rand(n, generator=g, dtype=torch.float64)
    elif ties == "many":
        scores = torch.randint(0, 7, (n,), generator=g).to(torch.float64)
    else:  # zeros: a block of exactly equal (zero) scores, as a zero-initialised layer gives
        scores = torch.rand(n, generator=g, dtype=torch.float64)
        scores[: n // 3] = 0
    kept = torch.rand(n, generator=g) < 0.6
    return scores.to(dtype), kept


@pytest.mark.parametrize("ties", ["none", "many", "zeros"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 37, 5000, (1 << 22) + 12345])
def test_fast_prune_lowest_equals_reference(ties, dtype, n):
    scores, kept = _case(n, seed=n % 97, ties=ties, dtype=dtype)
    n_kept = int(kept.sum())
    for k in sorted({0, 1, n_kept // 50, n_kept // 3, max(0, n_kept - 1), n_kept, n_kept + 3}):
        got = threshold._prune_lowest(scores, kept, k)
        want = threshold._reference_prune_lowest(scores.to(torch.float64), kept, k)
        assert torch.equal(got, want), (ties, dtype, n, k)
        assert int((kept & ~got).sum()) == min(max(k, 0), n_kept)


def test_prune_step_global_and_layerwise_equal_reference():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randint(0, 5, (40, 3), generator=g).float(), "b": torch.rand(50, generator=g)}
    mask = {"a": torch.rand(40, 3, generator=g) < 0.8, "b": torch.rand(50, generator=g) < 0.9}
    got = threshold.prune_step(scores, mask, 100)
    flat = torch.cat([scores[n].reshape(-1).double() for n in mask])
    kept = torch.cat([mask[n].reshape(-1) for n in mask])
    want = threshold._reference_prune_lowest(flat, kept, 100 - int((~kept).sum()))
    assert torch.equal(torch.cat([got[n].reshape(-1) for n in mask]), want)
    lw = threshold.prune_step(scores, mask, {"a": 60, "b": 20}, scope="layerwise")
    for n, t in {"a": 60, "b": 20}.items():
        ref = threshold._reference_prune_lowest(
            scores[n].reshape(-1).double(), mask[n].reshape(-1), t - int((~mask[n]).sum())
        )
        assert torch.equal(lw[n].reshape(-1), ref)


def test_nan_among_kept_scores_is_an_error_and_among_pruned_is_not():
    scores = torch.tensor([0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        threshold._prune_lowest(scores, torch.ones(4, dtype=torch.bool), 1)
    kept = torch.tensor([True, False, True, True])
    out = threshold._prune_lowest(scores, kept, 1)
    assert out.tolist() == [False, False, True, True]


def test_infinite_scores_are_handled():
    scores = torch.tensor([float("inf"), 1.0, float("inf"), -float("inf")])
    kept = torch.tensor([True, True, True, False])
    assert threshold._prune_lowest(scores, kept, 2).tolist() == [False, False, True, False]


def test_cached_counts_follow_in_place_changes():
    g = torch.Generator().manual_seed(3)
    scores = {"a": torch.rand(30, generator=g), "b": torch.rand(20, generator=g)}
    mask = {"a": torch.ones(30, dtype=torch.bool), "b": torch.ones(20, dtype=torch.bool)}
    first = threshold.prune_step(scores, mask, 10)
    first["a"][:5] = False  # the caller changes a returned mask in place
    second = threshold.prune_step(scores, first, 20)
    total_kept = sum(int(t.sum()) for t in second.values())
    assert total_kept == 50 - 20
    assert not (second["a"] & ~first["a"]).any()
