"""The ``pxprune`` command (docs/design/CONTRACTS.md section 6): the only place that parses arguments, prints,
draws progress bars and configures logging.

    pxprune run   [--recipe NAME|FILE] [--criterion SPEC] [--sparsity S | --density D] ...
    pxprune prune [same options]               a run folder with the mask, without training
    pxprune train --mask FILE [...]            train a saved mask from its theta_0
    pxprune eval  --run DIR                    test accuracy of a run folder's network
    pxprune demo  [--out runs/demo]            px, random and dense with the demo recipe
    pxprune sweep --criteria LIST --sparsities LIST --seeds LIST --out DIR [--jobs N | --devices LIST] [...]
    pxprune report DIR                         tables and figures of a sweep
    pxprune ntk   --run DIR | --mask FILE      the empirical NTK at initialisation
    pxprune list  criteria|models|datasets|recipes

Every mistake a user can make ends with one line on stderr and exit status 2, before anything
existing is overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__

EXIT_USAGE = 2
log = logging.getLogger("pxprune")


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (raised, so ``main`` prints it and returns 2)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------------ output
def _fail(message: str) -> int:
    text = " ".join(str(message).split())
    rank = os.environ.get("RANK") if "LOCAL_RANK" in os.environ else None
    where = f" (process {rank})" if rank not in (None, "0") else ""
    print(f"pxprune: error{where}: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from .tables import markdown_table

    return markdown_table(header, [[_fmt(v) for v in row] for row in rows])


def _metrics_table(label: str, m: Mapping[str, Any], task: Any = None) -> str:
    columns = task.summary_columns if task is not None else ("test_acc", "test_acc5")
    return _table(
        ["run", "sparsity", "density", "effective", *columns, "prune_s", "train_s",
         "empty layers"],
        [[label, m["sparsity"], m["density"], m["effective_density"], *(m.get(c) for c in columns),
          f"{m['prune_seconds']:.1f}", f"{m['train_seconds']:.1f}", len(m["empty_layers"])]],
    )


class _LogHandler(logging.Handler):
    """Log records written with tqdm.write so they do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(f"pxprune: {record.getMessage()}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    if not any(isinstance(h, _LogHandler) for h in log.handlers):
        log.addHandler(_LogHandler())
    log.setLevel(logging.ERROR if quiet else logging.WARNING)
    log.propagate = False
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        # one line, like every other message of the command line (not Python's source excerpt)
        if not quiet:
            text = " ".join(str(message).split())
            print(f"pxprune: warning: {text}", file=sys.stderr, flush=True)

    warnings.showwarning = show


# ------------------------------------------------------------------------------ progress bars
def _observer(args: argparse.Namespace, label: str, out: Path, task: Any = None):
    from tqdm import tqdm

    from .experiment import Observer
    from .tasks import get_task

    quiet = args.quiet
    task = task or get_task("classification")

    class Bars(Observer):
        bar = None

        def begin(self, state: str, epoch: int) -> None:
            if quiet:
                return
            if state == "resume":
                tqdm.write(f"{out}: resuming after epoch {epoch}", file=sys.stderr)
            elif state == "pruned":
                tqdm.write(f"{out}: reusing its mask.pt", file=sys.stderr)

        def _close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def prune_start(self, rounds: int) -> None:
            self.bar = tqdm(total=rounds, desc=f"{label}: pruning", unit="round",
                            disable=quiet, leave=False, dynamic_ncols=True)

        def prune_round(self, round: int, rounds: int) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def prune_end(self) -> None:
            self._close()

        def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
            self.bar = tqdm(total=steps, desc=f"{label}: epoch {epoch}/{epochs}", unit="batch",
                            disable=quiet, leave=False, dynamic_ncols=True)

        def step(self) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def epoch_end(self, row: Mapping[str, Any]) -> None:
            self._close()
            if not quiet:
                tqdm.write(
                    f"{label}: epoch {row['epoch']}: {task.describe_epoch(row)} | "
                    f"{row['seconds']:.1f} s",
                    file=sys.stderr,
                )

    return Bars()


# ------------------------------------------------------------------------------ commands
def _flags(args: argparse.Namespace):
    from .experiment import Flags

    return Flags(
        criterion=getattr(args, "criterion", None),
        sparsity=getattr(args, "sparsity", None),
        density=getattr(args, "density", None),
        rounds=getattr(args, "rounds", None),
        seed=args.seed,
        epochs=args.epochs,
    )


def _sets(args: argparse.Namespace) -> list[str]:
    """``--set`` items, then ``--pretrained`` as ``model.pretrained`` (so sweeps pass it on)."""
    sets = [item for group in (args.set or []) for item in group]
    if getattr(args, "pretrained", None) is not None:
        sets.append(f"model.pretrained={args.pretrained}")
    return sets


def _run_or_prune(args: argparse.Namespace, mode: str) -> int:
    from .experiment import plan, resolve_config, run_label

    config = resolve_config(args.recipe, _sets(args), _flags(args))
    from .experiment.sources import source_for

    if mode == "prune" and source_for(config.prune.criterion).trains:
        from .experiment import UserError

        name = config.prune.criterion
        raise UserError(
            f"`pxprune prune` prunes without training, but {name} masks are found by training: "
            f"use `pxprune run --criterion {name} ...` (same options)"
        )
    device = _device_or_platform(args)
    p = plan(config, args.out, mode=mode)
    return _execute(args, p, run_label(config), device)


def _device_or_platform(args: argparse.Namespace):  # noqa: ANN202
    """The device of a single-process command, or, under torchrun, this process's platform
    (the process group is started here; non-primary processes draw no progress)."""
    from . import platform as platforms
    from .experiment.run import resolve_device

    if not platforms.launched():
        return resolve_device(args.device)
    from .experiment import UserError

    resolve_device(args.device)  # a bad name, or cuda without a GPU, is the user's error
    try:
        platform = platforms.from_environment(args.device)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"this process of the torchrun job could not start: {err}") from None
    if not platform.is_primary:
        args.quiet = True
    return platform


