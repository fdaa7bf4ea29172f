"""SynFlow, SynFlow-L2 and NTK-SAP: exact path-flow references, conservation, PX's first round,
deep torchvision ResNets, and NTK-SAP's promise never to touch the caller's model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

import pxprune
from conftest import mlp
from pxprune.criteria import Context, ntksap, synflow  # noqa: F401  (register the criteria)
from pxprune.criteria.ntksap import NTKSAP
from pxprune.criteria.synflow import SynFlow
from pxprune.criteria.synflow_l2 import SynFlowL2
from pxprune.seeding import generator
from pxprune.selection import prunable_parameters


# ----------------------------------------------------------------------------------- models
def plain_mlp(seed: int = 0, widths=(3, 5, 4, 2)) -> nn.Sequential:
    return mlp(widths=widths, seed=seed).double()


def plain_cnn(seed: int = 0, bn: bool = False) -> nn.Sequential:
    """Bias-free conv-relu-maxpool-conv-relu-avgpool-linear (BN after each conv when ``bn``)."""
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3) if bn else nn.Identity(),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4) if bn else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3, bias=not bn),
    ]
    return nn.Sequential(*layers)


def randomize_bn(model: nn.Module, seed: int = 1, momentum: float | None = 0.1) -> nn.Module:
    """Non-default BN parameters and statistics, as in a pre-trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(17)
                m.momentum = momentum
    return model


def context(model: nn.Module, input_size: tuple[int, ...], seed: int = 0) -> Context:
    params = prunable_parameters(model)
    dtype = next(model.parameters()).dtype
    return Context(model=model, params=params, all_weights=dict(params), batches=None, seed=seed,
                   generator=generator(seed, "criterion"), device=torch.device("cpu"),
                   input_size=input_size, dtype=dtype)


def raw_flow(cls, model: nn.Module, input_size, mask=None):
    """True (unscaled) scores and R of a path-flow criterion, in the model's dtype."""
    ctx = context(model, input_size)
    crit = cls(cls.Options(input_size=input_size))
    crit.setup(ctx)
    if mask is None:
        mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in ctx.params.items()}
    flow = crit.flow(ctx, mask)
    scale = 2.0**flow.exponent
    return {n: s * scale for n, s in flow.scores.items()}, flow.total * scale


def reference_flow(model: nn.Module, input_size, power: int, mask=None):
    """Independent reference: a deep copy whose weights are |M*theta| (power 1) or M*theta^2
    (power 2), biases 0, run on ones in float64 with autograd; average pooling squared for
    power 2 is not needed on the nets used here (max-pool absent or power 1)."""
    ref = copy.deepcopy(model).double().eval()
    leaves = {}
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, nn.Linear | nn.Conv2d):
                w = mod.weight.abs() if power == 1 else mod.weight**2
                if mask is not None:
                    w = w * mask[f"{name}.weight"]
                mod.weight = nn.Parameter(w)
                leaves[f"{name}.weight"] = mod.weight
                if mod.bias is not None:
                    mod.bias.zero_()
    out = ref(torch.ones((1, *input_size), dtype=torch.float64))
    r = out.sum()
    grads = torch.autograd.grad(r, list(leaves.values()))
    scores = {n: (u * g).detach() for (n, u), g in zip(leaves.items(), grads, strict=True)}
    return scores, float(r.detach())


def layer_sums(scores) -> list[float]:
    return [float(s.sum()) for s in scores.values()]


# ----------------------------------------------------------------------------------- synflow
def test_synflow_mlp_equals_direct_path_flow_and_is_conserved() -> None:
    model = plain_mlp()
    scores, r = raw_flow(SynFlow, model, (3,))
    ws = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    # R = 1^T |W3| |W2| |W1| 1, and dR/d|W_l| = (1^T prod_{k>l}|W_k|)^T (prod_{k<l}|W_k| 1)^T
    a = [torch.ones(3, dtype=torch.float64)]
    for w in ws:
        a.append(w.abs() @ a[-1])
    b = [torch.ones(2, dtype=torch.float64)]
    for w in reversed(ws):
        b.append(w.abs().T @ b[-1])
    b = b[::-1][1:]
    direct_r = float(a[-1].sum())
    assert r == pytest.approx(direct_r, rel=1e-12)
    for (n, s), w, x, g in zip(scores.items(), ws, a[:-1], b, strict=True):
        expected = w.abs() * torch.outer(g, x)
        torch.testing.assert_close(s, expected, rtol=1e-12, atol=0), n
    for total in layer_sums(scores):
        assert total == pytest.approx(direct_r, rel=1e-12)


