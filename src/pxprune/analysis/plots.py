"""Figures of a sweep in the style of the paper's Figure 2, written as PNG files.

Each function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas (pyplot and its
global state are never touched), writes the PNG atomically (a temporary file beside ``path``, then a
rename) and returns the path. Inputs are plain rows (dicts), as ``pxprune report`` aggregates them;
sparsities, densities, accuracies and overlaps are fractions in [0, 1]
(docs/design/CONTRACTS.md section 5) and are drawn in percent. A missing cell (``mean`` of
``None``/NaN or ``n == 0``) leaves a gap in its line and is counted in the legend, never dropped silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .._io import atomic_file

Row = Mapping[str, Any]

_DPI = 150


def _new_figure(width: float = 7.5, height: float = 4.8) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.35)
    return fig, ax


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=_DPI)
    return Path(path)


def _number(value: Any) -> float:
    """A finite float, or NaN for a missing value (``None``, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _key(row: Row, name: str, what: str) -> Any:
    try:
        return row[name]
    except (KeyError, TypeError):
        raise ValueError(f"each {what} row needs a {name!r} entry; got {row!r}") from None


def _by_criterion(rows: Iterable[Row], what: str) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(_key(row, "criterion", what)), []).append(row)
    if not groups:
        raise ValueError(f"no {what} rows to plot")
    return groups


def _is_px(criterion: str) -> bool:
    """PX and its variants, in the spec spelling (``px[bn=train]``) and in the folder labels
    that reports carry (``px--bn=train``, ``px+shuffled``)."""
    return criterion == "px" or criterion.startswith(("px[", "px--", "px+"))


def _style(criterion: str) -> dict[str, Any]:
    """PX, the method under study, is drawn heavier and on top."""
    if _is_px(criterion):
        return {"linewidth": 2.4, "zorder": 4}
    return {"linewidth": 1.5, "zorder": 3}


