"""Thresholding, masks, the API contract and its errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import pxprune
from conftest import ResBlockNet, TinyCNN
from pxprune import threshold
from pxprune.criteria import Criterion, NoOptions
from pxprune.criteria.base import CRITERIA
from pxprune.masks import Mask, overlap
from pxprune.selection import canonical_name, prunable_parameters


@dataclasses.dataclass(frozen=True)
class _ConstOptions:
    value: float = 1.0


class _Const(Criterion):
    """Test criterion: every kept weight scores the same (all ties)."""

    name = "test_const"
    Options = _ConstOptions
    default_rounds = 3

    def score(self, ctx, mask):
        return {n: torch.full(p.shape, self.options.value) for n, p in ctx.params.items()}


@pytest.fixture
def const_criterion():
    """The test criterion, registered only while a test that asks for it runs."""
    with CRITERIA.scoped(_Const.name, _Const):
        yield _Const.name


def _expected_counts(m: int, s: float, rounds: int) -> list[int]:
    out, running = [], 0
    final = math.floor(round(s * m, 9))
    for t in range(1, rounds + 1):
        n = final if t == rounds else math.floor(round((1 - (1 - s) ** (t / rounds)) * m, 9))
        running = min(max(running, n), final)
        out.append(running)
    return out


@pytest.mark.parametrize(
    "m,s,rounds", [(100, 0.5, 1), (1000, 0.982, 100), (7, 0.9, 5), (12345, 0.36, 7)]
)
def test_pruned_counts(m, s, rounds):
    counts = threshold.pruned_counts(m, s, rounds)
    assert counts == _expected_counts(m, s, rounds)
    assert counts[-1] == math.floor(round(s * m, 9))
    assert counts == sorted(counts)


def test_density_becomes_sparsity_once():
    assert threshold.resolve_sparsity(None, 0.018) == round(1 - 0.018, 12)
    assert threshold.resolve_sparsity(0.982, None) == 0.982


def test_counting_at_every_round_and_ties_in_order(const_criterion):
    model = TinyCNN(seed=0)
    m = sum(p.numel() for p in model.parameters())
    seen = []
    mask = pxprune.prune(
        model,
        "test_const",
        [torch.randn(2, 1, 4, 4)],
        sparsity=0.7,
        rounds=3,
        progress=lambda t, T, mk: seen.append((t, T, mk.total - mk.kept)),
    )
    assert [n for _, _, n in seen] == _expected_counts(m, 0.7, 3)
    assert [(t, T) for t, T, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    # all scores tie: the earliest weights (parameter order, then flat index) go first
    flat = torch.cat([mask[n].reshape(-1) for n in mask])
    pruned = int((~flat).sum())
    assert not flat[:pruned].any() and flat[pruned:].all()


def test_layerwise_scope_keeps_the_fraction_in_every_layer():
    model = TinyCNN(seed=0)
    mask = pxprune.prune(
        model, "px", [torch.randn(4, 1, 4, 4)], sparsity=0.5, rounds=2, scope="layerwise"
    )
    for n, t in mask.items():
        assert int((~t).sum()) == math.floor(round(0.5 * t.numel(), 9)), n


def test_threshold_prunes_lowest_and_never_grows():
    mask = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([True, True])}
    scores = {"a": torch.tensor([0.5, 0.1, -9.0, 0.3]), "b": torch.tensor([0.2, 0.9])}
    out = threshold.prune_step(scores, mask, 3)
    assert out["a"].tolist() == [True, False, False, True]
    assert out["b"].tolist() == [False, True]
    out2 = threshold.prune_step({"a": torch.ones(4), "b": torch.ones(2)}, out, 3)
    assert out2["a"].tolist() == out["a"].tolist() and out2["b"].tolist() == out["b"].tolist()


def test_scores_are_normalised_float32():
    scores = pxprune.score(TinyCNN(seed=0), "px", [torch.randn(3, 1, 4, 4)])
    assert all(s.dtype == torch.float32 for s in scores.values())
    assert max(float(s.abs().max()) for s in scores.values()) == 1.0


def test_prunable_selection_by_type_with_include_exclude():
    model = ResBlockNet()
    names = list(prunable_parameters(model))
    assert names == ["stem.weight", "a.weight", "b.weight", "fc.weight"]
    assert list(prunable_parameters(model, exclude="fc.*")) == names[:3]
    assert list(prunable_parameters(model, include=["a.weight", "b.*"])) == ["a.weight", "b.weight"]
    with pytest.raises(ValueError, match="matches no prunable"):
        prunable_parameters(model, exclude="bn.weight")
    mask = pxprune.prune(
        model, "px", [torch.randn(2, 3, 8, 8)], sparsity=0.5, rounds=1, exclude="fc.weight"
    )
    assert "fc.weight" not in mask
    assert mask.kept == mask.total - math.floor(round(0.5 * mask.total, 9))


def test_canonical_names():
    assert canonical_name("module.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert canonical_name("_orig_mod.module.fc.weight") == "fc.weight"
    assert canonical_name("conv.parametrizations.weight.original") == "conv.weight"


def test_mask_apply_train_bake_roundtrip(tmp_path):
    model = ResBlockNet(seed=0)
    x = torch.randn(4, 3, 8, 8)
    mask = pxprune.prune(model, "px", [x], sparsity=0.8, rounds=2, seed=3)
    path = tmp_path / "mask.pt"
    mask.save(path)
    loaded = Mask.load(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pxprune.mask"
    assert loaded.metadata["criterion"] == "px" and loaded.metadata["seed"] == 3
    assert loaded.metadata["rounds"] == 2 and loaded.metadata["sparsity"] == 0.8
    assert {"theta0_hash", "split_hash", "versions", "scope", "options"} <= set(loaded.metadata)
    assert all(torch.equal(mask[n], loaded[n]) for n in mask)
    loaded.apply(model)
    with pytest.raises(ValueError, match="already carries"):
        loaded.apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
        opt.step()
    assert all(
        torch.all(
            dict(model.named_parameters())[
                f"{n.rsplit('.', 1)[0]}.parametrizations.weight.original"
            ][~mask[n]]
            == 0
        )
        for n in mask
    )
    loaded.bake(model)
    for n, t in mask.items():
        w = dict(model.named_parameters())[n]
        assert torch.all(w[~t] == 0)
    assert set(dict(model.named_parameters())) >= set(mask)


def test_mask_errors(tmp_path):
    model = ResBlockNet(seed=0)
    bad = Mask({"stem.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not fit"):
        bad.apply(model)
    with pytest.raises(ValueError, match="does not fit"):
        Mask({"nope.weight": torch.ones(1, dtype=torch.bool)}).apply(model)
    corrupt = tmp_path / "mask.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable pxprune mask"):
        Mask.load(corrupt)
    with pytest.raises(FileNotFoundError):
        Mask.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not fit"):
        pxprune.score(
            model,
            "px",
            [torch.randn(2, 3, 8, 8)],
            mask={"stem.weight": torch.ones(2, dtype=torch.bool)},
        )


def test_overlap_and_shuffled():
    model = ResBlockNet(seed=0)
    x = torch.randn(4, 3, 8, 8)
    a = pxprune.prune(model, "px", [x], sparsity=0.8, rounds=2)
    assert overlap(a, a).shared == 1.0 and overlap(a, a).jaccard == 1.0
    s = a.shuffled(seed=1)
    assert all(int(s[n].sum()) == int(a[n].sum()) for n in a)
    assert not all(torch.equal(s[n], a[n]) for n in a)
    assert all(torch.equal(s[n], a.shuffled(seed=1)[n]) for n in a)
    o = overlap(a, s)
    assert 0 <= o.jaccard <= o.shared < 1 and set(o.layers) == set(a)


def test_report_columns_and_macs():
    model = TinyCNN(seed=0)
    mask = pxprune.prune(model, "px", [torch.randn(3, 1, 4, 4)], sparsity=0.5, rounds=2)
    rep = mask.report(model)
    row = rep.rows[0]
    assert row.name == "c1.weight" and row.total == 18 and row.dense_macs == 18 * 16
    assert row.masked_macs == row.kept * 16
    assert rep.rows[-1].dense_macs == 96
    assert 0 < rep.effective_density <= rep.density
    assert "| c1.weight |" in rep.to_markdown()


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
        ({"sparsity": 0.5, "density": 0.5}, ValueError, "exactly one"),
        ({}, ValueError, "exactly one"),
        ({"sparsity": 0.5, "rounds": 0}, ValueError, "rounds"),
        ({"sparsity": 0.5, "scope": "local"}, ValueError, "scope"),
        ({"sparsity": 0.5, "colour": "red"}, TypeError, "options are"),
        ({"sparsity": 0.5, "classifier": "other"}, ValueError, "classifier"),
        ({"sparsity": 0.999999999999}, ValueError, "keeps no weight"),
    ],
)
def test_prune_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pxprune.prune(TinyCNN(), "px", [torch.randn(2, 1, 4, 4)], **kwargs)


def test_data_and_model_errors():
    model = TinyCNN()
    with pytest.raises(ValueError, match="unknown criterion 'pq'.*px"):
        pxprune.prune(model, "pq", [torch.randn(2, 1, 4, 4)], sparsity=0.5)
    with pytest.raises(ValueError, match="no data"):
        pxprune.prune(model, "px", [], sparsity=0.5)
    with pytest.raises(TypeError, match="needs data"):
        pxprune.prune(model, "px", sparsity=0.5)
    with pytest.raises(ValueError, match="do not fit the model"):
        pxprune.prune(model, "px", [torch.randn(2, 3, 8, 8)], sparsity=0.5)
    with pytest.raises(ValueError, match="nothing to prune"):
        pxprune.prune(
            nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "px", [torch.randn(2, 3)], sparsity=0.5
        )
    with pytest.raises(TypeError, match="read once.*list"):
        pxprune.prune(model, "px", (x for x in [torch.randn(2, 1, 4, 4)]), sparsity=0.5)
    with pytest.raises(TypeError, match="batches must be"):
        pxprune.prune(model, "px", 3.0, sparsity=0.5)


def test_list_criteria():
    assert "px" in pxprune.list_criteria()
    assert pxprune.list_criteria() == sorted(pxprune.list_criteria())


def test_criterion_without_options_rejects_any(const_criterion):
    @dataclasses.dataclass(frozen=True)
    class _O(NoOptions):
        pass

    with pytest.raises(TypeError, match="test_const.*options are: value"):
        pxprune.score(TinyCNN(), "test_const", [torch.randn(1, 1, 4, 4)], bogus=1)
