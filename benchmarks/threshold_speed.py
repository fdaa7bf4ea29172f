"""How fast is global thresholding at scale? `python benchmarks/threshold_speed.py`.

VGG11-BN's prunable weights (torchvision, 1000 classes: 132.9M) with random float32 scores, on the
CPU with 2 threads. A 100-round schedule to 98% sparsity is started; each further round's
``threshold.prune_step`` is timed against one ``torch.cat`` of the scores measured right after it
(the least any global selection must spend). Goal: within 4x. The plain float64 reference
(``_reference_prune_lowest``, the implementation before) is timed once for comparison.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

from pxprune import threshold
from pxprune.selection import prunable_parameters

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="further rounds timed")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with torch.device("meta"):
        model = torchvision.models.vgg11_bn()
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}
    m = sum(t.numel() for t in scores.values())
    mask = {n: torch.ones_like(t, dtype=torch.bool) for n, t in scores.items()}
    counts = threshold.pruned_counts(m, 0.98, 100)
    mask = threshold.prune_step(scores, mask, counts[0])
    ratios, steps, cats = [], [], []
    for r in range(1, args.rounds + 1):
        t = time.perf_counter()
        mask = threshold.prune_step(scores, mask, counts[r])
        step = time.perf_counter() - t
        t = time.perf_counter()
        torch.cat([s.reshape(-1) for s in scores.values()])
        cat = time.perf_counter() - t
        ratios.append(step / cat)
        steps.append(step)
        cats.append(cat)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    kept = torch.cat([mask[n].reshape(-1) for n in scores])
    k = counts[args.rounds + 1] - (kept.numel() - int(torch.count_nonzero(kept)))
    t = time.perf_counter()
    threshold._reference_prune_lowest(flat.double(), kept, k)
    ref = time.perf_counter() - t
    lines = [
        f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        "Command: `python benchmarks/threshold_speed.py`.",
        "",
        f"VGG11-BN, {m / 1e6:.1f}M prunable weights, random scores, rounds 2-{args.rounds + 1} of a "
        "100-round schedule to 98%:",
        "",
        "| measurement | seconds | / one torch.cat of the scores | goal |",
        "| --- | ---: | ---: | ---: |",
        f"| one torch.cat of the scores | {statistics.median(cats):.3f} | 1.00 | |",
        f"| prune_step (global), median of {args.rounds} rounds | {statistics.median(steps):.3f} | "
        f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}) | <= 4 |",
        f"| the float64 reference (the implementation before), one round | {ref:.3f} | "
        f"{ref / statistics.median(cats):.1f} | |",
    ]
    body = "## threshold_speed\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("threshold_speed", body)


if __name__ == "__main__":
    main()
