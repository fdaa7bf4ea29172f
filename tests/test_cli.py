"""The pxprune command: run folders, reuse and resume rules, user errors (docs/design/CONTRACTS.md 5, 6, 8).

Tiny runs: ResNet-20 at 32 px on fake Fashion-MNIST IDX files (20 training, 8 test images),
1 image per class for the pruning split, 2 pruning rounds, 1 epoch.
"""

from __future__ import annotations

import csv
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import pxprune
from conftest import assert_user_error, cli
from pxprune import Mask
from pxprune.cli import main
from pxprune.data.fake import write_fake_fashion_mnist
from pxprune.experiment import METRIC_KEYS, Flags

RUN_FILES = {"config.yaml", "init.pt", "split.json", "mask.pt", "prune_history.csv",
             "layers.csv", "history.csv", "last.pt", "metrics.json"}
PRUNE_FILES = {"config.yaml", "init.pt", "split.json", "mask.pt", "prune_history.csv",
               "layers.csv"}
WALL_TIMES = ("prune_seconds", "train_seconds")


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def tiny(root: Path, *more: str, epochs: int = 1, rounds: int | None = 2) -> list[str]:
    """Options of a tiny run (``rounds=None`` for ``train``, which takes no --rounds)."""
    return ["--set", f"data.root={root}", "data.train_subset=null", "data.per_class=1",
            "train.batch_size=8", *more, "--epochs", str(epochs),
            *(["--rounds", str(rounds)] if rounds is not None else [])]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())
            if p.is_file()}


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def same_metrics(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in WALL_TIMES} == \
        {k: v for k, v in b.items() if k not in WALL_TIMES}


