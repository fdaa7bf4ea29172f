"""``pxprune ntk``: the NTK of a run folder's network at initialisation, written to ntk.json.

The run folder is a tiny real one (``pxprune run``: ResNet-20 on fake Fashion-MNIST, one image
per class for the pruning split, 2 rounds, 1 epoch); the NTK uses 2 or 3 of its split's images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error, cli
from pxprune.analysis import ntk_summary
from pxprune.cli import main
from pxprune.data import create_dataset, get_spec
from pxprune.experiment import build_model, read_config
from pxprune.experiment.folder import load_weights as load_init
from pxprune.experiment.ntk import balanced
from pxprune.masks import Mask

REQUIRED = {"dense_trace", "masked_trace", "trace_fraction", "dense_top_eigenvalues",
            "masked_top_eigenvalues", "n_samples", "n_outputs", "method"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(root: Path) -> list[str]:
    return ["--set", f"data.root={root}", "data.train_subset=null", "data.per_class=1",
            "train.batch_size=8"]


@pytest.fixture(scope="module")
def run_dir(fmnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "px"
    assert main(["run", *tiny(fmnist), "--epochs", "1", "--rounds", "2", "--out", str(out),
                 "--quiet"]) == 0
    return out


def test_balanced_takes_classes_round_robin():
    indices = [3, 5, 8, 10, 11, 20]
    labels = [0, 0, 1, 1, 2, 0]
    assert balanced(indices, labels, 3) == [3, 8, 11]
    assert balanced(indices, labels, 4) == [3, 5, 8, 11]
    assert balanced(indices, labels, 100) == indices


def test_ntk_of_a_run_folder(run_dir, fmnist, capsys):
    code, out, err = cli(capsys, "ntk", "--run", run_dir, "--samples", "3")
    assert code == 0, err
    result = json.loads((run_dir / "ntk.json").read_text())
    assert REQUIRED <= set(result)
    assert result["n_samples"] == 3 and result["n_outputs"] == 10
    assert result["method"] == "exact" and result["probes"] is None
    assert len(result["dense_top_eigenvalues"]) == 10
    assert 0.0 < result["trace_fraction"] < 1.0
    assert result["masked_trace"] == pytest.approx(result["trace_fraction"]
                                                   * result["dense_trace"])
    assert result["criterion"] == "px" and result["seed"] == 0
    assert result["density"] == pytest.approx(0.018, abs=1e-4)
    assert f"{result['trace_fraction']:.4g}" in out and "| eigenvalue |" in out
    assert not list(run_dir.glob(".ntk.json.*"))

    # the same numbers from theta_0, the mask and 4 class-balanced images of the split
    config = read_config(run_dir)
    split = json.loads((run_dir / "split.json").read_text())["indices"]
    full = create_dataset("fashion-mnist", root=str(fmnist), train=True, augment=False)
    chosen = balanced(split, [full[i][1] for i in split], 3)
    inputs = torch.stack([full[i][0] for i in chosen])
    model = build_model(config, get_spec("fashion-mnist"))
    load_init(run_dir / "init.pt", model)
    expected = ntk_summary(model, inputs, Mask.load(run_dir / "mask.pt"))
    assert result["dense_trace"] == pytest.approx(expected.dense_trace, rel=1e-9)
    assert result["masked_trace"] == pytest.approx(expected.masked_trace, rel=1e-9)


def test_json_option_and_the_mask_form(run_dir, fmnist, tmp_path, capsys):
    target = tmp_path / "sub" / "n.json"
    code, _, err = cli(capsys, "ntk", "--run", run_dir, "--samples", "2", "--json", target,
                       "--quiet", "--top", "3")
    assert code == 0, err
    by_run = json.loads(target.read_text())
    assert by_run["n_samples"] == 2 and len(by_run["masked_top_eigenvalues"]) == 3
    # --mask FILE with the recipe's options: theta_0 from the init.pt beside it, the split of
    # the mask's seed
    code, out, err = cli(capsys, "ntk", "--mask", run_dir / "mask.pt", *tiny(fmnist),
                         "--samples", "2", "--top", "3", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert "| px | exact | 2 | 10 |" in out
    by_mask = json.loads((tmp_path / "m.json").read_text())
    for key in ("dense_trace", "masked_trace", "trace_fraction"):
        assert by_mask[key] == pytest.approx(by_run[key], rel=1e-9)
    # without init.pt beside it, theta_0 is rebuilt from the model and seed and must match
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run_dir / "mask.pt", lone / "mask.pt")
    code, _, err = cli(capsys, "ntk", "--mask", lone / "mask.pt", *tiny(fmnist), "--seed", "1",
                       "--samples", "2")
    assert_user_error(code, err, "theta_0")


def test_a_dense_run_keeps_the_whole_trace(fmnist, tmp_path, capsys):
    out = tmp_path / "dense"
    assert main(["prune", *tiny(fmnist), "--criterion", "dense", "--out", str(out),
                 "--quiet"]) == 0
    code, _, err = cli(capsys, "ntk", "--run", out, "--samples", "2", "--top", "2", "--quiet")
    assert code == 0, err
    result = json.loads((out / "ntk.json").read_text())
    assert result["trace_fraction"] == 1.0 and result["density"] == 1.0
    assert result["masked_top_eigenvalues"] == result["dense_top_eigenvalues"]


def test_errors_are_one_line(run_dir, fmnist, tmp_path, capsys):
    code, _, err = cli(capsys, "ntk", "--run", tmp_path / "nowhere")
    assert_user_error(code, err, "no run folder")
    code, _, err = cli(capsys, "ntk")
    assert_user_error(code, err, "--run DIR")
    code, _, err = cli(capsys, "ntk", "--run", run_dir, "--samples", "0")
    assert_user_error(code, err, "--samples")
    code, _, err = cli(capsys, "ntk", "--run", run_dir, "--seed", "3")
    assert_user_error(code, err, "--run takes")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("ntk.json", "tb"))
    (broken / "mask.pt").unlink()
    code, _, err = cli(capsys, "ntk", "--run", broken)
    assert_user_error(code, err, "mask.pt")
    shutil.copy(run_dir / "mask.pt", broken / "mask.pt")
    (broken / "split.json").write_text("{not json")
    code, _, err = cli(capsys, "ntk", "--run", broken)
    assert_user_error(code, err, "split.json")
    shutil.copy(run_dir / "split.json", broken / "split.json")
    (broken / "init.pt").write_bytes(b"garbage")
    code, _, err = cli(capsys, "ntk", "--run", broken, "--samples", "2")
    assert_user_error(code, err, "init.pt")
    (broken / "config.yaml").unlink()
    code, _, err = cli(capsys, "ntk", "--run", broken)
    assert_user_error(code, err, "not a pxprune run folder")
    assert not (broken / "ntk.json").exists()
