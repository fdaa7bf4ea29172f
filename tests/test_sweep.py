"""``pxprune sweep``: the grid of run folders, skip / resume / re-entry, sweep.json, locks, jobs.

Most tests replace the function that executes one run (``sweep.execute_run``) with a fake that
writes a run-like folder (config.yaml, a progress file, metrics.json) in milliseconds and logs
every call to a file, so calls made in worker processes are counted too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_user_error, cli
from pxprune.experiment import Flags, build_model, load_data, resolve_config
from pxprune.experiment import sweep as sweep_mod
from pxprune.experiment.files import write_json
from pxprune.experiment.sweep import (
    PAPER_SPARSITIES,
    RunLock,
    lock_path,
    make_sweep,
    parse_sparsities,
)
from pxprune.masks import state_hash

GRID = ["--criteria", "px,random", "--sparsities", "0.5,0.9", "--seeds", "0"]
RUNS = ["dense/0/seed0", "px/0.9/seed0", "random/0.9/seed0", "px/0.5/seed0", "random/0.5/seed0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def options(root: Path, *more: str) -> list[str]:
    return ["--set", f"data.root={root}", "data.train_subset=null", "data.per_class=1",
            "train.batch_size=8", *more, "--epochs", "1", "--rounds", "2"]


class FakeRunner:
    """Two fake epochs per run; ``progress.txt`` in the run folder says how far it got, so a
    second call on an interrupted folder continues from there (as last.pt does for real).
    ``crash``: run name -> exception raised after its first epoch (once); ``exit``: run names
    whose worker process dies."""

    def __init__(self, log: Path, crash: dict | None = None, exit: tuple = (),
                 pause: float = 0.0) -> None:
        self.log, self.crash, self.exit, self.pause = log, dict(crash or {}), exit, pause

    def __call__(self, p, *, device=None, observer=None):
        out = Path(p.out)
        name = "/".join(out.parts[-3:])
        lock = lock_path(sweep_mod.SweepRun(out.parts[-3], float(out.parts[-2]),
                                            int(out.parts[-1][4:]), p.config, out))
        pid_file = lock.with_name(lock.name + ".pid")
        holder = pid_file.read_text().strip() if pid_file.is_file() else "none"
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(p.config.to_yaml())
        progress = out / "progress.txt"
        start = int(progress.read_text()) if progress.is_file() else 0
        with open(self.log, "a") as f:
            f.write(json.dumps({"run": name, "start": start, "pid": os.getpid(),
                                "lock": holder, "threads": torch.get_num_threads()}) + "\n")
        if name in self.exit:
            os._exit(3)
        time.sleep(self.pause)
        for epoch in range(start + 1, 3):
            progress.write_text(str(epoch))
            if name in self.crash:
                raise self.crash.pop(name)
        metrics = {"criterion": p.config.prune.criterion, "sparsity": p.config.prune.sparsity,
                   "seed": p.config.seed, "test_acc": 0.5, "prune_seconds": 0.1}
        write_json(out / "metrics.json", metrics)
        return metrics


def calls(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def install(**kw) -> FakeRunner:
        runner = FakeRunner(tmp_path / "calls.jsonl", **kw)
        monkeypatch.setattr(sweep_mod, "execute_run", runner)
        return runner
    return install


# ------------------------------------------------------------------------------ the grid
def test_default_grid_is_the_papers():
    assert parse_sparsities(None) == PAPER_SPARSITIES
    exact = [1 - 0.8 ** (2 * k) for k in range(1, 10)]
    assert [round(s, 4) for s in exact] == pytest.approx(list(PAPER_SPARSITIES), abs=6e-4)
    config = resolve_config("demo")
    sweep = make_sweep(config, "x")
    assert sweep.criteria == ("px", "snip", "grasp", "synflow", "synflow_l2", "ntksap",
                              "magnitude", "random")
    assert sweep.seeds == (0, 1, 2) and sweep.sparsities == PAPER_SPARSITIES
    assert len(sweep.runs()) == 3 * (1 + 8 * 9)


def test_folders_follow_the_labels(tmp_path):
    config = resolve_config("demo")
    sweep = make_sweep(config, tmp_path, seeds="3",
                       criteria="px[bn=train,classifier=signed],px+shuffled,snip+reinit,dense",
                       sparsities="0.982")
    names = [r.name for r in sweep.runs()]
    assert names == ["dense/0/seed3", "px--bn=train--classifier=signed/0.982/seed3",
                     "px+shuffled/0.982/seed3", "snip+reinit/0.982/seed3"]
    runs = {r.name: r for r in sweep.runs()}
    assert runs["px+shuffled/0.982/seed3"].config.prune.shuffle is True
    assert runs["snip+reinit/0.982/seed3"].config.train.reinit is True
    assert runs["dense/0/seed3"].config.prune.sparsity == 0.0
    assert all(r.config.seed == 3 and r.out == tmp_path / r.name for r in sweep.runs())


def test_all_criteria_at_one_seed_share_theta0_split_and_data_order(fmnist):
    base = resolve_config("demo", options(fmnist)[1:5], Flags(rounds=2, epochs=1))
    sweep = make_sweep(base, "x", criteria="px,random,magnitude", sparsities="0.5", seeds="0,1")
    by_seed: dict[int, list] = {}
    for run in sweep.runs():
        by_seed.setdefault(run.seed, []).append(run.config)
    seen = {}
    for seed, configs in by_seed.items():
        data = [load_data(c, train=False, test=False) for c in configs]
        hashes = {state_hash(build_model(c, d.spec)) for c, d in zip(configs, data, strict=True)}
        splits = {tuple(d.split_indices) for d in data}
        assert len(hashes) == 1 and len(splits) == 1
        # everything but the pruning section (criterion, sparsity) is the same: data order too
        rest = [{k: v for k, v in c.to_dict().items() if k != "prune"} for c in configs]
        assert all(r == rest[0] for r in rest)
        seen[seed] = hashes.pop()
    assert seen[0] != seen[1]


# ------------------------------------------------------------------------------ skip / resume
def test_crash_mid_grid_then_reentry_repeats_nothing(fmnist, tmp_path, capsys, fake):
    out = tmp_path / "sweep"
    fake(crash={"random/0.9/seed0": KeyboardInterrupt()})
    code, _, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out)
    assert code == 130, err
    first = calls(tmp_path / "calls.jsonl")
    assert [c["run"] for c in first] == RUNS[:3]
    assert not (out / "random/0.9/seed0/metrics.json").exists()
    assert (out / "random/0.9/seed0/progress.txt").read_text() == "1"
    for path in (out / ".locks").rglob("*.lock"):  # every lock released on the way out
        lock = RunLock(path)
        assert lock.acquire(), path
        lock.release()
    assert not list((out / ".locks").rglob("*.pid"))

    code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out)
    assert code == 0, err
    again = calls(tmp_path / "calls.jsonl")[len(first):]
    # finished runs are not repeated; the interrupted one continues after its first epoch
    assert [(c["run"], c["start"]) for c in again] == [
        ("random/0.9/seed0", 1), ("px/0.5/seed0", 0), ("random/0.5/seed0", 0)]
    assert all((out / name / "metrics.json").is_file() for name in RUNS)
    assert "| 5 | 2 | 3 | 0 | 0 |" in stdout

    code, stdout, _ = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")
    assert code == 0 and "| 5 | 5 | 0 | 0 | 0 |" in stdout
    assert len(calls(tmp_path / "calls.jsonl")) == len(first) + len(again)


def test_a_failed_run_is_reported_and_the_others_go_on(fmnist, tmp_path, capsys, fake):
    out = tmp_path / "sweep"
    fake(crash={"px/0.5/seed0": RuntimeError("boom")})
    code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")
    assert code == 1
    assert "px/0.5/seed0: RuntimeError: boom" in err and "1 run(s) failed" in err
    assert "| 5 | 0 | 4 | 1 | 0 |" in stdout
    assert "RuntimeError: boom" in (out / "sweep_failures.log").read_text()
    assert "Traceback" in (out / "sweep_failures.log").read_text()
    assert [n for n in RUNS if (out / n / "metrics.json").is_file()] == [
        n for n in RUNS if n != "px/0.5/seed0"]
    code, _, _ = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")
    assert code == 0
    assert [c["run"] for c in calls(tmp_path / "calls.jsonl")][5:] == ["px/0.5/seed0"]


# ------------------------------------------------------------------------------ sweep.json
def test_sweep_json_records_the_grid_and_options(fmnist, tmp_path, capsys, fake):
    fake()
    out = tmp_path / "sweep"
    assert cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")[0] == 0
    data = json.loads((out / "sweep.json").read_text())
    assert data["criteria"] == ["px", "random"] and data["sparsities"] == [0.5, 0.9]
    assert data["seeds"] == [0] and data["dense"] is True
    assert data["run_options"]["rounds"] == 2 and data["run_options"]["epochs"] == 1
    assert data["config"]["data"]["root"] == str(fmnist)
    assert "criterion" not in data["config"]["prune"] and "seed" not in data["config"]
    config = yaml.safe_load((out / "px/0.9/seed0/config.yaml").read_text())
    assert config["prune"]["sparsity"] == 0.9 and config["prune"]["rounds"] == 2


@pytest.mark.parametrize("change, words", [
    (["--criteria", "px,snip"], ["different sweep", "criteria"]),
    (["--sparsities", "0.5"], ["different sweep", "sparsities"]),
    (["--seeds", "0,1"], ["different sweep", "seeds"]),
    (["--epochs", "2"], ["different sweep", "train.epochs"]),
    (["--set", "train.lr=0.5"], ["different sweep", "train.lr"]),
])
def test_a_folder_holding_another_sweep_is_refused(fmnist, tmp_path, capsys, fake, change,
                                                   words):
    fake()
    out = tmp_path / "sweep"
    assert cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")[0] == 0
    before = (out / "sweep.json").read_bytes()
    # a flag given again: argparse keeps the last one
    code, _, err = cli(capsys, "sweep", *GRID, *options(fmnist), *change, "--out", out)
    assert_user_error(code, err, *words)
    assert (out / "sweep.json").read_bytes() == before
    assert len(calls(tmp_path / "calls.jsonl")) == len(RUNS)


def test_the_same_sweep_in_another_order_or_spelling_is_accepted(fmnist, tmp_path, capsys,
                                                                 fake):
    fake()
    out = tmp_path / "sweep"
    assert cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")[0] == 0
    code, _, err = cli(capsys, "sweep", "--criteria", "random,px[classifier=path]",
                       "--sparsities", "0.90,0.5", "--seeds", "0", *options(fmnist),
                       "--out", out, "--quiet", "--jobs", "3")
    assert code == 0, err
    assert len(calls(tmp_path / "calls.jsonl")) == len(RUNS)


@pytest.mark.parametrize("argv, words", [
    (["--sparsities", "0"], ["not in (0, 1)", "dense"]),
    (["--sparsities", "1.5"], ["not in (0, 1)"]),
    (["--sparsities", "0.5,abc"], ["bad sparsity 'abc'"]),
    (["--sparsities", "0.5,0.50"], ["twice"]),
    (["--seeds", "0,-1"], ["negative"]),
    (["--seeds", "x"], ["bad seed"]),
    (["--criteria", "px,nosuch"], ["unknown criterion 'nosuch'"]),
    (["--criteria", "px[nosuch=1]"], ["nosuch"]),
    (["--criteria", "dense"], ["no criterion to prune with"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--density", "0.1"], ["--density"]),
])
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, capsys, fake, argv, words):
    fake()
    out = tmp_path / "sweep"
    code, _, err = cli(capsys, "sweep", "--out", out, *argv)
    assert_user_error(code, err, *words)
    assert not out.exists()


def test_folders_that_are_not_this_sweep_are_never_touched(fmnist, tmp_path, capsys, fake):
    fake()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", other)
    assert_user_error(code, err, "holds no sweep.json")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    out = tmp_path / "sweep"
    assert cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")[0] == 0
    (out / "px/0.9/seed0/metrics.json").unlink()
    config = out / "px/0.9/seed0/config.yaml"
    config.write_text(config.read_text().replace("lr: 0.1", "lr: 0.7"))
    code, _, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out)
    assert_user_error(code, err, "px/0.9/seed0 holds a different run", "train.lr")
    assert len(calls(tmp_path / "calls.jsonl")) == len(RUNS)


# ------------------------------------------------------------------------------ locks and jobs
def test_run_lock_is_exclusive_and_outlives_no_process(tmp_path):
    path = tmp_path / "a" / "seed0.lock"
    pid = path.with_name("seed0.lock.pid")
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    assert pid.read_text().strip() == str(os.getpid())
    assert not second.acquire() and second.holder == str(os.getpid())
    first.release()
    assert not pid.exists()
    assert second.acquire()
    second.release()
    # files left by a process that died (the OS dropped its lock) are taken over
    path.write_text("")
    pid.write_text("999999999\n")
    with RunLock(path) as third:
        assert third.holder == str(os.getpid()) and pid.read_text().strip() == str(os.getpid())
    assert not pid.exists()
    assert RunLock(path).acquire()


def test_jobs_run_every_run_once_in_workers_under_their_locks(fmnist, tmp_path, capsys, fake,
                                                              monkeypatch):
    monkeypatch.setattr(sweep_mod, "START_METHOD", "fork")
    fake(pause=0.05)
    out = tmp_path / "sweep"
    # a lock left by a dead process is reclaimed; one held by a live process is respected
    stale = out / ".locks" / "px" / "0.5" / "seed0.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    stale.with_name("seed0.lock.pid").write_text("999999999\n")
    held = RunLock(out / ".locks" / "random" / "0.9" / "seed0.lock")
    assert held.acquire()
    try:
        code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out,
                                "--jobs", "2", "--no-wait")
    finally:
        held.release()
    assert code == 1, err
    assert "random/0.9/seed0" in err and f"pid {os.getpid()}" in err
    assert "| 5 | 0 | 4 | 0 | 1 |" in stdout
    done = calls(tmp_path / "calls.jsonl")
    assert sorted(c["run"] for c in done) == sorted(n for n in RUNS if n != "random/0.9/seed0")
    assert all(c["pid"] != os.getpid() and c["lock"] == str(c["pid"]) for c in done)
    assert {c["threads"] for c in done} == {max(1, sweep_mod.cpu_cores() // 2)}
    assert len({c["pid"] for c in done}) <= 2

    code, _, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--jobs", "2",
                       "--quiet")
    assert code == 0, err
    assert [c["run"] for c in calls(tmp_path / "calls.jsonl")][4:] == ["random/0.9/seed0"]


def test_a_worker_that_dies_fails_its_run_only(fmnist, tmp_path, capsys, fake, monkeypatch):
    monkeypatch.setattr(sweep_mod, "START_METHOD", "fork")
    fake(exit=("px/0.5/seed0",))
    out = tmp_path / "sweep"
    code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--jobs",
                            "2", "--quiet")
    assert code == 1
    assert "px/0.5/seed0: its worker process died (exit code 3)" in err
    assert "| 5 | 0 | 4 | 1 | 0 |" in stdout
    assert [n for n in RUNS if (out / n / "metrics.json").is_file()] == [
        n for n in RUNS if n != "px/0.5/seed0"]


# ------------------------------------------------------------------------------ real runs
@pytest.mark.slow
def test_tiny_real_sweep_end_to_end(fmnist, tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--criteria", "px,random", "--sparsities", "0.9", "--seeds", "0"]
    code, stdout, err = cli(capsys, "sweep", *grid, *options(fmnist), "--out", out, "--quiet")
    assert code == 0, err
    runs = ["dense/0/seed0", "px/0.9/seed0", "random/0.9/seed0"]
    metrics = {n: json.loads((out / n / "metrics.json").read_text()) for n in runs}
    assert metrics["px/0.9/seed0"]["criterion"] == "px"
    assert metrics["px/0.9/seed0"]["density"] == pytest.approx(0.1, abs=1e-3)
    assert metrics["dense/0/seed0"]["density"] == 1.0
    # one theta_0 and one pruning split per seed, whatever the criterion
    inits = [torch.load(out / n / "init.pt", weights_only=True)["state_dict"] for n in runs]
    for other in inits[1:]:
        assert other.keys() == inits[0].keys()
        assert all(torch.equal(other[k], inits[0][k]) for k in other)
    splits = {(out / n / "split.json").read_text() for n in runs}
    assert len(splits) == 1

    stamps = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in runs}
    code, stdout, _ = cli(capsys, "sweep", *grid, *options(fmnist), "--out", out, "--quiet")
    assert code == 0 and "| 3 | 3 | 0 | 0 | 0 |" in stdout
    assert stamps == {n: (out / n / "metrics.json").stat().st_mtime_ns for n in runs}

    code, stdout, err = cli(capsys, "report", out, "--quiet")
    assert code == 0, err
    assert "All runs of the grid are finished." in stdout
    assert (out / "report" / "report.md").is_file()


def test_order_drops_sparsities_before_seeds():
    config = resolve_config("demo")
    sweep = make_sweep(config, "x", seeds="0,1", criteria="px,random", sparsities="0.5,0.9")
    assert [r.name for r in sweep.runs()] == [
        "dense/0/seed0", "dense/0/seed1",
        "px/0.9/seed0", "random/0.9/seed0", "px/0.9/seed1", "random/0.9/seed1",
        "px/0.5/seed0", "random/0.5/seed0", "px/0.5/seed1", "random/0.5/seed1",
    ]
