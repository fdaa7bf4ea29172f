"""Baseline criteria random, magnitude, SNIP and GraSP: exact references and the API contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pxprune
import pxprune.criteria.grasp  # noqa: F401  (registers "grasp")
import pxprune.criteria.magnitude  # noqa: F401  (registers "magnitude")
import pxprune.criteria.random  # noqa: F401  (registers "random")
import pxprune.criteria.snip  # noqa: F401  (registers "snip")

NAMES = ["random", "magnitude", "snip", "grasp"]
CNN_WEIGHTS = ["conv1.weight", "conv2.weight", "fc.weight"]
MLP_WEIGHTS = ["1.weight", "3.weight", "5.weight"]
SEG_WEIGHTS = ["0.weight", "2.weight"]


class SmallCNN(nn.Module):
    def __init__(self, bias: bool = False, classes: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def cnn(bias: bool = False, dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> SmallCNN:
    def build() -> SmallCNN:
        model = SmallCNN(bias=bias, dropout=dropout)
        with torch.no_grad():  # non-trivial BN affine and running statistics
            for bn in (model.bn1, model.bn2):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.num_batches_tracked.fill_(3)
        return model.to(dtype)

    return _seeded(build)


def mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    return _seeded(
        lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
            nn.Linear(10, 4),
        ).to(dtype)
    )


def data(shape=(8, 3, 8, 8), classes: int = 5, dtype: torch.dtype = torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, classes, (shape[0],), generator=g)
    return x, y


def some_mask(model: nn.Module, names: list[str], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) > 0.3 for n in names}


def normalised(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = max(float(t.abs().max()) for t in scores.values())
    return {n: (t / top).float() for n, t in scores.items()}


def assert_scores_close(got, expected, *, rtol=1e-5, atol=1e-6) -> None:
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=rtol, atol=atol, msg=n)


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    state, flags, grads = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- known answers


def test_magnitude_is_abs_theta() -> None:
    model = cnn(bias=True)
    params = dict(model.named_parameters())
    got = pxprune.score(model, "magnitude")
    assert_scores_close(got, normalised({n: params[n].detach().abs() for n in CNN_WEIGHTS}), atol=0)
    mask = some_mask(model, CNN_WEIGHTS)
    got = pxprune.score(model, "magnitude", mask=mask)
    ref = {n: (params[n].detach() * mask[n]).abs() for n in CNN_WEIGHTS}
    assert_scores_close(got, normalised(ref), atol=0)


def snip_reference(model, x, y, *, names, chunk=None, mask=None):
    """|theta * dL/dtheta| by the textbook route: a deep copy, F.cross_entropy, .backward()."""
    ref = copy.deepcopy(model).train()
    params = dict(ref.named_parameters())
    if mask is not None:
        with torch.no_grad():
            for n, m in mask.items():
                params[n].mul_(m)
    if chunk is None:
        loss = F.cross_entropy(ref(x), y)
    else:
        loss = sum(
            F.cross_entropy(ref(xc), yc, reduction="sum")
            for xc, yc in zip(x.split(chunk), y.split(chunk), strict=True)
        ) / x.shape[0]
    loss.backward()
    return normalised({n: (params[n] * params[n].grad).abs().detach() for n in names})


@pytest.mark.parametrize("bias", [False, True])
def test_snip_matches_hand_computation_on_bn_cnn(bias: bool) -> None:
    model = cnn(bias=bias)
    x, y = data()
    got = pxprune.score(model, "snip", [(x[:5], y[:5]), (x[5:], y[5:])], micro_batch=8)
    # user batches of 5 and 3: BN statistics are per batch, the loss is the mean over all 8
    ref = snip_reference(model, x, y, names=CNN_WEIGHTS, chunk=None)
    with pytest.raises(AssertionError):  # BN batch statistics differ from one batch of 8
        assert_scores_close(got, ref)
    assert_scores_close(got, snip_reference(model, x, y, names=CNN_WEIGHTS, chunk=5))
    got = pxprune.score(model, "snip", [(x, y)])
    assert_scores_close(got, ref)
    # micro_batch=3 on 8 samples: chunks of 3, 3, 2, each sample weighing 1/8
    got = pxprune.score(model, "snip", [(x, y)], micro_batch=3)
    assert_scores_close(got, snip_reference(model, x, y, names=CNN_WEIGHTS, chunk=3))


def test_snip_micro_batches_weigh_every_sample_equally() -> None:
    model = mlp()
    x, y = data((8, 3, 2, 2), classes=4)
    ref = snip_reference(model, x, y, names=MLP_WEIGHTS)
    for micro in (1, 3, 8):
        assert_scores_close(pxprune.score(model, "snip", [(x, y)], micro_batch=micro), ref)


def test_snip_uses_masked_weights() -> None:
    model = cnn(bias=True)
    x, y = data()
    mask = some_mask(model, CNN_WEIGHTS)
    got = pxprune.score(model, "snip", [(x, y)], mask=mask)
    assert_scores_close(got, snip_reference(model, x, y, names=CNN_WEIGHTS, mask=mask))
    for n in CNN_WEIGHTS:
        assert (got[n][~mask[n]] == 0).all()


def test_snip_segmentation_ignores_void_pixels() -> None:
    model = _seeded(
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    )
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (8, 6, 6), generator=g)
    y[torch.rand(8, 6, 6, generator=g) < 0.3] = 255
    y[0] = 255  # one sample without labelled pixels
    ref_model = copy.deepcopy(model)
    F.cross_entropy(ref_model(x), y, ignore_index=255).backward()
    params = dict(ref_model.named_parameters())
    ref = normalised({n: (params[n] * params[n].grad).abs().detach() for n in SEG_WEIGHTS})
    for micro in (3, 8):
        assert_scores_close(pxprune.score(model, "snip", [(x, y)], micro_batch=micro), ref)


def grasp_reference(model, x, y, *, names, temperature=200.0, mask=None, eps=1e-4):
    """theta * (H g) with H g = (g(theta + eps g) - g(theta - eps g)) / (2 eps), float64."""
    ref = copy.deepcopy(model).train()
    params = dict(ref.named_parameters())
    buffers = dict(ref.named_buffers())
    theta = {n: params[n].detach() * (mask[n] if mask is not None else 1) for n in names}

    def gradient(weights):
        w = {n: t.detach().clone().requires_grad_(True) for n, t in weights.items()}
        scratch = {k: b.clone() for k, b in buffers.items()}
        out = torch.func.functional_call(ref, {**params, **scratch, **w}, (x,))
        loss = F.cross_entropy(out / temperature, y)
        return dict(zip(names, torch.autograd.grad(loss, [w[n] for n in names]), strict=True))

    g = gradient(theta)
    plus = gradient({n: theta[n] + eps * g[n] for n in names})
    minus = gradient({n: theta[n] - eps * g[n] for n in names})
    return normalised({n: theta[n] * (plus[n] - minus[n]) / (2 * eps) for n in names})


@pytest.mark.parametrize("masked", [False, True])
def test_grasp_hessian_gradient_matches_finite_difference(masked: bool) -> None:
    model = mlp(torch.float64)
    x, y = data((8, 3, 2, 2), classes=4, dtype=torch.float64)
    mask = some_mask(model, MLP_WEIGHTS) if masked else None
    ref = grasp_reference(model, x, y, names=MLP_WEIGHTS, mask=mask)
    for micro in (3, 8):
        got = pxprune.score(model, "grasp", [(x, y)], mask=mask, micro_batch=micro)
        assert_scores_close(got, ref, rtol=1e-5, atol=1e-6)
    assert ref["1.weight"].min() < 0 < ref["1.weight"].max()  # signed, unlike SNIP


def test_grasp_through_batchnorm_matches_finite_difference() -> None:
    model = cnn(bias=True, dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    ref = grasp_reference(model, x, y, names=CNN_WEIGHTS)
    assert_scores_close(pxprune.score(model, "grasp", [(x, y)]), ref, rtol=1e-5, atol=1e-6)


class HardGated(nn.Module):
    """An SE-style gate through ``hardsigmoid`` (whose backward PyTorch cannot differentiate)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 10), nn.Linear(10, 10), nn.Linear(10, 4)
        self.gate, self.act = nn.Hardsigmoid(inplace=inplace), nn.Hardswish()

    def forward(self, x):
        h = self.act(self.a(x.flatten(1)))
        return self.c(h * self.gate(self.b(h)))


