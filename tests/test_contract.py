"""The criterion contract, for every registered criterion (docs/design/CONTRACTS.md sections 1 and 3)."""

from __future__ import annotations

import math

import pytest
import torch

import pxprune
from conftest import ResBlockNet, assert_unchanged, randomize_bn, snapshot
from pxprune.criteria import CRITERIA
from pxprune.degenerate import DegenerateScoresError

CRITERIA_NAMES = [n for n in pxprune.list_criteria() if not n.startswith("_")]


def _model():
    model = randomize_bn(ResBlockNet(seed=0))
    model.train()
    model.bn.eval()
    model.fc.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", CRITERIA_NAMES)
def test_score_contract(name, images):
    model = _model()
    snap = snapshot(model)
    scores = pxprune.score(model, name, images, seed=1)
    prunable = {
        n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() in (2, 4)
    }
    assert list(scores) == list(prunable)
    for n, s in scores.items():
        assert s.shape == prunable[n].shape and s.dtype == torch.float32, n
        assert torch.isfinite(s).all(), n
    assert max(float(s.abs().max()) for s in scores.values()) == 1.0
    assert_unchanged(model, snap)
    again = pxprune.score(model, name, images, seed=1)
    assert all(torch.equal(scores[n], again[n]) for n in scores), "not deterministic under a seed"


@pytest.mark.parametrize("name", CRITERIA_NAMES)
def test_prune_contract(name, images):
    model = _model()
    snap = snapshot(model)
    masks = []
    mask = pxprune.prune(
        model,
        name,
        images,
        sparsity=0.7,
        rounds=3,
        seed=2,
        progress=lambda t, T, m: masks.append(m),
    )
    m = mask.total
    assert mask.kept == m - math.floor(round(0.7 * m, 9))
    assert len(masks) == 3
    for a, b in zip(masks, masks[1:], strict=False):
        assert all(not (b[n] & ~a[n]).any() for n in a), "a mask grew"
    assert mask.metadata["criterion"] == name and mask.metadata["rounds"] == 3
    assert_unchanged(model, snap)
    again = pxprune.prune(model, name, images, sparsity=0.7, rounds=3, seed=2)
    assert all(torch.equal(mask[n], again[n]) for n in mask)


@pytest.mark.parametrize("name", CRITERIA_NAMES)
def test_rounds_none_runs_the_criterion_s_own_rounds(name, images):
    """``rounds=None`` means the criterion's default (its paper's schedule): that many rounds."""
    cls = CRITERIA.get(name)
    seen = []
    mask = pxprune.prune(_model(), name, images, sparsity=0.5, seed=0,
                         progress=lambda t, T, m: seen.append((t, T)))
    assert seen == [(t, cls.default_rounds) for t in range(1, cls.default_rounds + 1)]
    assert mask.metadata["rounds"] == cls.default_rounds


@pytest.mark.parametrize("name", CRITERIA_NAMES)
def test_every_option_is_documented(name):
    import dataclasses

    cls = CRITERIA.get(name)
    doc = (cls.__doc__ or "") + (__import__(cls.__module__, fromlist=["x"]).__doc__ or "")
    missing = [f.name for f in dataclasses.fields(cls.Options) if f.name not in doc]
    assert not missing, f"{name}: options {missing} are not in its docstring"


def _modern(name: str):
    """Small torchvision models with the ops users' networks carry: hardswish, hardsigmoid gates
    (SE), LayerNorm, GELU, attention, shifted windows."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    if name == "mobilenet_v3_small":
        return tvm.mobilenet_v3_small(num_classes=4), 32
    if name == "vit":
        vit = tvm.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                    hidden_dim=8, mlp_dim=16, num_classes=4)
        torch.nn.init.normal_(vit.heads.head.weight, std=0.1)  # zero-initialised by torchvision
        return vit, 16
    return tvm.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                               window_size=[2, 2], num_classes=4), 16


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", "vit", "swin"])
@pytest.mark.parametrize("name", CRITERIA_NAMES)
def test_every_criterion_prunes_modern_torchvision_models(name, model_name):
    model, size = _modern(model_name)
    snap = snapshot(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, 4, (4,), generator=g))]
    options = {}
    try:
        mask = pxprune.prune(model, name, batches, sparsity=0.5, rounds=2, seed=0)
    except DegenerateScoresError as e:
        # path criteria do not see squeeze-excitation layers (a coefficient, not a path): the
        # error names them, and pruning the rest is what it tells the user to do
        assert model_name == "mobilenet_v3_small" and name in ("px", "synflow", "synflow_l2"), e
        assert all(".fc" in n for n in e.layers) and e.layers
        options = {"exclude": list(e.layers)}
        mask = pxprune.prune(model, name, batches, sparsity=0.5, rounds=2, seed=0, **options)
    assert mask.kept == mask.total - math.floor(round(0.5 * mask.total, 9))
    scores = pxprune.score(model, name, batches, seed=0, **options)
    assert all(torch.isfinite(s).all() for s in scores.values()), name
    assert_unchanged(model, snap)