@pytest.fixture(scope="module")
def finished(fmnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "px"
    assert main(["run", *tiny(fmnist), "--out", str(out), "--quiet"]) == 0
    return out


# ------------------------------------------------------------------------------ the run folder
def test_run_writes_exactly_the_run_folder(finished, fmnist):
    expected = RUN_FILES | ({"tb"} if _has_tensorboard() else set())
    assert {p.name for p in finished.iterdir()} == expected
    m = metrics(finished)
    assert tuple(m) == METRIC_KEYS
    assert m["criterion"] == "px" and m["criterion_options"] == {}
    assert m["density"] == pytest.approx(0.018, abs=1e-4)
    assert m["sparsity"] == pytest.approx(1 - m["density"])
    assert 0.0 <= m["test_acc"] <= 1.0 and m["test_acc5"] is None
    assert m["epochs"] == 1 and m["seed"] == 0
    assert 0.0 < m["effective_density"] <= m["density"]
    assert 0.0 < m["flops_fraction"] < 1.0
    assert isinstance(m["empty_layers"], list) and m["versions"]["pxprune"] == pxprune.__version__

    with open(finished / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                             "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1]
    assert float(rows[0]["test_acc"]) == m["test_acc"]

    mask = Mask.load(finished / "mask.pt")
    with open(finished / "prune_history.csv") as f:
        history = list(csv.reader(f))
    assert history[0] == ["round", *mask]
    assert [int(r[0]) for r in history[1:]] == [0, 1, 2]
    assert [int(v) for v in history[-1][1:]] == [int(t.sum()) for t in mask.values()]
    with open(finished / "layers.csv") as f:
        layers = list(csv.DictReader(f))
    assert [r["name"] for r in layers] == list(mask)
    assert sum(int(r["kept"]) for r in layers) == mask.kept

    split = json.loads((finished / "split.json").read_text())
    assert len(split["indices"]) == 10 and len(split["hash"]) == 64
    init = torch.load(finished / "init.pt", weights_only=True)
    assert mask.metadata["theta0_hash"] == init["theta0_hash"]
    config = yaml.safe_load((finished / "config.yaml").read_text())
    assert config["prune"]["rounds"] == 2 and config["data"]["root"] == str(fmnist)
    last = torch.load(finished / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    for key in ("model", "optimizer", "scheduler", "scaler", "rng"):
        assert key in last
    pruned = ~mask["layer1.0.conv1.weight"]
    assert torch.equal(last["model"]["layer1.0.conv1.weight"][pruned],
                       torch.zeros(int(pruned.sum())))


def test_a_finished_run_is_printed_not_redone(finished, fmnist, capsys):
    before = snapshot(finished)
    code, out, err = cli(capsys, "run", *tiny(fmnist), "--out", finished)
    assert code == 0
    assert "already finished" in err
    assert f"{metrics(finished)['test_acc']:.4f}" in out
    assert snapshot(finished) == before


def test_eval_reports_the_trained_network(finished, capsys):
    code, out, _ = cli(capsys, "eval", "--run", finished, "--quiet")
    assert code == 0
    assert f"{metrics(finished)['test_acc']:.4f}" in out and "| 1 |" in out


# ------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--recipe", "nope"], ["unknown recipe 'nope'", "demo"]),
        (["run", "--set", "model.name=resnet999"], ["unknown model", "resnet20"]),
        (["run", "--set", "data.name=mnist"], ["unknown dataset", "fashion-mnist"]),
        (["run", "--criterion", "nosuch"], ["unknown criterion 'nosuch'", "px"]),
        (["run", "--criterion", "px[nosuch=1]"], ["nosuch", "classifier"]),
        (["run", "--set", "train.epoch=3"], ["unknown configuration key", "train.epochs"]),
        (["run", "--set", "train.epochs=many"], ["train.epochs", "integer"]),
        (["run", "--set", "train.epochs"], ["key=value"]),
        (["run", "--sparsity", "1.5"], ["impossible sparsity"]),
        (["run", "--density", "0"], ["density"]),
        (["run", "--criterion", "dense", "--sparsity", "0.5"], ["dense"]),
        (["run", "--sparsity", "abc"], ["--sparsity"]),
        (["run", "--sparsity", "0.5", "--density", "0.5"], ["not allowed"]),
        (["run", "--bogus"], ["--bogus"]),
        (["frobnicate"], ["frobnicate"]),
        ([], ["required"]),
        (["list", "things"], ["things"]),
        (["train", "--out", "x"], ["--mask"]),
        (["eval", "--run", "/nonexistent/run"], ["no run folder"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *argv)
    assert_user_error(code, err, *words)
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_is_a_user_error(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "--recipe", "cifar10_resnet20", "--set",
                       f"data.root={tmp_path / 'empty'}", "--out", out)
    assert_user_error(code, err, "CIFAR-10 not found", "data.download")
    assert not out.exists()


def test_a_folder_holding_another_run_is_never_overwritten(finished, fmnist, capsys):
    before = snapshot(finished)
    code, _, err = cli(capsys, "run", *tiny(fmnist, epochs=2), "--out", finished)
    assert_user_error(code, err, "holds a different run", "train.epochs")
    code, _, err = cli(capsys, "prune", *tiny(fmnist, "train.lr=0.5"), "--out", finished)
    assert_user_error(code, err, "holds a different run", "train.lr")
    assert snapshot(finished) == before


def test_a_folder_of_other_files_is_never_overwritten(fmnist, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--out", tmp_path)
    assert_user_error(code, err, "no pxprune run")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_corrupt_checkpoint_and_mask_are_user_errors(finished, fmnist, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    (run / "last.pt").write_bytes(b"garbage")
    before = snapshot(run)
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--out", run)
    assert_user_error(code, err, "last.pt", "not a readable pxprune checkpoint")
    (run / "last.pt").unlink()
    (run / "mask.pt").write_bytes(b"garbage")
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--out", run)
    assert_user_error(code, err, "mask.pt")
    code, _, err = cli(capsys, "train", "--mask", run / "mask.pt", "--out", tmp_path / "t",
                       *tiny(fmnist, rounds=None))
    assert_user_error(code, err, "mask.pt")
    assert not (tmp_path / "t").exists()
    assert snapshot(run) == {k: v for k, v in before.items() if k != "last.pt"} | {
        "mask.pt": snapshot(run)["mask.pt"]}


def test_mismatched_mask_is_refused(finished, fmnist, tmp_path, capsys):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(finished / "mask.pt", lone / "mask.pt")
    # no init.pt beside it: theta_0 is rebuilt from the model and seed, and must match
    code, _, err = cli(capsys, "train", "--mask", lone / "mask.pt", "--seed", "1",
                       "--out", tmp_path / "t", *tiny(fmnist, rounds=None))
    assert_user_error(code, err, "theta_0")
    code, _, err = cli(capsys, "train", "--mask", lone / "mask.pt", "--out", tmp_path / "t",
                       *tiny(fmnist, "model.name=vgg16_bn_cifar", rounds=None))
    assert_user_error(code, err, "does not fit")
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------ prune / train
def test_prune_then_run_reuses_the_mask(fmnist, tmp_path, capsys):
    out = tmp_path / "p"
    code, stdout, _ = cli(capsys, "prune", *tiny(fmnist), "--out", out, "--quiet")
    assert code == 0 and "0.0180" in stdout
    assert {p.name for p in out.iterdir()} == PRUNE_FILES
    mask_bytes = (out / "mask.pt").read_bytes()
    code, _, err = cli(capsys, "prune", *tiny(fmnist), "--out", out)
    assert code == 0 and "already finished" in err
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--out", out)
    assert code == 0 and "reusing its mask.pt" in err
    assert (out / "mask.pt").read_bytes() == mask_bytes
    assert metrics(out)["prune_seconds"] == Mask.load(out / "mask.pt").metadata["prune_seconds"]


def test_train_mask_matches_run(finished, fmnist, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, _ = cli(capsys, "train", "--mask", finished / "mask.pt", "--out", out, "--quiet")
    assert code == 0
    same_metrics(metrics(out), metrics(finished))
    assert (out / "init.pt").is_file() and (out / "prune_history.csv").read_text() == \
        (finished / "prune_history.csv").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["prune"] == \
        yaml.safe_load((finished / "config.yaml").read_text())["prune"]


def test_shuffled_mask_keeps_layer_counts(fmnist, tmp_path, capsys):
    plain, shuffled = tmp_path / "a", tmp_path / "b"
    assert cli(capsys, "prune", *tiny(fmnist), "--out", plain, "--quiet")[0] == 0
    assert cli(capsys, "prune", *tiny(fmnist), "--criterion", "px+shuffled", "--out", shuffled,
               "--quiet")[0] == 0
    a, b = Mask.load(plain / "mask.pt"), Mask.load(shuffled / "mask.pt")
    assert [int(t.sum()) for t in a.values()] == [int(t.sum()) for t in b.values()]
    assert any(not torch.equal(a[n], b[n]) for n in a)
    assert yaml.safe_load((shuffled / "config.yaml").read_text())["prune"]["shuffle"] is True


def test_default_folder_names_follow_the_criterion_spec(fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli(capsys, "prune", *tiny(fmnist, rounds=1), "--criterion",
                          "px[classifier=signed,dtype=float32]", "--density", "0.5", "--quiet")
    assert code == 0
    out = Path("runs/demo/px--classifier=signed/0.5/seed0")
    assert (out / "mask.pt").is_file() and str(out) in stdout
    code, stdout, _ = cli(capsys, "prune", *tiny(fmnist), "--criterion", "dense", "--quiet")
    assert code == 0 and Path("runs/demo/dense/0/seed0/mask.pt").is_file()
    assert Mask.load("runs/demo/dense/0/seed0/mask.pt").density == 1.0


def test_lottery_keeps_a_checkpoint_per_level_and_trains_its_ticket(fmnist, tmp_path, capsys):
    out = tmp_path / "ticket"
    spec = "lottery[rate=0.5,rewind_step=1]"
    # `pxprune prune` refuses (lottery tickets are found by training); `pxprune run` does it all
    code, _, _ = cli(capsys, "run", *tiny(fmnist), "--criterion", spec, "--sparsity", "0.75",
                     "--out", out, "--quiet")
    assert code == 0
    assert {p.name for p in (out / "lottery").iterdir()} == {
        "level0.pt", "level1.pt", "level2.pt", "rewind.pt"}
    mask = Mask.load(out / "mask.pt")
    assert mask.metadata["criterion"] == "lottery" and mask.density == pytest.approx(0.25, 1e-3)
    config = yaml.safe_load((out / "config.yaml").read_text())["prune"]
    assert config["options"] == {"rate": 0.5, "rewind_step": 1} and config["rounds"] is None
    with open(out / "prune_history.csv") as f:
        assert [row[0] for row in csv.reader(f)][1:] == ["0", "1", "2"]
    assert metrics(out)["criterion"] == "lottery"
    other = tmp_path / "again"
    code, _, _ = cli(capsys, "train", "--mask", out / "mask.pt", "--out", other, "--quiet")
    assert code == 0
    same_metrics(metrics(other), metrics(out))
    (other / "lottery" / "rewind.pt").unlink()
    (other / "metrics.json").unlink()
    (other / "last.pt").unlink()
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--criterion", spec, "--sparsity", "0.75",
                       "--out", other)
    assert_user_error(code, err, "rewind")


# ------------------------------------------------------------------------------ output
def test_quiet_means_no_bars(fmnist, tmp_path, capsys):
    code, _, err = cli(capsys, "run", *tiny(fmnist, "train.reinit=true"), "--out",
                       tmp_path / "q", "--quiet")
    assert code == 0 and err == ""
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--criterion", "dense", "--out",
                       tmp_path / "d")
    assert code == 0 and "epoch 1/1" in err
    assert metrics(tmp_path / "d")["density"] == 1.0


def test_list(capsys):
    code, out, _ = cli(capsys, "list", "criteria")
    assert code == 0 and set(pxprune.list_criteria()) <= set(out.split())
    assert "dense" in out and "lottery" in out
    for what, name in (("models", "resnet20"), ("datasets", "fashion-mnist"),
                       ("recipes", "cifar10_resnet20"), ("tasks", "classification")):
        code, out, _ = cli(capsys, "list", what)
        assert code == 0 and name in out


def test_a_model_for_another_task_is_a_clear_error(capsys, monkeypatch, fmnist, tmp_path):
    from pxprune.models import factory

    info = factory.ModelInfo("resnet20", (3, 32, 32), "cifar_resnet", tasks=("segmentation",))
    entry = factory._Entry(info=info, builder=factory._MODELS.get("resnet20").builder)
    monkeypatch.setitem(factory._MODELS._items, "resnet20", entry)
    code, _, err = cli(capsys, "run", *tiny(fmnist), "--out", tmp_path / "x")
    assert_user_error(code, err, "segmentation", "classification", "pxprune list models")


def test_python_dash_m_is_the_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pxprune", "run", "--recipe", "nope"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("pxprune", run_name="__main__", alter_sys=True)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pxprune: error: unknown recipe 'nope'") and err.count("\n") == 1


@pytest.mark.slow
def test_python_dash_m_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-m", "pxprune", "run", "--recipe", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("pxprune: error: unknown recipe 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ the demo
def test_demo_runs_reuses_and_prints_one_table(fmnist, tmp_path, capsys):
    criteria = ["px", *(["random"] if "random" in pxprune.list_criteria() else []), "dense"]
    args = ["demo", "--out", tmp_path / "demo", "--criteria", ",".join(criteria), "--quiet",
            *tiny(fmnist)]
    code, out, err = cli(capsys, *args)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].startswith("| run | test_acc | density | prune_s | train_s |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == criteria
    for name in criteria:
        assert (tmp_path / "demo" / name / "metrics.json").is_file()
    assert metrics(tmp_path / "demo" / "dense")["density"] == 1.0
    before = snapshot(tmp_path / "demo" / "px")
    code, again, _ = cli(capsys, *args)
    assert code == 0 and again == out
    assert snapshot(tmp_path / "demo" / "px") == before


def test_demo_names_an_unregistered_criterion(tmp_path, capsys):
    code, _, err = cli(capsys, "demo", "--out", tmp_path / "d", "--criteria", "px,nosuch")
    assert_user_error(code, err, "unknown criterion 'nosuch'")
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------ resume
def test_interrupted_run_resumes_to_the_same_metrics(fmnist, finished, tmp_path, capsys):
    """In-process stand-in for the SIGKILL test below: stop right after epoch 1's checkpoint."""
    from pxprune.experiment import Observer, execute, plan, resolve_config

    class Crash(Observer):
        def epoch_end(self, row):
            raise KeyboardInterrupt

    args = tiny(fmnist, epochs=2)
    reference = tmp_path / "ref"
    assert main(["run", *args, "--out", str(reference), "--quiet"]) == 0
    out = tmp_path / "stopped"
    sets = args[1:args.index("--epochs")]
    config = resolve_config("demo", sets, Flags(rounds=2, epochs=2))
    with pytest.raises(KeyboardInterrupt):
        execute(plan(config, out), observer=Crash())
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not (out / "metrics.json").exists()
    with open(out / "history.csv", "a") as f:  # a row written after the checkpoint is dropped
        f.write("2,0.05,9,9,9,9,9\n")
    code, _, err = cli(capsys, "run", *args, "--out", out)
    assert code == 0 and "resuming after epoch 1" in err
    same_metrics(metrics(out), metrics(reference))
    assert (out / "history.csv").read_text().count("\n") == 3


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path, capsys):
    root = tmp_path / "data"
    write_fake_fashion_mnist(root, n_train=40, n_test=8)
    args = tiny(root, epochs=3)
    reference = tmp_path / "ref"
    assert main(["run", *args, "--out", str(reference), "--quiet"]) == 0

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pxprune", "run", *args, "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "metrics.json").exists()
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 3
    code, _, err = cli(capsys, "run", *args, "--out", out)
    assert code == 0 and f"resuming after epoch {epoch}" in err
    same_metrics(metrics(out), metrics(reference))
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    with open(reference / "history.csv") as f:
        ref_rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(ref_rows)


def test_prune_refuses_lottery_with_the_command_that_trains(capsys, fmnist, tmp_path):
    code, _, err = cli(capsys, "prune", *tiny(fmnist), "--criterion", "lottery", "--out",
                       tmp_path / "lt")
    assert code == 2 and "pxprune run --criterion lottery" in err
    assert not (tmp_path / "lt").exists()
