"""The API as researchers use it: data in the forms they have, every weight accounted for,
wrappers and dtypes, and the small things (progress bars, include/exclude, output=)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import pxprune
from pxprune.masks import Mask
from pxprune.selection import prunable_parameters


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4))


def _data(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def _same(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("criterion", ["px", "snip", "grasp"])
def test_every_form_of_data_gives_the_same_scores(criterion):
    model = _cnn()
    x, y = _data()
    base = pxprune.score(model, criterion, [(x, y)])
    ds = TensorDataset(x, y)
    forms = {
        "one (x, y) pair": (x, y),
        "a list of pairs": [(x[:5], y[:5]), (x[5:], y[5:])],
        "a Dataset": ds,
        "a Subset": torch.utils.data.Subset(ds, list(range(12))),
        "a DataLoader": DataLoader(ds, batch_size=5, shuffle=False),
    }
    for label, batches in forms.items():
        assert _same(base, pxprune.score(model, criterion, batches)), label
    assert _same(base, pxprune.score(model, criterion, batches=[(x, y)])), "batches= keyword"
    if criterion == "px":  # no targets needed: a tensor, or a list of tensors
        assert _same(base, pxprune.score(model, "px", x))
        assert _same(base, pxprune.score(model, "px", [x[:7], x[7:]]))


def test_the_pruning_split_helper_is_passed_as_users_will():
    from pxprune.data import FakeImageDataset

    ds = FakeImageDataset(40, (3, 6, 6), 4, seed=0)
    split = pxprune.data.pruning_split(ds, per_class=3, seed=0)
    mask = pxprune.prune(_cnn(), "px", split, sparsity=0.5, rounds=2)
    assert mask.metadata["input_size"] == [3, 6, 6]


class _Augmented(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


def test_data_that_change_between_rounds_are_an_error_naming_the_fix():
    x, y = _data()
    model = _cnn()
    with pytest.raises(ValueError, match="shuffle=False"):
        pxprune.prune(model, "px", DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True),
                      sparsity=0.5)
    with pytest.raises(ValueError, match="augmentation"):
        pxprune.prune(model, "px", _Augmented(x, y), sparsity=0.5)
    with pytest.raises(TypeError, match="read once"):
        pxprune.prune(model, "px", ((x[i : i + 2], y[i : i + 2]) for i in range(0, 12, 2)),
                      sparsity=0.5)


def test_inputs_are_checked_against_the_model_dtype():
    model = _cnn()
    x, _ = _data()
    with pytest.raises(TypeError, match=r"uint8.*x\.float\(\) / 255"):
        pxprune.score(model, "px", [(x * 50).clamp(0, 255).to(torch.uint8)])
    with pytest.raises(TypeError, match="float64.*float32"):
        pxprune.score(model, "snip", [(x.double(), torch.zeros(12, dtype=torch.long))])
    # a float64 model with float64 inputs is fine (SNIP/GraSP too)
    double = _cnn().double()
    for name in ("px", "snip", "grasp"):
        s = pxprune.score(double, name, [(x.double(), torch.zeros(12, dtype=torch.long))])
        assert all(torch.isfinite(t).all() for t in s.values())


# ----------------------------------------------------------------------------- every weight
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 5, bias=False)
        self.b = nn.Linear(5, 5, bias=False)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_shared_tensor_is_one_prunable_weight_through_apply_bake_and_training():
    model = Tied()
    x = torch.randn(8, 5)
    mask = pxprune.prune(model, "px", [x], sparsity=0.5, rounds=3)
    assert set(mask) == {"a.weight", "out.weight"}
    assert mask.kept == mask.total - 17  # 35 prunable weights, not 60
    mask.apply(model)
    assert torch.equal(model.a.weight, model.b.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert torch.equal(model.a.weight, model.b.weight), "one SGD step broke the tie"
    mask.bake(model)
    assert model.a.weight is model.b.weight
    assert int((model.a.weight != 0).sum()) <= int(mask["a.weight"].sum())


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def test_what_a_prune_covers_is_stated(caplog):
    x, y = torch.randn(6, 7, 4), torch.randint(0, 3, (6,))
    with caplog.at_level(logging.WARNING, logger="pxprune"):
        mask = pxprune.prune(LSTMNet(), "snip", [(x, y)], sparsity=0.9)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"} <= set(mask)
    assert mask.metadata["coverage"]["not_covered"] == {}
    with caplog.at_level(logging.WARNING, logger="pxprune"):
        mask = pxprune.prune(LSTMNet(), "px", [x], sparsity=0.5, rounds=1)
    assert set(mask) == {"head.weight"}
    cov = mask.metadata["coverage"]
    assert cov["not_covered"]["lstm.weight_hh_l0"]["why"] == "px cannot score recurrent weights"
    assert "not covered: lstm.weight_hh_l0" in caplog.text
    with pytest.raises(ValueError, match="px cannot score recurrent weights.*magnitude"):
        pxprune.prune(LSTMNet(), "px", [x], sparsity=0.5, include="lstm.*")


def test_attention_projections_are_prunable_and_counted():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    names = set(prunable_parameters(mha))
    assert names == {"in_proj_weight", "out_proj.weight"}
    mask = pxprune.prune(mha, "magnitude", sparsity=0.5)
    assert mask.total == 8 * 24 + 8 * 8


def test_include_and_exclude_take_module_types():
    model = _cnn()
    x, _ = _data()
    s = pxprune.score(model, "px", [x], include=nn.Conv2d)
    assert set(s) == {"0.weight"}
    m = pxprune.prune(model, "magnitude", [x], sparsity=0.5, exclude=[nn.Linear])
    assert set(m) == {"0.weight"}


# ----------------------------------------------------------------------------- wrappers, dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("criterion", ["px", "snip", "synflow", "magnitude"])
def test_half_precision_models_are_scored_in_float32_copies(dtype, criterion):
    half = _cnn().to(dtype)
    exact = _cnn().to(dtype).float()  # the same values, in float32
    x, y = _data()
    a = pxprune.prune(half, criterion, [(x.to(dtype), y)], sparsity=0.6, rounds=2)
    b = pxprune.prune(exact, criterion, [(x.to(dtype).float(), y)], sparsity=0.6, rounds=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert a.metadata["theta0_hash"]  # state_hash reads bfloat16 too


def test_torch_prune_models_are_read_through_and_masks_move_both_ways():
    from torch.nn.utils import prune as torch_prune

    model = _cnn()
    torch_prune.l1_unstructured(model[0], "weight", amount=0.3)
    x, _ = _data()
    mask = pxprune.prune(model, "px", [x], sparsity=0.5, rounds=2)
    assert set(mask) == {"0.weight", "4.weight"}
    back = Mask.from_torch_prune(model)
    assert set(back) == {"0.weight"} and int((~back["0.weight"]).sum()) == 49
    # the weights torch.nn.utils.prune removed score 0 and go first
    assert not (mask["0.weight"] & ~back["0.weight"]).any()
    fresh = _cnn()
    mask.to_torch_prune(fresh)
    assert torch.equal(fresh[0].weight_mask.bool(), mask["0.weight"])
    assert torch.equal(Mask.from_torch_prune(fresh)["4.weight"], mask["4.weight"])


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _cnn()

    def forward(self, x):
        return {"logits": self.net(x), "aux": self.net(x) * 0}


def test_the_scored_output_can_be_selected():
    x, y = _data()
    base = pxprune.score(_cnn(), "snip", [(x, y)])
    assert _same(base, {k.replace("net.", ""): v for k, v in
                        pxprune.score(DictOut(), "snip", [(x, y)]).items()})
    picked = pxprune.score(DictOut(), "px", [x], output="logits")
    assert all(torch.isfinite(t).all() for t in picked.values())
    with pytest.raises(KeyError, match="keys"):
        pxprune.score(DictOut(), "px", [x], output="nope")
    assert pxprune.score(DictOut(), "px", [x], output=lambda o: o["logits"])


# ----------------------------------------------------------------------------- small things
def test_progress_true_shows_a_bar_and_a_function_still_works(capsys):
    x, _ = _data()
    pxprune.prune(_cnn(), "px", [x], sparsity=0.5, rounds=3, progress=True)
    assert "px" in capsys.readouterr().err
    seen = []
    pxprune.prune(_cnn(), "px", [x], sparsity=0.5, rounds=3, progress=lambda t, T, m: seen.append(t))
    assert seen == [1, 2, 3]


def test_one_definition_of_an_empty_layer_and_report_sizes():
    x, _ = _data()
    model = _cnn()
    mask = pxprune.prune(model, "magnitude", [x], sparsity=0.5)
    assert mask.metadata["input_size"] == [3, 6, 6]  # from the batches, though magnitude reads none
    assert mask.report(model).rows  # the size is recorded
    bare = Mask(dict(mask))
    assert bare.report(model, batches=[x]).rows
    cut = {n: t.clone() for n, t in mask.items()}
    cut["0.weight"][:] = False
    m = Mask(cut)
    assert m.empty_layers(model, (3, 6, 6)) == m.report(model, (3, 6, 6)).empty_layers
    assert set(m.empty_layers(model, (3, 6, 6))) == {"0.weight", "4.weight"}  # 4 is cut off