@pytest.mark.parametrize("inplace", [False, True])
def test_grasp_through_hardsigmoid_matches_finite_difference(inplace: bool) -> None:
    model = _seeded(lambda: HardGated(inplace).double())
    with torch.no_grad():
        model.b.weight.mul_(3)  # gates on both sides of the kinks at +-3
    x, y = data((8, 3, 2, 2), classes=4, dtype=torch.float64)
    names = ["a.weight", "b.weight", "c.weight"]
    ref = grasp_reference(model, x, y, names=names)
    got = pxprune.score(model, "grasp", [(x, y)])
    assert_scores_close(got, ref, rtol=1e-5, atol=1e-6)
    assert F.hardsigmoid is torch.nn.functional.hardsigmoid  # the scope is gone
    with pytest.raises(RuntimeError, match="hardsigmoid_backward"):
        g, = torch.autograd.grad(F.hardsigmoid(x.requires_grad_()).sum(), x, create_graph=True)
        torch.autograd.grad(g.sum(), x)


def test_grasp_temperature_option() -> None:
    model = mlp(torch.float64)
    x, y = data((8, 3, 2, 2), classes=4, dtype=torch.float64)
    ref = grasp_reference(model, x, y, names=MLP_WEIGHTS, temperature=1.0, eps=1e-6)
    got = pxprune.score(model, "grasp", [(x, y)], temperature=1)
    assert_scores_close(got, ref, rtol=1e-5, atol=1e-6)
    default = pxprune.score(model, "grasp", [(x, y)])
    assert not torch.allclose(default["1.weight"], got["1.weight"])
    for bad in (0, -1.0, float("inf"), "hot", True):
        with pytest.raises(ValueError, match="temperature"):
            pxprune.score(model, "grasp", [(x, y)], temperature=bad)