def _execute(args: argparse.Namespace, p, label: str, device) -> int:
    from .experiment import UserError, execute
    from .platform import Platform, close

    platform = device if isinstance(device, Platform) else None
    if p.state == "finished":
        _note(args, f"{p.out}: already finished, nothing to do")
    from .experiment.data import config_task

    task = config_task(p.config)
    if platform is None:
        metrics = execute(p, observer=_observer(args, label, p.out, task), device=device)
    else:
        # every process has read the folder before the primary writes, and read the same
        states = platform.all_gather_object((p.state, str(p.out)))
        if len({state for state, _ in states}) > 1:
            close(platform)
            seen = ", ".join(f"process {i}: {s} {o}" for i, (s, o) in enumerate(states))
            raise UserError(f"the processes of this job see the run folder differently ({seen}); "
                            "put --out on a file system that every machine shares")
        try:
            metrics = execute(p, observer=_observer(args, label, p.out, task),
                              platform=platform)
        finally:
            close(platform)
        if not platform.is_primary:
            return 0
    print(p.out)
    if p.mode == "prune":
        mask = p.mask
        if mask is None:
            from .masks import Mask

            mask = Mask.load(p.out / "mask.pt")
        print(_table(["run", "sparsity", "density", "prune_s"],
                     [[label, mask.sparsity, mask.density,
                       f"{float(mask.metadata.get('prune_seconds') or 0.0):.1f}"]]))
    else:
        print(_metrics_table(label, metrics, task))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_or_prune(args, "run")


def cmd_prune(args: argparse.Namespace) -> int:
    return _run_or_prune(args, "prune")


def cmd_train(args: argparse.Namespace) -> int:
    from .experiment import (
        load_mask,
        plan,
        resolve_config,
        run_label,
        train_config_for_mask,
    )
    from .experiment.run import read_config_dict

    mask_file = Path(args.mask)
    mask = load_mask(mask_file)
    beside = mask_file.parent / "config.yaml"
    base = None
    if args.recipe is None and beside.is_file():
        base = read_config_dict(beside, "; give --recipe")
    config = resolve_config(args.recipe, _sets(args), _flags(args), base=base)
    config = train_config_for_mask(config, mask, seed=args.seed)
    device = _device_or_platform(args)
    p = plan(config, args.out, mode="train", mask=mask, mask_file=mask_file)
    return _execute(args, p, run_label(config), device)


DISTRIBUTED = (cmd_run, cmd_prune, cmd_train)
"""The commands that run under torchrun, one process per GPU."""


