"""PX properties on real architectures: exactness, BN invariance, gates, invariance of the caller's
model and of torch, layer collapse, and the torchvision models."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pxprune
from conftest import ResBlockNet, assert_unchanged, randomize_bn, snapshot
from pxprune.models import create_model
from pxprune.paths import GateMismatchError, PathTheoryWarning


def _batches(shape=(8, 3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g))]


def _plain_cnn(seed: int, bn: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for cin, cout in ((3, 8), (8, 32), (32, 64)):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10, bias=False)]
    return nn.Sequential(*layers)


def test_float32_matches_float64_on_resnet20():
    model = create_model("resnet20", num_classes=10, seed=0)
    randomize_bn(model)
    data = _batches()
    g = torch.Generator().manual_seed(1)
    mask = {
        n: torch.rand(p.shape, generator=g) > 0.7
        for n, p in model.named_parameters()
        if p.dim() > 1
    }
    s32 = pxprune.score(model, "px", data, mask=mask)
    s64 = pxprune.score(model, "px", data, mask=mask, dtype="float64")
    for name in s32:
        err = float((s32[name].double() - s64[name].double()).abs().max())
        assert err <= 1e-5 * float(s64[name].abs().max()), name
        assert float(s32[name].abs().max()) > 0, name


def test_float32_mask_equals_float64_mask():
    model = ResBlockNet(seed=3)
    randomize_bn(model)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    m32 = pxprune.prune(model, "px", [x], sparsity=0.98, rounds=100)
    m64 = pxprune.prune(model, "px", [x], sparsity=0.98, rounds=100, dtype="float64")
    assert all(torch.equal(m32[n], m64[n]) for n in m32)


def test_no_overflow_scaled_copies_resnet20():
    """Raw all-ones copies of ResNet-20 overflow float32 (~2e49); the exponents keep them finite."""
    model = create_model("resnet20", num_classes=10, seed=0)
    scores = pxprune.score(model, "px", _batches((4, 3, 32, 32)))
    assert all(torch.isfinite(s).all() and float(s.max()) > 0 for s in scores.values())


def test_fresh_batchnorm_does_not_change_the_ranking():
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = _plain_cnn(0)
    with_bn = _plain_cnn(0, bn=True)
    with_bn.load_state_dict(
        {k: v for k, v in plain.state_dict().items()}
        | {
            k: v
            for k, v in with_bn.state_dict().items()
            if "running" in k or k.split(".")[0] in ("1", "4", "7")
        },
        strict=False,
    )
    # copy the conv/linear weights across (indices shift by the inserted BNs)
    convs_p = [m for m in plain if isinstance(m, nn.Conv2d | nn.Linear)]
    convs_b = [m for m in with_bn if isinstance(m, nn.Conv2d | nn.Linear)]
    for a, b in zip(convs_p, convs_b, strict=True):
        b.weight.data.copy_(a.weight.data)
    ma = pxprune.prune(plain, "px", [x], sparsity=0.95, rounds=5)
    mb = pxprune.prune(with_bn, "px", [x], sparsity=0.95, rounds=5)
    assert [torch.equal(a, b) for a, b in zip(ma.values(), mb.values(), strict=True)] == [True] * 4


def test_fresh_batchnorm_inside_a_residual_branch():
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = ResBlockNet(seed=5)
    b = ResBlockNet(seed=5, extra_bn=True)
    b.load_state_dict(a.state_dict(), strict=False)
    sa = pxprune.score(a, "px", [x])
    sb = pxprune.score(b, "px", [x])
    for n in sa:
        assert float((sa[n] - sb[n]).abs().max()) <= 1e-5 * float(sa[n].abs().max()) + 1e-12, n


def test_pruned_weights_score_zero_and_stay_pruned():
    model = ResBlockNet(seed=1)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = []
    pxprune.prune(
        model, "px", [x], sparsity=0.9, rounds=4, progress=lambda t, T, m: masks.append(dict(m))
    )
    for before, after in zip(masks, masks[1:], strict=False):
        for n in before:
            assert not (after[n] & ~before[n]).any(), "a mask grew"
    mask = masks[1]
    assert not mask["fc.weight"].all(), "the classifier must be prunable"
    scores = pxprune.score(model, "px", [x], mask=mask)
    for n, s in scores.items():
        assert torch.all(s[~mask[n]] == 0), n


def test_one_shot_collapses_where_iterative_does_not():
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _plain_cnn(0)
    once = pxprune.prune(model, "px", [x], sparsity=0.98, rounds=1)
    many = pxprune.prune(model, "px", [x], sparsity=0.98, rounds=100)
    assert "4.weight" in once.empty_layers()
    assert many.empty_layers() == []
    assert once.kept == many.kept
    report = once.report(model, (3, 8, 8))
    assert "4.weight" in report.empty_layers
    assert report.effective_kept == 0  # no path survives once a layer of a chain is empty
    assert many.report(model, (3, 8, 8)).empty_layers == []


def test_collapse_is_logged(caplog):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="pxprune"):
        pxprune.prune(_plain_cnn(0), "px", [x], sparsity=0.98, rounds=1)
    assert "4.weight" in caplog.text


def test_signed_classifier_found_by_execution_order():
    model = ResBlockNet(seed=2)
    x = torch.randn(4, 3, 8, 8)
    a = pxprune.score(model, "px", [x], classifier="signed")
    b = pxprune.score(model, "px", [x], classifier="signed", classifier_name="fc")
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match="classifier_name"):
        pxprune.score(model, "px", [x], classifier="signed", classifier_name="bn")


def test_bn_train_warns_and_runs():
    model = ResBlockNet(seed=2)
    x = torch.randn(4, 3, 8, 8)
    snap = snapshot(model)
    with pytest.warns(UserWarning, match="degenerate|round-off"):
        s = pxprune.score(model, "px", [x], bn="train", classifier="signed")
    assert all(torch.isfinite(t).all() for t in s.values())
    assert_unchanged(model, snap)


@pytest.mark.parametrize(
    "activation", ["module", "inplace", "functional", "torch", "method", "method_"]
)
def test_every_relu_call_style_is_gated(activation):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.fc = nn.Linear(4 * 16, 3, bias=False)
            self.relu = nn.ReLU(inplace=activation == "inplace")

        def forward(self, x):
            h = self.c(x)
            h = {
                "module": self.relu,
                "inplace": self.relu,
                "functional": F.relu,
                "torch": torch.relu,
                "method": torch.Tensor.relu,
                "method_": torch.Tensor.relu_,
            }[activation](h)
            return self.fc(h.flatten(1))

    class Ref(Net):
        def forward(self, x):
            return self.fc(F.relu(self.c(x)).flatten(1))

    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = {"fc.weight": torch.rand(3, 64, generator=torch.Generator().manual_seed(2)) > 0.5}
    got = pxprune.score(Net(), "px", [x], mask=mask)
    ref = pxprune.score(Ref(), "px", [x], mask=mask)
    assert all(torch.allclose(got[n], ref[n]) for n in got)


def test_gate_replay_mismatch_is_detected():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            x = torch.relu(x)
            if self.calls % 2 == 0:  # the replay pass takes another route
                x = torch.relu(x)
            return self.fc(x)

    with pytest.raises(GateMismatchError):
        pxprune.score(Flaky(), "px", [torch.randn(3, 4)])


def test_model_and_torch_untouched_after_success_and_error():
    model = ResBlockNet(seed=0)
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    model.a.weight.requires_grad_(False)
    snap = snapshot(model)
    relu, conv = F.relu, torch.conv2d
    x = torch.randn(4, 3, 8, 8)
    pxprune.prune(model, "px", [x], sparsity=0.5, rounds=2)
    assert_unchanged(model, snap)

    class Boom(RuntimeError):
        pass

    calls = {"n": 0}

    def bomb(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-scoring, inside a path copy
            raise Boom

    handle = model.b.register_forward_hook(bomb)
    with pytest.raises(Boom):
        pxprune.prune(model, "px", [x], sparsity=0.5, rounds=2)
    handle.remove()
    assert_unchanged(model, snap)
    assert F.relu is relu and torch.conv2d is conv
    assert not torch._C._is_torch_function_mode_enabled()
    assert torch.is_grad_enabled()
    out = model.eval()(x)  # the model still runs normally
    assert torch.isfinite(out).all()


# torchvision's vgg16_bn carries a 103M-weight classifier (11 s on 2 cores): slow; its conv/BN
# body is covered in the fast suite by our CIFAR VGG-16-BN
@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnet50", pytest.param("vgg16_bn", marks=pytest.mark.slow), "mobilenet_v2",
     "vgg16_bn_cifar", "resnet18_tiny"],
)
def test_torchvision_models_score(name):
    model = create_model(name, num_classes=10, seed=0)
    snap = snapshot(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = pxprune.score(model, "px", [x])
    assert set(scores) == {
        n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() in (2, 4)
    }
    for n, s in scores.items():
        assert torch.isfinite(s).all(), n
    assert sum(int((s > 0).sum()) for s in scores.values()) > 0
    assert_unchanged(model, snap)


def test_unsupported_layers_warn_once():
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False),
        nn.GELU(),
        nn.Linear(8, 8, bias=False),
        nn.GELU(),
        nn.Linear(8, 2, bias=False),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pxprune.prune(model, "px", [torch.randn(3, 4)], sparsity=0.5, rounds=3)
    theory = [w for w in caught if issubclass(w.category, PathTheoryWarning)]
    assert len(theory) == 1 and "GELU" in str(theory[0].message)


def test_compiled_and_scripted_models_are_rejected():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(TypeError, match="scripted"):
        pxprune.score(torch.jit.script(model), "px", [torch.randn(2, 4)])


def test_segmentation_style_output():
    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.head = nn.Conv2d(6, 5, 1)

        def forward(self, x):
            return {"out": self.head(torch.relu(self.c(x)))}

    scores = pxprune.score(Seg(), "px", [torch.randn(2, 3, 8, 8)])
    assert set(scores) == {"c.weight", "head.weight"}
    assert all(float(s.max()) > 0 for s in scores.values())


@pytest.mark.slow
def test_resnet152_finite_nonzero_every_layer():
    model = create_model("resnet152", num_classes=10, seed=0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scores = pxprune.score(model, "px", [x])
    for n, s in scores.items():
        assert torch.isfinite(s).all() and float(s.max()) > 0, n


def test_deepcopy_of_model_scores_identically():
    model = create_model("resnet20", num_classes=10, seed=1)
    data = _batches((4, 3, 32, 32))
    a = pxprune.score(model, "px", data)
    b = pxprune.score(copy.deepcopy(model), "px", data)
    assert all(torch.equal(a[n], b[n]) for n in a)
