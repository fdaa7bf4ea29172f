"""Segmentation at CPU scale: DeepLabV3+ / MobileNetV2 (real ImageNet weights) on a synthetic VOC.

    .venv/bin/python docs/segmentation.py [--runs runs/segmentation] [--seeds 0,1] [--epochs 10]

1. Writes a segmentation dataset in the real Pascal VOC layout from Fashion-MNIST items on
   canvases (``python -m pxprune.data.voc_synthetic``: 400 training and 100 validation images of
   96 px, 2-4 items each, class = item class + 1, background 0, 255 borders), into
   ``<runs>/data``.
2. Runs ``pxprune sweep`` with the ``voc2012_deeplabv3plus`` recipe scaled to the CPU:
   ``deeplabv3plus_mobilenet_v2`` (output stride 16) with torchvision's ImageNet MobileNetV2
   backbone, 64 px crops (and scoring size), batch 8, ``--epochs`` epochs with x0.1 steps at 5/8
   and 3/4 of them (the recipe's 50 and 60 of 80), head lr 0.01, backbone lr 0.001; the criteria at
   each sparsity, every seed, and dense. Re-entrant: finished runs are kept.
3. ``pxprune report`` of the sweep, an export of it (``docs/segmentation/runs/``, no
   checkpoints), example predictions coloured with the VOC palette
   (``docs/segmentation/predictions.png``), and the table in ``docs/segmentation.md`` between the
   ``<!-- table -->`` markers (the rest of the page is kept).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _study import cli, write_block  # noqa: E402

DOCS = Path(__file__).parent
OUT = DOCS / "segmentation"
PAGE = DOCS / "segmentation.md"
RECIPE = "voc2012_deeplabv3plus"
MODEL = "deeplabv3plus_mobilenet_v2"


def sets(root: Path, epochs: int) -> list[str]:
    milestones = sorted({max(1, round(epochs * 5 / 8)), max(1, round(epochs * 3 / 4))})
    return ["--set", f"model.name={MODEL}", f"data.root={root}", "data.crop_size=64",
            "train.batch_size=8", "train.amp=off", f"train.epochs={epochs}",
            f"train.milestones=[{','.join(map(str, milestones))}]"]


def predictions(sweep: Path, out: Path, sparsity: str, criteria: list[str], images: int = 4) -> None:
    """Image, ground truth, then the dense and each criterion's prediction (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pxprune.data.voc import colorize
    from pxprune.experiment.data import build_model, load_data
    from pxprune.experiment.folder import RunFolder
    from pxprune.train import load_plain_state_dict

    runs = [("dense", sweep / "dense" / "0" / "seed0")]
    runs += [(c, sweep / c / sparsity / "seed0") for c in criteria]
    runs = [(label, folder) for label, folder in runs if (folder / "metrics.json").is_file()]
    if not runs:
        return
    config = RunFolder(runs[0][1]).read_config()
    data = load_data(config, train=False, test=True, split=False)
    xs, ys = zip(*(data.test[i] for i in range(images)), strict=True)
    x, y = torch.stack(xs), torch.stack(ys)
    preds = {}
    for label, folder in runs:
        run = RunFolder(folder)
        model = build_model(run.read_config(), data.spec)
        run.load_mask().apply(model)
        load_plain_state_dict(model, run.load_checkpoint()["model"])
        with torch.no_grad():
            preds[label] = model.eval()(x).argmax(1)
    mean = torch.tensor(data.spec.mean).view(3, 1, 1)
    std = torch.tensor(data.spec.std).view(3, 1, 1)
    cols = 2 + len(preds)
    fig, axes = plt.subplots(images, cols, figsize=(1.6 * cols, 1.6 * images))
    for r in range(images):
        row = [("image", (x[r] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()),
               ("ground truth", colorize(y[r]).convert("RGB"))]
        row += [(f"{label}" + ("" if label == "dense" else f" {sparsity}"),
                 colorize(p[r]).convert("RGB")) for label, p in preds.items()]
        for c, (title, img) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(sweep: Path) -> str:
    """criterion x sparsity: mean ± std of mIoU and pixel accuracy over seeds, from metrics.json."""
    import statistics

    rows: dict[tuple[str, str], list[dict]] = {}
    for metrics in sorted(sweep.glob("*/*/seed*/metrics.json")):
        criterion, sparsity = metrics.parts[-4], metrics.parts[-3]
        rows.setdefault((criterion, sparsity), []).append(json.loads(metrics.read_text()))

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{100 * values[0]:.1f}"
        return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"

    lines = ["| criterion | sparsity | seeds | mIoU (%) | pixel acc. (%) | effective density | "
             "empty layers (seed 0) | prune (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    order = sorted(rows, key=lambda k: (float(k[1]), k[0] != "px", k[0]))
    for criterion, sparsity in order:
        ms = rows[(criterion, sparsity)]
        empty = ", ".join(ms[0]["empty_layers"]) or "-"
        lines.append(
            f"| {criterion} | {sparsity} | {len(ms)} | {cell([m['test_miou'] for m in ms])} | "
            f"{cell([m['test_pixel_acc'] for m in ms])} | "
            f"{statistics.mean(m['effective_density'] for m in ms):.4f} | {empty} | "
            f"{statistics.mean(m['prune_seconds'] for m in ms):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/segmentation")
    parser.add_argument("--criteria", default="px,snip,magnitude,random")
    parser.add_argument("--sparsities", default="0.8,0.95")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--fmnist-root", default="data")
    args = parser.parse_args()
    runs = Path(args.runs)
    root = runs / "data"
    if not (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").is_file():
        from pxprune.data.voc_synthetic import write_synthetic_voc

        write_synthetic_voc(root, train=400, val=100, size=96, items=(2, 4), seed=0,
                            fmnist_root=args.fmnist_root)
    sweep = runs / "sweep"
    cli("sweep", "--recipe", RECIPE, *sets(root, args.epochs), "--criteria", args.criteria,
        "--sparsities", args.sparsities, "--seeds", args.seeds, "--jobs", str(args.jobs),
        "--out", str(sweep), "--quiet")
    cli("report", str(sweep), "--quiet")
    OUT.mkdir(parents=True, exist_ok=True)
    exported = OUT / "runs"
    if exported.exists():
        shutil.rmtree(exported)
    cli("export", str(sweep), "--out", str(exported), "--quiet")
    for png in (sweep / "report").glob("*.png"):
        shutil.copy(png, OUT / png.name)
    criteria = [c for c in args.criteria.split(",") if c]
    top = max(args.sparsities.split(","), key=float)
    predictions(sweep, OUT / "predictions.png", top, criteria)
    command = shlex.join([".venv/bin/python", "docs/segmentation.py", *sys.argv[1:]])
    write_block(PAGE, "table", table(sweep), command, missing="# Segmentation\n\n")
    print(f"wrote {PAGE} and {OUT}/", file=sys.stderr)


if __name__ == "__main__":
    main()
