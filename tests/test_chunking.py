"""Scores must not depend on how the pruning split is chunked, batched or ordered.

Every criterion that reads data sums a per-sample quantity over the split (PX: Z1 = sum_n z1[n];
SNIP/GraSP: the mean loss gradient), so under any mask its scores are the same whatever
``micro_batch``, however the user splits the split into batches, and in any sample order. The
cases that matter are the ones a first-round, one-chunk test cannot see: a random mask in place,
several chunks of different sizes, and magnitudes that differ between chunks. Criteria that use
BatchNorm batch statistics (SNIP, GraSP in train mode) legitimately depend on batch composition, so
the invariance is tested on BN-free networks here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pxprune
from conftest import mlp
from pxprune.api import _setup
from pxprune.criteria import CRITERIA

DATA_CRITERIA = [n for n in CRITERIA.names() if CRITERIA.get(n).uses_data]


def _mlp(seed: int = 0) -> nn.Sequential:
    """The issue's bias-free ReLU MLP, 64-48-32-10."""
    return mlp(widths=(64, 48, 32, 10), seed=seed)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10, bias=False),
    )


def _data(shape, n: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # magnitudes that differ by orders between samples, so chunks get different exponents
    scale = 2.0 ** torch.randint(-6, 7, (n,) + (1,) * len(shape), generator=g).float()
    x = torch.randn(n, *shape, generator=g) * scale
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _random_mask(model: nn.Module, keep: float = 0.7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep for n, p in model.named_parameters() if p.dim() > 1}


def _close(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for n in a:
        top = float(a[n].abs().max())
        err = float((a[n] - b[n]).abs().max())
        assert err <= rel * max(top, 1e-30), f"{n}: max abs difference {err:.3g} of {top:.3g}"


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_scores_do_not_depend_on_chunking_batching_or_order(criterion, net):
    model = _mlp() if net == "mlp" else _cnn()
    x, y = _data((64,) if net == "mlp" else (3, 8, 8))
    mask = _random_mask(model)
    base = pxprune.score(model, criterion, [(x, y)], mask=mask, micro_batch=100)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    variants = {
        "micro_batch=64": ([(x, y)], 64),
        "micro_batch=7": ([(x, y)], 7),
        "micro_batch=1": ([(x, y)], 1),
        "user batches 37+63": ([(x[:37], y[:37]), (x[37:], y[37:])], 64),
        "one sample per batch": ([(x[i : i + 1], y[i : i + 1]) for i in range(100)], 64),
        "permuted": ([(x[perm], y[perm])], 13),
    }
    for label, (split, mb) in variants.items():
        got = pxprune.score(model, criterion, split, mask=mask, micro_batch=mb)
        try:
            _close(base, got)
        except AssertionError as err:
            raise AssertionError(f"{criterion} on {net}, {label}: {err}") from None


def _hand_z1(model: nn.Sequential, x: torch.Tensor, mask: dict) -> torch.Tensor:
    """docs/design/PX.md section 2 written out for a bias-free ReLU MLP, sample by sample, in float64."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    total = torch.zeros(linears[-1].out_features, dtype=torch.float64)
    for xi in x.double():
        h_real, h_data = xi, xi * xi
        for j, (lin, name) in enumerate(zip(linears, names, strict=True)):
            m = mask[name].double()
            pre = (lin.weight.detach().double() * m) @ h_real
            h_data = m @ h_data
            if j < len(linears) - 1:
                gate = (pre > 0).double()
                h_real, h_data = torch.relu(pre), h_data * gate * gate
            else:
                h_real = pre
        total += h_data
    return total / total.abs().max()


@pytest.mark.parametrize("micro_batch", [100, 64, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_px_data_term_equals_hand_written_sum(micro_batch, dtype):
    model = _mlp(seed=2)
    x, _ = _data((64,), seed=5)
    mask = _random_mask(model, keep=0.7, seed=4)
    crit, ctx = _setup(model, "px", [x], include=None, exclude=None, seed=0,
                       options={"micro_batch": micro_batch, "dtype": dtype})
    crit.setup(ctx)
    mf = crit._float_mask(mask)
    z1 = crit.data_term(ctx, mf).double()
    expected = _hand_z1(model, x, mask)
    tol = 1e-12 if dtype == "float64" else 1e-6
    torch.testing.assert_close(z1, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("net", ["mlp", "cnn", "resblock"])
def test_px_multi_round_mask_does_not_depend_on_chunks(net):
    from conftest import ResBlockNet, randomize_bn

    if net == "mlp":
        model, (x, _) = _mlp(seed=6), _data((64,), seed=6)
    elif net == "cnn":
        model, (x, _) = _cnn(seed=6), _data((3, 8, 8), seed=6)
    else:
        model, (x, _) = randomize_bn(ResBlockNet(seed=6)), _data((3, 8, 8), seed=6)
    one = pxprune.prune(model, "px", [x], sparsity=0.95, rounds=20, micro_batch=100, dtype="float64")
    for split, mb in (([x], 7), ([x[:30], x[30:]], 64), ([x[torch.arange(99, -1, -1)]], 64)):
        other = pxprune.prune(model, "px", split, sparsity=0.95, rounds=20, micro_batch=mb,
                              dtype="float64")
        assert all(torch.equal(one[n], other[n]) for n in one), (net, mb)
    # float32 copies: the same mask up to ties
    f32 = pxprune.prune(model, "px", [x], sparsity=0.95, rounds=20, micro_batch=7)
    from pxprune.masks import overlap

    assert overlap(one, f32).shared >= 0.999


class _ReusesPreBN(nn.Module):
    """Uses a conv's output again after an in-place change of its BatchNorm's output: in the PX
    data copy BN is the identity, so the two alias (the engine must notice and rerun safely)."""

    def __init__(self, clone: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6).eval()
        self.fc = nn.Linear(6 * 16, 4, bias=False)
        self.clone = clone

    def forward(self, x):
        c = self.conv(x)
        y = c.clone() / (1 + self.bn.eps) ** 0.5 if self.clone else self.bn(c)
        y = torch.relu_(y)
        return self.fc((y + c).flatten(1))


def test_identity_aliasing_is_detected_and_rerun(monkeypatch):
    from pxprune.paths import mode as mode_module

    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    hazards = []
    original = mode_module.PathMode._check_aliases

    def spy(self, args):
        try:
            original(self, args)
        except mode_module.AliasHazard:
            hazards.append(1)
            raise

    monkeypatch.setattr(mode_module.PathMode, "_check_aliases", spy)
    model, ref = _ReusesPreBN(), _ReusesPreBN(clone=True)
    ref.load_state_dict(model.state_dict())
    mask = _random_mask(model, keep=0.6)
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    want = pxprune.score(ref, "px", [x], mask=mask, dtype="float64")
    assert hazards, "the aliasing was not noticed"
    _close(want, got, rel=1e-6)
