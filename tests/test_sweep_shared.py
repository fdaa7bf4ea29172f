"""``pxprune sweep`` split across processes sharing one folder, and ``--devices``.

The runs are the fake ones of ``test_sweep`` (``FakeRunner``: a run-like folder in milliseconds,
every call logged to one file, so calls made by every process are counted).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_user_error, cli
from pxprune.experiment import sweep as sweep_mod
from test_sweep import GRID, RUNS, calls, options

pytestmark = pytest.mark.usefixtures("one_thread")

# one `pxprune sweep` process with the fake runner; it starts the sweep when the file `go` appears,
# so that two of them start at the same time whatever their import times
SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_sweep import FakeRunner
from pxprune.cli import main
from pxprune.experiment import sweep as sweep_mod
sweep_mod.execute_run = FakeRunner(Path(sys.argv[2]), pause=0.3)
go = Path(sys.argv[3])
(go.parent / f"ready{sys.argv[4]}").write_text("")
while not go.exists():
    time.sleep(0.01)
sys.exit(main(sys.argv[5:]))
"""


def summary(stdout: str) -> list[int]:
    """runs, finished before, done now, failed, run elsewhere (the first table's row)."""
    row = re.search(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", stdout, re.M)
    assert row, stdout
    return [int(v) for v in row.groups()]


def records(out: Path) -> dict[str, dict]:
    return {"/".join(p.relative_to(out / ".locks").with_suffix("").parts): json.loads(p.read_text())
            for p in (out / ".locks").rglob("*.json")}


def test_two_processes_on_one_folder_run_every_run_once(fmnist, tmp_path):
    out, log, go = tmp_path / "sweep", tmp_path / "calls.jsonl", tmp_path / "go"
    argv = ["sweep", *GRID, *options(fmnist), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, tests, str(log), str(go), str(k),
                               *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for k in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate() for p in procs]
            time.sleep(0.05)
        go.write_text("")
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], results

    done = calls(log)
    assert sorted(c["run"] for c in done) == sorted(RUNS)  # every run executed exactly once
    assert len(list(out.rglob("metrics.json"))) == len(RUNS)
    pids = {p.pid for p in procs}
    ran = records(out)
    assert sorted(ran) == sorted(RUNS)
    for c in done:  # the process that held the lock is the one that executed and recorded it
        assert c["pid"] in pids and c["lock"] == str(c["pid"])
        assert ran[c["run"]]["pid"] == c["pid"] and ran[c["run"]]["status"] == "done"
        assert ran[c["run"]]["device"] == "cpu"

    rows = [summary(stdout) for stdout, _ in results]
    assert sum(r[2] for r in rows) == len(RUNS)  # done now, over both processes
    for (stdout, _), (n, before, here, failed, elsewhere), pid in zip(
            results, rows, [p.pid for p in procs], strict=True):
        assert n == len(RUNS) and failed == 0 and before + here + elsewhere == len(RUNS)
        mine = [c["run"] for c in done if c["pid"] == pid]
        assert here == len(mine)
        # the summary says where each run it did not find finished ran: here, or in the other one
        for run in mine:
            assert re.search(rf"\| {re.escape(run)}\s*\| .*pid {pid} on cpu\s*\|", stdout), stdout
        (other,) = pids - {pid}
        assert len(re.findall(rf"pid {other} on cpu", stdout)) == elsewhere, stdout


def test_devices_cpu_cpu_runs_two_workers_on_the_cpu(fmnist, tmp_path, capsys, monkeypatch):
    from test_sweep import FakeRunner

    monkeypatch.setattr(sweep_mod, "START_METHOD", "fork")
    monkeypatch.setattr(sweep_mod, "execute_run", FakeRunner(tmp_path / "calls.jsonl", pause=0.05))
    out = tmp_path / "sweep"
    code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet",
                            "--devices", "cpu,cpu")
    assert code == 0, err
    assert summary(stdout) == [5, 0, 5, 0, 0]
    done = calls(tmp_path / "calls.jsonl")
    assert sorted(c["run"] for c in done) == sorted(RUNS)
    assert all(c["pid"] != os.getpid() for c in done) and len({c["pid"] for c in done}) <= 2
    assert {c["threads"] for c in done} == {max(1, sweep_mod.cpu_cores() // 2)}
    assert {r["device"] for r in records(out).values()} == {"cpu"}


def test_a_run_finished_by_another_process_meanwhile_counts_as_run_elsewhere(fmnist, tmp_path,
                                                                           capsys, monkeypatch):
    from test_sweep import FakeRunner

    monkeypatch.setattr(sweep_mod, "execute_run", FakeRunner(tmp_path / "calls.jsonl"))
    out = tmp_path / "sweep"
    name = "px/0.9/seed0"
    lock = sweep_mod.RunLock(out / ".locks" / "px" / "0.9" / "seed0.lock")
    assert lock.acquire()
    real = sweep_mod.run_one

    def finish_elsewhere(run, **kw):
        # the other process finishes the held run while this one works through the rest
        outcome = real(run, **kw)
        if run.name == "random/0.5/seed0":
            (out / name).mkdir(parents=True)
            (out / name / "metrics.json").write_text("{}")
            lock.release()
        return outcome

    monkeypatch.setattr(sweep_mod, "run_one", finish_elsewhere)
    try:
        code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out)
    finally:
        lock.release()
    assert code == 0, err
    assert summary(stdout) == [5, 0, 4, 0, 1]
    assert f"{name}: skipped, another process runs it (pid {os.getpid()})" in err
    assert f"{name}: finished by another process" in err
    assert name not in [c["run"] for c in calls(tmp_path / "calls.jsonl")]


@pytest.mark.parametrize("argv, words", [
    (["--devices", "gpu0"], ["bad device 'gpu0'", "--devices"]),
    (["--devices", "cpu,,cpu"], ["bad device ''"]),
    (["--devices", "cpu,cpu", "--jobs", "3"], ["--jobs 3", "--devices"]),
    (["--devices", "cpu", "--device", "cpu"], ["not both"]),
])
def test_bad_devices_are_one_line_and_write_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "sweep"
    code, _, err = cli(capsys, "sweep", "--out", out, *argv)
    assert_user_error(code, err, *words)
    assert not out.exists()
