"""docs/design/EXTENDING.md works as written.

Every ```python block of the page is executed, in order, in ONE namespace (a scratch module named
``pxprune_extending_doc``), because the blocks build on each other: the task section reuses the
dataset section's spec and builder. ``py`` blocks (the launcher fragment) are not executed; the
``python mypxprune.py ...`` lines of the page's ``sh`` blocks are run in-process through
``pxprune.cli.main`` with the same arguments.

The page registers with the library's own decorators, which call ``Registry.add``. So that the
registrations do not outlive these tests, ``Registry.add`` is intercepted while the blocks run:
each registration is recorded instead of made, and then made with ``Registry.scoped`` for the
duration of the module's tests, which removes it again afterwards (also when a test fails). The
blocks run in a scratch working directory, where the dataset section writes its random files.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

import pxprune
from pxprune.registry import Registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "design" / "EXTENDING.md"
FENCE = re.compile(r"^([ \t]*)```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
LAUNCHER = "python mypxprune.py "

# what the page registers: (registry kind, name)
EXPECTED = {
    ("criterion", "output_norm"),
    ("model", "tiny8"),
    ("dataset", "toy8"),
    ("dataset", "toy8-smooth"),
    ("task", "smoothed_classification"),
    ("mask source", "bernoulli"),
}


def blocks(language: str) -> list[str]:
    """The page's fenced blocks of ``language``, dedented by their fence's indentation."""
    out = []
    for indent, lang, body in FENCE.findall(DOC.read_text(encoding="utf-8")):
        if lang == language:
            out.append("".join(line[len(indent):] if line.startswith(indent) else line
                               for line in body.splitlines(keepends=True)))
    return out


def commands() -> list[list[str]]:
    """The arguments of every ``python mypxprune.py ...`` line of the page's sh blocks."""
    return [shlex.split(line.strip()[len(LAUNCHER):])
            for block in blocks("sh") for line in block.splitlines()
            if line.strip().startswith(LAUNCHER)]


@contextlib.contextmanager
def registered(work: Path):
    """Run the page's python blocks in ``work``; while the block is open their registrations
    exist (made with ``Registry.scoped``). Yields (namespace, recorded registrations)."""
    recorded: list[tuple[Registry, str, object]] = []

    def record(self: Registry, name: str, obj: object) -> None:
        recorded.append((self, name, obj))

    module = types.ModuleType("pxprune_extending_doc")
    module.__file__ = str(DOC)
    sources = blocks("python")
    assert len(sources) >= 6, "EXTENDING.md lost its python examples"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
        with mock.patch.object(Registry, "add", record):
            for i, source in enumerate(sources, start=1):
                exec(compile(source, f"{DOC.name} python block {i}", "exec"), module.__dict__)
    with contextlib.ExitStack() as stack:
        for registry, name, obj in recorded:
            stack.enter_context(registry.scoped(name, obj))
        yield module.__dict__, recorded


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    """The page's registrations for this module's tests: (namespace, recorded, scratch dir)."""
    work = tmp_path_factory.mktemp("extending")
    with registered(work) as (namespace, recorded):
        yield namespace, recorded, work


def test_registrations_are_undone(tmp_path):
    from pxprune.tasks import TASKS

    if "output_norm" in pxprune.list_criteria():
        pytest.skip("the module fixture is active (tests were reordered)")
    with registered(tmp_path) as (_, recorded):
        assert all(name in registry for registry, name, _ in recorded)
        assert "output_norm" in pxprune.list_criteria() and "smoothed_classification" in TASKS
    assert recorded and not any(name in registry for registry, name, _ in recorded)


def test_the_page_registers_one_of_each(doc):
    _, recorded, _ = doc
    assert {(r.kind, name) for r, name, _ in recorded} == EXPECTED


def test_criterion_is_listed_and_prunes_the_right_count(doc):
    from pxprune.models import create_model

    assert "output_norm" in pxprune.list_criteria()
    model = create_model("tiny8", num_classes=4, seed=0)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for options in ({}, {"norm": 1, "micro_batch": 4}):
        mask = pxprune.prune(model, "output_norm", [x], sparsity=0.75, rounds=2, **options)
        m = sum(p.numel() for p in mask.values())
        assert mask.total == m == 8 * 1 * 9 + 8 * 8 * 9 + 4 * 8
        assert mask.kept == m - math.floor(round(0.75 * m, 9))
        assert mask.metadata["criterion"] == "output_norm"
        assert mask.metadata["options"] == options
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    scores = pxprune.score(model, "output_norm", [x])
    assert set(scores) == set(mask) and all(s.abs().max() <= 1 for s in scores.values())
    assert max(float(s.abs().max()) for s in scores.values()) == 1.0
    with pytest.raises(ValueError, match="norm must be"):
        pxprune.prune(model, "output_norm", [x], sparsity=0.5, norm=0.5)
    with pytest.raises(TypeError, match="needs data"):
        pxprune.prune(model, "output_norm", sparsity=0.5)


