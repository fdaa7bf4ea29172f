"""The path-copy engine's invariant: a tracked tensor ``t`` stands for ``t * 2**exponent(t)``.

With every operation left as it is (``CopySpec`` keep/keep/keep) and power-of-two scaling on, a copy
*is* the real network, so ``output * 2**exponent(output)`` must equal a plain forward, on any model:
every operation either commutes with the scale or is given the true values (sigmoid, softmax,
LayerNorm, GELU, attention, ``x + 1``, ``clamp``...). The input is scaled by ``2**40`` so that any
operation that wrongly sees mantissas shows.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pxprune.models import create_model, list_models
from pxprune.paths import CopySpec, PathMode


class OddOps(nn.Module):
    """Operations that are not homogeneous, each applied to a branch of a scaled trunk (so that a
    wrong handler sees a mantissa, not a true value), next to ones that are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm2d(8).eval()
        self.fc = nn.Linear(8, 5)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        h = self.conv(x) * 2.0**-40  # true values O(1); the copy keeps an exponent near 40
        seq = h.flatten(2).transpose(1, 2)  # (N, HW, 8)
        branches = [
            h + 1.0,
            torch.where(h > 0.5, h, 0.25 * h),
            F.pad(h, (1, 1, 1, 1), value=0.3)[:, :, 1:-1, 1:-1],
            F.silu(h),
            self.gn(h),
            self.bn(h),
            h.clamp(max=0.2),
            torch.sigmoid(h),
            h * torch.sigmoid(F.adaptive_avg_pool2d(h, 1)),  # squeeze-excitation
            F.gelu(h),
            h.pow(2),
            h / (h.abs() + 1),
            torch.tanh(h),
            F.hardswish(h),
            (-h.abs()).exp(),
            self.ln(seq).transpose(1, 2).reshape(h.shape),
            self.attn(seq, seq, seq, need_weights=False)[0].transpose(1, 2).reshape(h.shape),
            seq.softmax(-1).transpose(1, 2).reshape(h.shape),
            F.scaled_dot_product_attention(seq, seq, seq).transpose(1, 2).reshape(h.shape),
            F.layer_norm(seq, (8,)).transpose(1, 2).reshape(h.shape),
        ]
        total = branches[0]
        for b in branches[1:]:
            total = total + b
        return self.fc(total.mean((2, 3))) - 3


def _check(model: nn.Module, x: torch.Tensor, lazy: bool) -> None:
    model.eval()
    with torch.no_grad():
        want = model(x)
        with PathMode(CopySpec(scaling="exp", lazy=lazy)) as mode:
            out = model(mode.track(x))
            e = mode.exponent(out)
    got = out.double() * 2.0**e
    scale = float(want.abs().max())
    assert float((got - want.double()).abs().max()) <= 1e-4 * scale + 1e-30, (e, scale)


@pytest.mark.parametrize("lazy", [False, True])
def test_kept_copy_equals_the_network_on_odd_operations(lazy):
    _check(OddOps(), torch.randn(2, 3, 6, 6) * 2.0**40, lazy)


class BeyondFloat32(nn.Module):
    """Linear maps whose true values leave float32's range (about 2**190), then an operation that
    needs true values, then another linear map (which must not overflow)."""

    def __init__(self, op) -> None:  # noqa: ANN001
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(*[nn.Linear(8, 8, bias=False) for _ in range(6)])
        for layer in self.trunk:
            nn.init.normal_(layer.weight, std=2.0**30)
        self.head = nn.Linear(8, 4, bias=False)
        self.op = op

    def forward(self, x):
        return self.head(self.op(self.trunk(x)))


TRUE_VALUE_OPS = {
    "gelu": F.gelu,
    "silu_inplace": lambda h: F.silu(h.clone(), inplace=True),
    "softplus": F.softplus,
    "where": lambda h: torch.where(h > 0, h, 0.5 * h),
    "tanh_": lambda h: h.clone().tanh_() * h.abs(),  # an in-place operation on true values
}


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("op", TRUE_VALUE_OPS.values(), ids=list(TRUE_VALUE_OPS))
def test_true_values_beyond_float32_are_taken_in_float64_and_renormalised(op, lazy):
    model = BeyondFloat32(op).eval()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
        with PathMode(CopySpec(scaling="exp", lazy=lazy)) as mode:
            out = model(mode.track(x))
            e = mode.exponent(out)
    assert torch.isfinite(want).all() and out.dtype == torch.float32
    got = out.double() * 2.0**e
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()), e


@pytest.mark.parametrize("name", list_models())
def test_kept_copy_equals_every_registered_model(name):
    # built for the size it runs at: CLIP's attention pool has a fixed grid
    model = create_model(name, num_classes=10, seed=0, input_size=(3, 32, 32))
    _check(model, torch.randn(2, 3, 32, 32) * 2.0**40, lazy=True)


TORCHVISION = [
    ("resnet18", 32, {}),
    ("mobilenet_v2", 32, {}),
    ("mobilenet_v3_small", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("densenet121", 32, {}),
    ("convnext_tiny", 32, {}),
    ("swin_t", 64, {}),
    ("vit_b_16", 32, {"image_size": 32}),
]


@pytest.mark.parametrize("name,size,kw", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_kept_copy_equals_torchvision_models(name, size, kw):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **kw)
    _check(model, torch.randn(2, 3, size, size) * 2.0**20, lazy=True)


def test_scaled_sum_is_exact():
    from pxprune.paths import ScaledSum

    total = ScaledSum()
    parts = [(torch.tensor([3.0, 1.0]), 5), (torch.tensor([0.5, 0.0]), -200), (torch.tensor([1.0, 2.0]), 7)]
    for t, e in parts:
        total.add(t, e)
    want = sum(t.double() * 2.0**e for t, e in parts)
    got = total.mantissa.double() * 2.0**total.exponent
    torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
