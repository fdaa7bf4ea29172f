"""The report of a sweep folder: tables of mean +- std over seeds, figures, NTK numbers.

Reads only what the runs wrote (docs/design/CONTRACTS.md section 5): ``metrics.json`` (test accuracy, pruning
time), ``mask.pt`` (overlap with the reference criterion's mask at the same seed and sparsity),
``layers.csv`` and ``prune_history.csv`` (per-layer density, the round a layer emptied) and
``ntk.json`` (``pxprune ntk``). The grid comes from ``sweep.json``; without one it is inferred
from the run folders found. Every cell of the grid that lacks a finished run is flagged in the
table, the CSV and the list of missing runs, never dropped. Writes ``<sweep>/report/``:
``report.md``, ``report.csv`` and PNG figures (when matplotlib is installed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..stats import mean_std
from ..tables import markdown_table
from ..tasks import Task, get_task
from .errors import UserError
from .files import atomic_write_text, read_csv, read_json, write_csv
from .folder import LAYERS, MASK, METRICS, PRUNE_HISTORY
from .sources import DENSE
from .spec import sparsity_label
from .sweep import DEFAULT_CRITERIA, LOCK_DIR, SWEEP_FILE, grid_parts, read_sweep_file

log = logging.getLogger("pxprune")

REPORT_DIR = "report"
NTK_FILE = "ntk.json"
CSV_COLUMNS = ("criterion", "sparsity", "mean", "std", "n", "expected", "missing",
               "missing_runs", "effective_density", "prune_seconds", "ntk_trace_fraction",
               "ntk_n", "overlap", "gap_to_reference", "gap_exceeds_2std")
_SEED = re.compile(r"^seed(\d+)$")


# ------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class RunRecord:
    """One run folder of the sweep (``status``: finished, unfinished, absent or unreadable)."""

    criterion: str
    sparsity: str
    seed: int
    path: Path
    status: str
    metrics: dict[str, Any] | None = None
    ntk: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.criterion}/{self.sparsity}/seed{self.seed}"

    @property
    def reason(self) -> str:
        return {"absent": "not started", "unfinished": "unfinished: no metrics.json",
                "unreadable": "unreadable metrics.json"}.get(self.status, self.status)


@dataclasses.dataclass
class Cell:
    """The runs of one criterion at one sparsity: finished ones and the missing expected ones."""

    criterion: str
    sparsity: str
    expected: int
    runs: list[RunRecord]
    missing: list[RunRecord]

    @property
    def n(self) -> int:
        return len(self.runs)

    def stats(self, key: str) -> tuple[float | None, float | None, int]:
        return mean_std([_number((r.metrics or {}).get(key)) for r in self.runs])

    def ntk_stats(self) -> tuple[float | None, float | None, int]:
        values = [_number(r.ntk.get("trace_fraction")) for r in self.runs_with_ntk]
        return mean_std(values)

    runs_with_ntk: list[RunRecord] = dataclasses.field(default_factory=list)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None




@dataclasses.dataclass(frozen=True)
class Gap:
    """A criterion's mean accuracy minus the reference's at one sparsity, and whether it exceeds
    twice the larger of the two cells' standard deviations (None with fewer than two seeds in
    either cell: no spread to compare with)."""

    value: float
    exceeds: bool | None


def gap(cell: Cell, ref: Cell, metric: str = "test_acc") -> Gap | None:
    """``cell`` minus ``ref`` in the task's primary metric (None when either has no finished
    run)."""
    mean, std, _ = cell.stats(metric)
    ref_mean, ref_std, _ = ref.stats(metric)
    if mean is None or ref_mean is None:
        return None
    value = mean - ref_mean
    if std is None or ref_std is None:
        return Gap(value, None)
    return Gap(value, abs(value) > 2.0 * max(std, ref_std))


def _is_sparsity(name: str) -> bool:
    try:
        s = float(name)
    except ValueError:
        return False
    return 0.0 <= s < 1.0 and sparsity_label(s) == name


@dataclasses.dataclass
class SweepData:
    """Everything found in a sweep folder, arranged by the grid."""

    out: Path
    criteria: list[str]
    sparsities: list[str]
    seeds: list[int]
    records: dict[tuple[str, str, int], RunRecord]
    grid: dict[tuple[str, str], tuple[int, ...]]
    """The planned cells and the seeds each expects."""
    from_file: bool
    task: Task = dataclasses.field(default_factory=lambda: get_task("classification"))

    @property
    def metric(self) -> str:
        """The metrics.json key the report compares (the task's primary metric)."""
        return self.task.primary

    @property
    def label(self) -> str:
        """How that metric is called: ``Test accuracy``."""
        return self.task.primary_label[:1].upper() + self.task.primary_label[1:]

    def cell(self, criterion: str, sparsity: str) -> Cell:
        expected = list(self.grid.get((criterion, sparsity), ()))
        found = sorted((r for (c, s, _), r in self.records.items()
                        if c == criterion and s == sparsity), key=lambda r: r.seed)
        runs = [r for r in found if r.status == "finished"]
        done = {r.seed for r in runs}
        missing = []
        for seed in expected:
            if seed in done:
                continue
            record = self.records.get((criterion, sparsity, seed))
            missing.append(record or RunRecord(criterion, sparsity, seed,
                                               self.out / criterion / sparsity / f"seed{seed}",
                                               "absent"))
        cell = Cell(criterion, sparsity, len(expected) or len(found), runs, missing)
        cell.runs_with_ntk = [r for r in found if r.ntk is not None]
        return cell

    def dense(self) -> Cell:
        return self.cell(DENSE, "0")

    def run(self, criterion: str, sparsity: str, seed: int) -> RunRecord | None:
        return self.records.get((criterion, sparsity, seed))


def _read_record(criterion: str, sparsity: str, seed: int, path: Path,
                 metric: str = "test_acc") -> RunRecord:
    record = RunRecord(criterion, sparsity, seed, path, "unfinished")
    if (path / METRICS).is_file():
        try:
            metrics = read_json(path / METRICS)
            if not isinstance(metrics, dict) or _number(metrics.get(metric)) is None:
                raise ValueError(f"no {metric}")
            record.metrics, record.status = metrics, "finished"
        except (OSError, ValueError):
            record.status = "unreadable"
    if (path / NTK_FILE).is_file():
        try:
            ntk = read_json(path / NTK_FILE)
            if isinstance(ntk, dict):
                record.ntk = ntk
        except (OSError, ValueError):
            log.warning("%s is unreadable; left out of the NTK table", path / NTK_FILE)
    return record


def _order(label: str) -> tuple[int, str]:
    base = re.split(r"--|\+", label)[0]
    rank = DEFAULT_CRITERIA.index(base) if base in DEFAULT_CRITERIA else len(DEFAULT_CRITERIA)
    return rank, label


def collect(out: str | Path) -> SweepData:
    """Read a sweep folder (``sweep.json`` and every ``<criterion>/<sparsity>/seed<k>/``)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no sweep folder at {out}")
    spec = read_sweep_file(out)
    task = _task_of(out, spec)
    records: dict[tuple[str, str, int], RunRecord] = {}
    for crit_dir in sorted(out.iterdir()):
        if not crit_dir.is_dir() or crit_dir.name.startswith(".") or crit_dir.name in (
                REPORT_DIR, LOCK_DIR):
            continue
        for s_dir in sorted(crit_dir.iterdir()):
            if not s_dir.is_dir() or not _is_sparsity(s_dir.name):
                continue
            for seed_dir in sorted(s_dir.iterdir()):
                match = _SEED.match(seed_dir.name)
                if not seed_dir.is_dir() or not match:
                    continue
                key = (crit_dir.name, s_dir.name, int(match.group(1)))
                records[key] = _read_record(*key, seed_dir, task.primary)
    found_criteria = sorted({c for c, _, _ in records if c != DENSE}, key=_order)
    found_sparsities = sorted({s for c, s, _ in records if c != DENSE}, key=float)
    grid: dict[tuple[str, str], set[int]] = {}
    if spec is not None:
        criteria = [str(c) for c in spec["criteria"]]
        sparsities = sorted((sparsity_label(float(s)) for s in spec["sparsities"]), key=float)
        seeds = sorted(int(k) for k in spec["seeds"])
        for part in grid_parts(spec):
            part_seeds = {int(k) for k in part["seeds"]}
            grid.setdefault((DENSE, "0"), set()).update(part_seeds)
            for c in part["criteria"]:
                for v in part["sparsities"]:
                    grid.setdefault((str(c), sparsity_label(float(v))), set()).update(part_seeds)
        criteria += [c for c in found_criteria if c not in criteria]
        sparsities = sorted(set(sparsities) | set(found_sparsities), key=float)
    else:
        if not records:
            raise UserError(f"{out} holds no {SWEEP_FILE} and no run folders "
                            "(<criterion>/<sparsity>/seed<k>/); give a sweep folder")
        criteria, sparsities = found_criteria, found_sparsities
        seeds = sorted({k for _, _, k in records})
        grid = {(c, s): set(seeds) for c in criteria for s in sparsities}
        grid[(DENSE, "0")] = set(seeds)
    return SweepData(out=out, criteria=criteria, sparsities=sparsities, seeds=seeds,
                     records=records, grid={k: tuple(sorted(v)) for k, v in grid.items()},
                     from_file=spec is not None, task=task)


def _task_of(out: Path, spec: Mapping[str, Any] | None) -> Task:
    """The task of a sweep: its dataset's (from sweep.json, else the first run's config.yaml)."""
    from ..data import get_spec

    name = None
    if spec is not None:
        name = ((spec.get("config") or {}).get("data") or {}).get("name")
    if name is None:
        for config in sorted(out.glob("*/*/seed*/config.yaml")):
            try:
                name = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("name")
            except (OSError, yaml.YAMLError, AttributeError):
                continue
            if name:
                break
    try:
        return get_task(get_spec(name).task) if name else get_task("classification")
    except ValueError:
        return get_task("classification")


# ------------------------------------------------------------------------------ per-run files
def read_layers(path: Path) -> list[dict[str, Any]]:
    """``layers.csv`` rows with numbers and booleans parsed."""
    rows = []
    for row in read_csv(path / LAYERS):
        rows.append({"name": row["name"], "density": _number(row.get("density")),
                     "effective_density": _number(row.get("effective_density")),
                     "kept": int(float(row.get("kept") or 0)),
                     "empty": str(row.get("empty", "")).lower() in ("true", "1")})
    return rows


def emptied_rounds(path: Path) -> dict[str, int]:
    """Layer -> the first pruning round after which it kept no weight (prune_history.csv)."""
    file = path / PRUNE_HISTORY
    if not file.is_file():
        return {}
    rounds: dict[str, int] = {}
    for row in read_csv(file):
        try:
            r = int(row["round"])
        except (KeyError, ValueError):
            continue
        for name, value in row.items():
            if name == "round" or name in rounds:
                continue
            try:
                if int(float(value)) == 0:
                    rounds[name] = r
            except (TypeError, ValueError):
                continue
    return rounds


def _overlaps(data: SweepData, reference: str) -> dict[tuple[str, str], list[float]]:
    """(criterion, sparsity) -> the shared overlap with ``reference``'s mask, one per seed
    where both masks exist."""
    from ..masks import Mask, overlap

    result: dict[tuple[str, str], list[float]] = {}

    def read(path: Path) -> Any:
        try:
            return Mask.load(path / MASK) if (path / MASK).is_file() else None
        except (ValueError, OSError) as err:
            log.warning("%s is unreadable (%s); left out of the overlap", path / MASK, err)
            return None

    # one (sparsity, seed) at a time, so at most two masks are in memory
    cells: dict[tuple[str, int], list[RunRecord]] = {}
    for (criterion, sparsity, seed), record in sorted(data.records.items()):
        if criterion not in (reference, DENSE):
            cells.setdefault((sparsity, seed), []).append(record)
    for (sparsity, seed), records in cells.items():
        ref = data.run(reference, sparsity, seed)
        b = read(ref.path) if ref is not None else None
        if b is None:
            continue
        for record in records:
            a = read(record.path)
            if a is None:
                continue
            try:
                shared = overlap(a, b).shared
            except ValueError as err:
                log.warning("cannot compare %s with %s: %s", record.name, ref.name, err)
                continue
            result.setdefault((record.criterion, sparsity), []).append(shared)
    return result


# ------------------------------------------------------------------------------ formatting
def _pct(value: float | None, digits: int = 2, *, significant: bool = False) -> str:
    if value is None:
        return "—"
    if significant:  # NTK fractions span orders of magnitude
        return f"{100.0 * value:.{digits + 1}g}"
    return f"{100.0 * value:.{digits}f}"


def _cell_text(mean: float | None, std: float | None, n: int, expected: int,
               bold: bool = False, significant: bool = False) -> str:
    if n == 0:
        return "—"
    m = _pct(mean, significant=significant)
    text = m if std is None else f"{m} ± {_pct(std, significant=significant)}"
    if bold:
        text = f"**{text}**"
    count = f"n={n}" if expected <= n else f"n={n} of {expected}"
    return f"{text} ({count})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markdown_table(header, rows, align=["", *["r"] * (len(header) - 1)])


def _grid_table(data: SweepData, text: Callable[[str, str], str], skip: str | None = None) -> str:
    """One row per criterion (but ``skip``), one column per sparsity: ``text(criterion,
    sparsity)``."""
    rows = [[c, *(text(c, s) for s in data.sparsities)] for c in data.criteria if c != skip]
    return _table(["criterion", *data.sparsities], rows)


def accuracy_table(data: SweepData) -> str:
    """Rows: the dense run, then each criterion label; columns: sparsity 0 (dense only) and
    every sparsity of the grid; cells: mean ± std of the task's primary metric in % (n seeds)."""
    header = ["criterion", "0 (dense)", *data.sparsities]
    dense = data.dense()
    d_mean, d_std, _ = dense.stats(data.metric)
    rows = [[DENSE, _cell_text(d_mean, d_std, dense.n, dense.expected),
             *([""] * len(data.sparsities))]]
    best: dict[str, float] = {}
    cells = {(c, s): data.cell(c, s) for c in data.criteria for s in data.sparsities}
    for (_, s), cell in cells.items():
        mean = cell.stats(data.metric)[0]
        if mean is not None and mean > best.get(s, -math.inf):
            best[s] = mean
    for c in data.criteria:
        row = [c, ""]
        for s in data.sparsities:
            cell = cells[(c, s)]
            mean, std, _ = cell.stats(data.metric)
            if cell.n == 0 and (c, s) not in data.grid:
                row.append("")
                continue
            row.append(_cell_text(mean, std, cell.n, cell.expected,
                                  bold=mean is not None and mean == best.get(s)))
        rows.append(row)
    return _table(header, rows)


