"""PX and the path-flow criteria beyond bias-free ReLU networks (docs/design/PX.md, 'Beyond the
theory'): each rule against a hand-written float64 evaluation of that rule, on small models built
here (a LayerNorm/GELU MLP, a squeeze-excitation CNN, an attention block, a zero-initialised head),
the degenerate cases that must be errors, and reachability with normalisation and attention."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pxprune
from conftest import assert_unchanged, snapshot
from pxprune.degenerate import DegenerateScoresError
from pxprune.masks import Mask
from pxprune.paths import PathTheoryWarning
from pxprune.selection import prunable_parameters

warnings.filterwarnings("ignore", category=PathTheoryWarning)


def _masks(model: nn.Module, keep: float = 0.7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep for n, p in prunable_parameters(model).items()}


def _normalised(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = max(float(s.abs().max()) for s in scores.values())
    return {n: s / top for n, s in scores.items()}


def _close(got: dict, want: dict, tol: float = 1e-6) -> None:
    for n in want:
        err = float((got[n].double() - want[n].double()).abs().max())
        assert err <= tol, f"{n}: {err:.3g}"


def _px_reference(z1_fn, z2_fn, leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """S_j = u_j dR/du_j with R = sum_k (Z1[k] / max|Z1|) z2[k] and u = M * theta^2."""
    z1 = z1_fn()
    z1 = z1 / z1.abs().max()
    z2 = z2_fn()
    r = (z1 * z2).sum()
    grads = torch.autograd.grad(r, list(leaves.values()))
    return _normalised({n: (u * g).detach() for (n, u), g in zip(leaves.items(), grads, strict=True)})


# ----------------------------------------------------------------------------- LayerNorm + GELU
class LNMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(6, 8, bias=False)
        self.ln = nn.LayerNorm(8)
        self.l2 = nn.Linear(8, 7, bias=False)
        self.l3 = nn.Linear(7, 4, bias=False)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.l3(F.gelu(self.l2(F.gelu(self.ln(self.l1(x))))))


def test_layernorm_gelu_mlp_follows_the_linearisation_rule():
    model = LNMLP().double()
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = _masks(model)
    m = {n: mask[n].double() for n in mask}
    w = {n: p.detach() for n, p in prunable_parameters(model).items()}
    gamma, beta, eps = model.ln.weight.detach(), model.ln.bias.detach(), model.ln.eps

    def gelu_prime(t):
        t = t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.gelu(t).sum(), t)
        return g

    # the real network with the mask: gates and statistics
    pre1 = x @ (w["l1.weight"] * m["l1.weight"]).t()
    inv = 1 / torch.sqrt(pre1.var(-1, unbiased=False, keepdim=True) + eps)
    ln = (pre1 - pre1.mean(-1, keepdim=True)) * inv * gamma + beta
    g1 = gelu_prime(ln)
    pre2 = F.gelu(ln) @ (w["l2.weight"] * m["l2.weight"]).t()
    g2 = gelu_prime(pre2)

    def z1():  # data copy: masks as weights, x^2, every data-dependent factor squared
        d = (x * x) @ m["l1.weight"].t()
        d = d * inv**2 * g1**2
        d = (d @ m["l2.weight"].t()) * g2**2
        return (d @ m["l3.weight"].t()).sum(0)

    leaves = {n: (w[n] ** 2 * m[n]).requires_grad_(True) for n in w}

    def z2():  # weight copy: theta^2, LayerNorm -> gamma^2, activations -> identity
        h = torch.ones(1, 6, dtype=torch.float64) @ leaves["l1.weight"].t()
        h = h * gamma**2
        h = h @ leaves["l2.weight"].t()
        return (h @ leaves["l3.weight"].t())[0]

    want = _px_reference(z1, z2, leaves)
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    _close(got, want)


# ----------------------------------------------------------------------------- GroupNorm, InstanceNorm
class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(2, 4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.fc = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            for norm in (self.gn, self.inorm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = torch.relu(self.gn(self.c1(x)))
        h = torch.relu(self.inorm(self.c2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_px_groupnorm_and_instancenorm_follow_the_linearisation_rule():
    """docs/design/PX.md section 5: data copy ``x / sigma**2`` with each sample's real statistics
    (per group, per channel), weight copy ``gamma**2``; centring and beta only set the gates."""
    model = NormNet().double()
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mask = _masks(model)
    m = {n: mask[n].double() for n in mask}
    w = {n: p.detach() for n, p in prunable_parameters(model).items()}
    g1, b1, g2, b2 = (t.detach() for t in (model.gn.weight, model.gn.bias, model.inorm.weight,
                                           model.inorm.bias))
    eps = 1e-5
    # the real network with the mask: per-sample statistics and ReLU gates
    a1 = F.conv2d(x, w["c1.weight"] * m["c1.weight"], padding=1)
    groups = a1.reshape(5, 2, 2, 6, 6)  # (sample, group, channel in group, H, W)
    mu = groups.mean((2, 3, 4), keepdim=True)
    inv1 = 1 / torch.sqrt(groups.var((2, 3, 4), unbiased=False, keepdim=True) + eps)
    n1 = ((groups - mu) * inv1).reshape(5, 4, 6, 6) * g1.view(1, 4, 1, 1) + b1.view(1, 4, 1, 1)
    inv1 = inv1.expand(5, 2, 2, 1, 1).reshape(5, 4, 1, 1)
    a2 = F.conv2d(torch.relu(n1), w["c2.weight"] * m["c2.weight"], padding=1)
    inv2 = 1 / torch.sqrt(a2.var((2, 3), unbiased=False, keepdim=True) + eps)
    n2 = (a2 - a2.mean((2, 3), keepdim=True)) * inv2 * g2.view(1, 4, 1, 1) + b2.view(1, 4, 1, 1)

    def z1():  # data copy: masks as weights, x^2, 1/sigma^2 per sample, gates
        d = F.conv2d(x * x, m["c1.weight"], padding=1) * inv1**2 * (n1 > 0)
        d = F.conv2d(d, m["c2.weight"], padding=1) * inv2**2 * (n2 > 0)
        d = d.sum((2, 3))  # average pooling: coefficient 1 in the data copy
        return (d @ m["fc.weight"].t()).sum(0)

    leaves = {n: (w[n] ** 2 * m[n]).requires_grad_(True) for n in w}

    def z2():  # weight copy: theta^2, each normalisation its gamma^2, activations the identity
        o = F.conv2d(torch.ones(1, 3, 6, 6, dtype=torch.float64), leaves["c1.weight"], padding=1)
        o = o * (g1**2).view(1, 4, 1, 1)
        o = F.conv2d(o, leaves["c2.weight"], padding=1) * (g2**2).view(1, 4, 1, 1)
        o = o.sum((2, 3)) / 36.0**2  # average pooling: coefficient (1/36)^2
        return (o @ leaves["fc.weight"].t())[0]

    want = _px_reference(z1, z2, leaves)
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    _close(got, want)


# ----------------------------------------------------------------------------- squeeze-excitation
class SENet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        h = torch.relu(self.c2(h * s))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_px_refuses_a_squeeze_excitation_branch_and_names_the_fix():
    model = SENet()
    x = torch.randn(4, 3, 6, 6)
    with pytest.raises(DegenerateScoresError, match=r"fc1\.weight.*fc2\.weight.*exclude"):
        pxprune.prune(model, "px", [x], sparsity=0.5, rounds=2)


def test_px_squeeze_excitation_scale_is_a_recorded_coefficient():
    model = SENet().double()
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exclude = ["fc1.weight", "fc2.weight"]
    mask = {n: t for n, t in _masks(model).items() if n not in exclude}
    m = {n: mask[n].double() for n in mask}
    w = {n: p.detach() for n, p in prunable_parameters(model).items()}
    # the real network with the mask
    a1 = F.conv2d(x, w["c1.weight"] * m["c1.weight"], padding=1)
    h = torch.relu(a1)
    s = torch.sigmoid(model.fc2(torch.relu(model.fc1(F.adaptive_avg_pool2d(h, 1))))).detach()
    a2 = F.conv2d(h * s, w["c2.weight"] * m["c2.weight"], padding=1)

    def z1():
        d = F.conv2d(x * x, m["c1.weight"], padding=1) * (a1 > 0)
        d = d * s**2  # the coefficient, squared
        d = F.conv2d(d, m["c2.weight"], padding=1) * (a2 > 0)
        d = d.sum((2, 3))  # average pooling: coefficient 1 in the data copy
        return (d @ m["fc.weight"].t()).sum(0)

    leaves = {n: (w[n] ** 2 * m[n]).requires_grad_(True) for n in m}

    def z2():
        o = F.conv2d(torch.ones(1, 3, 6, 6, dtype=torch.float64), leaves["c1.weight"], padding=1)
        o = F.conv2d(o, leaves["c2.weight"], padding=1)  # the coefficient is 1 here
        o = o.sum((2, 3)) / 36.0**2  # average pooling: coefficient (1/36)^2
        return (o @ leaves["fc.weight"].t())[0]

    want = _px_reference(z1, z2, leaves)
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    _close({n: got[n] for n in want}, want)


def _textbook_synflow(model: nn.Module, shape, mask, power: int) -> dict[str, torch.Tensor]:
    """SynFlow as its paper runs it, in float64: weights |theta| (power 1) or theta^2 (power 2)
    times the mask, biases 0, every operation the real one, one all-ones input; S = u dR/du."""
    import copy

    net = copy.deepcopy(model).double().eval()
    leaves = {}
    for name, p in prunable_parameters(net).items():
        u = (p.detach().abs() ** power * mask[name].double()).requires_grad_(True)
        leaves[name] = u
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d | nn.Linear) and mod.bias is not None:
            mod.bias = None
    from torch.func import functional_call

    params = {n: leaves[n] for n in leaves}
    out = functional_call(net, params, (torch.ones(1, *shape, dtype=torch.float64),))
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    return _normalised({n: (u * g).detach() for (n, u), g in zip(leaves.items(), grads, strict=True)})


@pytest.mark.parametrize("criterion,power", [("synflow", 1)])
def test_synflow_on_squeeze_excitation_equals_the_textbook(criterion, power):
    model = SENet(seed=3)
    mask = _masks(model, keep=0.8, seed=4)
    want = _textbook_synflow(model, (3, 6, 6), mask, power)
    got = pxprune.score(model, criterion, [torch.randn(2, 3, 6, 6)], mask=mask)
    _close(got, want, tol=1e-5)
    se = float(got["fc1.weight"].sum() + got["fc2.weight"].sum())
    assert se == pytest.approx(float(want["fc1.weight"].sum() + want["fc2.weight"].sum()), rel=1e-4)


def test_synflow_l2_on_a_layernorm_mlp_equals_the_textbook():
    model = LNMLP()
    with torch.no_grad():
        model.ln.bias.zero_()  # paths carry no bias: the textbook run has none either
    mask = _masks(model, keep=0.8, seed=5)
    import copy

    net = copy.deepcopy(model).double()
    with torch.no_grad():
        net.ln.weight.copy_(net.ln.weight**2)  # SynFlow-L2: every fixed coefficient squared
    want = _textbook_synflow(net, (6,), mask, 2)
    # the textbook squares the LayerNorm weight itself; ours squares it as a fixed coefficient
    got = pxprune.score(model, "synflow_l2", [torch.randn(2, 6)], mask=mask)
    _close(got, want, tol=1e-5)


def _deep_gelu_mlp(depth: int, std: float = 1.0) -> nn.Sequential:
    """Bias-free Linear(64, 64) + GELU, ``depth`` times, N(0, std**2) weights: SynFlow's copy grows
    by about 2**5.7 * std per layer (2**170 at depth 30, beyond float32)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(64, 64, bias=False)
        nn.init.normal_(lin.weight, std=std)
        layers += [lin, nn.GELU()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("criterion,power", [("synflow", 1), ("synflow_l2", 2)])
def test_synflow_on_a_deep_gelu_mlp_beyond_float32_equals_the_textbook(criterion, power):
    """GELU is evaluated on the true values of the copy (in float64 where float32 cannot hold
    them) and its output is renormalised, so the linear map after it cannot overflow."""
    model = _deep_gelu_mlp(30)
    mask = _masks(model, keep=0.9, seed=6)
    want = _textbook_synflow(model, (64,), mask, power)
    assert all(torch.isfinite(w).all() for w in want.values())
    got = pxprune.score(model, criterion, input_size=(64,), mask=mask)
    _close(got, want, tol=1e-5)


@pytest.mark.parametrize("criterion", ["synflow", "synflow_l2"])
def test_true_values_beyond_float64_are_a_clear_refusal(criterion):
    """Where even float64 cannot hold what GELU must see: one clear error (a ValueError, so the
    command line reports it as a user error) that names the operation and a fix that exists:
    SynFlow has no dtype option, and excluding layers does not change the copy."""
    from pxprune.paths.scale import PathOverflowError

    model = _deep_gelu_mlp(40, std=2.0**20)
    match = rf"{criterion}: gelu .*overflow float64.*not path-based"
    with pytest.raises(PathOverflowError, match=match) as err:
        pxprune.score(model, criterion, input_size=(64,))
    assert isinstance(err.value, ValueError) and isinstance(err.value, FloatingPointError)
    assert "dtype" not in str(err.value) and "please report" not in str(err.value)


# ----------------------------------------------------------------------------- attention
class Attn(nn.Module):
    def __init__(self, e: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(e, e, bias=False)
        self.k = nn.Linear(e, e, bias=False)
        self.v = nn.Linear(e, e, bias=False)
        self.o = nn.Linear(e, e, bias=False)
        self.head = nn.Linear(e, 3, bias=False)

    def forward(self, x):  # (N, L, E)
        a = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
        return self.head(self.o(a).mean(1))


def test_px_attention_probabilities_are_a_coefficient():
    model = Attn().double()
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(DegenerateScoresError, match=r"q\.weight.*k\.weight"):
        pxprune.prune(model, "px", [x], sparsity=0.5, rounds=2)
    mask = {n: t for n, t in _masks(model).items() if n not in ("q.weight", "k.weight")}
    m = {n: mask[n].double() for n in mask}
    w = {n: p.detach() for n, p in prunable_parameters(model).items()}
    q, k = x @ w["q.weight"].t(), x @ w["k.weight"].t()
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(6), -1)

    def z1():
        d = (x * x) @ m["v.weight"].t()
        d = (p * p) @ d
        d = (d @ m["o.weight"].t()).sum(1)  # mean over tokens: coefficient 1
        return (d @ m["head.weight"].t()).sum(0)

    leaves = {n: (w[n] ** 2 * m[n]).requires_grad_(True) for n in m}

    def z2():
        h = torch.ones(1, 5, 6, dtype=torch.float64) @ leaves["v.weight"].t()
        h = torch.ones(5, 5, dtype=torch.float64) @ h  # every key a query may attend to
        h = (h @ leaves["o.weight"].t()).sum(1) / 25.0  # mean: coefficient (1/5)^2
        return (h @ leaves["head.weight"].t())[0]

    want = _px_reference(z1, z2, leaves)
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    _close({n: got[n] for n in want}, want)
    assert float(got["q.weight"].abs().max()) == 0 and float(got["k.weight"].abs().max()) == 0


@pytest.mark.parametrize("criterion,power", [("synflow", 1), ("synflow_l2", 2)])
def test_synflow_on_attention_equals_the_textbook(criterion, power):
    """SynFlow's rule (criteria/synflow.py): weights |theta| (SynFlow) or theta**2 (SynFlow-L2)
    times the mask, the real attention on the copy's values, one all-ones sample, S = u dR/du.
    SynFlow-L2 squares the coefficient 1/5 of the token mean; the mean feeds only the head, so
    that is one global factor, which the normalised scores do not show."""
    model = Attn()
    mask = _masks(model, keep=0.8, seed=7)
    want = _textbook_synflow(model, (5, 6), mask, power)
    got = pxprune.score(model, criterion, [torch.randn(2, 5, 6)], mask=mask)
    _close(got, want, tol=1e-5)
    # on one all-ones sample every token is the same, so the attention is uniform whatever the
    # queries and keys: they score 0 here too (docs/design/PX.md section 5)
    assert float(got["q.weight"].abs().max()) <= 1e-6 and float(got["k.weight"].abs().max()) <= 1e-6
    assert float(got["v.weight"].abs().max()) > 0


class MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln(x))
        return self.head(x.mean(1))


