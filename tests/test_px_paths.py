"""PX against brute-force path enumeration (docs/design/PX.md sections 1-2), in float64.

Every network here is a bias-free chain of three linear maps (an MLP, or a CNN written as dense
matrices whose entries share weights). Paths are enumerated explicitly: all (i0, i1, i2, k) whose three
edges exist and are kept. For each path p and sample n:
    v_p = theta_a theta_b theta_c,  a_p(x_n) = g1[n, i1] g2[n, i2],  z1[n, k] = sum_p a_p^2 x[n, i0]^2
and the score of weight j is S_j = sum_{n,k} z1[n,k] sum_{p in P_k, p contains j} v_p^2.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pxprune
from conftest import TinyCNN, mlp

torch.set_default_dtype(torch.float32)


def _edges_linear(w: torch.Tensor) -> torch.Tensor:
    """idx[out, in] = flat weight index of the edge (every entry is its own weight)."""
    return torch.arange(w.numel()).view_as(w)


def _edges_conv(w: torch.Tensor, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """idx[out_unit, in_unit] for a stride-1, padding-1 conv: probe every (weight, input unit)."""
    c, h, wd = in_shape
    n_in = c * h * wd
    out_units = w.shape[0] * h * wd
    idx = torch.full((out_units, n_in), -1, dtype=torch.long)
    for j in range(w.numel()):
        e_w = torch.zeros(w.numel(), dtype=torch.float64)
        e_w[j] = 1
        basis = torch.eye(n_in, dtype=torch.float64).view(n_in, c, h, wd)
        out = F.conv2d(basis, e_w.view_as(w).double(), padding=1).reshape(n_in, -1)  # (in, out)
        hit = out.t() != 0
        assert not ((idx >= 0) & hit).any(), "an edge uses two weights"
        idx[hit] = j
    return idx


def brute_force(thetas, edges, masks, x_sq, g1, g2, z1_const: bool = False):
    """Scores S (one flat tensor per layer), z1 and the bound B, by explicit path enumeration."""
    (i1s, i0s), (i2s, _), (ks, _) = [e.shape for e in edges]
    n = x_sq.shape[0]
    paths = []
    for i0, i1, i2, k in itertools.product(range(i0s), range(i1s), range(i2s), range(ks)):
        a, b, c = int(edges[0][i1, i0]), int(edges[1][i2, i1]), int(edges[2][k, i2])
        if a < 0 or b < 0 or c < 0 or not (masks[0][a] and masks[1][b] and masks[2][c]):
            continue
        paths.append((i0, i1, i2, k, a, b, c))
    p = torch.tensor(paths, dtype=torch.long)
    i0, i1, i2, k, a, b, c = p.unbind(1)
    v = thetas[0][a] * thetas[1][b] * thetas[2][c]
    act = (g1[:, i1] ** 2) * (g2[:, i2] ** 2) * x_sq[:, i0]  # (n, paths)
    z1 = torch.zeros(n, ks, dtype=torch.float64).index_add_(1, k, act)
    if z1_const:
        z1 = torch.ones_like(z1)
    weight = z1.sum(0)[k] * v**2  # per path: sum_n z1[n, k(p)] v_p^2
    scores = [
        torch.zeros_like(t).index_add_(0, idx, weight)
        for t, idx in zip(thetas, (a, b, c), strict=True)
    ]
    per_path_sum = v**2 * (1 / thetas[0][a] ** 2 + 1 / thetas[1][b] ** 2 + 1 / thetas[2][c] ** 2)
    bound = (z1.sum(0)[k] * per_path_sum).sum()
    return scores, z1, bound


def _normalise(scores):
    top = max(float(s.abs().max()) for s in scores)
    return [s / top for s in scores]


def _mlp_case(act, slope: float = 0.0, seed: int = 0, masks=None):
    model = mlp(
        act, seed=seed, **({"negative_slope": slope} if act is nn.LeakyReLU else {})
    ).double()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ws = [model[0].weight, model[2].weight, model[4].weight]
    masks = masks or [torch.ones(w.numel(), dtype=torch.bool) for w in ws]
    mw = [w.detach() * m.view_as(w) for w, m in zip(ws, masks, strict=True)]
    pre1 = x @ mw[0].t()
    h1 = act(**({"negative_slope": slope} if act is nn.LeakyReLU else {}))(pre1)
    pre2 = h1 @ mw[1].t()
    def gate(t):
        return torch.where(t > 0, 1.0, slope).double()

    thetas = [w.detach().reshape(-1) for w in ws]
    edges = [_edges_linear(w) for w in ws]
    return model, x, thetas, edges, masks, gate(pre1), gate(pre2)


def _mask_dict(model, masks):
    names = [n for n, _ in model.named_parameters()]
    return (
        {n: m.view_as(p) for (n, p), m in zip(model.named_parameters(), masks, strict=True)}
        if names
        else {}
    )


@pytest.mark.parametrize("act,slope", [(nn.ReLU, 0.0), (nn.LeakyReLU, 0.2)])
@pytest.mark.parametrize("masked", [False, True])
def test_mlp_scores_equal_path_enumeration(act, slope, masked):
    g = torch.Generator().manual_seed(3)
    masks = None
    if masked:
        masks = [torch.rand(n, generator=g) > 0.3 for n in (12, 20, 10)]
    model, x, thetas, edges, masks, g1, g2 = _mlp_case(act, slope, masks=masks)
    expected, _, _ = brute_force(thetas, edges, masks, x**2, g1, g2)
    got = pxprune.score(model, "px", [x], mask=_mask_dict(model, masks), dtype="float64")
    for exp, (name, s) in zip(_normalise(expected), got.items(), strict=True):
        torch.testing.assert_close(s.double().reshape(-1), exp, rtol=1e-6, atol=1e-7, msg=name)
    # default float32 copies: within 1e-5 of the tensor's max
    got32 = pxprune.score(model.float(), "px", [x.float()], mask=_mask_dict(model, masks))
    for exp, s in zip(_normalise(expected), got32.values(), strict=True):
        assert float((s.double().reshape(-1) - exp).abs().max()) <= 1e-5 * float(exp.abs().max())


def test_cnn_scores_equal_path_enumeration():
    model = TinyCNN(seed=1).double()
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ws = [model.c1.weight, model.c2.weight, model.fc.weight]
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(w.numel(), generator=g) > 0.2 for w in ws]
    mw = [w.detach() * m.view_as(w) for w, m in zip(ws, masks, strict=True)]
    pre1 = F.conv2d(x, mw[0], padding=1)
    pre2 = F.conv2d(torch.relu(pre1), mw[1], padding=1)
    g1 = (pre1 > 0).double().flatten(1)
    g2 = (pre2 > 0).double().flatten(1)
    edges = [_edges_conv(mw[0], (1, 4, 4)), _edges_conv(mw[1], (2, 4, 4)), _edges_linear(mw[2])]
    thetas = [w.detach().reshape(-1) for w in ws]
    expected, _, _ = brute_force(thetas, edges, masks, (x**2).flatten(1), g1, g2)
    mask = {
        "c1.weight": masks[0].view_as(ws[0]),
        "c2.weight": masks[1].view_as(ws[1]),
        "fc.weight": masks[2].view_as(ws[2]),
    }
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    for exp, s in zip(_normalise(expected), got.values(), strict=True):
        torch.testing.assert_close(s.double().reshape(-1), exp, rtol=1e-6, atol=1e-7)


def test_bound_identity_and_ntk_trace():
    """sum_j dR/d(theta_j^2) = B (the row-wise bound), and the NTK trace is below it."""
    model, x, thetas, edges, masks, g1, g2 = _mlp_case(nn.ReLU, seed=4)
    scores, z1, bound = brute_force(thetas, edges, masks, x**2, g1, g2)
    # the PX scores divided by theta^2 sum to B (up to the global factor of normalisation)
    got = pxprune.score(model, "px", [x], dtype="float64")
    raw_top = max(float(s.abs().max()) for s in scores)
    sum_grad = sum(
        float((s.double().reshape(-1) * raw_top / t**2).sum())
        for s, t in zip(got.values(), thetas, strict=True)
    )
    assert sum_grad == pytest.approx(float(bound), rel=1e-9)
    # NTK trace: sum over n, k of |grad_theta f_k(x_n)|^2
    params = [model[0].weight, model[2].weight, model[4].weight]
    trace = 0.0
    for xi in x:
        out = model(xi.unsqueeze(0))[0]
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            trace += sum(float((gr**2).sum()) for gr in grads)
    assert 0 < trace <= float(bound)


def test_scores_nonnegative_and_conserved_per_layer():
    model, x, *_ = _mlp_case(nn.ReLU, seed=7)
    g = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(p.shape, generator=g) > 0.4 for n, p in model.named_parameters()}
    got = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    sums = [float(s.double().sum()) for s in got.values()]
    assert all(float(s.min()) >= 0 for s in got.values())
    assert sums[0] == pytest.approx(sums[1], rel=1e-6) and sums[1] == pytest.approx(
        sums[2], rel=1e-6
    )
    for n, s in got.items():  # pruned weights score exactly 0
        assert torch.all(s[~mask[n]] == 0)


def test_first_round_equals_l2_path_norm():
    model, x, thetas, edges, masks, g1, g2 = _mlp_case(nn.ReLU, seed=9)
    expected, _, _ = brute_force(thetas, edges, masks, x**2, g1, g2, z1_const=True)
    got = pxprune.score(model, "px", [x], dtype="float64")
    for exp, s in zip(_normalise(expected), got.values(), strict=True):
        torch.testing.assert_close(s.double().reshape(-1), exp, rtol=1e-6, atol=1e-8)
    signed = pxprune.score(model, "px", [x], dtype="float64", classifier="signed")
    assert any(
        not torch.allclose(a, b, atol=1e-4)
        for a, b in zip(signed.values(), got.values(), strict=True)
    )


def test_data_enter_only_through_z1():
    """Splits with equal Z1 (up to a positive factor) give identical scores; so does permuting."""
    model, x, *_ = _mlp_case(nn.ReLU, seed=11)
    g = torch.Generator().manual_seed(2)
    mask = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()}
    # z1[n, k] depends on k only through the classifier's kept edges: prune its rows differently
    mask["4.weight"] = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    base = pxprune.score(model, "px", [x], mask=mask, dtype="float64")
    perm = x[torch.randperm(x.shape[0], generator=g)]
    variants = [
        [perm],  # permuted samples
        [x[:3], x[3:]],  # another batching
        [torch.cat([x, x])],  # duplicated: Z1 doubles
        [3.0 * x],  # scaled: bias-free ReLU keeps gates, Z1 x 9
    ]
    for split in variants:
        other = pxprune.score(model, "px", split, mask=mask, dtype="float64")
        for a, b in zip(base.values(), other.values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    different = pxprune.score(
        model, "px", [torch.randn(6, 3, dtype=torch.float64)], mask=mask, dtype="float64"
    )
    assert any(
        not torch.allclose(a, b) for a, b in zip(base.values(), different.values(), strict=True)
    )
