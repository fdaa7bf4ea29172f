"""The criterion contract, for every registered criterion (CONTRACTS.md sections 1 and 3)."""

from __future__ import annotations

import math

import pytest
import torch

import pxprune
from conftest import ResBlockNet, assert_unchanged, randomize_bn, snapshot
from pxprune.criteria import CRITERIA

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
def test_default_rounds_and_docstring(name):
    cls = CRITERIA.get(name)
    assert cls.default_rounds >= 1
    doc = (cls.__doc__ or "") + (__import__(cls.__module__, fromlist=["x"]).__doc__ or "")
    assert len(doc) > 200, f"{name} needs a docstring with paper, equation, data, mode and cost"