@pytest.mark.parametrize("name", [n for n in pxprune.list_criteria() if not n.startswith("_")])
def test_every_criterion_on_the_small_modern_models(name):
    """The contract on the models built here: finite scores of the right shapes, the model left
    bit-identical; a prune is a valid mask or one clear error (never a silent degenerate mask)."""
    cases = [(LNMLP(), torch.randn(6, 6)), (SENet(), torch.randn(4, 3, 6, 6)),
             (Attn(), torch.randn(4, 5, 6)), (MHABlock(), torch.randn(4, 5, 8)),
             (ZeroHead(), torch.randn(6, 6))]
    for model, x in cases:
        y = torch.randint(0, 3, (x.shape[0],))
        snap = snapshot(model)
        scores = pxprune.score(model, name, [(x, y)])
        assert set(scores) == set(prunable_parameters(model))
        assert all(torch.isfinite(s).all() for s in scores.values())
        assert_unchanged(model, snap)
        try:
            mask = pxprune.prune(model, name, [(x, y)], sparsity=0.5, rounds=2)
        except DegenerateScoresError as err:
            assert "exclude" in str(err) or "re-initialise" in str(err)
            if isinstance(model, ZeroHead):  # the zero-initialised head is the reason given
                assert err.zero_initialised == ["head.weight"], str(err)
        else:
            assert mask.kept == mask.total - math.floor(0.5 * mask.total)
            # only the weight-agnostic criteria do not see the zero head (test below)
            assert not isinstance(model, ZeroHead) or name in WEIGHT_AGNOSTIC, name
        assert_unchanged(model, snap)


