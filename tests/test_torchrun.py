"""``torchrun -m pxprune run`` on the CPU with gloo: two processes give the single-process mask,
train data-parallel to the single-process numbers (a BatchNorm-free network, so the only
difference is the order of floating-point sums), write the run folder once, resume after a
SIGKILL to the metrics of an uninterrupted job and from a single-process folder, and a process
that fails ends the whole job quickly with the folder left resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import cli
from pxprune.cli import main
from pxprune.data.fake import write_fake_fashion_mnist
from pxprune.masks import Mask

WALL = ("prune_seconds", "train_seconds")
PLUGIN = "pxprune_torchrun_plugin"
PLUGIN_SOURCE = textwrap.dedent('''
    """Registered in every process of the test jobs: a BatchNorm-free network, and a criterion
    whose process 1 fails while process 0 waits for it (when PXPRUNE_TEST_FAIL is set)."""
    import os

    import torch
    from torch import nn

    from pxprune.criteria.base import Criterion, register_criterion
    from pxprune.models import register_model


    @register_model("bnfree_cnn", input_size=(1, 28, 28), family="test")
    def bnfree_cnn(*, num_classes=10, input_size=(1, 28, 28)):
        return nn.Sequential(
            nn.Conv2d(input_size[0], 6, 3, padding=1), nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))


    @register_criterion
    class FailsInProcessOne(Criterion):
        """|w|, except that process 1 raises while PXPRUNE_TEST_FAIL is set."""

        name = "fails_in_process_one"
        default_rounds = 1
        uses_data = True

        def score(self, ctx, mask):
            if os.environ.get("PXPRUNE_TEST_FAIL") and os.environ.get("RANK") == "1":
                raise RuntimeError("process 1 failed on purpose")
            return {n: w.detach().abs() for n, w in ctx.params.items()}
''')


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Data (75 training images: the last global batch of 8 splits 1 + 2; 11 test images: the
    shards are 6 + 5), the plugin on the path, and the environment of a job."""
    root = tmp_path_factory.mktemp("torchrun")
    write_fake_fashion_mnist(root / "data", n_train=75, n_test=11)
    (root / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    env = dict(os.environ, PXPRUNE_PLUGINS=PLUGIN, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("PXPRUNE_TEST_FAIL", None)
    return root, env


@pytest.fixture
def plugin(job, monkeypatch):
    """The plugin loaded in this process too; unregistered afterwards."""
    from pxprune.criteria import CRITERIA
    from pxprune.models.factory import _MODELS
    from pxprune.plugins import load_plugins

    root, _ = job
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PXPRUNE_PLUGINS", PLUGIN)
    load_plugins()
    yield
    sys.modules.pop(PLUGIN, None)
    CRITERIA._items.pop("fails_in_process_one", None)
    _MODELS._items.pop("bnfree_cnn", None)


def args(root: Path, *more: str, epochs: int = 3, criterion: str = "px") -> list[str]:
    return ["--set", f"data.root={root / 'data'}", "data.train_subset=null", "data.per_class=2",
            "train.batch_size=8", "model.name=bnfree_cnn", "train.lr=0.05", *more,
            "--criterion", criterion, "--sparsity", "0.5", "--rounds", "3",
            "--epochs", str(epochs)]


def torchrun(env: dict, *argv: str, nproc: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "pxprune", *map(str, argv)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions, so a
    process-group kill does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def close(a: dict, b: dict, rel: float = 1e-5) -> None:
    """Equal but for wall times and world size, floats to ``rel`` (sums in another order)."""
    assert set(a) == set(b)
    for key in set(a) - {*WALL, "world_size"}:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def two(job):
    """An uninterrupted two-process run, and its output."""
    root, env = job
    out = root / "two"
    code, stdout, stderr = finish(torchrun(env, "run", *args(root), "--out", out))
    assert code == 0, stderr
    return out, stdout, stderr


def test_two_processes_make_the_single_process_mask_and_train_like_it(job, two, plugin,
                                                                      tmp_path):
    root, _ = job
    out, stdout, _ = two
    one = tmp_path / "one"
    assert main(["run", *args(root), "--out", str(one), "--quiet"]) == 0
    a, b = Mask.load(one / "mask.pt"), Mask.load(out / "mask.pt")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert b.metadata["processes"] == 2
    m1, m2 = metrics(one), metrics(out)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    close(m1, m2)
    # written once: one table on stdout, one history row per epoch, no file from process 1
    assert stdout.count("| px |") == 1 and stdout.strip().splitlines()[0] == str(out)
    assert (out / "history.csv").read_text().count("\n") == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_killed_job_resumes_to_the_metrics_of_an_uninterrupted_one(job, two):
    root, env = job
    reference, _, _ = two
    out = root / "killed"
    proc = torchrun(env, "run", *args(root), "--out", out)
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for pid in [proc.pid, *descendants(proc.pid)]:  # the whole job at once
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.communicate()
    assert not (out / "metrics.json").exists()
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert epoch in (1, 2)
    code, _, stderr = finish(torchrun(env, "run", *args(root), "--out", out))
    assert code == 0, stderr
    assert f"resuming after epoch {epoch}" in stderr
    strip = lambda m: {k: v for k, v in m.items() if k not in WALL}  # noqa: E731
    assert strip(metrics(out)) == strip(metrics(reference))


def test_a_single_process_folder_resumes_with_two_processes(job, two, plugin, tmp_path):
    from pxprune.experiment import Flags, Observer, execute, plan, resolve_config

    root, env = job
    reference, _, _ = two

    class Stop(Observer):
        def epoch_end(self, row):
            raise KeyboardInterrupt

    argv = args(root)
    sets = argv[1:argv.index("--criterion")]
    config = resolve_config("demo", sets, Flags(criterion="px", sparsity=0.5, rounds=3, epochs=3))
    out = tmp_path / "moved"
    with pytest.raises(KeyboardInterrupt):
        execute(plan(config, out), observer=Stop())
    code, _, stderr = finish(torchrun(env, "run", *argv, "--out", out))
    assert code == 0, stderr
    assert metrics(out)["world_size"] == 2
    close(metrics(out), metrics(reference))


def test_a_failing_process_ends_the_job_and_leaves_the_folder_resumable(job, plugin, tmp_path):
    root, env = job
    out = tmp_path / "fault"
    argv = args(root, criterion="fails_in_process_one", epochs=1)
    start = time.monotonic()
    code, _, stderr = finish(torchrun({**env, "PXPRUNE_TEST_FAIL": "1"}, "run", *argv,
                                      "--out", out), timeout=120)
    assert code != 0 and "process 1 failed on purpose" in stderr
    assert time.monotonic() - start < 90
    assert not (out / "metrics.json").exists()
    assert main(["run", *argv, "--out", str(out), "--quiet"]) == 0
    assert metrics(out)["test_acc"] is not None


def test_batch_that_does_not_split_and_commands_that_do_not_run_under_torchrun(job, plugin, capsys,
                                                                               monkeypatch,
                                                                               tmp_path):
    """Checked before anything is read, written or scored (so in one process here)."""
    from pxprune.experiment import Flags, UserError, execute, plan, resolve_config
    from pxprune.platform import Platform

    root, _ = job
    argv = args(root, "train.batch_size=7")
    config = resolve_config("demo", argv[1:argv.index("--criterion")], Flags(criterion="px"))
    with pytest.raises(UserError, match=r"train.batch_size 7 is the global batch .* over 2 "
                                        r"processes.*--set train.batch_size=6"):
        execute(plan(config, tmp_path / "odd"), platform=Platform(rank=0, world_size=2))
    assert not (tmp_path / "odd").exists()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, _, err = cli(capsys, "report", str(tmp_path))
    assert code == 2 and "start it without torchrun" in err
    assert "error (process 1)" in err


# ------------------------------------------------------------------------------ in one process
@pytest.mark.parametrize("n,batch,world", [(75, 8, 2), (75, 8, 4), (16, 8, 2), (9, 6, 3), (10, 4, 1)])
def test_rank_batches_split_the_single_process_global_batches(n, batch, world):
    from torch.utils.data import DataLoader, TensorDataset

    from pxprune.seeding import generator
    from pxprune.train.distributed import RankBatches

    data = TensorDataset(torch.arange(n))
    single = [b[0].tolist() for b in DataLoader(data, batch_size=batch, shuffle=True,
                                                generator=generator(3, "data"))]
    parts, weights = [], []
    for rank in range(world):
        g = generator(3, "data")
        sampler = RankBatches(data, batch_size=batch, rank=rank, world=world, generator=g)
        parts.append([b[0].tolist() for b in DataLoader(data, batch_sampler=sampler, generator=g)])
        weights.append(sampler.loss_weights())
        assert len(parts[-1]) == len(sampler) == len(weights[-1])
    used = [b for b in single if len(b) >= world]
    for step, global_batch in enumerate(used):
        # rank order concatenates to the global batch; the weights average to 1
        assert sum((p[step] for p in parts), []) == global_batch
        assert sum(w[step] for w in weights) / world == pytest.approx(1.0)
        for p, w in zip(parts, weights, strict=True):
            assert w[step] == pytest.approx(world * len(p[step]) / len(global_batch))


def test_test_shards_cover_every_sample_once():
    from pxprune.train.distributed import contiguous_shard, shard

    data = list(range(11))
    for world in (1, 2, 3, 5):
        seen = sorted(x for r in range(world) for x in shard(data, r, world))
        assert seen == data
        assert sum((contiguous_shard(data, r, world) for r in range(world)), []) == data


def test_rank_seeds_differ_per_process_and_rank_zero_keeps_the_seed():
    from pxprune.train.distributed import rank_seed

    seeds = [rank_seed(12345, r) for r in range(4)]
    assert seeds[0] == 12345 and len(set(seeds)) == 4
    assert seeds == [rank_seed(12345, r) for r in range(4)]


def test_sync_bn_is_refused_on_the_cpu_with_the_fix():
    from torch import nn
    from torch.utils.data import TensorDataset

    from pxprune.platform import Platform
    from pxprune.train import Trainer

    data = TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="train.sync_bn needs GPUs"):
        Trainer(model, data, data, num_classes=2, epochs=1, batch_size=4, lr=0.1, momentum=0.9,
                weight_decay=0.0, platform=Platform(rank=0, world_size=2), sync_bn=True)