@pytest.mark.parametrize("bn", [False, True])
def test_synflow_cnn_conservation_and_reference(bn: bool) -> None:
    model = plain_cnn(bn=bn).double()
    if bn:
        randomize_bn(model)
    size = (2, 6, 6)
    scores, r = raw_flow(SynFlow, model, size)
    for total in layer_sums(scores):
        assert total == pytest.approx(r, rel=1e-10)
    if not bn:  # without BN the plain |theta| network on ones is the reference
        ref, ref_r = reference_flow(model, size, power=1)
        assert r == pytest.approx(ref_r, rel=1e-12)
        for n in scores:
            torch.testing.assert_close(scores[n], ref[n], rtol=1e-10, atol=0)
    assert all(bool((s >= 0).all()) for s in scores.values())


def test_synflow_mask_zeroes_pruned_and_conserves() -> None:
    model = plain_cnn()
    model.double()
    g = torch.Generator().manual_seed(3)
    params = prunable_parameters(model)
    mask = {n: torch.rand(p.shape, generator=g) > 0.3 for n, p in params.items()}
    scores, r = raw_flow(SynFlow, model, (2, 6, 6), mask)
    ref, ref_r = reference_flow(model, (2, 6, 6), power=1, mask=mask)
    assert r == pytest.approx(ref_r, rel=1e-12)
    for n, s in scores.items():
        assert bool((s[~mask[n]] == 0).all())
        torch.testing.assert_close(s, ref[n], rtol=1e-10, atol=0)
        assert float(s.sum()) == pytest.approx(r, rel=1e-10)


# ----------------------------------------------------------------------------------- synflow_l2
def test_synflow_l2_mlp_equals_brute_force_paths_and_is_conserved() -> None:
    model = plain_mlp(seed=1)
    scores, r = raw_flow(SynFlowL2, model, (3,))
    w1, w2, w3 = (m.weight.detach() for m in model if isinstance(m, nn.Linear))
    brute = {k: torch.zeros_like(w) for k, w in zip(scores, (w1, w2, w3), strict=True)}
    total = 0.0
    names = list(scores)
    for i in range(3):
        for j in range(5):
            for k in range(4):
                for o in range(2):
                    v2 = float((w1[j, i] * w2[k, j] * w3[o, k]) ** 2)
                    total += v2
                    brute[names[0]][j, i] += v2
                    brute[names[1]][k, j] += v2
                    brute[names[2]][o, k] += v2
    assert r == pytest.approx(total, rel=1e-12)
    for n in names:
        torch.testing.assert_close(scores[n], brute[n], rtol=1e-12, atol=0)
        assert float(scores[n].sum()) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("bn", [False, True])
def test_synflow_l2_cnn_conservation(bn: bool) -> None:
    model = plain_cnn(bn=bn).double()
    if bn:
        randomize_bn(model)
    scores, r = raw_flow(SynFlowL2, model, (2, 6, 6))
    assert r > 0
    for total in layer_sums(scores):
        assert total == pytest.approx(r, rel=1e-10)
    assert all(bool((s >= 0).all()) for s in scores.values())


def test_synflow_l2_avgpool_chain_matches_squared_reference() -> None:
    """Without max-pool: the L2 copy equals the theta^2 network with average-pool coefficients
    squared (a 1/4 average becomes 1/16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8, 2, bias=False)).double()
    scores, r = raw_flow(SynFlowL2, model, (1, 4, 4))
    ref, ref_r = reference_flow(model, (1, 4, 4), power=2)
    # one average pool between the two layers: every path carries (1/4)^2 instead of 1/4
    assert r == pytest.approx(ref_r / 4, rel=1e-12)
    for n in scores:
        torch.testing.assert_close(scores[n], ref[n] / 4, rtol=1e-10, atol=0)


def test_px_first_round_ranks_like_synflow_l2() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(6)
            self.c2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
            self.b2 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
            x = nn.functional.relu(self.b2(self.c2(x)))
            return self.fc(x.mean((2, 3)))

    model = randomize_bn(Net())
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g))]
    px = pxprune.score(model, "px", batches)
    l2 = pxprune.score(model, "synflow_l2", input_size=(3, 8, 8))
    l2_from_batches = pxprune.score(model, "synflow_l2", batches)
    assert px.keys() == l2.keys()
    for n in px:
        torch.testing.assert_close(px[n], l2[n], rtol=0, atol=1e-5)
        assert torch.equal(l2[n], l2_from_batches[n])
    assert max(float(s.max()) for s in l2.values()) == 1.0


@pytest.mark.parametrize("cls", [SynFlow, SynFlowL2])
def test_flows_exact_beyond_float32_range(cls) -> None:
    """A 40-layer chain whose flow (~1e70) overflows float32: the power-of-two exponents keep the
    float32 scores equal to the float64 ones (per tensor, relative to its max)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(6, 6, bias=False), nn.ReLU())])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(40.0)
    ctx = context(model, (6,))
    crit = cls(cls.Options(input_size=(6,)))
    crit.setup(ctx)
    flow = crit.flow(ctx, {n: torch.ones_like(p, dtype=torch.bool) for n, p in ctx.params.items()})
    assert flow.exponent > 128  # the true values are outside float32's range
    exact, r64 = raw_flow(cls, copy.deepcopy(model).double(), (6,))
    assert math.isfinite(r64) and r64 > 1e40
    assert flow.total * 2.0**flow.exponent == pytest.approx(r64, rel=1e-5)
    for n, s in flow.scores.items():
        assert s.dtype == torch.float32
        true = s.double() * 2.0**flow.exponent
        err = float((true - exact[n]).abs().max() / exact[n].abs().max())
        assert err < 1e-5, n