def gap_table(data: SweepData, cells: Mapping[tuple[str, str], Cell], reference: str) -> str:
    """Each criterion's mean primary metric minus ``reference``'s, in points, per sparsity; a
    gap larger than twice the larger std of the two cells is bold and marked ``>2σ``."""
    def text(c: str, s: str) -> str:
        g = gap(cells[(c, s)], cells[(reference, s)], data.metric)
        if g is None:
            return "—"
        value = f"{100.0 * g.value:+.2f}"
        if g.exceeds:
            return f"**{value}** >2σ"
        return value + (" (n<2)" if g.exceeds is None else "")

    return "\n".join([
        f"## Gap to {reference} (points)", "",
        f"Mean {data.task.primary_label} minus {reference}'s at the same sparsity. **Bold** with >2σ: the "
        "gap exceeds twice the larger of the two cells' standard deviations; (n<2): a cell has "
        "fewer than two seeds, so no spread to compare with.", "",
        _grid_table(data, text, skip=reference)])


def missing_runs(data: SweepData) -> list[RunRecord]:
    """Every expected run without a finished metrics.json, dense first."""
    missing = list(data.dense().missing)
    for c in data.criteria:
        for s in data.sparsities:
            missing += data.cell(c, s).missing
    return missing


def _seeds_text(records: list[RunRecord]) -> str:
    seeds = ", ".join(str(r.seed) for r in records)
    return f"seed{'s' if len(records) > 1 else ''} {seeds}"