# ----------------------------------------------------------------------------- degenerate scores
class ZeroHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8, bias=False)
        self.head = nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


# criteria whose scores do not depend on the model's weights: a zero-initialised layer is no
# defect for them
WEIGHT_AGNOSTIC = ("ntksap", "random")


@pytest.mark.parametrize("name", [n for n in pxprune.list_criteria()
                                  if not n.startswith("_") and n not in WEIGHT_AGNOSTIC])
def test_a_zero_initialised_head_is_an_error_naming_it(name):
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    with pytest.raises(DegenerateScoresError, match=r"head\.weight.*zero-initialised.*re-initialise"):
        pxprune.prune(ZeroHead(), name, [(x, y)], sparsity=0.5, rounds=2)


@pytest.mark.parametrize("name", WEIGHT_AGNOSTIC)
def test_weight_agnostic_criteria_prune_a_zero_initialised_head_like_any_layer(name):
    """NTK-SAP scores fresh Kaiming-normal weights of the architecture (its paper's "new input,
    new weight"), ``random`` draws its scores: neither reads the model's weights, so the zero
    head is no defect for them. Both score every kept weight of both layers and prune exactly."""
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    scores = pxprune.score(ZeroHead(), name, [(x, y)])
    assert all(bool((s > 0).all()) for s in scores.values()), name
    mask = pxprune.prune(ZeroHead(), name, [(x, y)], sparsity=0.5, rounds=2)
    assert mask.kept == mask.total - math.floor(0.5 * mask.total)
    assert 0 < int(mask["head.weight"].sum()) < mask["head.weight"].numel()