@pytest.mark.parametrize("criterion", ["synflow", "synflow_l2"])
def test_flows_finite_nonzero_in_resnet18(criterion: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    scores = pxprune.score(model, criterion, input_size=(3, 32, 32))
    assert len(scores) == len(prunable_parameters(model))
    for n, s in scores.items():
        assert bool(torch.isfinite(s).all()), n
        assert bool((s > 0).any()), n
        assert bool((s >= 0).all()), n


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "resnet152"])
@pytest.mark.parametrize("criterion", ["synflow", "synflow_l2"])
def test_flows_finite_nonzero_in_deep_resnets(arch: str, criterion: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    scores = pxprune.score(model, criterion, input_size=(3, 64, 64))
    for n, s in scores.items():
        assert bool(torch.isfinite(s).all()), n
        assert bool((s > 0).any()), n


# ----------------------------------------------------------------------------------- ntksap
def _state(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "grad": [p.requires_grad for p in model.parameters()],
        "momentum": [getattr(m, "momentum", None) for m in model.modules()],
        "ids": [id(p) for p in model.parameters()],
    }


def _assert_same(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for key in ("training", "grad", "momentum", "ids"):
        assert after[key] == before[key], key


def _bn_cnn(seed: int = 0) -> nn.Module:
    return randomize_bn(plain_cnn(seed, bn=True), momentum=0.3)


def test_ntksap_never_touches_the_model() -> None:
    model = _bn_cnn()
    model.train()
    model[4].eval()  # a mix of flags must survive
    model[4].weight.requires_grad_(False)
    model[1].momentum = None  # cumulative averaging, also restored
    before = _state(model)
    batches = [torch.randn(5, 2, 6, 6)]
    rng = torch.get_rng_state()
    pxprune.score(model, "ntksap", batches, batch_size=3, reinits=2)
    mask = pxprune.prune(model, "ntksap", input_size=(2, 6, 6), sparsity=0.5, rounds=2,
                         batch_size=4, reinits=1)
    assert mask.kept == mask.total - math.floor(round(0.5 * mask.total, 9))
    _assert_same(model, before)
    assert torch.equal(torch.get_rng_state(), rng)  # only its own generator was used


def test_ntksap_deterministic_for_a_seed() -> None:
    model = _bn_cnn()
    kw = dict(input_size=(2, 6, 6), batch_size=4, reinits=2)
    a = pxprune.score(model, "ntksap", seed=3, **kw)
    b = pxprune.score(model, "ntksap", seed=3, **kw)
    c = pxprune.score(model, "ntksap", seed=4, **kw)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert all(bool(torch.isfinite(s).all() and (s >= 0).all()) for s in a.values())


def test_ntksap_matches_an_independent_finite_difference() -> None:
    """J and dJ/dM recomputed with torch.func.functional_call from the same draws: Kaiming
    weights (every conv/linear weight in parameter order), then delta on the scored weights,
    then z; BN statistics from one train-mode pass of the masked unperturbed net."""
    model = _bn_cnn()
    params = prunable_parameters(model)
    g = torch.Generator().manual_seed(2)
    mask = {n: torch.rand(p.shape, generator=g) > 0.3 for n, p in params.items()}
    seed, eps, size, b = 5, 0.01, (2, 6, 6), 3
    got = pxprune.score(model, "ntksap", mask=mask, seed=seed, input_size=size, batch_size=b,
                        reinits=1)

    draw = torch.Generator()
    draw.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator(seed, "criterion"))))
    theta = {n: nn.init.kaiming_normal_(torch.empty(p.shape), generator=draw)
             for n, p in params.items()}
    delta = {n: torch.empty(p.shape).normal_(generator=draw) for n, p in params.items()}
    z = torch.empty((b, *size)).normal_(generator=draw)
    net = copy.deepcopy(model).eval()
    bn = {}
    for name, mod in net.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            bn[f"{name}.weight"] = torch.ones_like(mod.weight)
            bn[f"{name}.bias"] = torch.zeros_like(mod.bias)
            # the batch statistics of the masked, unperturbed network on z (momentum 1: unbiased)
            bn[f"{name}.running_mean"] = torch.zeros_like(mod.running_mean)
            bn[f"{name}.running_var"] = torch.ones_like(mod.running_var)
    m = {n: mask[n].double().float().requires_grad_(True) for n in params}
    w1 = {n: theta[n] * m[n] for n in params}
    w2 = {n: (theta[n] + eps * delta[n]) * m[n] for n in params}
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 1.0
            mod.train()
    with torch.no_grad():
        torch.func.functional_call(net, {**bn, **{n: t.detach() for n, t in w1.items()}}, (z,))
    net.eval()
    out1 = torch.func.functional_call(net, {**bn, **w1}, (z,))
    out2 = torch.func.functional_call(net, {**bn, **w2}, (z,))
    j = ((out1 - out2) ** 2).sum()
    grads = torch.autograd.grad(j, list(m.values()))
    ref = {n: torch.where(mask[n], gr.abs(), 0.0) for n, gr in zip(m, grads, strict=True)}
    top = max(float(r.max()) for r in ref.values())
    for n in got:
        torch.testing.assert_close(got[n], ref[n] / top, rtol=1e-4, atol=1e-6)


