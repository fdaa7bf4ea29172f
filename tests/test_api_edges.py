"""The edges of the API as researchers meet them: a report that states coverage, token-id inputs,
masks on models still pruned by torch.nn.utils.prune, output= out of range, and where the CLI
found its data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import pxprune
from conftest import cli
from pxprune.masks import Mask
from pxprune.report import mask_coverage
from test_api_forms import LSTMNet

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the report's coverage
def test_a_report_states_what_the_mask_covers(tmp_path):
    model = LSTMNet()
    mask = pxprune.prune(model, "px", [torch.randn(6, 7, 4)], sparsity=0.5, rounds=1)
    report = mask.report(model)
    cov = report.coverage
    assert cov.as_dict() == mask.metadata["coverage"]  # prune's words, from the model
    assert cov.prunable == 16 * 3
    assert cov.total == sum(p.numel() for p in model.parameters())
    assert cov.not_covered["lstm.weight_hh_l0"] == (16 * 64, "px cannot score recurrent weights")
    text = report.to_markdown()
    assert text.splitlines()[-1] == f"Coverage: {cov.summary()}"
    assert "not covered: lstm.weight_hh_l0 1,024 (px cannot score recurrent weights)" in text
    # a mask read from a file: the coverage is measured on the model the report is given
    mask.save(tmp_path / "mask.pt")
    assert Mask.load(tmp_path / "mask.pt").report(model).coverage == cov
    # a mask made elsewhere: what it leaves out is said to be not in it
    bare = Mask({"head.weight": mask["head.weight"]}).report(model, (7, 4)).coverage
    assert bare.prunable == cov.prunable
    assert bare.not_covered["lstm.weight_ih_l0"] == (4 * 64, "not in the mask")
    # snip covers the LSTM: nothing is left out
    snip = pxprune.prune(model, "snip", [(torch.randn(6, 7, 4), torch.randint(0, 3, (6,)))],
                         sparsity=0.5)
    assert snip.report(model).coverage.not_covered == {}


# ----------------------------------------------------------------------------- token ids
class BagOfWords(nn.Module):
    def __init__(self, lstm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True) if lstm else None
        self.fc = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids)
        h = self.lstm(h)[0] if self.lstm is not None else h
        return self.fc(h.mean(1))


def _ids(dtype=torch.int64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 20, (12, 5), generator=g).to(dtype), torch.randint(0, 3, (12,), generator=g)


@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_token_ids_are_scored_by_the_criteria_that_run_the_model(criterion, lstm):
    model = BagOfWords(lstm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, y = _ids()
    mask = pxprune.prune(model, criterion, [(ids, y)], sparsity=0.5)
    assert {"emb.weight", "fc.weight"} <= set(mask)
    assert mask.kept == mask.total // 2
    assert mask.metadata["coverage"]["not_covered"] == {}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="nn.Embedding fed token ids.*mask_coverage"):
        mask.report(model)  # its reachability pass cannot feed token ids
    assert mask_coverage(model, mask).as_dict() == mask.metadata["coverage"]
    scores = pxprune.score(model, criterion, [(ids.int(), y)])  # int32 ids too
    assert all(torch.isfinite(t).all() for t in scores.values())


@pytest.mark.parametrize("criterion", ["px", "synflow"])
def test_criteria_that_feed_their_own_inputs_refuse_token_ids_naming_the_fix(criterion):
    ids, y = _ids()
    with pytest.raises(ValueError, match=rf"^{criterion} cannot score a model fed token ids.*snip.*"
                                         "layers after the embedding") as err:
        pxprune.prune(BagOfWords(), criterion, [(ids, y)], sparsity=0.5)
    assert "\n" not in str(err.value)


def test_integer_inputs_stay_refused_where_they_are_not_token_ids():
    ids, y = _ids()
    with pytest.raises(TypeError, match=r"uint8.*x\.long\(\)"):  # an embedding takes int64/int32
        pxprune.score(BagOfWords(), "snip", [(ids.to(torch.uint8), y)])
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 16, 3))
    with pytest.raises(TypeError, match=r"int64.*x\.float\(\) / 255"):  # no embedding: images
        pxprune.score(cnn, "snip", [(torch.randint(0, 255, (4, 1, 6, 6)), torch.zeros(4).long())])


# ----------------------------------------------------------------------------- torch.nn.utils.prune
def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4))


def test_applying_to_a_model_still_pruned_by_torch_prune_names_the_fix():
    mask = pxprune.prune(_cnn(), "magnitude", sparsity=0.5)
    model = _cnn()
    torch_prune.l1_unstructured(model[4], "weight", amount=0.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^4\.weight is still pruned by torch\.nn\.utils\.prune.*"
                                         r"torch\.nn\.utils\.prune\.remove\(module, 'weight'\).*"
                                         r"mask\.to_torch_prune\(model\)"):
        mask.apply(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # nothing half-done
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    torch_prune.remove(model[4], "weight")  # the fix the message names
    mask.apply(model)
    assert torch.equal(model[0].weight != 0, mask["0.weight"])


# ----------------------------------------------------------------------------- output=
class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _cnn()

    def forward(self, x):
        out = self.net(x)
        return out, out * 2


def test_an_output_index_out_of_range_says_how_many_outputs_there_are():
    x = torch.randn(4, 3, 6, 6)
    with pytest.raises(IndexError, match=r"output=5: the model returns 2 outputs.*0 to 1"):
        pxprune.score(TupleOut(), "px", [x], output=5)
    with pytest.raises(IndexError, match="output=-3: the model returns 2 outputs"):
        pxprune.score(TupleOut(), "snip", [(x, torch.zeros(4).long())], output=-3)
    first, last = (pxprune.score(TupleOut(), "px", [x], output=i) for i in (0, -1))
    assert all(torch.allclose(first[n], last[n]) for n in first)  # a scaled output ranks the same
    with pytest.raises(TypeError, match="does not select from a Tensor"):
        pxprune.score(_cnn(), "px", [x], output=1)


# ----------------------------------------------------------------------------- provenance
def test_config_yaml_records_where_the_data_were_found(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "prune", "--set", f"data.root={fmnist}", "data.train_subset=null",
                       "data.per_class=1", "--criterion", "magnitude", "--out", out, "--quiet")
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    found = Path(config["provenance"]["data_found"])
    assert found.is_absolute()
    assert found == (fmnist / "FashionMNIST" / "raw").resolve()
    assert (found / "train-images-idx3-ubyte").is_file()