def test_all_zero_scores_in_a_later_round_are_an_error_naming_the_emptied_layer():
    """Round 1 is fine; it prunes all of the 8-weight layer (its SynFlow scores, 2 each, are below
    the 2-weight layer's 8), which cuts every path: round 2's scores are all 0 (layer collapse)."""
    model = nn.Sequential(nn.Linear(8, 1, bias=False), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(1.0)
    seen = []
    with pytest.raises(DegenerateScoresError, match=r"earlier round pruned all of 0\.weight.*rounds=") as err:
        pxprune.prune(model, "synflow", input_size=(8,), sparsity=0.96, rounds=2,
                      progress=lambda t, total, mask: seen.append(t))
    assert seen == [1] and err.value.layers == ["0.weight"]


def _zero_head_builder(*, num_classes: int, input_size) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(input_size[0], 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    nn.init.zeros_(model[-1].weight)
    return model


def test_degenerate_scores_are_exit_2_from_the_command_line(fmnist, tmp_path, capsys):
    """A registered model (registered only for this test, as tests/test_extending_doc.py does)
    with a zero-initialised classifier: `pxprune prune` ends with one line, exit status 2."""
    from unittest import mock

    from conftest import assert_user_error, cli
    from pxprune.models import register_model
    from pxprune.registry import Registry

    made = []
    with mock.patch.object(Registry, "add", lambda self, name, obj: made.append((self, name, obj))):
        register_model("zero_head_test", input_size=(1, 28, 28), family="test")(_zero_head_builder)
    ((registry, name, entry),) = made
    with registry.scoped(name, entry):
        code, _, err = cli(capsys, "prune", "--set", f"data.root={fmnist}", "data.train_subset=null",
                           "data.per_class=1", "model.name=zero_head_test", "--rounds", "2",
                           "--out", tmp_path / "run", "--quiet")
    assert name not in registry
    assert_user_error(code, err, "4.weight", "zero-initialised", "model.get_submodule('4').weight")


# ----------------------------------------------------------------------------- reachability
def test_report_of_an_applied_model_is_the_report_of_the_mask():
    from pxprune.models import create_model

    model = create_model("resnet18", num_classes=10, seed=0)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=g) < 0.1 for n, p in prunable_parameters(model).items()})
    before = mask.report(model, (3, 64, 64))
    mask.apply(model)
    after = mask.report(model, (3, 64, 64))
    assert before.as_dicts() == after.as_dicts()
    assert 0 < before.flops_fraction < 0.5
    assert all(r.dense_macs > 0 for r in before.rows)


