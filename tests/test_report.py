"""``pxprune report``: aggregation of synthetic sweep folders (metrics.json written by hand),
missing runs flagged in the table and the CSV, NTK and overlap numbers, figures."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from pxprune.cli import main
from pxprune.experiment import resolve_config
from pxprune.experiment.files import write_csv, write_json
from pxprune.experiment.report import emptied_rounds, mean_std, write_report
from pxprune.experiment.sweep import make_sweep
from pxprune.masks import Mask

CRITERIA = ["px", "snip"]
SPARSITIES = [0.5, 0.9]
SEEDS = [0, 1, 2]
LAYERS = ["conv.weight", "fc.weight"]


def acc(criterion: str, sparsity: float, seed: int) -> float:
    base = {"px": 0.9, "snip": 0.8, "dense": 0.95}[criterion]
    return round(base - 0.1 * sparsity + 0.01 * seed, 6)


def write_run(out: Path, criterion: str, sparsity: float, seed: int, *, finished: bool = True,
              ntk: float | None = None, mask: Mask | None = None) -> Path:
    label = "0" if criterion == "dense" else str(sparsity)
    run = out / criterion / label / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(f"seed: {seed}\n")
    if finished:
        write_json(run / "metrics.json", {
            "criterion": criterion, "sparsity": sparsity, "density": 1 - sparsity,
            "effective_density": 1 - sparsity, "seed": seed, "test_acc": acc(criterion, sparsity,
                                                                             seed),
            "prune_seconds": 1.0 + seed if criterion == "px" else 0.5})
    if ntk is not None:
        write_json(run / "ntk.json", {"trace_fraction": ntk, "method": "exact"})
    if mask is not None:
        mask.save(run / "mask.pt")
    return run


def make_mask(keep: list[int]) -> Mask:
    flat = torch.zeros(8, dtype=torch.bool)
    flat[keep] = True
    return Mask({"conv.weight": flat[:4].reshape(2, 2), "fc.weight": flat[4:]})


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A partial sweep: px/0.9/seed2 never started, px/0.9/seed1 unfinished, snip/0.9 empty."""
    out = tmp_path / "sweep"
    sweep = make_sweep(resolve_config("demo"), out, criteria=CRITERIA, sparsities=SPARSITIES,
                       seeds=SEEDS)
    write_json(out / "sweep.json", sweep.to_json())
    for seed in SEEDS:
        write_run(out, "dense", 0.0, seed)
        write_run(out, "px", 0.5, seed, ntk=0.5 + 0.1 * seed, mask=make_mask([0, 1, 4, 5]))
        write_run(out, "snip", 0.5, seed, ntk=0.25, mask=make_mask([0, 2, 4, 6]))
    write_run(out, "px", 0.9, 0, mask=make_mask([0]))
    write_run(out, "px", 0.9, 1, finished=False)
    return out


def read_report_csv(out: Path) -> dict[tuple[str, float], dict[str, str]]:
    with open(out / "report" / "report.csv", newline="") as f:
        return {(r["criterion"], float(r["sparsity"])): r for r in csv.DictReader(f)}


