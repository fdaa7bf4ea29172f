"""Data-parallel training on the CPU: `python benchmarks/torchrun_scaling.py`.

The same dense ResNet-20 run (Fashion-MNIST-shaped fake data written to a temporary folder, 2,048
training images, batch 128, one epoch) trained by `pxprune run` in one process with 2 threads,
in one process with 1 thread, and by `torchrun --nproc_per_node=2` (gloo, 1 thread each). The
runs alternate, ``--repeats`` times; the table gives the median training throughput (images/s
from metrics.json's train_seconds: training only, not start-up, scoring or evaluation) and each
configuration's ratio to one process with 2 threads, medians of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pxprune.data.fake import write_fake_fashion_mnist

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

N_TRAIN = 2048
CONFIGS = {  # name: (processes, threads per process)
    "1 process x 2 threads": (1, 2),
    "1 process x 1 thread": (1, 1),
    "2 processes (torchrun, gloo) x 1 thread": (2, 1),
}


def run(root: Path, out: Path, processes: int, threads: int, device: str = "cpu") -> float:
    argv = ["run", "--recipe", "demo", "--criterion", "dense", "--epochs", "1", "--quiet",
            "--device", device,
            "--set", f"data.root={root}", "data.train_subset=null", "train.batch_size=128",
            "--out", str(out)]
    if processes == 1:
        command = [sys.executable, "-m", "pxprune", *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "pxprune", *argv]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = json.loads((out / "metrics.json").read_text())["train_seconds"]
    return N_TRAIN / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU per process")
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_fake_fashion_mnist(root, n_train=N_TRAIN, n_test=256)
        for repeat in range(args.repeats):
            for i, (name, (processes, threads)) in enumerate(CONFIGS.items()):
                speed = run(root, Path(tmp) / f"run{repeat}-{i}", processes, threads, args.device)
                speeds[name].append(speed)
                print(f"repeat {repeat + 1}: {name}: {speed:.0f} images/s", file=sys.stderr)
    base = speeds["1 process x 2 threads"]
    rows = ["| configuration | images/s (median) | ratio to 1 process x 2 threads | range |",
            "| --- | ---: | ---: | ---: |"]
    for name, values in speeds.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        rows.append(f"| {name} | {statistics.median(values):.0f} | "
                    f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |")
    text = "\n".join([
        "## torchrun_scaling",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}. Command: `python benchmarks/torchrun_scaling.py`.",
        "",
        f"Dense ResNet-20, {N_TRAIN} fake Fashion-MNIST images, global batch 128, one epoch, "
        f"{args.repeats} repeats alternating the configurations.",
        "",
        *rows,
    ])
    print(text)
    if not args.no_write:
        write_section("torchrun_scaling", text)


if __name__ == "__main__":
    main()