def missing_lines(data: SweepData, missing: list[RunRecord]) -> list[str]:
    """The missing runs as markdown list items, compact enough to read on a sweep stopped early:
    a sparsity none of whose runs started is one line, the other runs not started are grouped by
    cell (``px/0.9``: seeds 1, 2), and unfinished or unreadable runs are listed one by one."""
    absent: dict[str, list[RunRecord]] = {}
    for r in missing:
        if r.status == "absent" and r.criterion != DENSE:
            absent.setdefault(r.sparsity, []).append(r)
    whole = set()
    for sparsity, records in absent.items():
        if len(records) == sum(len(data.grid.get((c, sparsity), ())) for c in data.criteria):
            whole.add(sparsity)
    lines = [f"- sparsity {s}: not started (none of its {len(absent[s])} runs)"
             for s in data.sparsities if s in whole]
    cells: dict[tuple[str, str], list[RunRecord]] = {}
    for r in missing:
        if r.status != "absent":
            lines.append(f"- `{r.name}` ({r.reason})")
        elif r.sparsity not in whole:
            cells.setdefault((r.criterion, r.sparsity), []).append(r)
    lines += [f"- `{c}/{s}`: {_seeds_text(rs)} not started" for (c, s), rs in cells.items()]
    return lines


def _grid_note(data: SweepData) -> str:
    total = sum(len(seeds) for seeds in data.grid.values())
    source = SWEEP_FILE if data.from_file else "the run folders found (no sweep.json)"
    full = len(data.seeds) * (1 + len(data.criteria) * len(data.sparsities))
    if total == full:
        return (f"Grid from {source}: {len(data.criteria)} criteria x {len(data.sparsities)} "
                f"sparsities x {len(data.seeds)} seeds (seeds {', '.join(map(str, data.seeds))}) "
                f"plus a dense run per seed: {total} runs.")
    return (f"Grid from {source}, built in parts (not every criterion at every sparsity): "
            f"{len(data.criteria)} criteria, {len(data.sparsities)} sparsities, seeds "
            f"{', '.join(map(str, data.seeds))}, a dense run per seed: {total} runs.")


