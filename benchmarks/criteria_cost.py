"""What does one scoring round cost for each criterion? `python benchmarks/criteria_cost.py`.

ResNet-20 with the default pruning split (10 Fashion-MNIST images per class, 100 in all; random
images of the same shape when the dataset is not installed), 2 CPU threads, one run. For every
registered criterion, prune() is timed with 1 and with 4 rounds: the difference / 3 is the cost of a
round, the rest the one-off setup. Ratios are to the floor measured in the same process: two plain
float32 forward passes of the 100 images.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import pxprune
from pxprune.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from px_speed import floor_seconds  # noqa: E402


def split_batches() -> tuple[list, str]:
    try:
        from pxprune.data import create_dataset, pruning_split

        ds = create_dataset("fashion-mnist", train=True, augment=False)
        sub = pruning_split(ds, per_class=10, seed=0)
        xs, ys = zip(*(sub[i] for i in range(len(sub))), strict=True)
        return [(torch.stack(xs), torch.tensor(ys))], "Fashion-MNIST pruning split (10 per class)"
    except (FileNotFoundError, ValueError):
        g = torch.Generator().manual_seed(0)
        return [
            (torch.randn(100, 3, 32, 32, generator=g), torch.randint(0, 10, (100,), generator=g))
        ], "random 3x32x32 images (Fashion-MNIST not installed)"


def timed(model, name, batches, rounds) -> float:
    t = time.perf_counter()
    pxprune.prune(model, name, batches, sparsity=0.9, rounds=rounds)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = create_model("resnet20", num_classes=10, seed=0)
    batches, what = split_batches()
    floor = floor_seconds(model, batches[0][0])
    rows = []
    for name in pxprune.list_criteria():
        one = timed(model, name, batches, 1)
        four = timed(model, name, batches, 4)
        per_round = max(0.0, (four - one) / 3)
        rows.append((name, per_round, max(0.0, one - per_round)))
    floor = statistics.median([floor, floor_seconds(model, batches[0][0])])
    lines = [
        f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"data: {what}. Command: `python benchmarks/criteria_cost.py`.",
        "",
        f"Floor (2 plain forwards of the 100 images): {floor:.3f} s.",
        "",
        "| criterion | default rounds | s / round | setup (s) | round / floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    from pxprune.criteria import CRITERIA

    for name, per_round, setup in rows:
        lines.append(
            f"| {name} | {CRITERIA.get(name).default_rounds} | {per_round:.3f} | {setup:.3f} | "
            f"{per_round / floor:.2f} |"
        )
    body = "## criteria_cost\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("criteria_cost", body)


if __name__ == "__main__":
    main()
