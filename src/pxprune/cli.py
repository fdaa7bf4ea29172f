"""The ``pxprune`` command (CONTRACTS.md section 6): the only place that parses arguments, prints,
draws progress bars and configures logging.

    pxprune run   [--recipe NAME|FILE] [--criterion SPEC] [--sparsity S | --density D] ...
    pxprune prune [same options]               a run folder with the mask, without training
    pxprune train --mask FILE [...]            train a saved mask from its theta_0
    pxprune eval  --run DIR                    test accuracy of a run folder's network
    pxprune demo  [--out runs/demo]            px, random and dense with the demo recipe
    pxprune list  criteria|models|datasets|recipes

Every mistake a user can make ends with one line on stderr and exit status 2, before anything
existing is overwritten.
"""

from __future__ import annotations

import argparse
import logging
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
    print(f"pxprune: error: {text}", file=sys.stderr, flush=True)
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
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metrics_table(label: str, m: Mapping[str, Any]) -> str:
    return _table(
        ["run", "sparsity", "density", "effective", "test_acc", "test_acc5", "prune_s", "train_s",
         "empty layers"],
        [[label, m["sparsity"], m["density"], m["effective_density"], m["test_acc"],
          m["test_acc5"], f"{m['prune_seconds']:.1f}", f"{m['train_seconds']:.1f}",
          len(m["empty_layers"])]],
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


# ------------------------------------------------------------------------------ progress bars
def _observer(args: argparse.Namespace, label: str, out: Path):
    from tqdm import tqdm

    from .experiment import Observer

    quiet = args.quiet

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
                test = ("" if row.get("test_acc") is None else
                        f" | test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}")
                tqdm.write(
                    f"{label}: epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc "
                    f"{row['train_acc']:.4f}{test} | {row['seconds']:.1f} s",
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
    return [item for group in (args.set or []) for item in group]


def _run_or_prune(args: argparse.Namespace, mode: str) -> int:
    from .experiment import plan, resolve_config, run_label
    from .experiment.run import resolve_device

    config = resolve_config(args.recipe, _sets(args), _flags(args))
    device = resolve_device(args.device)
    p = plan(config, args.out, mode=mode)
    return _execute(args, p, run_label(config), device)


def _execute(args: argparse.Namespace, p, label: str, device) -> int:
    from .experiment import execute

    if p.state == "finished":
        _note(args, f"{p.out}: already finished, nothing to do")
    metrics = execute(p, observer=_observer(args, label, p.out), device=device)
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
        print(_metrics_table(label, metrics))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_or_prune(args, "run")


def cmd_prune(args: argparse.Namespace) -> int:
    return _run_or_prune(args, "prune")


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from .experiment import (
        UserError,
        load_mask,
        plan,
        resolve_config,
        run_label,
        train_config_for_mask,
    )
    from .experiment.run import resolve_device

    mask_file = Path(args.mask)
    mask = load_mask(mask_file)
    beside = mask_file.parent / "config.yaml"
    base = None
    if args.recipe is None and beside.is_file():
        try:
            base = yaml.safe_load(beside.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{beside} is unreadable ({type(err).__name__}); give --recipe") \
                from None
        if not isinstance(base, dict):
            raise UserError(f"{beside} is not a pxprune configuration; give --recipe")
    config = resolve_config(args.recipe, _sets(args), _flags(args), base=base)
    config = train_config_for_mask(config, mask, seed=args.seed)
    device = resolve_device(args.device)
    p = plan(config, args.out, mode="train", mask=mask, mask_file=mask_file)
    return _execute(args, p, run_label(config), device)


def cmd_eval(args: argparse.Namespace) -> int:
    from .experiment import evaluate_run

    result = evaluate_run(args.run, device=args.device)
    print(_table(["run", "epoch", "density", "test_acc", "test_acc5", "test_loss"],
                 [[result["run"], result["epoch"], result["density"], result["test_acc"],
                   result["test_acc5"], result["test_loss"]]]))
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
    from .experiment.run import resolve_device

    config = resolve_config(args.recipe, _sets(args), _flags(args))
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
        results.append((name, execute(p, observer=_observer(args, name, p.out), device=device)))
    _note(args, f"demo: {time.perf_counter() - start:.0f} s")
    print(demo_table(results))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "criteria":
        from .api import list_criteria

        for name in list_criteria():
            print(name)
        print("dense  (no pruning: sparsity 0)")
        print("lottery  (iterative magnitude pruning with rewinding; trains at every level)")
    elif args.what == "models":
        from .models import list_models

        for name in list_models():
            print(name)
    elif args.what == "datasets":
        from .data import list_datasets

        for name in list_datasets():
            print(name)
    else:
        from .experiment import list_recipes, recipe_comment

        for name in list_recipes():
            comment = recipe_comment(name)
            print(f"{name}: {comment}" if comment else name)
    return 0


# ------------------------------------------------------------------------------ parser
def _add_common(p: argparse.ArgumentParser, *, recipe_default: str | None = None) -> None:
    p.add_argument("--recipe", default=recipe_default, metavar="NAME|FILE",
                   help="a shipped recipe (pxprune list recipes) or a YAML file "
                        f"(default: {recipe_default or 'demo'})")
    p.add_argument("--set", action="append", nargs="+", metavar="KEY=VALUE",
                   help="override configuration keys, e.g. --set train.lr=0.05 data.root=data "
                        "(YAML values; repeatable; later ones win)")
    p.add_argument("--seed", type=int, metavar="K", help="the run seed")
    p.add_argument("--epochs", type=int, metavar="E", help="training epochs")
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

    p = sub.add_parser("list", help="registered names")
    p.add_argument("what", choices=["criteria", "models", "datasets", "recipes"])
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

    try:
        return args.func(args)
    except UserError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("pxprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