def summary(data: SweepData) -> str:
    """The accuracy table with its caption and the list of missing runs (what the CLI prints)."""
    missing = missing_runs(data)
    parts = [f"## {data.label} (%)", "",
             "Mean ± std (sample std, ddof 1) over seeds; n = finished runs in the cell. "
             "The best mean per sparsity is in bold; — marks a cell without a finished run.",
             "", _grid_note(data), "", accuracy_table(data), ""]
    if missing:
        parts.append(f"**Missing runs ({len(missing)})** — flagged in the table and "
                     f"report.csv:")
        parts.append("")
        parts += missing_lines(data, missing)
    else:
        parts.append("All runs of the grid are finished.")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ the report
@dataclasses.dataclass
class ReportOutput:
    """What :func:`write_report` produced: the summary (accuracy table and missing runs), the
    whole report.md, the files written and notes (plots left out and why)."""

    summary: str
    markdown: str
    files: list[Path]
    notes: list[str]
    missing: list[str]


def default_layer_runs(data: SweepData) -> list[RunRecord]:
    """Each criterion at the highest sparsity of the grid with the lowest seed (seed 0)."""
    if not data.sparsities or not data.seeds:
        return []
    top = max(data.sparsities, key=float)
    seed = min(data.seeds)
    chosen = []
    for c in data.criteria:
        chosen.append(data.run(c, top, seed) or RunRecord(
            c, top, seed, data.out / c / top / f"seed{seed}", "absent"))
    return chosen


