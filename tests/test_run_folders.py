"""Run folders written by an earlier layout still resume and report (tests/fixtures/runs_v1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pxprune.data.fake import write_fake_fashion_mnist

FIXTURE = Path(__file__).parent / "fixtures" / "runs_v1"
WALL = {"prune_seconds", "train_seconds", "versions"}


@pytest.fixture
def old_runs(tmp_path, monkeypatch) -> Path:
    for name in ("finished", "interrupted"):
        shutil.copytree(FIXTURE / name, tmp_path / name)
    write_fake_fashion_mnist(tmp_path / "fixture_data", n_train=20, n_test=8)
    monkeypatch.chdir(tmp_path)  # config.yaml says data.root: fixture_data (relative)
    return tmp_path


def test_an_interrupted_old_run_resumes_to_the_reference_metrics(old_runs):
    import torch

    from pxprune.experiment import execute, plan
    from pxprune.experiment.run import read_config

    torch.set_num_threads(1)
    out = old_runs / "interrupted"
    p = plan(read_config(out), out)
    assert p.state == "resume"
    metrics = execute(p)
    reference = json.loads((FIXTURE / "reference" / "metrics.json").read_text())
    # Same keys and values; floats to round-off, since the fixture was written on another CPU
    # (vector width changes the order of float32 sums: 2.3324978 here against 2.3324981 there).
    got = {k: v for k, v in metrics.items() if k not in WALL}
    want = {k: v for k, v in reference.items() if k not in WALL}
    # world_size was added to metrics.json after the fixture was written
    assert got.keys() == want.keys() | {"world_size"} and got.pop("world_size") == 1
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        else:
            assert got[k] == v, k


def test_an_old_finished_run_is_finished_and_reports(old_runs, capsys):
    from conftest import cli
    from pxprune.experiment import plan
    from pxprune.experiment.run import read_config

    out = old_runs / "finished"
    assert plan(read_config(out), out).state == "finished"
    sweep = old_runs / "sweep"
    shutil.copytree(out, sweep / "px" / "0.982" / "seed0")
    code, stdout, err = cli(capsys, "report", sweep, "--quiet")
    assert code == 0, err
    acc = json.loads((out / "metrics.json").read_text())["test_acc"]
    rows = (sweep / "report" / "report.csv").read_text()
    assert "px" in rows and f"{100 * acc:.2f}" in (sweep / "report" / "report.md").read_text()
