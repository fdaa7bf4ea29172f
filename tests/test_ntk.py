"""The empirical NTK: exact against plain autograd loops, the estimate against the exact value."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import TinyCNN, randomize_bn
from pxprune.analysis import NTKResult, ntk_summary
from pxprune.analysis import ntk as ntk_module
from pxprune.masks import Mask


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUIRED = {"dense_trace", "masked_trace", "trace_fraction", "dense_top_eigenvalues",
            "masked_top_eigenvalues", "n_samples", "n_outputs", "n_params_dense",
            "n_params_masked", "method", "probes", "dense_trace_stderr", "masked_trace_stderr"}


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def hand_jacobian(model: nn.Module, x: torch.Tensor, mask=None) -> torch.Tensor:
    """Rows (sample, output), columns the kept trainable coordinates of the masked network:
    one ``torch.autograd.grad`` per output, no torch.func."""
    net = copy.deepcopy(model).eval()
    keep = {}
    with torch.no_grad():
        for name, p in net.named_parameters():
            m = torch.ones_like(p, dtype=torch.bool)
            if mask is not None and name in mask:
                m = mask[name]
            p.mul_(m.to(p.dtype))
            keep[name] = m.reshape(-1)
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = net(x[i:i + 1]).reshape(-1)
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], [p for _, p in params], retain_graph=True)
            kept = [g.reshape(-1)[keep[n]] for (n, _), g in zip(params, grads, strict=True)]
            rows.append(torch.cat(kept))
    return torch.stack(rows).double()


def top_eigs(jac: torch.Tensor, top: int) -> list[float]:
    return torch.linalg.eigvalsh(jac @ jac.T).flip(0)[:top].tolist()


def test_exact_trace_and_spectrum_match_autograd_loops():
    model, x = tiny_mlp(), torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    res = ntk_summary(model, x, top=5)
    jac = hand_jacobian(model, x)
    assert res.method == "exact" and res.probes is None and res.dense_trace_stderr == 0.0
    assert (res.n_samples, res.n_outputs, res.n_params_dense) == (4, 3, 4 * 5 + 5 + 5 * 3 + 3)
    assert res.dense_trace == pytest.approx(float(jac.square().sum()), rel=1e-5)
    assert res.dense_top_eigenvalues == pytest.approx(top_eigs(jac, 5), rel=1e-5, abs=1e-6)
    assert res.dense_top_eigenvalues == sorted(res.dense_top_eigenvalues, reverse=True)
    assert res.masked_trace == res.dense_trace and res.trace_fraction == 1.0


def test_exact_with_more_outputs_than_parameters_uses_the_small_gram():
    model = tiny_mlp()
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))  # NK = 60 > P = 43
    res = ntk_summary(model, x, top=50)
    jac = hand_jacobian(model, x)
    assert res.dense_trace == pytest.approx(float(jac.square().sum()), rel=1e-5)
    assert len(res.dense_top_eigenvalues) == 50
    assert res.dense_top_eigenvalues == pytest.approx(top_eigs(jac, 50), rel=1e-4, abs=1e-5)


def test_masked_ntk_drops_pruned_coordinates():
    model, x = tiny_mlp(), torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    mask = Mask({"0.weight": torch.rand(5, 4, generator=g) < 0.5,
                 "2.weight": torch.rand(3, 5, generator=g) < 0.5})
    res = ntk_summary(model, x, mask, top=4)
    jac = hand_jacobian(model, x, mask)
    pruned = sum(int((~t).sum()) for t in mask.values())
    assert res.n_params_masked == res.n_params_dense - pruned == jac.shape[1]
    assert res.masked_trace == pytest.approx(float(jac.square().sum()), rel=1e-5)
    assert res.masked_top_eigenvalues == pytest.approx(top_eigs(jac, 4), rel=1e-5, abs=1e-6)
    assert res.trace_fraction == pytest.approx(res.masked_trace / res.dense_trace)
    assert res.dense_trace == pytest.approx(float(hand_jacobian(model, x).square().sum()), rel=1e-5)

    ones = {n: torch.ones_like(t) for n, t in mask.items()}
    full = ntk_summary(model, x, ones, top=4)
    assert full.masked_trace == pytest.approx(full.dense_trace, rel=1e-6)
    assert full.masked_top_eigenvalues == pytest.approx(full.dense_top_eigenvalues, rel=1e-6)
    assert full.trace_fraction == pytest.approx(1.0) and full.n_params_masked == full.n_params_dense

    # a model carrying the mask as a parametrization has the masked network as its dense one
    applied = mask.apply(copy.deepcopy(model))
    assert ntk_summary(applied, x, top=4).dense_trace == pytest.approx(res.masked_trace, rel=1e-5)


def test_chunking_over_parameters_samples_and_probes_changes_nothing(monkeypatch):
    model, x = tiny_mlp(), torch.randn(6, 4, generator=torch.Generator().manual_seed(8))
    exact = ntk_summary(model, x, top=5)
    est = ntk_summary(model, x, exact_limit=0, probes=8, top=5)
    monkeypatch.setattr(ntk_module, "_CHUNK_ELEMENTS", 60)  # a group per tensor, 1-sample chunks
    monkeypatch.setattr(ntk_module, "_CHUNK_LANES", 6)  # probes one at a time
    names = [n for n, _ in model.named_parameters()]
    assert ntk_module._groups(dict(model.named_parameters()), 18) == [[n] for n in names]
    chunked = ntk_summary(model, x, top=5)
    assert chunked.dense_trace == pytest.approx(exact.dense_trace, rel=1e-6)
    assert chunked.dense_top_eigenvalues == pytest.approx(exact.dense_top_eigenvalues, rel=1e-5)
    chunked_est = ntk_summary(model, x, exact_limit=0, probes=8, top=5)
    assert chunked_est.dense_trace == pytest.approx(est.dense_trace, rel=1e-6)
    assert chunked_est.dense_trace_stderr == pytest.approx(est.dense_trace_stderr, rel=1e-5)


def cnn_with_bn() -> nn.Module:
    return randomize_bn(TinyCNN(seed=0, bn=True), seed=1)


def test_hutchinson_agrees_with_exact_within_its_error():
    model = cnn_with_bn()
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    mask = {n: torch.rand(m.weight.shape, generator=g) < 0.4
            for n, m in (("c1.weight", model.c1), ("c2.weight", model.c2), ("fc.weight", model.fc))}
    exact = ntk_summary(model, x, mask, top=3)
    est = ntk_summary(model, x, mask, exact_limit=0, probes=64, top=3, seed=0, lanczos_steps=16)
    assert exact.method == "exact" and est.method == "hutchinson" and est.probes == 64
    assert est.lanczos_steps == 16 and est.n_outputs * est.n_samples == 48
    for which in ("dense", "masked"):
        value, se = getattr(est, f"{which}_trace"), getattr(est, f"{which}_trace_stderr")
        truth = getattr(exact, f"{which}_trace")
        assert 0 < se < 0.5 * truth
        assert abs(value - truth) <= 4 * se, (which, value, truth, se)
        eig = getattr(est, f"{which}_top_eigenvalues")
        true_eig = getattr(exact, f"{which}_top_eigenvalues")
        assert eig[0] == pytest.approx(true_eig[0], rel=0.10)
        assert len(eig) == 3 and eig == sorted(eig, reverse=True)
        # each Ritz value lies within its residual of a true eigenvalue (and never above the top)
        residuals = getattr(est, f"{which}_eig_residuals")
        assert eig[0] <= true_eig[0] * (1 + 1e-4) and eig[0] >= true_eig[0] - residuals[0] - 1e-3
    again = ntk_summary(model, x, mask, exact_limit=0, probes=64, top=3, seed=0, lanczos_steps=16)
    assert again == est  # seeded


def test_the_model_is_left_untouched():
    model = cnn_with_bn()
    model.train()
    model.b2.eval()
    model.c1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    mask = {"c2.weight": torch.zeros_like(model.c2.weight, dtype=torch.bool)}
    for limit in (5e8, 0):
        res = ntk_summary(model, x, mask, exact_limit=limit, probes=4, top=2)
        assert res.n_params_dense == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert res.n_params_masked == res.n_params_dense - model.c2.weight.numel()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())


def test_json_dict_is_complete_and_serialisable():
    res = ntk_summary(tiny_mlp(), torch.randn(3, 4), exact_limit=0, probes=8, top=2)
    d = res.to_json_dict()
    assert REQUIRED <= d.keys()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["method"] == "hutchinson" and back["probes"] == 8
    assert isinstance(res, NTKResult)
    with pytest.raises(dataclasses_frozen_error()):
        res.dense_trace = 0.0  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_zero_dense_trace_gives_a_null_fraction():
    model = tiny_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model[0].bias.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    res = ntk_summary(model, torch.randn(2, 4), top=2)  # all gradients vanish at zero weights
    assert res.dense_trace == 0.0
    assert json.loads(json.dumps(res.to_json_dict(), allow_nan=False))["trace_fraction"] is None


def test_bad_inputs_and_masks_are_clear_errors():
    model = tiny_mlp()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="at least one input sample"):
        ntk_summary(model, torch.empty(0, 4))
    with pytest.raises(ValueError, match="does not fit the model"):
        ntk_summary(model, x, {"9.weight": torch.ones(5, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not fit the model"):
        ntk_summary(model, x, {"0.weight": torch.ones(4, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="non-empty"):
        ntk_summary(model, x, {})
    with pytest.raises(TypeError, match="tensor batch"):
        ntk_summary(model, (x, torch.zeros(2)))  # type: ignore[arg-type]
