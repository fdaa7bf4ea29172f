"""Sweeps: a grid of ordinary run folders, re-enterable after a crash
(docs/design/CONTRACTS.md sections 5, 6).

A sweep over criteria x sparsities x seeds writes ``<out>/<criterion label>/<sparsity>/seed<k>/``
for every cell plus one dense run per seed (``<out>/dense/0/seed<k>/``), and ``<out>/sweep.json``
(the grid and the run options). Each run is planned and executed by :mod:`.run`, so its skip and
resume rules are the run's own: a folder with ``metrics.json`` is skipped, one with ``last.pt``
resumes, one stopped while pruning prunes again. All criteria at one seed share theta_0, the
pruning split and the data order because all three come from the seed's streams (section 4).

Several worker processes (``jobs``) take runs from one queue; each run holds an exclusive
lock (``filelock``) on ``<out>/.locks/<criterion>/<sparsity>/seed<k>.lock`` while it executes, so
two sweeps started on the same folder never run the same cell twice. The operating system drops
the lock of a process that dies, so a lock left by a dead process is simply taken over.

``devices`` gives each worker its own device (``cuda:0,cuda:1``). Several sweep processes, on one
machine or on several sharing the folder, split a grid through the same locks: a process skips a
run another one holds and comes back to it at the end, waiting for it to end (or, with
``wait=False``, reporting it as held). Every run executed leaves a record of where it ran (host,
PID, device) in ``<out>/.locks/<criterion>/<sparsity>/seed<k>.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .config import RunConfig, with_prune
from .demo import demo_config
from .errors import UserError
from .files import read_json, write_json
from .folder import METRICS
from .run import Observer, Plan, execute, plan, resolve_device, run_label
from .sources import DENSE
from .spec import parse_criterion, sparsity_label, split_top_level

log = logging.getLogger("pxprune")

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "pxprune.sweep"
LOCK_DIR = ".locks"
FAILURE_LOG = "sweep_failures.log"
PAPER_SPARSITIES = (0.36, 0.5904, 0.7379, 0.8322, 0.8926, 0.9313, 0.956, 0.9719, 0.982)
"""1 - 0.8 ** (2k), k = 1..9, rounded as in the paper (docs/design/CONTRACTS.md section 6)."""
DEFAULT_CRITERIA = ("px", "snip", "grasp", "synflow", "synflow_l2", "ntksap", "magnitude",
                    "random")
DEFAULT_SEEDS = (0, 1, 2)
START_METHOD = "spawn"
"""How worker processes start: ``spawn`` is safe after CUDA or OpenMP were used in the parent."""
GRID_KEYS = ("criterion", "options", "sparsity")
"""``prune.*`` keys that the grid sets per run (left out of the sweep's base configuration)."""


# ------------------------------------------------------------------------------ the grid
@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One cell of the grid: its row label, sparsity, seed, configuration and folder."""

    criterion: str
    sparsity: float
    seed: int
    config: RunConfig
    out: Path

    @property
    def name(self) -> str:
        """``px/0.982/seed0``: the folder relative to the sweep's."""
        return f"{self.criterion}/{sparsity_label(self.sparsity)}/seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep: ``criteria`` are folder labels (``px--classifier=signed``) in the
    order given, without ``dense`` (always added, one run per seed)."""

    out: Path
    base: RunConfig
    criteria: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    run_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def runs(self) -> list[SweepRun]:
        """The dense run of every seed, then sparsity by sparsity from the highest (where
        criteria differ most), every seed, every criterion in the order given: a sweep stopped
        early has whole cells, each with all its seeds, so it drops sparsities before seeds."""
        runs = [self._run(DENSE, 0.0, seed, dataclasses.replace(demo_config(self.base, DENSE),
                                                                 seed=seed))
                for seed in self.seeds]
        for s in sorted(self.sparsities, reverse=True):
            for seed in self.seeds:
                for label in self.criteria:
                    runs.append(self._run(label, s, seed, grid_config(self.base, label, s, seed)))
        return runs

    def _run(self, label: str, sparsity: float, seed: int, config: RunConfig) -> SweepRun:
        return SweepRun(criterion=label, sparsity=sparsity, seed=seed, config=config,
                        out=self.out / label / sparsity_label(sparsity) / f"seed{seed}")

    def to_json(self) -> dict[str, Any]:
        """What ``sweep.json`` holds; :func:`check_sweep_file` compares all but ``run_options``
        and ``recipe`` (the resolved ``config`` says what they meant)."""
        return {
            "format": SWEEP_FORMAT,
            "version": 1,
            "recipe": self.base.recipe,
            "criteria": list(self.criteria),
            "sparsities": list(self.sparsities),
            "seeds": list(self.seeds),
            "dense": True,
            "run_options": dict(self.run_options),
            "config": base_identity(self.base),
        }


def grid_config(base: RunConfig, spec: str, sparsity: float, seed: int) -> RunConfig:
    """``base`` with the criterion spec (``px[bn=train]``, ``px--bn=train+shuffled``),
    sparsity and seed of one cell; ``dense`` gives the dense run."""
    parsed = parse_criterion(spec)
    if parsed.name == DENSE:
        return dataclasses.replace(demo_config(base, spec), seed=seed)
    config = with_prune(base, criterion=parsed.name, options=parsed.options,
                        sparsity=float(sparsity), shuffle=parsed.shuffle or base.prune.shuffle)
    if parsed.reinit:
        config = dataclasses.replace(config,
                                     train=dataclasses.replace(config.train, reinit=True))
    return dataclasses.replace(config, seed=seed)


def base_identity(base: RunConfig) -> dict[str, Any]:
    """The resolved configuration every run shares (the grid's own keys and the seed removed)."""
    d = base.identity()
    for key in GRID_KEYS:
        d["prune"].pop(key, None)
    d.pop("seed", None)
    return d


def parse_sparsities(text: str | None) -> tuple[float, ...]:
    """``"0.36,0.5904"`` -> (0.36, 0.5904); None -> the paper's grid. Each in (0, 1), once."""
    if text is None:
        return PAPER_SPARSITIES
    values: list[float] = []
    for item in (t.strip() for t in str(text).split(",")):
        try:
            s = float(item)
        except ValueError:
            raise UserError(f"bad sparsity {item!r} in --sparsities; give numbers like "
                            "0.36,0.5904,0.982") from None
        if not 0.0 < s < 1.0:
            raise UserError(f"sparsity {item} is not in (0, 1); the dense run (sparsity 0) is "
                            "added to every sweep by itself")
        if any(sparsity_label(v) == sparsity_label(s) for v in values):
            raise UserError(f"sparsity {item} is given twice in --sparsities")
        values.append(s)
    return tuple(values)


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); None -> (0, 1, 2). Non-negative integers, once each."""
    if text is None:
        return DEFAULT_SEEDS
    seeds: list[int] = []
    for item in (t.strip() for t in str(text).split(",")):
        try:
            k = int(item)
        except ValueError:
            raise UserError(f"bad seed {item!r} in --seeds; give integers like 0,1,2") from None
        if k < 0:
            raise UserError(f"seed {k} is negative; seeds are non-negative integers")
        if k in seeds:
            raise UserError(f"seed {k} is given twice in --seeds")
        seeds.append(k)
    return tuple(seeds)


def criterion_labels(base: RunConfig, specs: Sequence[str]) -> tuple[str, ...]:
    """The folder label of every criterion spec (validated against the registry and its
    options), in order, each once; ``dense`` is left out (every sweep has it)."""
    labels: list[str] = []
    for spec in specs:
        if parse_criterion(spec).name == DENSE:
            continue
        label = run_label(grid_config(base, spec, 0.5, 0))
        if label not in labels:
            labels.append(label)
    if not labels:
        raise UserError("--criteria names no criterion to prune with; give e.g. px,snip,random")
    return tuple(labels)


def make_sweep(base: RunConfig, out: str | Path, *, criteria: Sequence[str] | str | None = None,
               sparsities: Sequence[float] | str | None = None,
               seeds: Sequence[int] | str | None = None,
               run_options: Mapping[str, Any] | None = None) -> Sweep:
    """Validate the grid (raises :class:`UserError`); strings are parsed as on the command line
    and None means the default (every criterion of the paper, its sparsities, seeds 0, 1, 2)."""
    if criteria is None:
        criteria = DEFAULT_CRITERIA
    elif isinstance(criteria, str):
        criteria = split_top_level(criteria)
        if any(not c for c in criteria):
            raise UserError("empty criterion in --criteria; separate criteria with single commas")
    if sparsities is None or isinstance(sparsities, str):
        sparsities = parse_sparsities(sparsities)
    else:
        sparsities = parse_sparsities(",".join(repr(float(s)) for s in sparsities))
    if seeds is None or isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    else:
        seeds = parse_seeds(",".join(str(int(k)) for k in seeds))
    return Sweep(out=Path(out), base=base, criteria=criterion_labels(base, list(criteria)),
                 sparsities=tuple(sparsities), seeds=tuple(seeds),
                 run_options=dict(run_options or {}))


# ------------------------------------------------------------------------------ the folder
def read_sweep_file(out: str | Path) -> dict[str, Any] | None:
    """``<out>/sweep.json`` (None when absent); a broken one is a :class:`UserError`."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable; restore it or choose another folder") from None
    if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
        raise UserError(f"{path} is not a pxprune sweep.json")
    for key in ("criteria", "sparsities", "seeds"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path} has no {key} list; it is not a pxprune sweep.json")
    return data