def test_ntksap_is_weight_agnostic_and_zero_on_pruned() -> None:
    """Scores depend on the architecture and mask, not on the caller's weight values."""
    model = _bn_cnn()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-3.0).add_(0.5)
    kw = dict(input_size=(2, 6, 6), batch_size=4, reinits=2)
    g = torch.Generator().manual_seed(1)
    params = prunable_parameters(model)
    mask = {n: torch.rand(p.shape, generator=g) > 0.4 for n, p in params.items()}
    a = pxprune.score(model, "ntksap", mask=mask, **kw)
    b = pxprune.score(other, "ntksap", mask=mask, **kw)
    for n in a:
        torch.testing.assert_close(a[n], b[n])
        assert bool((a[n][~mask[n]] == 0).all())
        assert bool((a[n][mask[n]] > 0).any())


def test_ntksap_samples_follow_the_split() -> None:
    model = _bn_cnn()
    params = prunable_parameters(model)
    from pxprune.batches import Batches

    data = Batches([torch.randn(7, 2, 6, 6), torch.randn(3, 2, 6, 6)], device=torch.device("cpu"))
    ctx = Context(model=model, params=params, all_weights=dict(params), batches=data, seed=0,
                  generator=generator(0, "criterion"), device=torch.device("cpu"))
    crit = NTKSAP(NTKSAP.Options(batch_size=4))
    crit.setup(ctx)
    assert crit.chunks == [4, 4, 2] and crit.shape == (2, 6, 6)
    crit = NTKSAP(NTKSAP.Options(batch_size=4, samples=5))
    crit.setup(ctx)
    assert crit.chunks == [4, 1]
    ctx.batches, ctx.input_size = None, (2, 6, 6)
    crit = NTKSAP(NTKSAP.Options())
    crit.setup(ctx)
    assert crit.chunks == [256]


def test_ntksap_options_are_validated() -> None:
    model = _bn_cnn()
    for bad in (dict(epsilon=0), dict(reinits=0), dict(batch_size=1.5), dict(samples=-1)):
        with pytest.raises(ValueError):
            pxprune.score(model, "ntksap", input_size=(2, 6, 6), **bad)
    with pytest.raises(TypeError, match="epsilon"):
        pxprune.score(model, "ntksap", input_size=(2, 6, 6), eps=0.1)


# ----------------------------------------------------------------------------------- loop
@pytest.mark.parametrize("criterion", ["synflow", "synflow_l2", "ntksap"])
def test_prune_keeps_exact_count(criterion: str) -> None:
    model = _bn_cnn()
    before = _state(model)
    options = dict(batch_size=4, reinits=1) if criterion == "ntksap" else {}
    mask = pxprune.prune(model, criterion, input_size=(2, 6, 6), sparsity=0.9, rounds=3, **options)
    m = mask.total
    assert m == sum(p.numel() for p in prunable_parameters(model).values())
    assert mask.kept == m - math.floor(round(0.9 * m, 9))
    assert mask.metadata["criterion"] == criterion and mask.metadata["rounds"] == 3
    _assert_same(model, before)


def test_defaults_and_registration() -> None:
    names = pxprune.list_criteria()
    assert {"synflow", "synflow_l2", "ntksap"} <= set(names)
    assert SynFlow.default_rounds == SynFlowL2.default_rounds == NTKSAP.default_rounds == 100
    assert not (SynFlow.uses_data or SynFlowL2.uses_data or NTKSAP.uses_data)
    opts = NTKSAP.Options()
    assert (opts.epsilon, opts.reinits, opts.batch_size, opts.samples) == (0.01, 5, 256, None)
    with pytest.raises(TypeError, match="input_size"):
        pxprune.score(plain_mlp(), "synflow")