def _resolve_layer_runs(data: SweepData, names: Sequence[str]) -> list[RunRecord]:
    chosen = []
    for name in names:
        path = Path(name)
        if not path.is_absolute():
            path = data.out / name
        found = next((r for r in data.records.values()
                      if r.path.resolve() == path.resolve()), None)
        if found is None:
            raise UserError(f"--layers {name}: no run folder <criterion>/<sparsity>/seed<k> "
                            f"there in {data.out}")
        chosen.append(found)
    return chosen


def write_report(out: str | Path, *, layers: Sequence[str] | None = None,
                 reference: str = "px", plots: bool = True) -> ReportOutput:
    """Aggregate the sweep in ``out`` and write ``out/report/``: report.md, report.csv and the
    figures (accuracy vs sparsity, linear and log; per-layer density of the ``layers`` runs,
    default :func:`default_layer_runs`; pruning time; overlap with ``reference``; NTK trace)."""
    data = collect(out)
    layer_runs = (_resolve_layer_runs(data, layers) if layers else default_layer_runs(data))
    folder = data.out / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    files: list[Path] = []

    cells = {(c, s): data.cell(c, s) for c in data.criteria for s in data.sparsities}
    dense = data.dense()
    overlaps = _overlaps(data, reference) if reference in data.criteria else {}
    has_ntk = any(r.ntk is not None for r in data.records.values())

    # --- report.csv: one row per criterion x sparsity (and the dense cell)
    csv_rows = []
    for cell in [dense, *cells.values()]:
        if cell.n == 0 and not cell.missing:
            continue  # outside the grid and never run
        mean, std, _ = cell.stats(data.metric)
        eff = cell.stats("effective_density")[0]
        secs = cell.stats("prune_seconds")[0]
        ntk_mean, _, ntk_n = cell.ntk_stats()
        ov = mean_std(overlaps.get((cell.criterion, cell.sparsity), []))[0]
        ref = cells.get((reference, cell.sparsity))
        g = gap(cell, ref, data.metric) if ref is not None and cell.criterion != reference else None
        csv_rows.append([cell.criterion, float(cell.sparsity), mean, std, cell.n, cell.expected,
                         len(cell.missing), " ".join(r.name for r in cell.missing), eff, secs,
                         ntk_mean, ntk_n, ov, None if g is None else g.value,
                         None if g is None or g.exceeds is None else g.exceeds])
    write_csv(folder / "report.csv", CSV_COLUMNS, csv_rows)
    files.append(folder / "report.csv")

    # --- figures
    figures: dict[str, Path] = {}
    layer_figures: list[tuple[RunRecord, Path | None, str]] = []
    plot_mod = None
    if plots:
        try:
            from ..analysis import plots as plot_mod
        except ImportError:
            notes.append("no figures: matplotlib is not installed (pip install pxprune[plots])")
    if plot_mod is not None:
        figures.update(_accuracy_figures(plot_mod, data, cells, dense, folder, notes))
        if has_ntk:
            figures.update(_ntk_figure(plot_mod, data, cells, folder, notes))
        timing = [{"criterion": r.criterion, "seconds": r.metrics["prune_seconds"]}
                  for r in data.records.values()
                  if r.status == "finished" and r.criterion != DENSE
                  and _number(r.metrics.get("prune_seconds")) is not None]
        if timing:
            figures["prune_time"] = plot_mod.prune_time(timing, folder / "prune_time.png")
        else:
            notes.append("no pruning-time figure: no finished pruned run yet")
        overlap_rows = [{"criterion": c, "sparsity": float(s), "overlap": v}
                        for (c, s), values in overlaps.items() for v in values]
        if overlap_rows:
            figures["overlap"] = plot_mod.overlap_with(
                overlap_rows, folder / f"overlap_with_{reference}.png", reference=reference)
        elif reference not in data.criteria:
            notes.append(f"no overlap figure: the sweep has no {reference!r} runs")
        else:
            notes.append(f"no overlap figure: no pair of masks with {reference!r} yet")
    for record in layer_runs:
        layer_figures.append(_layer_figure(plot_mod, record, folder))
    if plot_mod is not None:
        compare = _layer_heatmap(plot_mod, layer_runs, folder)
        if compare is not None:
            figures["layers_compare"] = compare
    files += list(figures.values()) + [p for _, p, _ in layer_figures if p is not None]

    # --- report.md
    text = _markdown(data, cells, dense, overlaps, has_ntk, reference, figures, layer_figures,
                     notes)
    atomic_write_text(folder / "report.md", text)
    files.insert(0, folder / "report.md")
    return ReportOutput(summary=summary(data), markdown=text, files=files, notes=notes,
                        missing=[r.name for r in missing_runs(data)])


