"""Compact sweep exports: what they keep, reports and sweeps over them, merging parts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import cli
from pxprune.experiment.export import COPIED, export_sweep
from pxprune.experiment.report import collect, write_report
from pxprune.masks import Mask, pack_bits, unpack_bits

pytestmark = pytest.mark.usefixtures("one_thread")


def options(root, *more):
    return ["--set", f"data.root={root}", "data.train_subset=null", "data.per_class=1",
            "train.batch_size=8", "model.name=resnet8", *more, "--epochs", "1", "--rounds", "2"]


GRID = ["--criteria", "px,random", "--sparsities", "0.9", "--seeds", "0"]
RUNS = ["dense/0/seed0", "px/0.9/seed0", "random/0.9/seed0"]


@pytest.fixture(scope="module")
def sweep_dir(fmnist, tmp_path_factory):
    """One real tiny sweep (ResNet-8, 20 images), with an NTK reading of its PX run."""
    import contextlib
    import io

    from pxprune.cli import main

    out = tmp_path_factory.mktemp("sweep") / "s"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["sweep", *GRID, *options(fmnist), "--out", str(out), "--quiet"]) == 0
        assert main(["ntk", "--run", str(out / "px/0.9/seed0"), "--samples", "4",
                     "--quiet"]) == 0
    return out


def test_packed_bits_are_numpy_packbits_and_round_trip():
    g = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (3, 5), (4, 3, 3, 3)]:
        m = torch.rand(shape, generator=g) > 0.5
        bits = pack_bits(m)
        assert np.array_equal(bits.numpy(), np.packbits(m.reshape(-1).numpy()))
        assert torch.equal(unpack_bits(bits, list(shape)), m)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), [3, 9])


def test_an_export_keeps_what_reports_need_and_no_checkpoints(sweep_dir, tmp_path, capsys):
    out = tmp_path / "export"
    code, stdout, err = cli(capsys, "export", sweep_dir, "--out", out, "--quiet")
    assert code == 0, err
    assert "exported 3 runs" in stdout
    for name in RUNS:
        files = {p.name for p in (out / name).iterdir()}
        source = {p.name for p in (sweep_dir / name).iterdir()}
        assert files == (set(COPIED) | {"mask.pt"}) & source, name
        assert not {"init.pt", "last.pt", "tb"} & files
        for f in files - {"mask.pt"}:
            assert (out / name / f).read_bytes() == (sweep_dir / name / f).read_bytes()
        a, b = Mask.load(sweep_dir / name / "mask.pt"), Mask.load(out / name / "mask.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert a.metadata == b.metadata
        assert (out / name / "mask.pt").stat().st_size < (sweep_dir / name / "mask.pt").stat().st_size
    assert (out / "px/0.9/seed0/ntk.json").is_file()

    # the report of the export is the report of the sweep
    ours, theirs = write_report(sweep_dir, plots=False), write_report(out, plots=False)
    assert ours.summary == theirs.summary
    for f in ("report.md", "report.csv"):
        assert (sweep_dir / "report" / f).read_text().replace(str(sweep_dir), "X") == \
            (out / "report" / f).read_text().replace(str(out), "X")
    assert "overlap" in (out / "report" / "report.md").read_text().lower()

    # exporting again adds nothing and changes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "report" not in p.parts}
    result = export_sweep(sweep_dir, out)
    assert result.exported == [] and sorted(result.already) == sorted(RUNS)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "sweep.json")


def test_a_sweep_over_an_export_runs_only_what_is_missing(sweep_dir, fmnist, tmp_path, capsys):
    out = tmp_path / "export"
    export_sweep(sweep_dir, out)
    code, stdout, err = cli(capsys, "sweep", *GRID, *options(fmnist), "--out", out, "--quiet")
    assert code == 0, err
    assert "| 3 | 3 | 0 | 0 | 0 |" in stdout
    assert not (out / "px/0.9/seed0/last.pt").exists()

    # another grid needs --extend, then runs only its own cells
    more = ["--criteria", "random", "--sparsities", "0.5", "--seeds", "0"]
    code, _, err = cli(capsys, "sweep", *more, *options(fmnist), "--out", out, "--quiet")
    assert code == 2 and "--extend" in err
    code, stdout, err = cli(capsys, "sweep", *more, *options(fmnist), "--out", out, "--extend",
                            "--quiet")
    assert code == 0, err
    assert "| 2 | 1 | 1 | 0 | 0 |" in stdout
    assert (out / "random/0.5/seed0/metrics.json").is_file()
    spec = json.loads((out / "sweep.json").read_text())
    assert len(spec["parts"]) == 2 and spec["criteria"] == ["px", "random"]
    data = collect(out)
    assert set(data.grid) == {("dense", "0"), ("px", "0.9"), ("random", "0.9"), ("random", "0.5")}
    report = write_report(out, plots=False)
    assert "All runs of the grid are finished." in report.summary
    # each part re-enters without --extend
    for grid in (GRID, more):
        code, _, err = cli(capsys, "sweep", *grid, *options(fmnist), "--out", out, "--quiet")
        assert code == 0, err


def test_exports_of_one_base_merge_and_other_runs_are_refused(sweep_dir, tmp_path, capsys):
    out = tmp_path / "export"
    export_sweep(sweep_dir, out)
    # a second sweep of the same base (here: the same sweep with one run renamed as another
    # sparsity, its configuration edited to match) merges as a part
    other = tmp_path / "other"
    shutil.copytree(sweep_dir, other)
    shutil.rmtree(other / "report", ignore_errors=True)
    spec = json.loads((other / "sweep.json").read_text())
    spec["criteria"], spec["sparsities"] = ["random"], [0.5]
    (other / "sweep.json").write_text(json.dumps(spec))
    shutil.rmtree(other / "px")
    (other / "random/0.9").rename(other / "random/0.5")
    config = (other / "random/0.5/seed0/config.yaml").read_text()
    (other / "random/0.5/seed0/config.yaml").write_text(config.replace("sparsity: 0.9",
                                                                       "sparsity: 0.5"))
    result = export_sweep(other, out)
    assert result.exported == ["random/0.5/seed0"] and result.already == ["dense/0/seed0"]
    merged = json.loads((out / "sweep.json").read_text())
    assert [p["sparsities"] for p in merged["parts"]] == [[0.9], [0.5]]

    # a run there with another configuration: refused, nothing written
    (other / "random/0.5/seed0/config.yaml").write_text(config.replace("sparsity: 0.9",
                                                                       "sparsity: 0.5")
                                                        .replace("lr: 0.1", "lr: 0.2"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, "export", other, "--out", out)
    assert code == 2 and "holds a different run" in err and "train.lr" in err
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # another base configuration: refused
    spec["config"]["train"]["lr"] = 0.2
    (other / "sweep.json").write_text(json.dumps(spec))
    code, _, err = cli(capsys, "export", other, "--out", out)
    assert code == 2 and "differ beyond their grids" in err


def test_export_refuses_what_is_not_a_sweep_and_leaves_unfinished_runs_out(sweep_dir, tmp_path,
                                                                          capsys):
    code, _, err = cli(capsys, "export", tmp_path, "--out", tmp_path / "e")
    assert code == 2 and "holds no sweep.json" in err
    code, _, err = cli(capsys, "export", sweep_dir, "--out", sweep_dir / "e")
    assert code == 2 and "inside the sweep" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export", sweep_dir, "--out", tmp_path / "busy")
    assert code == 2 and "not empty" in err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"

    src = tmp_path / "src"
    shutil.copytree(sweep_dir, src)
    (src / "random/0.9/seed0/metrics.json").unlink()
    code, stdout, err = cli(capsys, "export", src, "--out", tmp_path / "e2")
    assert code == 0 and "exported 2 runs" in stdout
    assert "random/0.9/seed0 left out (not finished)" in err
    assert not (tmp_path / "e2/random/0.9/seed0").exists()
    assert "random/0.9" in write_report(tmp_path / "e2", plots=False).summary