def test_reachability_passes_through_normalisation_attention_and_coefficients():
    for model, size in ((LNMLP(), (6,)), (SENet(), (3, 6, 6)), (Attn(), (5, 6)), (MHABlock(), (5, 8))):
        dense = Mask({n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()})
        report = dense.report(model, size)
        assert report.effective_density == 1.0, (type(model).__name__, report.empty_layers)
    # pruning the SE branch away leaves the main path connected (the scale is a constant then)
    model = SENet()
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}
    mask["fc1.weight"] = torch.zeros_like(mask["fc1.weight"])
    report = Mask(mask).report(model, (3, 6, 6))
    assert {r.name for r in report.rows if r.empty} == {"fc1.weight", "fc2.weight"}


def _torchvision_case(name: str):
    import torchvision

    kw, size = {}, 128
    if name.startswith("vit"):
        size = 126 if "_14" in name else 128
        kw = {"image_size": size}
    elif name.startswith(("inception", "googlenet")):
        kw = {"aux_logits": False, "init_weights": False}
        size = 160 if name.startswith("inception") else 128
    elif name.startswith("maxvit"):
        size = 224
    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=10, **kw), size


# measured on 2 cores: over 1.5 s each (building and one reachability pass at this size)
_SLOW_TV = {
    "convnext_base", "convnext_large", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m",
    "maxvit_t", "regnet_x_16gf", "regnet_x_32gf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf",
    "regnet_y_32gf", "regnet_y_8gf", "resnet101", "resnet152", "resnext101_32x8d",
    "resnext101_64x4d", "swin_b", "swin_s", "swin_v2_b", "swin_v2_s", "vgg11", "vgg11_bn", "vgg13",
    "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_h_14", "vit_l_16",
    "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
}