def _accuracy_figures(plot_mod: Any, data: SweepData, cells: Mapping[tuple[str, str], Cell],
                      dense: Cell, folder: Path, notes: list[str]) -> dict[str, Path]:
    rows = []
    for (c, s), cell in cells.items():
        if cell.n == 0 and not cell.missing:
            continue
        mean, std, _ = cell.stats(data.metric)
        rows.append({"criterion": c, "sparsity": float(s), "mean": mean, "std": std,
                     "n": cell.n})
    if not any(r["n"] for r in rows):
        notes.append("no accuracy figure: no finished pruned run yet")
        return {}
    d_mean, d_std, _ = dense.stats(data.metric)
    dense_arg = {"mean": d_mean, "std": d_std, "n": dense.n} if dense.n else None
    metric = data.task.primary_label
    return {
        "accuracy": plot_mod.accuracy_vs_sparsity(
            rows, folder / "accuracy_vs_sparsity.png", dense=dense_arg,
            title=f"{data.label} vs sparsity", metric=metric),
        "accuracy_log": plot_mod.accuracy_vs_sparsity(
            rows, folder / "accuracy_vs_sparsity_log.png", dense=dense_arg, log_scale=True,
            title=f"{data.label} vs sparsity (log scale of density)", metric=metric),
        **_per_seed_figure(plot_mod, data, cells, folder, data.metric, dense=dense_arg),
    }