def cmd_eval(args: argparse.Namespace) -> int:
    from .experiment import evaluate_run
    from .experiment.data import config_task
    from .experiment.run import read_config

    task = config_task(read_config(Path(args.run))) if Path(args.run).is_dir() else None
    result = evaluate_run(args.run, device=args.device)
    columns = (*task.summary_columns, *task.eval_columns[:1]) if task else ()
    print(_table(["run", "epoch", "density", *columns],
                 [[result["run"], result["epoch"], result["density"],
                   *(result.get(c) for c in columns)]]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .experiment import (
        demo_plans,
        demo_table,
        execute,
        resolve_config,
        split_criteria,
    )
    from .experiment.data import config_task
    from .experiment.run import resolve_device

    config = resolve_config(args.recipe, _sets(args), _flags(args))
    task = config_task(config)
    criteria = split_criteria(args.criteria)
    device = resolve_device(args.device)
    plans = demo_plans(config, args.out, criteria)
    results = []
    start = time.perf_counter()
    for i, (name, p) in enumerate(plans, start=1):
        if p.state == "finished":
            _note(args, f"demo {i}/{len(plans)}: {name}: reusing the finished run in {p.out}")
        else:
            _note(args, f"demo {i}/{len(plans)}: {name} -> {p.out}")
        results.append((name, execute(p, observer=_observer(args, name, p.out, task),
                                      device=device)))
    _note(args, f"demo: {time.perf_counter() - start:.0f} s")
    print(demo_table(results, task.primary))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import time

    from .experiment import DEFAULT_RECIPE, Flags, UserError, resolve_config
    from .experiment.data import config_task
    from .experiment.run import resolve_device
    from .experiment.sweep import (
        make_sweep,
        parse_devices,
        prepare,
        ran_where,
        record_failures,
        run_sweep,
    )

    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    devices = None
    if args.devices is not None:
        devices = parse_devices(args.devices)
        if args.device != "auto":
            raise UserError("give --device (every run) or --devices (one per worker), not both")
        if args.jobs is not None and args.jobs != len(devices):
            raise UserError(f"--jobs {args.jobs} disagrees with the {len(devices)} workers of "
                            "--devices; --devices alone sets one worker per device")
    jobs = len(devices) if devices else (args.jobs or 1)
    base = resolve_config(args.recipe, _sets(args), Flags(rounds=args.rounds, epochs=args.epochs))
    sweep = make_sweep(base, args.out, criteria=args.criteria, sparsities=args.sparsities,
                       seeds=args.seeds, run_options={
                           "recipe": args.recipe or DEFAULT_RECIPE, "set": _sets(args),
                           "rounds": args.rounds, "epochs": args.epochs})
    device = resolve_device(args.device) if devices is None else None
    plans = prepare(sweep, extend=args.extend)
    runs = [run for run, _ in plans]
    before = sum(p.state == "finished" for _, p in plans)
    todo = len(runs) - before
    _note(args, f"sweep {sweep.out}: {len(runs)} runs, {before} already finished, {todo} to "
                f"do" + (f" in {min(jobs, todo)} processes" if jobs > 1 and todo > 1 else "")
                + (f" on {','.join(devices)}" if devices else ""))
    started = [0]
    ended = [0]

    def on_start(run) -> None:
        started[0] += 1
        if jobs == 1:
            _note(args, f"sweep {started[0]}/{todo}: {run.name} -> {run.out}")

    def on_end(outcome) -> None:
        ended[0] += 1
        name = outcome.run.name
        if outcome.status == "done":
            key = config_task(outcome.run.config).primary
            acc = (outcome.metrics or {}).get(key)
            acc_text = f"{key} {acc:.4f}, " if isinstance(acc, float) else ""
            _note(args, f"sweep [{ended[0]}/{todo}] {name}: done ({acc_text}"
                        f"{outcome.seconds:.0f} s)")
        elif outcome.status == "failed":
            _note(args, f"sweep [{ended[0]}/{todo}] {name}: FAILED: {outcome.message}")
        elif outcome.status == "locked":
            ended[0] -= 1  # visited again at the end
            _note(args, f"sweep {name}: skipped, another process runs it ({outcome.message}); "
                        "coming back to it at the end")
        elif outcome.status == "elsewhere":
            _note(args, f"sweep [{ended[0]}/{todo}] {name}: finished by another process "
                        f"({outcome.message})")
        else:
            _note(args, f"sweep [{ended[0]}/{todo}] {name}: already finished")

    start = time.perf_counter()
    def on_wait(held) -> None:
        _note(args, f"sweep: waiting for {len(held)} run(s) held by other processes: "
                    + ", ".join(r.name for r in held))

    result = run_sweep(runs, jobs=jobs, device=device, devices=devices, wait=not args.no_wait,
                       observer=lambda run: _observer(args, run.name, run.out),
                       on_start=on_start, on_end=on_end, on_wait=on_wait)
    failed, locked = result.where("failed"), result.where("locked")
    done, elsewhere = result.where("done"), result.where("elsewhere")
    print(sweep.out)
    print(_table(["runs", "finished before", "done now", "failed", "run elsewhere", "seconds"],
                 [[len(runs), len(result.where("finished")), len(done), len(failed),
                   len(elsewhere) + len(locked), f"{time.perf_counter() - start:.0f}"]]))
    if done or elsewhere:
        print(_table(["run", "where"], [[o.run.name, ran_where(o.run)] for o in done + elsewhere]))
    if failed:
        log_file = record_failures(sweep.out, failed)
        print(f"pxprune: sweep: {len(failed)} run(s) failed (tracebacks in {log_file}); "
              "run the same command again to retry them:", file=sys.stderr)
        for o in failed:
            print(f"  {o.run.name}: {o.message}", file=sys.stderr)
    if locked:
        print(f"pxprune: sweep: {len(locked)} run(s) are held by another process; run the same "
              "command again when it ends:", file=sys.stderr)
        for o in locked:
            print(f"  {o.run.name} ({o.message})", file=sys.stderr)
    if not failed and not locked:
        _note(args, f"next: pxprune report {sweep.out}")
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .experiment.report import write_report

    out = write_report(args.dir, layers=args.layers, reference=args.reference,
                       plots=not args.no_plots)
    print(out.summary, end="")
    for note in out.notes:
        _note(args, f"pxprune: report: {note}")
    _note(args, f"wrote {len(out.files)} files to {Path(args.dir) / 'report'}: "
                + ", ".join(p.name for p in out.files))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .experiment.export import export_sweep

    bar = None

    def progress(i: int, n: int, name: str) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="export", unit="run", file=sys.stderr, leave=False)
        bar.set_postfix_str(name)
        bar.update(1 if i else 0)

    try:
        result = export_sweep(args.dir, args.out, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"exported {len(result.exported)} runs to {result.out} ({len(result.already)} already "
          f"there; {result.size / 1e6:.2f} MB in all)")
    for name, why in result.left_out.items():
        _note(args, f"pxprune: export: {name} left out ({why})")
    return 0


def cmd_ntk(args: argparse.Namespace) -> int:
    from .experiment import UserError
    from .experiment.ntk import NTK_FILE, mask_ntk, run_ntk, write_ntk

    options = dict(samples=args.samples, probes=args.probes, top=args.top,
                   exact_limit=args.exact_limit, seed=args.probe_seed, device=args.device)
    if args.run is not None:
        if (args.mask is not None or args.recipe is not None or args.set or args.seed is not None
                or args.pretrained is not None):
            raise UserError("--run takes the model, mask and seed from the run folder; "
                            "give --run DIR, or --mask FILE with --recipe/--set/--seed")
        result = run_ntk(args.run, **options)
        target = Path(args.json) if args.json else Path(args.run) / NTK_FILE
    else:
        if args.mask is None:
            raise UserError("give --run DIR (a run folder) or --mask FILE (with --recipe)")
        from .experiment import resolve_config

        config = resolve_config(args.recipe, _sets(args))
        result = mask_ntk(config, args.mask, run_seed=args.seed, **options)
        target = Path(args.json) if args.json else None
    if target is not None:
        write_ntk(target, result)
    label = result["criterion"]
    fraction = result["trace_fraction"]
    trace = f"{result['masked_trace']:.6g}"
    if result["method"] != "exact":
        trace += f" ± {result['masked_trace_stderr']:.2g}"
    print(_table(
        ["run", "method", "samples", "outputs", "density", "dense trace", "masked trace",
         "fraction"],
        [[label, result["method"] + (f" ({result['probes']} probes)" if result["probes"]
                                     else ""),
          result["n_samples"], result["n_outputs"], result["density"],
          f"{result['dense_trace']:.6g}", trace,
          "-" if fraction is None else f"{fraction:.4g}"]]))
    top = max(len(result["dense_top_eigenvalues"]), len(result["masked_top_eigenvalues"]))
    rows = []
    for i in range(top):
        d = result["dense_top_eigenvalues"][i:i + 1]
        m = result["masked_top_eigenvalues"][i:i + 1]
        rows.append([i + 1, f"{d[0]:.6g}" if d and d[0] is not None else "-",
                     f"{m[0]:.6g}" if m and m[0] is not None else "-"])
    print()
    print(_table(["eigenvalue", "dense", "masked"], rows))
    if target is not None:
        _note(args, f"wrote {target}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "criteria":
        from .api import list_criteria
        from .criteria import CRITERIA
        from .experiment import SOURCES
        from .selection import KINDS

        for name in list_criteria():
            crit = CRITERIA.get(name)
            data = ("split + targets" if crit.needs_targets else "split") if crit.uses_data \
                else "none"
            kinds = ", ".join(k for k in KINDS if k in crit.kinds)
            rounds = f"{crit.default_rounds} round{'s' if crit.default_rounds != 1 else ''}"
            print(f"{name}  (data: {data}; {rounds}; weights: {kinds})")
        for name in SOURCES.names():
            if SOURCES.get(name).summary:
                print(f"{name}  ({SOURCES.get(name).summary})")
    elif args.what == "models":
        from .models import list_models

        for name in list_models():
            print(name)
    elif args.what == "datasets":
        from .data import get_spec, list_datasets

        for name in list_datasets():
            print(f"{name}  ({get_spec(name).task})")
    elif args.what == "tasks":
        from .tasks import get_task, list_tasks

        for name in list_tasks():
            print(f"{name}  (primary metric: {get_task(name).primary})")
    else:
        from .experiment import list_recipes, recipe_comment

        for name in list_recipes():
            comment = recipe_comment(name)
            print(f"{name}: {comment}" if comment else name)
    return 0


# ------------------------------------------------------------------------------ parser
def _add_common(p: argparse.ArgumentParser, *, recipe_default: str | None = None,
                seed: bool = True, epochs: bool = True) -> None:
    p.add_argument("--recipe", default=recipe_default, metavar="NAME|FILE",
                   help="a shipped recipe (pxprune list recipes) or a YAML file "
                        f"(default: {recipe_default or 'demo'})")
    p.add_argument("--set", action="append", nargs="+", metavar="KEY=VALUE",
                   help="override configuration keys, e.g. --set train.lr=0.05 data.root=data "
                        "(YAML values; repeatable; later ones win)")
    if seed:
        p.add_argument("--seed", type=int, metavar="K", help="the run seed")
    if epochs:
        p.add_argument("--epochs", type=int, metavar="E", help="training epochs")
    p.add_argument("--pretrained", metavar="SPEC",
                   help="pre-trained weights (model.pretrained): a torchvision weight name "
                        "(IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, imagenet) or a checkpoint file, its "
                        "layout detected or forced: torchvision:FILE, mocov2:FILE, dino:FILE, "
                        "clip:FILE")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def _add_pruning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criterion", metavar="SPEC",
                   help="criterion with options, e.g. px or px[classifier=signed,bn=train]; "
                        "dense for no pruning; lottery[rate=0.2,rewind_step=0]; "
                        "+shuffled / +reinit for the sanity checks")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sparsity", type=float, metavar="S", help="fraction of weights removed")
    group.add_argument("--density", type=float, metavar="D", help="fraction of weights kept")
    p.add_argument("--rounds", type=int, metavar="T",
                   help="pruning rounds (default: each criterion's own)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pxprune", description="Pruning at initialisation: PX and baselines.")
    parser.add_argument("--version", action="version", version=f"pxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("run", help="prune, train and evaluate one network")
    _add_common(p)
    _add_pruning(p)
    p.add_argument("--out", metavar="DIR",
                   help="run folder (default: runs/<recipe>/<criterion>/<sparsity>/seed<k>)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prune", help="make a run folder with the mask, without training")
    _add_common(p)
    _add_pruning(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default as for run)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("train", help="train a saved mask from its theta_0")
    p.add_argument("--mask", required=True, metavar="FILE", help="a mask.pt")
    _add_common(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default as for run)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a run folder's network")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no notes")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="px, random and dense with the demo recipe, and their table")
    _add_common(p, recipe_default="demo")
    p.add_argument("--rounds", type=int, metavar="T", help="pruning rounds for every criterion")
    p.add_argument("--criteria", default="px,random,dense", metavar="LIST",
                   help="the rows (default: px,random,dense)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="default: runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="a grid of runs: criteria x sparsities x seeds, plus dense")
    _add_common(p, seed=False)
    p.add_argument("--criteria", metavar="LIST",
                   help="criterion specs, e.g. px,snip,px[classifier=signed],px+shuffled "
                        "(default: px,snip,grasp,synflow,synflow_l2,ntksap,magnitude,random)")
    p.add_argument("--sparsities", metavar="LIST",
                   help="sparsities in (0, 1) (default: the paper's 0.36,0.5904,0.7379,0.8322,"
                        "0.8926,0.9313,0.956,0.9719,0.982)")
    p.add_argument("--seeds", metavar="LIST", help="run seeds (default: 0,1,2)")
    p.add_argument("--rounds", type=int, metavar="T",
                   help="pruning rounds for every criterion (default: each criterion's own)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the sweep folder: DIR/<criterion>/<sparsity>/seed<k>/ and sweep.json")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="runs at once in N worker processes, each with cores // N threads "
                        "(default: 1, in this process)")
    p.add_argument("--devices", metavar="LIST",
                   help="one worker process per device, e.g. cuda:0,cuda:1 or cpu,cpu "
                        "(sets the number of workers; instead of --device)")
    p.add_argument("--no-wait", action="store_true",
                   help="runs held by another sweep process on DIR are reported, not waited for")
    p.add_argument("--extend", action="store_true",
                   help="DIR holds a sweep of the same base configuration: add this grid to it "
                        "(run only what is missing) instead of refusing")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="a compact copy of a sweep's finished runs (no checkpoints)")
    p.add_argument("dir", metavar="DIR", help="a sweep folder (pxprune sweep --out DIR)")
    p.add_argument("--out", required=True, metavar="EXPORT",
                   help="the export folder; one holding an export of the same base configuration "
                        "gains this sweep's grid and the runs it lacks")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="tables and figures of a sweep folder")
    p.add_argument("dir", metavar="DIR", help="a sweep folder (pxprune sweep --out DIR)")
    p.add_argument("--layers", nargs="+", metavar="RUN",
                   help="runs whose per-layer density to plot, e.g. px/0.982/seed0 "
                        "(default: every criterion at the highest sparsity, seed 0)")
    p.add_argument("--reference", default="px", metavar="LABEL",
                   help="the criterion whose mask the others are compared with (default: px)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--quiet", action="store_true", help="no notes")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ntk", help="the empirical NTK at initialisation, dense and masked")
    p.add_argument("--run", metavar="DIR", help="a pruned run folder (init.pt, mask.pt, "
                                                "split.json)")
    p.add_argument("--mask", metavar="FILE", help="a mask.pt (with --recipe/--set/--seed)")
    _add_common(p, epochs=False)
    p.add_argument("--json", metavar="FILE",
                   help="where to write the JSON (default for --run: DIR/ntk.json)")
    p.add_argument("--samples", type=int, default=100, metavar="N",
                   help="inputs from the pruning split, balanced over classes (default: 100)")
    p.add_argument("--probes", type=int, default=64, metavar="P",
                   help="Hutchinson probes when the exact NTK is too large (default: 64)")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="top eigenvalues (default: 10)")
    p.add_argument("--exact-limit", type=float, default=5e8, metavar="X",
                   help="exact when samples x outputs x parameters <= X (default: 5e8)")
    p.add_argument("--probe-seed", type=int, default=0, metavar="K",
                   help="seed of the Hutchinson probes (default: 0)")
    p.set_defaults(func=cmd_ntk)

    p = sub.add_parser("list", help="registered names")
    p.add_argument("what", choices=["criteria", "models", "datasets", "recipes", "tasks"])
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for a user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as err:
        return _fail(str(err))
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    _setup_logging(args.quiet)
    from .experiment import UserError
    from .plugins import PluginError, load_plugins

    try:
        load_plugins()
    except PluginError as err:
        return _fail(str(err))
    from .platform import launched

    if launched() and args.func not in DISTRIBUTED:
        return _fail(f"`pxprune {args.command}` runs in one process; start it without torchrun "
                     "(torchrun runs `pxprune run`, `prune` and `train`)")
    try:
        return args.func(args)
    except UserError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("pxprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