def test_random_is_seeded_and_leaves_global_rng_alone() -> None:
    model = cnn()
    state = torch.get_rng_state()
    a = pxprune.score(model, "random", seed=0)
    b = pxprune.score(model, "random", seed=0)
    c = pxprune.score(model, "random", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for n in CNN_WEIGHTS:
        assert torch.equal(a[n], b[n])
        assert not torch.equal(a[n], c[n])
    m0 = pxprune.prune(model, "random", sparsity=0.8, rounds=2, seed=0)
    m1 = pxprune.prune(model, "random", sparsity=0.8, rounds=2, seed=0)
    m2 = pxprune.prune(model, "random", sparsity=0.8, rounds=2, seed=1)
    assert all(torch.equal(m0[n], m1[n]) for n in CNN_WEIGHTS)
    assert not all(torch.equal(m0[n], m2[n]) for n in CNN_WEIGHTS)


@pytest.mark.parametrize("name", ["snip", "grasp"])
def test_dropout_is_off_and_global_rng_untouched(name: str) -> None:
    model = cnn(dropout=0.5)
    plain = cnn(dropout=0.0)
    x, y = data()
    state = torch.get_rng_state()
    a = pxprune.score(model, name, [(x, y)])
    assert torch.equal(torch.get_rng_state(), state)
    assert_scores_close(a, pxprune.score(plain, name, [(x, y)]), rtol=0, atol=0)


# ---------------------------------------------------------------- the public API contract


def _prepared(bias: bool) -> nn.Module:
    model = cnn(bias=bias)
    model.eval()
    model.bn1.train()  # a mixed set of flags, all restored
    model.conv2.weight.requires_grad_(False)
    model.bn2.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_prune_contract(name: str, bias: bool) -> None:
    model = _prepared(bias)
    x, y = data()
    snap = snapshot(model)
    rounds: list[dict[str, torch.Tensor]] = []
    options = {"micro_batch": 4} if name in ("snip", "grasp") else {}  # 5 + 3 -> 4, 1, 3
    mask = pxprune.prune(
        model, name, [(x[:5], y[:5]), (x[5:], y[5:])], sparsity=0.8, rounds=2,
        progress=lambda t, total, m: rounds.append({n: v.clone() for n, v in m.items()}),
        **options,
    )
    assert_unchanged(model, snap)
    assert list(mask) == CNN_WEIGHTS
    m = sum(mask[n].numel() for n in CNN_WEIGHTS)
    assert sum(int(mask[n].sum()) for n in CNN_WEIGHTS) == m - math.floor(round(0.8 * m, 9))
    assert len(rounds) == 2
    for n in CNN_WEIGHTS:
        assert not (rounds[1][n] & ~rounds[0][n]).any()  # masks never grow
        assert torch.equal(rounds[1][n], mask[n])
    kept_first = sum(int(rounds[0][n].sum()) for n in CNN_WEIGHTS)
    assert kept_first > sum(int(mask[n].sum()) for n in CNN_WEIGHTS)


@pytest.mark.parametrize("name", NAMES)
def test_score_contract(name: str) -> None:
    model = _prepared(bias=True)
    x, y = data()
    snap = snapshot(model)
    mask = some_mask(model, CNN_WEIGHTS)
    for given in (None, mask):
        scores = pxprune.score(model, name, [(x, y)], mask=given)
        assert_unchanged(model, snap)
        assert list(scores) == CNN_WEIGHTS
        params = dict(model.named_parameters())
        for n in CNN_WEIGHTS:
            assert scores[n].shape == params[n].shape and scores[n].dtype == torch.float32
            assert torch.isfinite(scores[n]).all()
            if given is not None:
                assert (scores[n][~given[n]] == 0).all()
        assert max(float(s.abs().max()) for s in scores.values()) == 1.0


def test_scores_under_no_grad() -> None:
    model = cnn()
    x, y = data()
    ref = pxprune.score(model, "snip", [(x, y)])
    with torch.no_grad():
        assert_scores_close(pxprune.score(model, "snip", [(x, y)]), ref, rtol=0, atol=0)
        pxprune.score(model, "grasp", [(x, y)])


@pytest.mark.parametrize("name", ["snip", "grasp"])
def test_targets_required(name: str) -> None:
    model = cnn()
    x, y = data()
    with pytest.raises(TypeError, match="targets"):
        pxprune.score(model, name, [x])
    with pytest.raises(TypeError, match="targets"):
        pxprune.prune(model, name, [(x,)], sparsity=0.8)
    with pytest.raises(TypeError, match="needs data"):
        pxprune.prune(model, name, sparsity=0.8)
    with pytest.raises(TypeError, match="class-index"):
        pxprune.score(model, name, [(x, F.one_hot(y, 5).float())])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        pxprune.score(model, name, [(x, y + 5)])
    with pytest.raises(ValueError, match="do not fit"):
        pxprune.score(model, name, [(x, y[:, None])])


@pytest.mark.parametrize(
    "name, valid",
    [("random", "none"), ("magnitude", "none"), ("snip", "micro_batch"),
     ("grasp", "micro_batch, temperature")],
)
def test_unknown_option_lists_valid_ones(name: str, valid: str) -> None:
    model = cnn()
    x, y = data()
    with pytest.raises(TypeError, match=f"its options are: {valid}$"):
        pxprune.score(model, name, [(x, y)], tempreature=1)
    with pytest.raises(TypeError, match="tempreature"):
        pxprune.prune(model, name, [(x, y)], sparsity=0.5, tempreature=1)


@pytest.mark.parametrize("name", NAMES)
def test_default_rounds_is_one(name: str) -> None:
    model = cnn()
    x, y = data()
    mask = pxprune.prune(model, name, [(x, y)], sparsity=0.5)
    assert mask.metadata["rounds"] == 1
    assert name in pxprune.list_criteria()
