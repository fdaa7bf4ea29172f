"""How fast is PX? `python benchmarks/px_speed.py` (or `make bench`).

ResNet-20, 100 images of 32x32, 2 CPU threads. The floor, measured in the same process, is two plain
float32 forward passes of the same 100 images (what one PX round cannot avoid: the real network for
the gates and the data copy). Reported: whole prune() calls of 20 and 100 rounds (setup included) in
seconds per round and as a ratio to the floor; goal: the 20-round call within 1.5 x 20 x floor. Also
the peak memory of one PX round on ResNet-50 at 224 px with 32 images (in a subprocess).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

import pxprune
from pxprune.models import create_model

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _results import write_section  # noqa: E402


def floor_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    model.eval()
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def prune_seconds(model, batches, rounds: int) -> float:
    t = time.perf_counter()
    pxprune.prune(model, "px", batches, sparsity=0.982, rounds=rounds)
    return time.perf_counter() - t


MEMORY_SNIPPET = r"""
import resource, json, torch, pxprune
from pxprune.models import create_model
torch.set_num_threads(2)
model = create_model("resnet50", num_classes=1000, seed=0)
x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = __import__("time").perf_counter()
pxprune.score(model, "px", [x], micro_batch=MB)
sec = __import__("time").perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    t = __import__("time").perf_counter(); model.eval()(x); fwd = __import__("time").perf_counter() - t
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "round_s": sec, "forward_s": fwd}))
"""


def memory(micro_batch: int) -> dict:
    code = MEMORY_SNIPPET.replace("MB", str(micro_batch))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-memory", action="store_true", help="skip the ResNet-50 memory run")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = create_model("resnet20", num_classes=10, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)
    batches = [(x, y)]
    floor = floor_seconds(model, x)
    t20 = prune_seconds(model, batches, 20)
    floor_after = floor_seconds(model, x)
    t100 = prune_seconds(model, batches, 100)
    floor = statistics.median([floor, floor_after, floor_seconds(model, x)])
    r20, r100 = t20 / (20 * floor), t100 / (100 * floor)
    lines = [
        f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        "Command: `python benchmarks/px_speed.py`.",
        "",
        "| measurement | seconds | per round | ratio to floor |",
        "| --- | ---: | ---: | ---: |",
        f"| floor: 2 plain forwards of 100 images | {floor:.3f} | | 1.00 |",
        f"| prune(rounds=20), setup included | {t20:.2f} | {t20 / 20:.3f} | {r20:.2f} (goal <= 1.5) |",
        f"| prune(rounds=100), setup included | {t100:.2f} | {t100 / 100:.3f} | {r100:.2f} |",
    ]
    if not args.no_memory:
        lines += [
            "",
            "ResNet-50 at 224 px, 32 images, one PX round (peak RSS of a fresh process):",
            "",
            "| micro_batch | RSS before (MB) | peak RSS (MB) | round (s) | one plain forward of 32 (s) |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for mb in (32, 8):
            m = memory(mb)
            lines.append(
                f"| {mb} | {m['base_mb']:.0f} | {m['peak_mb']:.0f} | {m['round_s']:.1f} "
                f"| {m['forward_s']:.1f} |"
            )
    body = "## px_speed\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("px_speed", body)


if __name__ == "__main__":
    main()