def _runs_of(cell: Cell, key: str) -> list[RunRecord]:
    return cell.runs_with_ntk if key == "ntk" else cell.runs


def _per_seed_figure(plot_mod: Any, data: SweepData, cells: Mapping[tuple[str, str], Cell],
                     folder: Path, key: str, *, dense: Any = None) -> dict[str, Path]:
    """Every seed of every criterion at the highest sparsity with a finished run (key
    ``test_acc``: ``accuracy_at_<s>.png``) or with an ntk.json (key ``ntk``: ``ntk_at_<s>.png``)."""
    done = [s for s in data.sparsities
            if any(_runs_of(cells[c, s], key) for c in data.criteria if (c, s) in cells)]
    if not done:
        return {}
    s = max(done, key=float)
    rows = [{"criterion": c,
             "value": r.ntk.get("trace_fraction") if key == "ntk" else (r.metrics or {}).get(key)}
            for c in data.criteria if (c, s) in cells for r in _runs_of(cells[c, s], key)]
    if key == "ntk":
        return {"ntk_seeds": plot_mod.seeds_at_sparsity(
            rows, folder / f"ntk_at_{s}.png", log_scale=True,
            title=f"NTK trace kept by the mask per seed, sparsity {s}",
            metric="fraction of the dense NTK trace")}
    return {"accuracy_seeds": plot_mod.seeds_at_sparsity(
        rows, folder / f"accuracy_at_{s}.png", dense=dense,
        title=f"{data.label} per seed, sparsity {s}", metric=data.task.primary_label)}


def _ntk_figure(plot_mod: Any, data: SweepData, cells: Mapping[tuple[str, str], Cell],
                folder: Path, notes: list[str]) -> dict[str, Path]:
    rows = []
    for (c, s), cell in cells.items():
        mean, std, n = cell.ntk_stats()
        if n:
            rows.append({"criterion": c, "sparsity": float(s), "mean": mean, "std": std, "n": n})
    if not rows:
        notes.append("no NTK figure: ntk.json only in dense runs")
        return {}
    return {"ntk": plot_mod.accuracy_vs_sparsity(
        rows, folder / "ntk_trace_fraction.png", title="NTK trace kept by the mask",
        metric="fraction of the dense NTK trace"),
        **_per_seed_figure(plot_mod, data, cells, folder, "ntk")}