def _percent_label(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std) with NaN for no value and 0 for one (what the plots draw)."""
    from ..stats import mean_std

    mean, std, _ = mean_std(values)
    return (math.nan, math.nan) if mean is None else (mean, 0.0 if std is None else std)


def accuracy_vs_sparsity(
    rows: Iterable[Row],
    path: str | os.PathLike,
    *,
    dense: float | Mapping[str, Any] | None = None,
    log_scale: bool = False,
    title: str = "Test accuracy vs sparsity",
    metric: str = "test accuracy",
) -> Path:
    """One line per criterion (mean over seeds, markers) with a shaded +-1 std band; ``dense`` (a
    mean, or a dict with ``mean`` and optional ``std``/``n``) as a dashed black line.

    ``rows``: dicts ``{"criterion", "sparsity", "mean", "std", "n"}``. The evaluated sparsities are
    the x ticks. ``log_scale=True`` plots against density on a reversed log axis (labelled in
    sparsity), so that 90%, 98% and 99.5% spread out as in the paper's Figure 2.
    """
    groups = _by_criterion(rows, "accuracy")
    fig, ax = _new_figure()

    def position(sparsity: float) -> float:
        if not log_scale:
            return 100.0 * sparsity
        density = 100.0 * (1.0 - sparsity)
        return density if density > 0 else math.nan  # a fully pruned network has no log position

    table: dict[str, dict[float, tuple[float, float]]] = {}
    for criterion, group in groups.items():
        cells = table.setdefault(criterion, {})
        for row in group:
            s = _number(_key(row, "sparsity", "accuracy"))
            if not 0.0 <= s <= 1.0:  # NaN fails too
                raise ValueError(f"accuracy rows need a sparsity fraction in [0, 1]; got {row!r}")
            if s in cells:
                raise ValueError(f"two accuracy rows for {criterion!r} at sparsity {s}; aggregate "
                                 "the seeds first (one row per criterion and sparsity)")
            mean, std = _number(row.get("mean")), _number(row.get("std"))
            if row.get("n") is not None and _number(row.get("n")) == 0:
                mean = math.nan
            cells[s] = (100.0 * mean, 0.0 if math.isnan(std) else 100.0 * std)
    # a sparsity some criterion has and another lacks is a missing cell of the latter
    sparsities = sorted({s for cells in table.values() for s in cells})
    xs = [position(s) for s in sparsities]
    ticks = [s for s, x in zip(sparsities, xs, strict=True) if not math.isnan(x)]
    for criterion, cells in table.items():
        means = [cells.get(s, (math.nan, 0.0))[0] for s in sparsities]
        stds = [cells.get(s, (math.nan, 0.0))[1] for s in sparsities]
        missing = sum(math.isnan(m) for m in means)
        label = criterion if not missing else f"{criterion} ({missing} missing)"
        (line,) = ax.plot(xs, means, marker="o", markersize=4, label=label, **_style(criterion))
        ax.fill_between(xs, [m - d for m, d in zip(means, stds, strict=True)],
                        [m + d for m, d in zip(means, stds, strict=True)],
                        color=line.get_color(), alpha=0.18, linewidth=0, zorder=2)

    if dense is not None:
        d_mean, d_std = _dense(dense)
        if not math.isnan(d_mean):
            ax.axhline(100.0 * d_mean, color="black", linestyle="--", linewidth=1.3,
                       label="dense", zorder=5)
            if d_std > 0:
                ax.axhspan(100.0 * (d_mean - d_std), 100.0 * (d_mean + d_std), color="black",
                           alpha=0.08, linewidth=0, zorder=1)

    _sparsity_axis(ax, ticks, position, log_scale)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return _save(fig, path)


def seeds_at_sparsity(
    rows: Iterable[Row],
    path: str | os.PathLike,
    *,
    dense: float | Mapping[str, Any] | None = None,
    log_scale: bool = False,
    title: str = "Test accuracy per seed",
    metric: str = "test accuracy",
) -> Path:
    """Every seed of every criterion at one sparsity: one row per criterion (in the order
    given), a dot per seed and the mean with a +-1 std bar; ``dense`` (as in
    :func:`accuracy_vs_sparsity`) as a dashed vertical line. Where a sweep has one sparsity, or
    where the spread between seeds is the question, this says more than a curve.

    ``rows``: dicts ``{"criterion", "value"}``, one per finished run (a fraction; NaN or None
    values are skipped). ``log_scale``: a log x axis (for NTK trace fractions)."""
    groups = _by_criterion(rows, "per-seed")
    fig, ax = _new_figure(7.5, max(2.6, 0.42 * len(groups) + 1.4))
    names = list(groups)
    for i, criterion in enumerate(names):
        y = len(names) - 1 - i
        values = [100.0 * _number(_key(r, "value", "per-seed")) for r in groups[criterion]]
        values = [v for v in values if not math.isnan(v) and (v > 0 or not log_scale)]
        if not values:
            continue
        color = "C3" if _is_px(criterion) else "C0"
        ax.scatter(values, [y] * len(values), s=22, color=color, alpha=0.55, zorder=3,
                   linewidths=0)
        if log_scale:
            mean = math.exp(sum(math.log(v) for v in values) / len(values))
            ax.plot([mean], [y], marker="|", markersize=16, color=color, zorder=4)
        else:
            mean, std = _mean_std(values)
            ax.errorbar([mean], [y], xerr=[std] if std else None, fmt="|", markersize=16,
                        capsize=4, color=color, elinewidth=1.6, zorder=4)
    if dense is not None:
        d_mean, _ = _dense(dense)
        if not math.isnan(d_mean):
            ax.axvline(100.0 * d_mean, color="black", linestyle="--", linewidth=1.3,
                       label="dense (mean)")
            ax.legend(loc="best", fontsize="small", framealpha=0.85)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(list(reversed(names)))
    if log_scale:
        ax.set_xscale("log")
    mark = "geometric mean" if log_scale else "mean ± 1 std"
    ax.set_xlabel(f"{metric} (%); dots: seeds, bar: {mark}")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.35)
    return _save(fig, path)


def _sparsity_axis(ax: Any, sparsities: Sequence[float], position: Any, log_scale: bool) -> None:
    """The evaluated sparsities as ticks; labels too close to a higher one are left blank."""
    xs = [position(s) for s in sparsities]
    if log_scale:
        ax.set_xscale("log")
        ax.invert_xaxis()
    labels = [_percent_label(100.0 * s) for s in sparsities]
    if len(xs) > 1:
        # distances in axis units (log10 on a log axis), from the highest sparsity down
        at = [math.log10(x) for x in xs] if log_scale else list(xs)
        gap = 0.035 * (max(at) - min(at))
        last = None
        for i in sorted(range(len(at)), key=lambda i: sparsities[i], reverse=True):
            if last is not None and abs(at[i] - last) < gap:
                labels[i] = ""
            else:
                last = at[i]
    ax.set_xticks(xs, labels)
    ax.xaxis.set_minor_locator(NullLocator())
    if len(xs) > 7:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
    ax.set_xlabel("sparsity (%)  [log scale of density]" if log_scale else "sparsity (%)")


def _dense(dense: float | Mapping[str, Any]) -> tuple[float, float]:
    if isinstance(dense, Mapping):
        if dense.get("n") is not None and _number(dense.get("n")) == 0:
            return math.nan, math.nan
        std = _number(dense.get("std"))
        return _number(dense.get("mean")), 0.0 if math.isnan(std) else std
    return _number(dense), 0.0


def layer_density(
    layers: Sequence[Row] | Mapping[str, Sequence[Row]],
    path: str | os.PathLike,
    *,
    title: str = "Per-layer density",
    empty_round: Mapping[str, Any] | None = None,
    log_scale: bool = False,
) -> Path:
    """Bars per layer: density (light) with the effective density (dark, inside) for one run (a
    list of ``{"name", "density", "effective_density"}``) or several (``{run name: list}``).

    A layer with nothing (effectively) kept is marked with a red x and "empty". ``empty_round``
    maps layer -> the pruning round at which it emptied (or run -> that mapping) and is written
    beside the mark.
    """
    runs: dict[str, Sequence[Row]] = (
        {str(k): v for k, v in layers.items()} if isinstance(layers, Mapping) else {"": layers})
    if not runs or not any(runs.values()):
        raise ValueError("no layers to plot")
    names = _layer_names(runs)
    rounds = _rounds(empty_round, runs)

    fig, ax = _new_figure(width=max(7.0, 0.42 * len(names) * max(1, len(runs)) ** 0.5 + 2.5),
                          height=5.2)
    width = 0.8 / len(runs)
    positive = [v for rows in runs.values() for row in rows
                for v in (_number(row.get("density")), _number(row.get("effective_density")))
                if v > 0]
    floor = min([1e-4, *(v / 4 for v in positive)]) if log_scale else 0.0
    colors = [f"C{i}" for i in range(10)]
    any_empty = False
    for i, (run, rows) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        table = {str(row["name"]): row for row in rows}
        offset = (i - (len(runs) - 1) / 2) * width
        xs, dens, effs = [], [], []
        for j, name in enumerate(names):
            if name not in table:
                continue
            density = _number(table[name].get("density"))
            effective = _number(table[name].get("effective_density"))
            xs.append(j + offset)
            dens.append(100.0 * density if not math.isnan(density) else 0.0)
            effs.append(100.0 * effective if not math.isnan(effective) else math.nan)
            empty = bool(table[name].get("empty")) or density == 0 or effective == 0
            if empty:
                any_empty = True
                y = 100.0 * floor * 1.6 if log_scale else 0.0
                ax.plot([j + offset], [y], marker="x", color="red", markersize=9,
                        markeredgewidth=2.2, zorder=6, clip_on=False)
                text = "empty" if density == 0 else "empty (none effective)"
                r = rounds.get(run, {}).get(name)
                if r is not None:
                    text += f" (round {r})"
                ax.annotate(text, (j + offset, y), xytext=(0, 8), textcoords="offset points",
                            rotation=90, ha="center", va="bottom", color="red", fontsize=7,
                            zorder=6)
        prefix = f"{run}: " if run else ""
        ax.bar(xs, dens, width=width * 0.92, color=color, alpha=0.35,
               label=f"{prefix}density", zorder=3)
        if any(not math.isnan(e) for e in effs):
            ax.bar(xs, [0.0 if math.isnan(e) else e for e in effs], width=width * 0.5,
                   color=color, alpha=0.95, label=f"{prefix}effective density", zorder=4)
    if any_empty:
        ax.plot([], [], marker="x", color="red", linestyle="none", markeredgewidth=2.2,
                label="empty layer")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7 if len(names) > 20 else 8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(100.0 * floor, 100.0 * 1.5)
    else:
        ax.set_ylim(0, 105)
    ax.set_xlabel("layer")
    ax.set_ylabel("kept weights (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
    return _save(fig, path)


def layer_density_heatmap(
    layers: Mapping[str, Sequence[Row]],
    path: str | os.PathLike,
    *,
    title: str = "Per-layer effective density (%)",
) -> Path:
    """One row per run (``{run name: rows}``), one column per layer: the effective density in
    percent (the density where no effective one is given) on a log colour scale, written in
    each cell; an emptied layer is a red "empty" cell. Reads at a glance with a dozen runs."""
    runs = {str(k): list(v) for k, v in layers.items() if v}
    if not runs:
        raise ValueError("no layers to plot")
    names = _layer_names(runs)
    values = []  # percent; 0 for empty, NaN for a layer the run does not have
    for rows in runs.values():
        table = {str(row["name"]): row for row in rows}
        line = []
        for name in names:
            row = table.get(name)
            if row is None:
                line.append(math.nan)
                continue
            density = _number(row.get("density"))
            effective = _number(row.get("effective_density"))
            value = density if math.isnan(effective) else effective
            empty = bool(row.get("empty")) or density == 0 or effective == 0
            line.append(0.0 if empty else 100.0 * value)
        values.append(line)
    positive = [v for line in values for v in line if v > 0]
    lo = math.log10(min(positive)) if positive else -2.0
    hi = math.log10(max(positive)) if positive else 2.0
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    grid = [[math.log10(v) if v > 0 else math.nan for v in line] for line in values]

    fig, ax = _new_figure(width=max(7.0, 0.5 * len(names) + 3.0),
                          height=max(2.6, 0.42 * len(runs) + 2.4))
    ax.grid(False)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                      interpolation="nearest")
    for i, line in enumerate(values):
        for j, v in enumerate(line):
            if math.isnan(v):
                continue
            if v == 0:
                ax.add_patch(_rectangle(j, i, "#d62728"))
                ax.text(j, i, "empty", ha="center", va="center", fontsize=6, color="white",
                        fontweight="bold")
                continue
            level = (math.log10(v) - lo) / (hi - lo)
            ax.text(j, i, _short(v), ha="center", va="center", fontsize=6,
                    color="black" if level > 0.55 else "white")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7 if len(names) > 20 else 8)
    ax.set_yticks(range(len(runs)), list(runs), fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    ticks = list(range(math.ceil(lo), math.floor(hi) + 1))
    bar.set_ticks(ticks, labels=[_percent_label(10.0 ** t) for t in ticks])
    bar.set_label("kept weights (%), log scale")
    return _save(fig, path)


def _rectangle(x: float, y: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1.0, 1.0, facecolor=color, edgecolor="white",
                     zorder=2)


def _short(value: float) -> str:
    """A percentage in at most 3 significant digits and 4 characters where possible."""
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _layer_names(runs: Mapping[str, Sequence[Row]]) -> list[str]:
    """Every layer name of the runs, in the order first seen."""
    names: dict[str, None] = {}
    for rows in runs.values():
        for row in rows:
            names.setdefault(str(_key(row, "name", "layer")), None)
    return list(names)


def _rounds(empty_round: Mapping[str, Any] | None,
            runs: Mapping[str, Sequence[Row]]) -> dict[str, dict[str, Any]]:
    """Run -> layer -> round, from a per-layer mapping (every run) or a per-run one."""
    if not empty_round:
        return {}
    if all(isinstance(v, Mapping) for v in empty_round.values()):
        return {str(run): dict(v) for run, v in empty_round.items()}
    return {run: dict(empty_round) for run in runs}


def prune_time(
    rows: Iterable[Row],
    path: str | os.PathLike,
    *,
    title: str = "Pruning time per criterion",
) -> Path:
    """Horizontal bars of the pruning time per criterion (mean over its rows, with the std as an
    error bar when there are several); a log axis when the times span more than 100x."""
    groups = _by_criterion(rows, "timing")
    stats = {c: _mean_std([_number(r.get("seconds")) for r in g]) for c, g in groups.items()}
    order = sorted(stats, key=lambda c: (math.isnan(stats[c][0]), stats[c][0]))
    fig, ax = _new_figure(width=7.0, height=max(2.5, 0.45 * len(order) + 1.4))
    means = [stats[c][0] for c in order]
    known = [m for m in means if not math.isnan(m) and m > 0]
    log = bool(known) and max(known) / min(known) > 100
    ys = list(range(len(order)))
    bars = [0.0 if math.isnan(m) else m for m in means]
    errs = [0.0 if math.isnan(stats[c][1]) else stats[c][1] for c in order]
    colors = ["C3" if _is_px(c) else "C0" for c in order]
    ax.barh(ys, bars, xerr=errs if any(errs) else None, color=colors, alpha=0.85,
            error_kw={"elinewidth": 1, "capsize": 3}, zorder=3)
    ax.set_yticks(ys, order)
    ax.invert_yaxis()  # fastest on top
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(known) / 2, max(known) * 8)
    else:
        ax.set_xlim(0, (max(known) if known else 1.0) * 1.25)
    left = ax.get_xlim()[0]
    for y, m, e in zip(ys, means, errs, strict=True):
        text = "n/a" if math.isnan(m) else _seconds(m)
        ax.annotate(text, (left if math.isnan(m) else m + e, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.grid(False, axis="y")
    ax.set_xlabel("pruning time (s)" + ("  [log scale]" if log else ""))
    ax.set_ylabel("criterion")
    ax.set_title(title)
    return _save(fig, path)


def _seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{value * 1000:.3g} ms"


def overlap_with(
    rows: Iterable[Row],
    path: str | os.PathLike,
    *,
    reference: str = "px",
    title: str | None = None,
    chance: bool = True,
) -> Path:
    """The overlap of each criterion's mask with ``reference``'s, against sparsity.

    ``rows``: dicts ``{"criterion", "sparsity", "overlap"}`` (several rows per cell, e.g. one per
    seed, are averaged with a +-1 std band). ``overlap`` is :func:`pxprune.masks.overlap`'s
    ``shared`` (kept by both / kept by the smaller); for two masks of equal size drawn independently
    its expectation is the density, drawn as a dotted grey "chance" line when ``chance``.
    """
    groups = _by_criterion(rows, "overlap")
    groups.pop(reference, None)
    if not groups:
        raise ValueError(f"no overlap rows other than the reference {reference!r}")
    fig, ax = _new_figure()
    table: dict[str, dict[float, list[float]]] = {}
    for criterion, group in groups.items():
        cells = table.setdefault(criterion, {})
        for row in group:
            s = _number(_key(row, "sparsity", "overlap"))
            if not 0.0 <= s <= 1.0:  # NaN fails too
                raise ValueError(f"overlap rows need a sparsity fraction in [0, 1]; got {row!r}")
            cells.setdefault(s, []).append(_number(row.get("overlap")))
    ordered = sorted({s for cells in table.values() for s in cells})
    xs = [100.0 * s for s in ordered]
    for criterion, cells in table.items():
        stats = [_mean_std(cells.get(s, [])) for s in ordered]
        missing = sum(math.isnan(m) for m, _ in stats)
        means = [100.0 * m for m, _ in stats]
        stds = [0.0 if math.isnan(d) else 100.0 * d for _, d in stats]
        label = criterion if not missing else f"{criterion} ({missing} missing)"
        (line,) = ax.plot(xs, means, marker="o", markersize=4, label=label, **_style(criterion))
        ax.fill_between(xs, [m - d for m, d in zip(means, stds, strict=True)],
                        [m + d for m, d in zip(means, stds, strict=True)],
                        color=line.get_color(), alpha=0.18, linewidth=0, zorder=2)
    if chance:
        ax.plot([100.0 * s for s in ordered], [100.0 * (1.0 - s) for s in ordered], color="grey",
                linestyle=":", linewidth=1.3, label="chance (= density)", zorder=1)
    _sparsity_axis(ax, ordered, lambda v: 100.0 * v, False)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"overlap with {reference}'s mask (%)")
    ax.set_title(title or f"Mask overlap with {reference}")
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return _save(fig, path)
