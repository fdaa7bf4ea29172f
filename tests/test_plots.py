"""The sweep figures: each writes a readable, non-empty PNG and copes with thin or missing data."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from pxprune.analysis import plots  # noqa: E402

SPARSITIES = [0.36, 0.5904, 0.7379, 0.8322, 0.8926, 0.9313, 0.956, 0.9719, 0.982]


def accuracy_rows():
    rows = []
    for i, s in enumerate(SPARSITIES):
        rows.append({"criterion": "px", "sparsity": s, "mean": 0.92 - 0.02 * i, "std": 0.004,
                     "n": 3})
        rows.append({"criterion": "snip", "sparsity": s, "mean": 0.91 - 0.03 * i, "std": 0.01,
                     "n": 3})
    # one seed only (std 0), a missing cell (n = 0), a cell absent altogether
    rows += [{"criterion": "random", "sparsity": s, "mean": 0.9 - 0.05 * i, "std": 0.0, "n": 1}
             for i, s in enumerate(SPARSITIES[:-2])]
    rows.append({"criterion": "random", "sparsity": SPARSITIES[-2], "mean": None, "std": None,
                 "n": 0})
    return rows


def check_png(path, min_w=400, min_h=250):
    assert path.is_file() and path.stat().st_size > 1000
    image = imread(path)
    h, w = image.shape[:2]
    assert min_w <= w <= 6000 and min_h <= h <= 4000, (w, h)
    assert image.std() > 0.01  # something was drawn
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary file left behind
    return w, h


@pytest.mark.parametrize("log_scale", [False, True])
def test_accuracy_vs_sparsity(tmp_path, log_scale):
    backend = matplotlib.get_backend()
    out = plots.accuracy_vs_sparsity(accuracy_rows(), tmp_path / "sub" / "acc.png",
                                     dense={"mean": 0.93, "std": 0.003, "n": 3},
                                     log_scale=log_scale, title="ResNet-20, Fashion-MNIST")
    assert out == tmp_path / "sub" / "acc.png"
    check_png(out)
    assert matplotlib.get_backend() == backend  # pyplot's global state is left alone


def test_accuracy_vs_sparsity_single_seed_and_plain_dense(tmp_path):
    rows = [{"criterion": "px", "sparsity": 0.5, "mean": 0.8, "std": 0.0, "n": 1}]
    check_png(plots.accuracy_vs_sparsity(rows, tmp_path / "one.png", dense=0.9))
    check_png(plots.accuracy_vs_sparsity(rows, tmp_path / "log.png", log_scale=True))


@pytest.mark.parametrize("log_scale", [False, True])
def test_seeds_at_sparsity(tmp_path, log_scale):
    rows = [{"criterion": c, "value": v} for c, values in
            [("px", [0.73, 0.75, 0.71]), ("snip", [0.72, 0.74, 0.73]), ("random", [0.6])]
            for v in values]
    rows += [{"criterion": "grasp", "value": None}, {"criterion": "grasp", "value": float("nan")}]
    out = plots.seeds_at_sparsity(rows, tmp_path / "seeds.png", dense=0.83, log_scale=log_scale)
    w, h = check_png(out)
    assert h > 250  # one row per criterion, grasp (no value) included as an empty row
    with pytest.raises(ValueError, match="no per-seed rows"):
        plots.seeds_at_sparsity([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="'value'"):
        plots.seeds_at_sparsity([{"criterion": "px"}], tmp_path / "bad.png")


def test_accuracy_vs_sparsity_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="no accuracy rows"):
        plots.accuracy_vs_sparsity([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="fraction"):
        plots.accuracy_vs_sparsity([{"criterion": "px", "sparsity": 36, "mean": 0.9}],
                                   tmp_path / "x.png")
    duplicate = [{"criterion": "px", "sparsity": 0.5, "mean": 0.9}] * 2
    with pytest.raises(ValueError, match="aggregate"):
        plots.accuracy_vs_sparsity(duplicate, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def resnet_layers(kill=()):
    names = ["conv1.weight"] + [f"layer{s}.{b}.conv{c}.weight" for s in (1, 2, 3)
                                for b in range(3) for c in (1, 2)] + ["fc.weight"]
    rows = []
    for i, name in enumerate(names):
        d = 0.0 if name in kill else max(0.002, 0.3 - 0.015 * i)
        rows.append({"name": name, "density": d, "effective_density": 0.8 * d})
    return rows


def test_layer_density_one_run(tmp_path):
    w, _ = check_png(plots.layer_density(resnet_layers(), tmp_path / "one.png"))
    assert w >= 1000  # wide enough for 20 layer names


def test_layer_density_several_runs_marks_empty_layers(tmp_path):
    runs = {"px": resnet_layers(kill=("layer3.1.conv1.weight", "layer3.1.conv2.weight")),
            "synflow_l2": resnet_layers()}
    runs["synflow_l2"][3]["effective_density"] = 0.0  # kept weights, but none effective
    out = plots.layer_density(runs, tmp_path / "two.png", title="98.2% sparsity",
                              empty_round={"px": {"layer3.1.conv1.weight": 7}})
    check_png(out)


def test_layer_density_log_scale_and_bare_rows(tmp_path):
    rows = resnet_layers(kill=("layer1.0.conv2.weight",))[:6]
    check_png(plots.layer_density({"a": rows, "b": rows}, tmp_path / "log.png", log_scale=True,
                                  empty_round={"layer1.0.conv2.weight": 9}))
    # no effective density known: density bars only
    bare = [{"name": "a.weight", "density": 0.5}, {"name": "b.weight", "density": 0.0}]
    check_png(plots.layer_density(bare, tmp_path / "bare.png"))
    with pytest.raises(ValueError, match="no layers"):
        plots.layer_density([], tmp_path / "none.png")


def test_layer_density_heatmap(tmp_path):
    rows = resnet_layers()
    emptied = [{**r, "density": 0.0, "effective_density": 0.0, "empty": True}
               if r["name"].startswith("layer3") else r for r in rows]
    def red_pixels(path):
        image = imread(path)[..., :3]
        return int(((image[..., 0] > 0.75) & (image[..., 1] < 0.25) & (image[..., 2] < 0.25)).sum())

    w, h = check_png(plots.layer_density_heatmap({"px": emptied, "snip": rows, "random": rows},
                                                 tmp_path / "heat.png"))
    assert w > h
    assert red_pixels(tmp_path / "heat.png") > 1000  # the emptied cells are red ...
    check_png(plots.layer_density_heatmap({"snip": rows, "random": rows}, tmp_path / "ok.png"))
    assert red_pixels(tmp_path / "ok.png") == 0  # ... and nothing else is
    check_png(plots.layer_density_heatmap({"one": rows[:1]}, tmp_path / "single.png"))
    with pytest.raises(ValueError, match="no layers"):
        plots.layer_density_heatmap({}, tmp_path / "none.png")


def test_prune_time(tmp_path):
    rows = [{"criterion": "px", "seconds": 2.0}, {"criterion": "px", "seconds": 2.4},
            {"criterion": "snip", "seconds": 0.05}, {"criterion": "synflow", "seconds": 30.0},
            {"criterion": "magnitude", "seconds": 0.001}, {"criterion": "ntksap", "seconds": None}]
    check_png(plots.prune_time(rows, tmp_path / "time_log.png"), min_h=200)  # spread > 100x
    check_png(plots.prune_time(rows[:3], tmp_path / "time.png"), min_h=200)


def test_overlap_with(tmp_path):
    rows = []
    for s in SPARSITIES:
        for seed in range(3):
            rows.append({"criterion": "synflow_l2", "sparsity": s,
                         "overlap": 0.9 - 0.3 * s + 0.01 * seed})
        rows.append({"criterion": "snip", "sparsity": s, "overlap": 0.5 * (1 - s)})  # single seed
        rows.append({"criterion": "px", "sparsity": s, "overlap": 1.0})  # the reference: skipped
    rows.append({"criterion": "random", "sparsity": 0.36, "overlap": 0.64})  # other cells missing
    check_png(plots.overlap_with(rows, tmp_path / "overlap.png"))
    with pytest.raises(ValueError, match="other than the reference"):
        plots.overlap_with([{"criterion": "px", "sparsity": 0.5, "overlap": 1.0}],
                           tmp_path / "x.png")


def test_px_variants_are_highlighted_in_the_lines_drawn(tmp_path, monkeypatch):
    from pathlib import Path

    """Reports label rows by folder (``px--bn=train``, ``px+shuffled``): those are PX too."""
    from pxprune.analysis import plots

    drawn = {}

    def capture(fig, path):
        for line in fig.axes[0].get_lines():
            drawn[line.get_label().split(" (")[0]] = line.get_linewidth()
        return Path(path)

    monkeypatch.setattr(plots, "_save", capture)
    rows = [{"criterion": c, "sparsity": 0.9, "mean": 0.5, "std": 0.0, "n": 1}
            for c in ("px", "px--bn=train--classifier=signed", "px+shuffled", "px[bn=train]",
                      "snip", "pxlike")]
    plots.accuracy_vs_sparsity(rows, tmp_path / "a.png")
    heavy = {c for c, w in drawn.items() if w > 2}
    assert heavy == {"px", "px--bn=train--classifier=signed", "px+shuffled", "px[bn=train]"}
