"""pxprune.lottery: iterative magnitude pruning with rewinding, on a tiny MLP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pxprune
from pxprune.lottery import levels_for


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train_fn(calls):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)

    def train(model, mask, *, max_steps=None):
        steps = 3 if max_steps is None else max_steps
        calls.append((steps, mask.kept))
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for n, t in mask.items():  # the mask is applied: pruned weights stay exactly 0
            assert torch.all(dict(model.named_modules())[n.rsplit(".", 1)[0]].weight[~t] == 0)

    return train


@pytest.mark.parametrize("rewind_step", [0, 2])
def test_lottery_levels_counts_and_rewind(rewind_step):
    model = _mlp()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    mask = pxprune.lottery(model, _train_fn(calls), sparsity=0.8, rate=0.5, rewind_step=rewind_step)
    m = 6 * 16 + 16 * 3
    assert mask.total == m and mask.kept == m - math.floor(round(0.8 * m, 9))
    n_levels = levels_for(0.8, 0.5)
    assert n_levels == 3
    expected = ([(rewind_step, m)] if rewind_step else []) + [
        (3, m),
        (3, m - m // 2),
        (3, m - math.floor(0.75 * m)),
    ]
    assert calls == expected
    state = model.state_dict()
    assert not any("parametrizations" in k for k in state)
    if rewind_step == 0:
        assert all(torch.equal(state[k], v) for k, v in theta0.items())
    else:
        assert not all(torch.equal(state[k], v) for k, v in theta0.items())
    assert (
        mask.metadata["criterion"] == "lottery"
        and mask.metadata["options"]["rewind_step"] == rewind_step
    )


def test_lottery_prunes_smallest_trained_weights():
    model = _mlp()

    def fake_train(model, mask, *, max_steps=None):
        with torch.no_grad():  # "training" sets weights to known magnitudes
            for p, base in (
                (model[0].parametrizations.weight.original, 1),
                (model[2].parametrizations.weight.original, 1000),
            ):
                p.copy_(torch.arange(p.numel(), dtype=p.dtype).view_as(p) + base)

    mask = pxprune.lottery(model, fake_train, sparsity=0.5, rate=0.5)
    flat0 = mask["0.weight"].reshape(-1)
    assert not flat0[:72].any() and flat0[72:].all() and mask["2.weight"].all()


def test_lottery_errors():
    with pytest.raises(ValueError, match="rate"):
        pxprune.lottery(_mlp(), lambda *a, **k: None, sparsity=0.5, rate=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pxprune.lottery(_mlp(), lambda *a, **k: None, sparsity=1.0)
