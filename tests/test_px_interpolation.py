"""PX through interpolation (a segmentation head's upsampling) against brute force, in float64.

The network is conv 3x3 -> ReLU -> F.interpolate -> conv 1x1, scored on its (N, K, H, W) output:
every (class, pixel) is an output k. Interpolation is a fixed linear map U (U[o, i], the coefficient
of hidden unit i in upsampled unit o). By the fixed-linear-map rule (docs/design/PX.md), a path p
through U[o, i] carries 1 in the data copy and U[o, i]**2 in the weight copy:

    z1[n, k] = sum_{i0, i1, o: edges kept, U[o, i1] != 0} g1[n, i1]**2 x[n, i0]**2
    S_j = sum_k Z1[k] sum_{p in P_k containing j} v_p**2,  v_p = theta_a U[o, i1] theta_b

Treating interpolation as any other homogeneous map (its coefficients to the power 1 in both
copies) gives different scores: the last test shows they differ, so the rule is what is tested.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pxprune

CASES = {
    "bilinear x2": {"scale_factor": 2, "mode": "bilinear"},
    "bilinear 4->(7,5) corners": {"size": (7, 5), "mode": "bilinear", "align_corners": True},
    "bilinear x1.5": {"scale_factor": 1.5, "mode": "bilinear"},
    "bicubic 4->6": {"size": (6, 6), "mode": "bicubic"},
    "bilinear antialias 4->3": {"size": (3, 3), "mode": "bilinear", "antialias": True},
    "area 4->2": {"size": (2, 2), "mode": "area"},
    "nearest x2": {"scale_factor": 2, "mode": "nearest"},
}


class Head(nn.Module):
    def __init__(self, how: dict, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.c1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(2, classes, 1, bias=False)

    def forward(self, x):
        return self.c2(F.interpolate(torch.relu(self.c1(x)), **self.how))


def dense(fn, n_in: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map: column i is fn(unit vector i)."""
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, *shape)
    return fn(basis).reshape(n_in, -1).t()


def edges(conv: nn.Conv2d, shape: tuple[int, int, int], **kw) -> torch.Tensor:
    """E[out, in] = flat index of the weight on that edge, -1 where none."""
    w = conv.weight.detach().double()
    n_in = shape[0] * shape[1] * shape[2]
    e = None
    for j in range(w.numel()):
        unit = torch.zeros(w.numel(), dtype=torch.float64)
        unit[j] = 1
        hit = dense(lambda b: F.conv2d(b, unit.view_as(w), **kw), n_in, shape) != 0  # noqa: B023
        if e is None:
            e = torch.full(hit.shape, -1, dtype=torch.long)
        e[hit] = j
    return e


def brute_force(model: Head, x: torch.Tensor, masks: dict, power_in_data: int = 0,
                power_in_weights: int = 2) -> dict[str, torch.Tensor]:
    n, _, h, w = x.shape
    t1 = model.c1.weight.detach().double().reshape(-1)
    t2 = model.c2.weight.detach().double().reshape(-1)
    m1, m2 = masks["c1.weight"].reshape(-1), masks["c2.weight"].reshape(-1)
    e1 = edges(model.c1, (1, h, w), padding=1)
    hidden = (2, h, w)
    u = dense(lambda b: F.interpolate(b, **model.how), 2 * h * w, hidden)
    up = F.interpolate(torch.zeros(1, *hidden, dtype=torch.float64), **model.how).shape[1:]
    e2 = edges(model.c2, tuple(up))

    def layer(e, theta, mask, sq):
        kept = (e >= 0) & mask[e.clamp(min=0)]
        return torch.where(kept, theta[e.clamp(min=0)] ** 2 if sq else 1.0, 0.0).double()

    def coef(p):
        return (u != 0).double() if p == 0 else u.abs() ** p if p != 1 else u

    b1, b2 = layer(e1, t1, m1, False), layer(e2, t2, m2, False)
    w1, w2 = layer(e1, t1, m1, True), layer(e2, t2, m2, True)
    xd = x.double().reshape(n, -1)
    pre1 = xd @ torch.where(b1 > 0, t1[e1.clamp(min=0)], 0.0).t()
    g1 = (pre1 > 0).double()
    z1 = (((xd**2) @ b1.t()) * g1**2) @ coef(power_in_data).t() @ b2.t()  # (n, K*pixels)
    big_z = z1.sum(0)
    q1 = coef(power_in_weights).t() @ (w2.t() @ big_z)  # per hidden unit
    r2 = coef(power_in_weights) @ (w1 @ torch.ones(w1.shape[1], dtype=torch.float64))
    s1 = torch.zeros_like(t1).index_add_(0, e1[e1 >= 0], (w1 * q1[:, None])[e1 >= 0])
    s2 = torch.zeros_like(t2).index_add_(0, e2[e2 >= 0], (w2 * big_z[:, None] * r2[None, :])[e2 >= 0])
    top = max(float(s1.max()), float(s2.max()))
    return {"c1.weight": s1 / top, "c2.weight": s2 / top}


def _case(how: dict, seed: int = 1):
    model = Head(how).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    masks = {n: torch.rand(p.shape, generator=g) > 0.25 for n, p in model.named_parameters()}
    return model, x, masks


@pytest.mark.parametrize("case", list(CASES))
def test_px_through_interpolation_equals_the_fixed_linear_map_rule(case):
    model, x, masks = _case(CASES[case])
    expected = brute_force(model, x, masks)
    got = pxprune.score(model, "px", [x], mask=masks, dtype="float64")
    for name, s in got.items():
        torch.testing.assert_close(s.double().reshape(-1), expected[name], rtol=1e-6, atol=1e-9,
                                   msg=f"{case}: {name}")


def test_px_through_interpolation_float32_matches_to_round_off():
    model, x, masks = _case(CASES["bilinear x2"])
    expected = brute_force(model, x, masks)
    got = pxprune.score(model.float(), "px", [x.float()], mask=masks)
    for name, s in got.items():
        assert float((s.double().reshape(-1) - expected[name]).abs().max()) <= 1e-5


def test_interpolation_as_it_is_would_score_differently():
    """The rule matters: coefficients to the power 1 in both copies give other scores."""
    model, x, masks = _case(CASES["bilinear x1.5"])
    rule = brute_force(model, x, masks)
    as_is = brute_force(model, x, masks, power_in_data=1, power_in_weights=1)
    assert max(float((rule[n] - as_is[n]).abs().max()) for n in rule) > 1e-2