def _tv_names():
    import torchvision

    return [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_TV else n
            for n in torchvision.models.list_models(module=torchvision.models)]


@pytest.mark.parametrize("name", _tv_names())
def test_a_dense_mask_is_fully_effective_on_every_torchvision_classifier(name):
    """At an input size where every kernel tap sees the input (a 3x3 kernel at a 1x1 map only
    uses its centre, so smaller inputs truly leave taps off every path)."""
    model, size = _torchvision_case(name)
    dense = Mask({n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()})
    report = dense.report(model, (3, size, size))
    assert report.effective_density == 1.0, [r.name for r in report.rows if r.effective_kept < r.kept][:5]


@pytest.mark.parametrize("name", [
    # DeepLabV3+/ResNet-50 at output stride 8 takes about 9 s here; its OS16 twin stays in
    pytest.param(n, marks=pytest.mark.slow) if n == "deeplabv3plus_resnet50" else n
    for n in __import__("pxprune.models", fromlist=["x"]).list_models()])
def test_a_dense_mask_is_fully_effective_on_every_registered_model(name):
    from pxprune.models import create_model, model_info

    size = model_info(name).input_size
    if size[-1] > 64:
        # DeepLab's ASPP reaches the input through every tap of its rate-36 branch only on a
        # feature map of at least 37 cells: 296 px at output stride 8
        side = 320 if model_info(name).family == "deeplab" else 128
        size = (size[0], side, side)
    # built for the size it runs at: CLIP's attention pool has a fixed grid
    model = create_model(name, num_classes=10, seed=0, input_size=size)
    dense = Mask({n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()})
    assert dense.report(model, size).effective_density == 1.0