def test_model_builds_and_declares_its_tasks(doc):
    from pxprune.models import create_model, list_models, model_info

    assert "tiny8" in list_models()
    a = create_model("tiny8", num_classes=4, seed=1)
    b = create_model("tiny8", num_classes=4, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert a(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert create_model("tiny8", num_classes=3, input_size=(3, 12, 12))(
        torch.randn(2, 3, 12, 12)).shape == (2, 3)
    info = model_info("tiny8")
    assert info.input_size == (1, 8, 8)
    assert info.tasks == ("classification", "smoothed_classification")


def test_dataset_finds_its_files(doc, tmp_path):
    from pxprune.data import (
        DATASETS,
        DatasetNotFoundError,
        create_dataset,
        data_source,
        get_spec,
        pruning_split,
    )

    _, _, work = doc
    assert "toy8" in DATASETS and "toy8-smooth" in DATASETS
    ds = create_dataset("toy8", root=work / "data", train=True)
    assert len(ds) == 32 and len(create_dataset("toy8", root=work / "data", train=False)) == 16
    x, y = ds[5]
    assert x.dtype == torch.float32 and tuple(x.shape) == get_spec("toy8").input_size
    assert isinstance(y, int) and y == 1
    assert data_source(ds) == str((work / "data" / "toy8").resolve())
    assert len(pruning_split(ds, 4, seed=0)) == 16
    assert get_spec("toy8").task == "classification"
    assert get_spec("toy8-smooth").task == "smoothed_classification"
    with pytest.raises(DatasetNotFoundError, match="toy8 not found"):
        create_dataset("toy8", root=tmp_path)


def test_task_is_registered_and_meters_add_up(doc):
    from pxprune.tasks import TASKS, Meter, get_task

    assert "smoothed_classification" in TASKS
    task = get_task("smoothed_classification")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    meter = task.eval_meter(2, "cpu")
    assert isinstance(meter, Meter)
    task.eval_update(meter, logits[:2], target[:2])
    task.eval_update(meter, logits[2:], target[2:])
    values = task.eval_compute(meter)
    assert values["samples"] == 3 and values[task.primary] == pytest.approx(2 / 3)
    assert set(task.eval_columns) <= set(values)
    loss = task.loss(logits, target)
    train = task.train_meter("cpu")
    task.train_update(train, logits, target, loss)
    assert task.train_compute(train) == {"train_loss": pytest.approx(float(loss))}
    assert set(task.metric_columns) <= set(values) | {"train_loss"}


def test_mask_source_is_registered(doc):
    from pxprune.experiment import SOURCES
    from pxprune.experiment.sources import source_for

    assert "bernoulli" in SOURCES
    assert source_for("bernoulli") is SOURCES.get("bernoulli")


def test_the_page_commands_run(doc, capsys):
    from pxprune.cli import main
    from pxprune.masks import Mask

    _, _, work = doc
    argvs = commands()
    assert len(argvs) >= 4, "EXTENDING.md lost its commands"
    outputs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for argv in argvs:
            code = main(argv)
            captured = capsys.readouterr()
            assert code == 0, f"{shlex.join(argv)} failed: {captured.err}"
            outputs[" ".join(argv[:2])] = captured.out
    for what, line in (("criteria", "output_norm"),
                       ("criteria", "bernoulli  (each weight kept independently"),
                       ("models", "tiny8"), ("datasets", "toy8  (classification)"),
                       ("datasets", "toy8-smooth  (smoothed_classification)"),
                       ("tasks", "smoothed_classification  (primary metric: test_acc)")):
        out = outputs.get(f"list {what}")
        if out is None:
            code = main(["list", what])
            out = capsys.readouterr().out
            assert code == 0
        assert any(row.startswith(line) for row in out.splitlines()), out

    pruned = Mask.load(work / "runs" / "toy8-output-norm" / "mask.pt")
    assert pruned.metadata["criterion"] == "output_norm"
    assert pruned.metadata["options"] == {"norm": 1}
    assert pruned.kept == pruned.total - math.floor(round(0.9 * pruned.total, 9))

    run = work / "runs" / "toy8-bernoulli"
    ticket = Mask.load(run / "mask.pt")
    assert ticket.metadata["criterion"] == "bernoulli" and 0.4 < ticket.density < 0.6
    rounds = [row.split(",")[0] for row in (run / "prune_history.csv").read_text().splitlines()]
    assert rounds == ["round", "0", "1"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["criterion"] == "bernoulli" and 0.0 <= metrics["test_acc"] <= 1.0
    assert "test_acc5" not in metrics  # the new task's columns, not classification's
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert history == ["epoch", "lr", "train_loss", "test_loss", "test_acc", "seconds"]