def _labels(values: Sequence[Any]) -> list[str]:
    return sorted(sparsity_label(float(v)) for v in values)


def grid_parts(data: Mapping[str, Any]) -> list[dict[str, list[Any]]]:
    """The grids a sweep.json was built from: its ``parts`` (a sweep extended with ``--extend``
    or merged by ``pxprune export``), or its one grid."""
    parts = data.get("parts")
    if isinstance(parts, list) and parts:
        return [{k: list(p[k]) for k in ("criteria", "sparsities", "seeds")} for p in parts]
    return [{k: list(data[k]) for k in ("criteria", "sparsities", "seeds")}]


def _same_grid(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (sorted(a["criteria"]) == sorted(b["criteria"])
            and _labels(a["sparsities"]) == _labels(b["sparsities"])
            and sorted(a["seeds"]) == sorted(b["seeds"]))


def _grid_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    for key, norm in (("criteria", sorted), ("sparsities", _labels), ("seeds", sorted)):
        if norm(old.get(key, [])) != norm(new[key]):
            return f"{key} {old.get(key)} there, {new[key]} here"
    return _base_difference(old, new)


def _base_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    from .folder import _first_difference

    return _first_difference(old.get("config"), new["config"], "config")


def merged_sweep_json(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with the grid of ``new`` added as a part (the base configurations must be equal:
    a :class:`UserError` otherwise). The top-level lists become the unions, in order of first
    appearance, so readers of one-grid files see every criterion, sparsity and seed."""
    diff = _base_difference(old, new)
    if diff:
        raise UserError(f"the sweeps differ beyond their grids ({diff}); only sweeps of one base "
                        "configuration can be merged")
    parts = grid_parts(old)
    for part in grid_parts(new):
        if not any(_same_grid(part, p) for p in parts):
            parts.append(part)
    merged = dict(old)

    def union(key: str, label: Any = lambda v: v) -> list[Any]:
        seen: dict[Any, Any] = {}
        for part in parts:
            for v in part[key]:
                seen.setdefault(label(v), v)
        return list(seen.values())

    merged["criteria"] = union("criteria")
    merged["sparsities"] = sorted(union("sparsities", lambda v: sparsity_label(float(v))),
                                  key=float, reverse=True)
    merged["seeds"] = sorted(union("seeds"))
    merged["parts"] = parts if len(parts) > 1 else []
    if not merged["parts"]:
        merged.pop("parts")
    return merged


def check_sweep_file(sweep: Sweep, *, extend: bool = False) -> dict[str, Any] | None:
    """Refuse a folder that holds another sweep, or files that are not a sweep. Returns what
    sweep.json must hold after this sweep (None: it already does, a re-entry). ``extend``: a
    folder holding a sweep of the same base configuration takes this grid as one more part."""
    out = sweep.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    existing = read_sweep_file(out)
    new = sweep.to_json()
    if existing is None:
        if not (out.is_dir() and any(p.name != LOCK_DIR and not p.name.startswith(f".{SWEEP_FILE}.")
                                     for p in out.iterdir())):
            return new
        existing = read_sweep_file(out)  # another sweep process on this folder may just have written it
        if existing is None:
            raise UserError(f"{out} is not empty and holds no {SWEEP_FILE}; choose another --out")
    if any(_same_grid(part, new) for part in grid_parts(existing)) and not _base_difference(
            existing, new):
        return None
    if extend:
        return merged_sweep_json(existing, new)
    diff = _grid_difference(existing, new)
    if diff:
        raise UserError(f"{out} holds a different sweep ({diff}); choose another --out, run "
                        "the sweep with the options in its sweep.json, or add --extend to add "
                        "this grid to it")
    return None


def prepare(sweep: Sweep, *, extend: bool = False) -> list[tuple[SweepRun, Plan]]:
    """Check the folder and plan every run (nothing is built, read or written yet but
    sweep.json, last). A run folder holding another run is a :class:`UserError`. ``extend``: see
    :func:`check_sweep_file`."""
    update = check_sweep_file(sweep, extend=extend)
    plans = [(run, plan(run.config, run.out)) for run in sweep.runs()]
    if update is not None:
        write_json(sweep.out / SWEEP_FILE, update)
    return plans


# ------------------------------------------------------------------------------ locks
class RunLock:
    """An exclusive, non-blocking lock on a file (``filelock``: ``flock`` on POSIX, ``msvcrt`` on
    Windows), with its owner's PID in ``<lock>.pid`` for messages.

    The operating system releases the lock of a process that dies, so a lock left by a dead
    process is simply taken over."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path))
        self.holder: str | None = None

    @property
    def _pid_file(self) -> Path:
        return self.path.with_name(self.path.name + ".pid")

    def acquire(self) -> bool:
        """True when locked; False when another live process holds it (``holder``: its PID)."""
        if self._lock.is_locked:
            raise RuntimeError(f"{self.path} is already locked by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            try:
                self.holder = self._pid_file.read_text().strip() or "?"
            except OSError:
                self.holder = "?"
            return False
        self._pid_file.write_text(f"{os.getpid()}\n")
        self.holder = str(os.getpid())
        return True

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            self._pid_file.unlink(missing_ok=True)
        finally:
            self._lock.release()

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise RuntimeError(f"{self.path} is held by {self.holder}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(run: SweepRun) -> Path:
    """``<sweep>/.locks/<criterion>/<sparsity>/seed<k>.lock`` (outside the run folder, which a
    stray file would make unrecognisable as a run)."""
    sweep_dir = run.out.parent.parent.parent
    return sweep_dir / LOCK_DIR / run.criterion / sparsity_label(run.sparsity) / \
        f"seed{run.seed}.lock"


def record_path(run: SweepRun) -> Path:
    """``<sweep>/.locks/<criterion>/<sparsity>/seed<k>.json``: where the run was executed."""
    return lock_path(run).with_suffix(".json")


def write_record(run: SweepRun, status: str, device: Any, seconds: float) -> None:
    """Record which host, process and device executed ``run`` (best effort: never raises)."""
    try:
        where = str(resolve_device(device))
    except Exception:  # noqa: BLE001 - a bad device is the run's failure, reported elsewhere
        where = str(device)
    try:
        write_json(record_path(run), {
            "run": run.name, "status": status, "host": socket.gethostname(),
            "pid": os.getpid(), "device": where, "seconds": round(seconds, 3),
            "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError:
        pass


def read_record(run: SweepRun) -> dict[str, Any] | None:
    """The record :func:`write_record` left for ``run`` (None when absent or unreadable)."""
    try:
        data = read_json(record_path(run))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ran_where(run: SweepRun) -> str:
    """``host pid 123 on cuda:1`` from the run's record, or ``unknown``."""
    r = read_record(run)
    if r is None:
        return "unknown"
    return f"{r.get('host', '?')} pid {r.get('pid', '?')} on {r.get('device', '?')}"


def parse_devices(text: str) -> tuple[str, ...]:
    """``"cuda:0,cuda:1"`` -> ("cuda:0", "cuda:1"): one sweep worker per device (repeats allowed:
    ``cpu,cpu`` is two workers on the CPU). Only ``cpu`` and ``cuda[:N]`` of a present GPU."""
    import torch

    devices: list[str] = []
    for item in (t.strip() for t in str(text).split(",")):
        try:
            dev = torch.device(item)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise UserError(f"bad device {item!r} in --devices; give e.g. cuda:0,cuda:1 or cpu,cpu")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--devices names {item}, but no CUDA GPU is available; give cpu")
            count = torch.cuda.device_count()
            if dev.index is not None and dev.index >= count:
                raise UserError(f"--devices names {item}, but only {count} GPU(s) are visible "
                                f"(cuda:0 to cuda:{count - 1})")
        devices.append(str(dev))
    return tuple(devices)


# ------------------------------------------------------------------------------ running
@dataclasses.dataclass
class Outcome:
    """How one run ended: ``done`` (executed now), ``finished`` (already finished),
    ``elsewhere`` (finished by another process meanwhile; ``message``: where), ``failed``
    (``message``, ``details``: the traceback) or ``locked`` (``message``: the holder's PID)."""

    run: SweepRun
    status: str
    metrics: dict[str, Any] | None = None
    message: str = ""
    details: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class SweepResult:
    outcomes: list[Outcome]

    def where(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return all(o.status in ("done", "finished", "elsewhere") for o in self.outcomes)


def execute_run(p: Plan, *, device: Any = None, observer: Observer | None = None) -> Any:
    """Execute one planned run (the seam the tests replace with a fake runner)."""
    return execute(p, observer=observer, device=device)


def run_one(run: SweepRun, *, device: Any = None, observer: Observer | None = None) -> Outcome:
    """Lock the run's folder, plan it again (another process may have advanced or finished it:
    ``elsewhere``), execute and record where. A failure is returned, not raised
    (KeyboardInterrupt and SystemExit still propagate)."""
    start = time.perf_counter()
    lock = RunLock(lock_path(run))
    try:
        if not lock.acquire():
            return Outcome(run, "locked", message=f"pid {lock.holder}")
        try:
            p = plan(run.config, run.out)
            if p.state == "finished":
                return Outcome(run, "elsewhere", metrics=p.metrics, message=ran_where(run))
            try:
                metrics = execute_run(p, device=device, observer=observer)
            except Exception:
                write_record(run, "failed", device, time.perf_counter() - start)
                raise
            write_record(run, "done", device, time.perf_counter() - start)
            return Outcome(run, "done", metrics=metrics, seconds=time.perf_counter() - start)
        finally:
            lock.release()
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        return Outcome(run, "failed", message=" ".join(message.split()),
                       details=traceback.format_exc(), seconds=time.perf_counter() - start)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_sweep(
    runs: Sequence[SweepRun],
    *,
    jobs: int = 1,
    device: Any = None,
    devices: Sequence[Any] | None = None,
    wait: bool = True,
    poll: float = 1.0,
    observer: Callable[[SweepRun], Observer] | None = None,
    on_start: Callable[[SweepRun], None] | None = None,
    on_end: Callable[[Outcome], None] | None = None,
    on_wait: Callable[[list[SweepRun]], None] | None = None,
    start_method: str | None = None,
) -> SweepResult:
    """Execute ``runs`` (skipping finished ones) in this process (one worker, with the
    ``observer(run)`` of each) or in worker processes with ``max(1, cores // workers)`` torch
    threads each: ``jobs`` workers on ``device``, or one worker per entry of ``devices``.
    Failed runs are reported in the result; the others go on.

    Runs held by another process (``locked``) are visited again at the end: finished there,
    they become ``elsewhere``; released unfinished, they run here; still held, this waits
    (``on_wait`` is told once, then the locks are polled every ``poll`` seconds) unless
    ``wait`` is False, and they stay ``locked``."""
    if devices is not None:
        devices = list(devices)
        if not devices:
            raise UserError("--devices names no device")
    else:
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        devices = [device] * jobs
    outcomes: dict[int, Outcome] = {}
    todo = []
    for i, run in enumerate(runs):
        if (run.out / METRICS).is_file():
            outcomes[i] = Outcome(run, "finished")
        else:
            todo.append(i)

    def batch(indices: list[int]) -> None:
        if len(devices) == 1 or len(indices) <= 1:
            for i in indices:
                if on_start:
                    on_start(runs[i])
                outcomes[i] = run_one(runs[i], device=devices[0],
                                      observer=observer(runs[i]) if observer else None)
                if on_end:
                    on_end(outcomes[i])
        else:
            _run_pool(runs, indices, outcomes, devices=devices, on_start=on_start,
                      on_end=on_end, start_method=start_method or START_METHOD)

    batch(todo)
    told = False
    while True:
        held = [i for i in todo if outcomes[i].status == "locked"]
        if not held:
            break
        retry = []
        for i in held:
            if (runs[i].out / METRICS).is_file():
                outcomes[i] = Outcome(runs[i], "elsewhere", message=ran_where(runs[i]))
                if on_end:
                    on_end(outcomes[i])
            elif _lock_free(runs[i]):
                retry.append(i)
        if retry:
            batch(retry)
            continue
        still = [runs[i] for i in held if outcomes[i].status == "locked"]
        if not still or not wait:
            break
        if not told and on_wait:
            on_wait(still)
            told = True
        time.sleep(poll)
    return SweepResult([outcomes[i] for i in range(len(runs))])


def _lock_free(run: SweepRun) -> bool:
    lock = RunLock(lock_path(run))
    if not lock.acquire():
        return False
    lock.release()
    return True


def _worker_main(tasks: Any, results: Any, threads: int, device: Any) -> None:
    # the parent handles Ctrl-C (and then terminates the workers); a stopped run resumes later
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from ..plugins import load_plugins

    load_plugins()  # a spawned worker starts without the parent's registrations
    torch.set_num_threads(threads)
    while True:
        item = tasks.get()
        if item is None:
            return
        index, run = item
        results.put(("start", index, os.getpid()))
        results.put(("end", index, run_one(run, device=device)))


def _get(results: Any, timeout: float) -> Any:
    """``SimpleQueue.get`` with a timeout (``queue.Empty`` when nothing arrived)."""
    deadline = time.monotonic() + timeout
    while results.empty():
        if time.monotonic() >= deadline:
            raise queue.Empty
        time.sleep(0.01)
    return results.get()


def _run_pool(runs: Sequence[SweepRun], todo: list[int], outcomes: dict[int, Outcome], *,
              devices: Sequence[Any], on_start: Callable[[SweepRun], None] | None,
              on_end: Callable[[Outcome], None] | None, start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    threads = max(1, cpu_cores() // len(devices))
    # results: a SimpleQueue writes synchronously, so a worker that dies right after saying which run
    # it started has still said it (a Queue's feeder thread could lose that message)
    tasks, results = ctx.Queue(), ctx.SimpleQueue()
    workers_n = min(len(devices), len(todo))
    for i in todo:
        tasks.put((i, runs[i]))
    for _ in range(workers_n):
        tasks.put(None)

    device_of: dict[Any, Any] = {}  # worker -> its device (a replacement gets the same one)

    def spawn(device: Any) -> Any:
        w = ctx.Process(target=_worker_main, args=(tasks, results, threads, device), daemon=True)
        w.start()
        device_of[w] = device
        return w

    workers = [spawn(devices[k]) for k in range(workers_n)]
    running: dict[int, int] = {}  # worker pid -> index of its run
    pending = set(todo)
    respawns = len(todo)

    def finish(index: int, outcome: Outcome) -> None:
        if index not in pending:
            return
        pending.discard(index)
        outcomes[index] = outcome
        if on_end:
            on_end(outcome)

    def handle(kind: str, index: int, payload: Any) -> None:
        if kind == "start":
            running[payload] = index
            if on_start:
                on_start(runs[index])
            return
        for pid in [pid for pid, i in running.items() if i == index]:
            del running[pid]
        finish(index, payload)

    def drain() -> None:
        while True:
            try:
                handle(*_get(results, 0.05))
            except queue.Empty:
                return

    try:
        while pending:
            try:
                handle(*_get(results, 0.2))
                continue
            except queue.Empty:
                pass
            for w in list(workers):
                if w.is_alive():
                    continue
                workers.remove(w)
                drain()  # what it sent before it ended
                index = running.pop(w.pid, None)
                if index is not None:
                    finish(index, Outcome(runs[index], "failed", message=(
                        f"its worker process died (exit code {w.exitcode})")))
                if w.exitcode != 0 and respawns > 0 and pending:
                    respawns -= 1
                    workers.append(spawn(device_of[w]))  # the dead one left its end marker queued
            if not workers:
                drain()
                for index in sorted(pending):
                    finish(index, Outcome(runs[index], "failed", message=(
                        "its worker process stopped before reporting a result")))
    finally:
        for w in workers:
            if pending and w.is_alive():
                w.terminate()
        for w in workers:
            w.join(timeout=10)
        tasks.cancel_join_thread()
        results.close()


def record_failures(out: str | Path, failed: Sequence[Outcome]) -> Path | None:
    """Append the failed runs and their tracebacks to ``<out>/sweep_failures.log``."""
    if not failed:
        return None
    path = Path(out) / FAILURE_LOG
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", encoding="utf-8") as f:
        for o in failed:
            f.write(f"[{stamp}] {o.run.name}: {o.message}\n")
            if o.details:
                f.write(o.details.rstrip() + "\n")
    return path
