"""How fast is PX? `python benchmarks/px_speed.py` (or `make bench`).

The floor of one PX round is two plain float32 forward passes of the pruning split (the real network
for the gates and the data copy cannot be avoided). These machines drift by tens of percent within
minutes, so the floor is measured *between* PX's rounds, and ratios are medians over several calls
(with their range).

1. ResNet-20, 100 images of 3x32x32, 2 threads: whole ``prune(rounds=20)`` calls (setup,
   thresholding and the effective-density check included), per round, against the floor measured
   between the rounds of the same call (the prune's own time excludes that measurement).
   Goal: <= 1.15.
2. ResNet-50 at 224 px, 32 images, the default ``micro_batch`` ("auto"): one ``score()`` call (one
   PX round) against the floor just before and after it, both as defined (one batch of 32) and
   chunked like PX. Goal: the same ratio. Then the peak memory of a fresh process for one round,
   auto and one chunk of 32. (``--no-resnet50`` skips both: about 3 minutes on 2 cores.)
3. Where the rest goes: one PX round of ResNet-20 split into its passes (real network and data
   copy, weight copy with its backward, thresholding), each against one plain forward.
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


def floor_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Median time of two plain eval-mode forward passes of ``x``."""
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def ratio_stats(ratios: list[float]) -> dict:
    ratios = sorted(ratios)
    return {"ratio": statistics.median(ratios), "low": ratios[0], "high": ratios[-1], "n": len(ratios)}


def resnet20(repeats: int) -> dict:
    """Whole 20-round prune() calls, the floor measured between the rounds (progress callback):
    the prune's own time excludes the callback, and is compared with 20 x the median floor of
    the same call."""
    model = create_model("resnet20", num_classes=10, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)
    whole, floors_all, pxs_all = [], [], []
    for _ in range(repeats + 1):  # the first call warms up
        floors, spent = [], [0.0]

        def between(t, total, mask, floors=floors, spent=spent):  # noqa: ANN001
            start = time.perf_counter()
            floors.append(floor_seconds(model, x, repeats=1))
            spent[0] += time.perf_counter() - start

        start = time.perf_counter()
        pxprune.prune(model, "px", [(x, y)], sparsity=0.982, rounds=20, progress=between)
        px = (time.perf_counter() - start - spent[0]) / 20
        whole.append(px / statistics.median(floors))
        floors_all.append(statistics.median(floors))
        pxs_all.append(px)
    return {**ratio_stats(whole[1:]), "floor": statistics.median(floors_all[1:]),
            "px": statistics.median(pxs_all[1:])}


def resnet50(pairs: int) -> dict:
    """One PX round (score) against the floor measured just before and after it: two forwards of
    the 32 images in one batch (as defined), and chunked like PX's automatic micro-batch."""
    from pxprune.api import _setup

    model = create_model("resnet50", num_classes=1000, seed=0)
    x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    crit, ctx = _setup(model, "px", [x], include=None, exclude=None, seed=0, options={})
    crit.setup(ctx)
    chunk = ctx.batches.micro_batch

    def floor(mb: int) -> float:
        model.eval()
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(2):
                for i in range(0, x.shape[0], mb):
                    model(x[i : i + mb])
            return time.perf_counter() - t

    def px() -> float:
        t = time.perf_counter()
        pxprune.score(model, "px", [x])
        return time.perf_counter() - t

    px()
    one, chunked, pxs, f1s = [], [], [], []
    before = (floor(x.shape[0]), floor(chunk))
    for _ in range(pairs):
        p = px()
        after = (floor(x.shape[0]), floor(chunk))
        f1 = (before[0] + after[0]) / 2
        one.append(p / f1)
        chunked.append(p / ((before[1] + after[1]) / 2))
        pxs.append(p)
        f1s.append(f1)
        before = after
    return {**ratio_stats(one), "chunked": ratio_stats(chunked), "chunk": chunk,
            "px": statistics.median(pxs), "floor": statistics.median(f1s)}


MEMORY_SNIPPET = r"""
import resource, json, time, torch, pxprune
from pxprune.models import create_model
torch.set_num_threads(2)
model = create_model("resnet50", num_classes=1000, seed=0)
x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
pxprune.score(model, "px", [x], micro_batch=MB)
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "round_s": sec}))
"""