def test_mean_std_n_and_missing_runs_in_the_csv(sweep_dir):
    result = write_report(sweep_dir, plots=False)
    rows = read_report_csv(sweep_dir)
    assert set(rows) == {("dense", 0.0), ("px", 0.5), ("px", 0.9), ("snip", 0.5),
                         ("snip", 0.9)}
    for criterion, s in [("px", 0.5), ("snip", 0.5), ("dense", 0.0)]:
        values = [acc(criterion, s, k) for k in SEEDS]
        row = rows[(criterion, s)]
        assert float(row["mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert (row["n"], row["expected"], row["missing"], row["missing_runs"]) == \
            ("3", "3", "0", "")
    px9 = rows[("px", 0.9)]
    assert float(px9["mean"]) == acc("px", 0.9, 0) and px9["std"] == ""
    assert (px9["n"], px9["missing"]) == ("1", "2")
    assert px9["missing_runs"].split() == ["px/0.9/seed1", "px/0.9/seed2"]
    snip9 = rows[("snip", 0.9)]
    assert snip9["mean"] == "" and snip9["n"] == "0" and snip9["missing"] == "3"
    assert result.missing == ["px/0.9/seed1", "px/0.9/seed2", "snip/0.9/seed0",
                              "snip/0.9/seed1", "snip/0.9/seed2"]
    # NTK trace fraction (mean over seeds), overlap with px and pruning time
    assert float(rows[("px", 0.5)]["ntk_trace_fraction"]) == pytest.approx(0.6)
    assert rows[("px", 0.5)]["ntk_n"] == "3"
    assert float(rows[("snip", 0.5)]["overlap"]) == pytest.approx(0.5)
    assert float(rows[("px", 0.5)]["prune_seconds"]) == pytest.approx(2.0)


def test_the_table_flags_every_missing_cell(sweep_dir):
    result = write_report(sweep_dir, plots=False)
    table = result.summary
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
             if line.startswith("| ")}
    header = lines["criterion"]
    assert header.split(" | ")[1:] == ["0 (dense)", "0.5", "0.9 |"]
    d = [acc("dense", 0, k) for k in SEEDS]
    assert f"{100 * statistics.mean(d):.2f} ± {100 * statistics.stdev(d):.2f} (n=3)" in \
        lines["dense"]
    px = [acc("px", 0.5, k) for k in SEEDS]
    assert f"**{100 * statistics.mean(px):.2f} ± {100 * statistics.stdev(px):.2f}** (n=3)" in \
        lines["px"]
    assert f"{100 * acc('px', 0.9, 0):.2f}** (n=1 of 3)" in lines["px"]
    assert lines["snip"].rstrip(" |").endswith("—")
    assert "- `px/0.9/seed1` (unfinished" in table
    assert "- `px/0.9`: seed 2 not started" in table
    assert "- `snip/0.9`: seeds 0, 1, 2 not started" in table
    assert "Missing runs (5)" in table
    md = (sweep_dir / "report" / "report.md").read_text()
    assert table in md and "## NTK trace kept (%)" in md and "## Overlap with px" in md
    assert "| px | 60 ± 10 (n=3) | — |" in md  # NTK: mean and std over seeds, in %


def test_a_sparsity_none_of_whose_runs_started_is_one_line(tmp_path):
    out = tmp_path / "sweep"
    sweep = make_sweep(resolve_config("demo"), out, criteria=CRITERIA, sparsities=[0.5, 0.8, 0.9],
                       seeds=SEEDS)
    write_json(out / "sweep.json", sweep.to_json())
    for seed in SEEDS:
        write_run(out, "dense", 0.0, seed)
        write_run(out, "px", 0.9, seed)
        write_run(out, "snip", 0.9, seed)
    write_run(out, "px", 0.8, 0)
    table = write_report(out, plots=False).summary
    items = [line for line in table.splitlines() if line.startswith("- ")]
    assert items == ["- sparsity 0.5: not started (none of its 6 runs)",
                     "- `px/0.8`: seeds 1, 2 not started",
                     "- `snip/0.8`: seeds 0, 1, 2 not started"]
    assert "Missing runs (11)" in table


def test_gaps_to_the_reference_and_which_exceed_two_std(sweep_dir):
    # snip/0.5 is 10 points below px/0.5 on every seed, each cell's std is 1 point
    write_run(sweep_dir, "snip", 0.9, 0)
    write_report(sweep_dir, plots=False)
    rows = read_report_csv(sweep_dir)
    assert float(rows[("snip", 0.5)]["gap_to_reference"]) == pytest.approx(-0.1, abs=1e-9)
    assert rows[("snip", 0.5)]["gap_exceeds_2std"] == "true"
    # one seed in each cell at 0.9: a gap but no spread to judge it by
    assert float(rows[("snip", 0.9)]["gap_to_reference"]) == pytest.approx(-0.1, abs=1e-9)
    assert rows[("snip", 0.9)]["gap_exceeds_2std"] == ""
    assert rows[("px", 0.5)]["gap_to_reference"] == ""
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Gap to px (points)" in md
    assert "| snip | **-10.00** >2σ | -10.00 (n<2) |" in md


def test_a_gap_within_two_std_is_not_marked(tmp_path):
    out = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.90, 0.95), (0.70, 0.78)]):
        for criterion, value in (("px", a), ("snip", b)):
            run = write_run(out, criterion, 0.5, seed)
            metrics = json.loads((run / "metrics.json").read_text())
            write_json(run / "metrics.json", {**metrics, "test_acc": value})
    write_report(out, plots=False)
    row = read_report_csv(out)[("snip", 0.5)]
    assert float(row["gap_to_reference"]) == pytest.approx(0.01, abs=1e-9)
    assert row["gap_exceeds_2std"] == "false"
    assert "| snip | +1.00 |" in (out / "report" / "report.md").read_text()