def test_a_packed_attention_projection_warns_that_its_query_and_key_rows_score_zero():
    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.qkv = nn.Linear(6, 18, bias=False)
            self.head = nn.Linear(6, 3, bias=False)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return self.head(F.scaled_dot_product_attention(q, k, v).mean(1))

    from pxprune.degenerate import ZeroScoresWarning

    with pytest.warns(ZeroScoresWarning, match=r"qkv\.weight \(67%\)"):
        pxprune.prune(Packed(), "px", [torch.randn(4, 5, 6)], sparsity=0.5, rounds=2)


class TransposedChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.t = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.t(torch.relu(self.c(x)))).flatten(1))


def test_transposed_convolutions_are_path_layers():
    """A layered bias-free ReLU net with a transposed convolution: PX's scores are exact (float32
    against float64) and conserved (every layer sums to the same R)."""
    model = TransposedChain()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = _masks(model)
    s64 = pxprune.score(model.double(), "px", [x.double()], mask=mask, dtype="float64")
    s32 = pxprune.score(model.float(), "px", [x], mask=mask)
    _close(s32, s64, tol=1e-5)
    sums = [float(t.double().sum()) for t in s64.values()]
    assert sums[0] == pytest.approx(sums[1], rel=1e-6) and sums[1] == pytest.approx(sums[2], rel=1e-6)
    assert "t.weight" in s64


def test_px_bn_train_degenerate_rounds_name_the_reference_defect():
    """The reference code's bn='train' gives round-off scores that reach exactly 0 on a ResNet-20:
    the error says so and names bn='eval', not a layer collapse or a layer outside the theory."""
    from pxprune.models import create_model

    model = create_model("resnet20", num_classes=10, seed=0)
    x = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DegenerateScoresError, match="bn='train'.*use bn='eval'") as err:
            pxprune.prune(model, "px", [x], sparsity=0.982, rounds=30, bn="train", classifier="signed")
    assert "collapse" not in str(err.value) and "\n" not in str(err.value)