def _layer_heatmap(plot_mod: Any, records: Sequence[RunRecord], folder: Path) -> Path | None:
    """All chosen runs in one heatmap of per-layer effective density (two or more runs with a
    readable layers.csv), labelled by criterion (and sparsity and seed where they differ)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    readable = []
    for record in records:
        try:
            if (record.path / LAYERS).is_file():
                readable.append((record, read_layers(record.path)))
        except (OSError, KeyError, ValueError):
            continue
    if len(readable) < 2:
        return None
    sparsities = {r.sparsity for r, _ in readable}
    seeds = {r.seed for r, _ in readable}
    for record, layers in readable:
        label = record.criterion
        if len(sparsities) > 1:
            label += f" @ {record.sparsity}"
        if len(seeds) > 1:
            label += f" seed{record.seed}"
        rows[label] = layers
    where = []
    if len(sparsities) == 1:
        where.append(f"sparsity {next(iter(sparsities))}")
    if len(seeds) == 1:
        where.append(f"seed {next(iter(seeds))}")
    title = "Per-layer effective density (%)" + (f": {', '.join(where)}" if where else "")
    return plot_mod.layer_density_heatmap(rows, folder / "layers_compare.png", title=title)


def _layer_figure(plot_mod: Any, record: RunRecord,
                  folder: Path) -> tuple[RunRecord, Path | None, str]:
    """(run, its figure or None, a line for report.md)."""
    if not (record.path / LAYERS).is_file():
        return record, None, f"`{record.name}`: no layers.csv (not pruned yet)"
    try:
        rows = read_layers(record.path)
    except (OSError, KeyError, ValueError) as err:
        return record, None, f"`{record.name}`: layers.csv is unreadable ({err})"
    rounds = emptied_rounds(record.path)
    empty = [r["name"] for r in rows if r["empty"]]
    described = [f"{n} (round {rounds[n]})" if n in rounds else f"{n} (no effective weight)"
                 for n in empty]
    kept = sum(r["kept"] for r in rows)
    line = (f"`{record.name}`: {len(rows)} layers, {kept} weights kept; "
            + (f"empty: {', '.join(described)}" if empty else "no empty layer"))
    if plot_mod is None:
        return record, None, line
    name = f"layers_{record.criterion}_{record.sparsity}_seed{record.seed}.png"
    path = plot_mod.layer_density(
        rows, folder / name, empty_round=rounds, log_scale=True,
        title=f"Per-layer density: {record.criterion} at sparsity {record.sparsity}, "
              f"seed {record.seed}")
    return record, path, line


def _markdown(data: SweepData, cells: Mapping[tuple[str, str], Cell], dense: Cell,
              overlaps: Mapping[tuple[str, str], list[float]], has_ntk: bool, reference: str,
              figures: Mapping[str, Path], layer_figures: Sequence[tuple[RunRecord, Path | None,
                                                                          str]],
              notes: Sequence[str]) -> str:
    parts = [f"# Sweep report: {data.out}", "", summary(data)]
    if "accuracy" in figures:
        what = data.task.primary_label
        parts += ["", f"![{what} vs sparsity]({figures['accuracy'].name})", "",
                  f"![{what} vs sparsity, log scale]({figures['accuracy_log'].name})"]
    if "accuracy_seeds" in figures:
        parts += ["", f"![{data.task.primary_label} per seed]({figures['accuracy_seeds'].name})"]
    if reference in data.criteria:
        parts += ["", gap_table(data, cells, reference)]

    if has_ntk:
        def ntk_text(c: str, s: str) -> str:
            mean, std, n = cells[(c, s)].ntk_stats()
            return _cell_text(mean, std, n, n, significant=True)

        parts += ["", "## NTK trace kept (%)", "",
                  "Trace of the masked empirical NTK at initialisation over the dense one "
                  "(`pxprune ntk`), mean ± std over the seeds with an ntk.json.", "",
                  _grid_table(data, ntk_text)]
        if "ntk" in figures:
            parts += ["", f"![NTK trace fraction]({figures['ntk'].name})"]
        if "ntk_seeds" in figures:
            parts += ["", f"![NTK trace fraction per seed]({figures['ntk_seeds'].name})"]

    parts += ["", "## Pruning time (s)", ""]
    timing_rows = []
    for c in data.criteria:
        values = [r.metrics.get("prune_seconds") for r in data.records.values()
                  if r.criterion == c and r.status == "finished"]
        mean, std, n = mean_std(_number(v) for v in values)
        timing_rows.append([c, "—" if mean is None else f"{mean:.2f}",
                            "" if std is None else f"{std:.2f}", str(n)])
    parts.append(_table(["criterion", "mean", "std", "n"], timing_rows))
    if "prune_time" in figures:
        parts += ["", f"![pruning time]({figures['prune_time'].name})"]

    if overlaps:
        def overlap_text(c: str, s: str) -> str:
            mean, std, n = mean_std(overlaps.get((c, s), []))
            return _cell_text(mean, std, n, n)

        parts += ["", f"## Overlap with {reference}'s mask (%)", "",
                  "Weights kept by both masks over the kept weights of the smaller "
                  "(`masks.overlap(...).shared`), same seed and sparsity; two independent "
                  "masks of density d overlap by about d.", "",
                  _grid_table(data, overlap_text, skip=reference)]
        if "overlap" in figures:
            parts += ["", f"![overlap with {reference}]({figures['overlap'].name})"]

    if layer_figures:
        parts += ["", "## Per-layer density", ""]
        parts += [f"- {line}" for _, _, line in layer_figures]
        if "layers_compare" in figures:
            parts += ["", f"![per-layer effective density of every chosen run]"
                          f"({figures['layers_compare'].name})"]
        for record, path, _ in layer_figures:
            if path is not None:
                parts += ["", f"![per-layer density of {record.name}]({path.name})"]

    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts).rstrip() + "\n"