def test_overlap_and_emptied_layers(sweep_dir):
    run = sweep_dir / "px" / "0.9" / "seed0"
    write_csv(run / "layers.csv", ["name", "shape", "kept", "total", "density", "effective_kept",
                                   "effective_density", "dense_macs", "masked_macs", "empty"],
              [["conv.weight", "2x2", 1, 4, 0.25, 1, 0.25, 4, 1, False],
               ["fc.weight", "4", 0, 4, 0.0, 0, 0.0, 4, 0, True]])
    write_csv(run / "prune_history.csv", ["round", *LAYERS],
              [[0, 4, 4], [1, 3, 2], [2, 2, 0], [3, 1, 0]])
    assert emptied_rounds(run) == {"fc.weight": 2}
    write_report(sweep_dir, plots=False)
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "`px/0.9/seed0`: 2 layers, 1 weights kept; empty: fc.weight (round 2)" in md
    assert "`snip/0.9/seed0`: no layers.csv (not pruned yet)" in md
    assert "| snip | 50.00 ± 0.00 (n=3) | — |" in md


def test_without_sweep_json_the_grid_is_inferred(sweep_dir):
    (sweep_dir / "sweep.json").unlink()
    result = write_report(sweep_dir, plots=False)
    rows = read_report_csv(sweep_dir)
    # snip never ran at 0.9, so the inferred grid has it as a missing cell all the same
    assert rows[("snip", 0.9)]["missing"] == "3"
    assert "no sweep.json" in result.summary


def test_mean_std_edge_cases():
    assert mean_std([]) == (None, None, 0)
    assert mean_std([0.5, None]) == (0.5, None, 1)
    mean, std, n = mean_std([0.1, 0.2, 0.6])
    assert (mean, n) == (pytest.approx(0.3), 3) and std == pytest.approx(statistics.stdev(
        [0.1, 0.2, 0.6]))


def test_cli_prints_the_table_and_reports_errors(sweep_dir, tmp_path, capsys):
    code = main(["report", str(sweep_dir), "--no-plots"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("## Test accuracy (%)") and "| snip |" in out
    assert "`px/0.9`: seed 2 not started" in out
    assert (sweep_dir / "report" / "report.md").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sweep folder" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no sweep.json and no run folders" in capsys.readouterr().err
    assert main(["report", str(sweep_dir), "--layers", "px/0.3/seed0"]) == 2
    assert "--layers px/0.3/seed0" in capsys.readouterr().err
    (sweep_dir / "sweep.json").write_text("{broken")
    assert main(["report", str(sweep_dir)]) == 2
    assert "sweep.json is unreadable" in capsys.readouterr().err


def test_a_sweep_with_nothing_finished_still_reports(tmp_path):
    out = tmp_path / "sweep"
    sweep = make_sweep(resolve_config("demo"), out, criteria="px", sparsities="0.9", seeds="0")
    write_json(out / "sweep.json", sweep.to_json())
    result = write_report(out)
    assert result.missing == ["dense/0/seed0", "px/0.9/seed0"]
    assert "| dense | — |" in result.summary and "| px |  | — |" in result.summary
    assert any("no accuracy figure" in n for n in result.notes) or any(
        "matplotlib" in n for n in result.notes)


def test_report_writes_non_empty_pngs(sweep_dir):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    write_csv(sweep_dir / "px" / "0.9" / "seed0" / "layers.csv",
              ["name", "kept", "density", "effective_density", "empty"],
              [["conv.weight", 1, 0.25, 0.25, False], ["fc.weight", 0, 0.0, 0.0, True]])
    result = write_report(sweep_dir)
    names = {p.name for p in result.files}
    expected = {"accuracy_vs_sparsity.png", "accuracy_vs_sparsity_log.png",
                "ntk_trace_fraction.png", "prune_time.png", "overlap_with_px.png",
                "layers_px_0.9_seed0.png", "accuracy_at_0.9.png", "ntk_at_0.5.png"}
    assert expected <= names, result.notes
    for name in expected:
        path = sweep_dir / "report" / name
        assert path.stat().st_size > 1000
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    md = (sweep_dir / "report" / "report.md").read_text()
    assert all(f"]({name})" in md for name in expected)
    assert json.loads((sweep_dir / "sweep.json").read_text())["criteria"] == CRITERIA
    # one run with a layers.csv: no comparison; two (chosen with --layers): one heatmap
    assert "layers_compare.png" not in names
    write_csv(sweep_dir / "px" / "0.5" / "seed0" / "layers.csv",
              ["name", "kept", "density", "effective_density", "empty"],
              [["conv.weight", 2, 0.5, 0.5, False], ["fc.weight", 1, 0.5, 0.5, False]])
    result = write_report(sweep_dir, layers=["px/0.9/seed0", "px/0.5/seed0"])
    assert (sweep_dir / "report" / "layers_compare.png") in result.files
    assert "](layers_compare.png)" in (sweep_dir / "report" / "report.md").read_text()
