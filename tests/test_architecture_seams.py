"""Seams of the run pipeline: where a run's starting weights come from (RunFolder), the poly
schedule as training builds it, sweeps and reports without ``fcntl``, the markdown-table writer."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pxprune.experiment import Flags, RunFolder, execute, plan, read_config, resolve_config
from pxprune.experiment.data import Data, build_model, load_data
from pxprune.experiment.sources import source_for
from pxprune.tables import markdown_table

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ starting weights
@pytest.fixture(scope="module")
def pruned(fmnist, tmp_path_factory) -> Path:
    """A ``prune`` folder (mask.pt and init.pt, not trained) of a tiny ResNet-20 run."""
    from pxprune.cli import main

    out = tmp_path_factory.mktemp("seams") / "px"
    assert main(["prune", "--set", f"data.root={fmnist}", "data.train_subset=null",
                 "data.per_class=1", "train.batch_size=8", "--epochs", "1", "--rounds", "1",
                 "--out", str(out), "--quiet"]) == 0
    return out


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _theta0(folder: RunFolder, config) -> dict[str, torch.Tensor]:
    model = build_model(config, load_data(config, train=False, test=False, split=False).spec)
    folder.load_init(model)
    return _state(model)


def test_training_a_pruned_folder_starts_from_theta0_read_once(pruned, monkeypatch):
    """execute reads init.pt once (RunFolder.starting_weights is told the model holds it) and
    hands training exactly theta_0."""
    import pxprune.experiment.folder as folder_mod
    import pxprune.experiment.run as run_mod

    reads: list[str] = []
    load_weights = folder_mod.load_weights

    def counting(path, model):
        reads.append(Path(path).name)
        return load_weights(path, model)

    handed: dict[str, torch.Tensor] = {}

    def no_training(folder, config, data, model, *args, **kwargs):
        handed.update(_state(model))
        return {}

    monkeypatch.setattr(folder_mod, "load_weights", counting)
    monkeypatch.setattr(run_mod, "train_run", no_training)
    config = read_config(pruned)
    p = plan(config, pruned)
    assert p.state == "pruned"
    assert execute(p) == {}
    assert reads == ["init.pt"]
    theta0 = _theta0(RunFolder(pruned), config)
    assert handed.keys() == theta0.keys()
    assert all(torch.equal(handed[k], v) for k, v in theta0.items())


def test_starting_weights_theta0_then_reinit(pruned):
    folder = RunFolder(pruned)
    config = read_config(pruned)
    spec = load_data(config, train=False, test=False, split=False).spec
    source = source_for(config.prune.criterion)
    mask = folder.load_mask()
    model = build_model(config, spec)
    digest, which = folder.starting_weights(model, config, source=source, mask=mask, spec=spec)
    assert which == "theta_0" and digest == mask.metadata["theta0_hash"]
    theta0 = _state(model)

    reinit = dataclasses.replace(config, train=dataclasses.replace(config.train, reinit=True))
    model = build_model(config, spec)
    digest, which = folder.starting_weights(model, reinit, source=source, mask=mask, spec=spec)
    assert which == "reinit" and digest == mask.metadata["theta0_hash"]
    fresh = _state(build_model(config, spec, stream="reinit"))
    assert all(torch.equal(v, fresh[k]) for k, v in _state(model).items())
    assert not all(torch.equal(v, theta0[k]) for k, v in _state(model).items())

    # a caller whose model already holds theta_0 passes its hash: init.pt is not read again
    model = build_model(config, spec)
    assert folder.starting_weights(model, config, source=source, mask=mask, spec=spec,
                                   theta0="given") == ("given", "theta_0")


def test_starting_weights_is_the_one_place(pruned):
    """No second copy of the starting-weights logic lives beside RunFolder."""
    import pxprune.experiment.folder as folder_mod
    import pxprune.experiment.run as run_mod

    assert not hasattr(run_mod, "start_from")
    assert not hasattr(folder_mod, "starting_weights")
    assert hasattr(RunFolder, "starting_weights")


# ------------------------------------------------------------------------------ the poly schedule
def test_poly_schedule_per_step_through_the_trainer():
    """lr at step t is base_lr * (1 - t / T) ** 0.9 with T = epochs x steps per epoch, as the
    configured Trainer (experiment.training.make_trainer) builds it."""
    from pxprune.data import get_spec
    from pxprune.experiment.training import make_trainer

    base_lr, epochs, batch = 0.3, 2, 4
    config = resolve_config("demo", ["train.schedule=poly", f"train.lr={base_lr}",
                                     f"train.batch_size={batch}", "train.amp=off"],
                            Flags(epochs=epochs))
    assert config.train.schedule == "poly"
    gen = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(10, 4, generator=gen), torch.randint(0, 3, (10,), generator=gen))
    data = Data(spec=get_spec(config.data.name), train=train, test=train)
    model = nn.Sequential(nn.Linear(4, 3))
    trainer = make_trainer(model, data, config)
    steps = trainer.steps_per_epoch
    assert steps == 3
    lrs = [trainer.optimizer.param_groups[0]["lr"]]

    def record() -> None:
        lrs.append(trainer.optimizer.param_groups[0]["lr"])

    for _ in range(epochs):
        trainer.train_epoch(on_step=record)
    total = epochs * steps
    assert lrs == pytest.approx([base_lr * (1 - t / total) ** 0.9 for t in range(total + 1)],
                                rel=1e-12, abs=1e-15)
    assert lrs[-1] == 0.0


# ------------------------------------------------------------------------------ no fcntl
def test_sweep_and_report_work_without_fcntl(tmp_path):
    """Where ``fcntl`` is missing (Windows), filelock falls back to its soft lock: sweeps still
    lock their runs and reports are still written."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["fcntl"] = None  # "import fcntl" now raises ImportError
        from pathlib import Path

        import filelock
        from pxprune.experiment import resolve_config
        from pxprune.experiment.files import write_json
        from pxprune.experiment.report import write_report
        from pxprune.experiment.sweep import RunLock, make_sweep

        assert filelock.FileLock is filelock.SoftFileLock, filelock.FileLock
        out = Path({str(tmp_path / "sweep")!r})
        first, second = RunLock(out / ".locks" / "a.lock"), RunLock(out / ".locks" / "a.lock")
        assert first.acquire()
        assert not second.acquire()
        first.release()
        assert second.acquire()
        second.release()
        sweep = make_sweep(resolve_config("demo"), out, criteria="px", sparsities="0.9", seeds="0")
        write_json(out / "sweep.json", sweep.to_json())
        result = write_report(out, plots=False)
        assert result.missing == ["dense/0/seed0", "px/0.9/seed0"], result.missing
        assert (out / "report" / "report.md").is_file()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ------------------------------------------------------------------------------ markdown tables
def test_markdown_table_exact_output():
    text = markdown_table(["criterion", "acc | top-1", "n"],
                          [["px", 91.5, 3], ["a|b", "`x|y`", None]], align=["", "r", "r"])
    assert text == "\n".join([
        "| criterion | acc \\| top-1 | n |",
        "| --- | ---: | ---: |",
        "| px | 91.5 | 3 |",
        "| a\\|b | `x\\|y` | None |",
    ])
    assert markdown_table(["a", "b"], [], align="r") == "| a | b |\n| ---: | ---: |"
    assert markdown_table(["a"], [[1]]) == "| a |\n| --- |\n| 1 |"
    with pytest.raises(ValueError, match="one alignment per column"):
        markdown_table(["a", "b"], [], align=["r"])
