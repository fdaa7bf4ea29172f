"""Part (b): the pre-trained MobileNetV2 pruned at initialisation, then fine-tuned on Fashion-MNIST.

    .venv/bin/python docs/pretrained_mobilenet_finetune.py [--runs runs/mobilenet_finetune]

``pxprune sweep`` with the demo recipe changed to the transfer setting: torchvision's
``mobilenet_v2`` with its real ImageNet weights (``IMAGENET1K_V1``, from torch's hub cache, put
there by ``python -m pxprune.models.offline``; the 1000-class head replaced by a new 10-class
one), Fashion-MNIST resized to ``--size`` px and normalised with ImageNet's statistics, a fixed
``--subset`` of the training images, ``--epochs`` of SGD (lr 0.01, cosine, batch 64), evaluated
on the 10,000 test images; every criterion at each sparsity, the seeds, and dense. The whole
network (backbone and new head) is pruned with one global mask, on 10 images per class, with each
criterion's own number of rounds (PX and SynFlow 100, SNIP, GraSP, magnitude and random 1). Then
``pxprune report``, an export without checkpoints (``docs/pretrained_mobilenet/finetune/``), and
the table in ``docs/pretrained_mobilenet.md`` between the ``<!-- finetune -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _study import cli, write_block  # noqa: E402

DOCS = Path(__file__).parent
OUT = DOCS / "pretrained_mobilenet" / "finetune"
PAGE = DOCS / "pretrained_mobilenet.md"


def table(sweep: Path) -> str:
    rows: dict[tuple[str, str], list[dict]] = {}
    for metrics in sorted(sweep.glob("*/*/seed*/metrics.json")):
        rows.setdefault((metrics.parts[-4], metrics.parts[-3]), []).append(
            json.loads(metrics.read_text()))
    dense = [m["test_acc"] for m in rows.get(("dense", "0"), [])]
    ref = statistics.mean(dense) if dense else None

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{100 * values[0]:.2f}"
        return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"

    lines = ["| criterion | sparsity | seeds | test accuracy (%) | vs dense (points) | "
             "effective density | empty layers | prune (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (criterion, sparsity), ms in sorted(rows.items(), key=lambda kv: (
            float(kv[0][1]), -statistics.mean(m["test_acc"] for m in kv[1]))):
        acc = [m["test_acc"] for m in ms]
        gap = "" if ref is None or criterion == "dense" else \
            f"{100 * (statistics.mean(acc) - ref):+.2f}"
        lines.append(
            f"| {criterion} | {sparsity} | {len(ms)} | {cell(acc)} | {gap} | "
            f"{statistics.mean(m['effective_density'] for m in ms):.4f} | "
            f"{len(ms[0]['empty_layers'])} | "
            f"{statistics.mean(m['prune_seconds'] for m in ms):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/mobilenet_finetune")
    parser.add_argument("--criteria", default="px,snip,grasp,synflow,magnitude,random")
    parser.add_argument("--sparsities", default="0.9")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    sweep = Path(args.runs) / "sweep"
    cli("sweep", "--recipe", "demo", "--pretrained", "IMAGENET1K_V1", "--set",
        "model.name=mobilenet_v2", f"data.image_size={args.size}",
        f"data.train_subset={args.subset}", "train.batch_size=64", "train.lr=0.01",
        f"train.epochs={args.epochs}",
        "--criteria", args.criteria, "--sparsities", args.sparsities, "--seeds", args.seeds,
        "--jobs", str(args.jobs), "--out", str(sweep), "--extend", "--quiet")
    cli("report", str(sweep), "--quiet")
    if OUT.exists():
        shutil.rmtree(OUT)
    cli("export", str(sweep), "--out", str(OUT), "--quiet")
    command = shlex.join([".venv/bin/python", "docs/pretrained_mobilenet_finetune.py", *sys.argv[1:]])
    write_block(PAGE, "finetune", table(sweep), command,
                missing="## Part (b): pruned, then fine-tuned on Fashion-MNIST\n\n")
    print(f"wrote {PAGE} and {OUT}/", file=sys.stderr)


if __name__ == "__main__":
    main()