def memory(micro_batch: str) -> dict:
    import json
    import subprocess

    code = MEMORY_SNIPPET.replace("MB", micro_batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def breakdown(repeats: int = 5) -> list[tuple[str, float]]:
    """Seconds of each part of one PX round on ResNet-20 (medians), and of one plain forward."""
    from pxprune import threshold
    from pxprune.api import _setup

    model = create_model("resnet20", num_classes=10, seed=0)
    x = torch.randn(100, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    crit, ctx = _setup(model, "px", [x], include=None, exclude=None, seed=0, options={})
    crit.setup(ctx)
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.5
            for n, p in ctx.params.items()}
    mf = crit._float_mask(mask)
    parts: dict[str, list[float]] = {k: [] for k in ("forward", "data term", "round", "threshold")}
    for _ in range(repeats):
        parts["forward"].append(floor_seconds(model, x, repeats=1) / 2)
        t = time.perf_counter()
        crit.data_term(ctx, mf)
        parts["data term"].append(time.perf_counter() - t)
        t = time.perf_counter()
        scores = crit.score(ctx, mask)
        parts["round"].append(time.perf_counter() - t)
        total = sum(int(m.sum()) for m in mask.values())
        t = time.perf_counter()
        threshold.prune_step(scores, mask, sum(m.numel() for m in mask.values()) - total + 1000)
        parts["threshold"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return [
        ("one plain forward of 100 images", med["forward"]),
        ("data term (real pass for the gates + data copy)", med["data term"]),
        ("weight copy forward + backward, scores", med["round"] - med["data term"]),
        ("thresholding (one round, 272k weights)", med["threshold"]),
    ]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="prune() calls timed (ResNet-20)")
    parser.add_argument("--no-resnet50", action="store_true", help="skip the ResNet-50 224 px run")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    r20 = resnet20(args.repeats)
    lines = [
        f"Machine: {platform.machine()}, {_cpu()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Command: `python benchmarks/px_speed.py`.",
        "",
        "The floor is measured between PX's rounds (ResNet-20) or just before and after each PX "
        "round (ResNet-50); ratios are medians over the calls, with their range.",
        "",
        "| measurement | floor (s) | PX (s) | ratio | range | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| ResNet-20, 100 images: whole prune(rounds=20), per round | {r20['floor']:.3f} | "
        f"{r20['px']:.3f} | {r20['ratio']:.2f} | {r20['low']:.2f}-{r20['high']:.2f} | <= 1.15 |",
    ]
    if not args.no_resnet50:
        r50 = resnet50(pairs=3)
        c = r50["chunked"]
        lines += [
            f"| ResNet-50, 224 px, 32 images: one PX round (score, micro_batch auto = "
            f"{r50['chunk']}) | {r50['floor']:.2f} | {r50['px']:.2f} | {r50['ratio']:.2f} | "
            f"{r50['low']:.2f}-{r50['high']:.2f} | <= 1.15 |",
            f"| the same against a floor chunked like PX ({r50['chunk']} images a forward) | | | "
            f"{c['ratio']:.2f} | {c['low']:.2f}-{c['high']:.2f} | |",
            "",
            "ResNet-50 at 224 px, 32 images, one PX round in a fresh process (peak RSS):",
            "",
            "| micro_batch | RSS before (MB) | peak RSS (MB) | round (s) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for mb in ('"auto"', "32"):
            mem = memory(mb)
            lines.append(f"| {mb.strip(chr(34))} | {mem['base_mb']:.0f} | {mem['peak_mb']:.0f} | "
                         f"{mem['round_s']:.1f} |")
    lines += [
        "",
        "Where one ResNet-20 round goes (medians of 5; a random 50% mask):",
        "",
        "| part | seconds | / one forward |",
        "| --- | ---: | ---: |",
    ]
    parts = breakdown()
    fwd = parts[0][1]
    for label, sec in parts:
        lines.append(f"| {label} | {sec:.4f} | {sec / fwd:.2f} |")
    body = "## px_speed\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("px_speed", body)


if __name__ == "__main__":
    main()
