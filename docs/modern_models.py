"""Every criterion on modern torchvision architectures at 90% sparsity, and a short training check.

    .venv/bin/python docs/modern_models.py [--steps 100] [--out docs/modern_models]

Writes ``<out>/results.json`` (one entry per model and criterion; re-entrant: finished entries are
kept, so the table can be built in parts) and ``docs/modern_models.md`` (the table). For each
model (torchvision's, at 32x32 px from Fashion-MNIST, 10 classes) and criterion: prune to 90% with
the criterion's default rounds capped at 20 (the budget of 2 CPU cores), on the Fashion-MNIST
pruning split (10 images per class); record the effective density, the layers left empty or cut
off, any error the library raises instead of a mask; then train the mask for ``--steps`` SGD steps
(batch 16, lr 0.02, momentum 0.9, on 4096 training images) and the same per-layer budget shuffled
at random within each layer (``mask.shuffled()``), and record the training loss at the start
(mean of the first 10 steps) and at the end (mean of the last 20).

Where a criterion refuses (a zero-initialised head; PX on squeeze-excitation branches or attention
queries and keys, which its path bound does not cover), the table says so, and the row below
shows the documented fix: the head re-initialised, or the refused layers excluded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import pxprune
from pxprune.data import create_dataset, pruning_split
from pxprune.degenerate import DegenerateScoresError
from pxprune.paths import PathTheoryWarning

CRITERIA = ["px", "snip", "grasp", "synflow", "synflow_l2", "ntksap", "magnitude", "random"]
MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
          "convnext_tiny", "swin_t", "vit_b_16", "gelu_mlp"]
SPARSITY = 0.9
ROUNDS_CAP = 20


class GeluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.GELU(),
                                 nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "gelu_mlp":
        return GeluMLP()
    kw = {"image_size": 32} if name.startswith("vit") else {}
    return torchvision.models.get_model(name, num_classes=10, **kw)


def reinit_head(model: nn.Module) -> nn.Module:
    """The fix the library names for a zero-initialised head."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and not bool(m.weight.abs().max()):
            nn.init.normal_(m.weight, std=0.01)
    return model


def train_check(model: nn.Module, mask, data, steps: int) -> tuple[float, float]:
    import copy

    net = copy.deepcopy(model)
    mask.apply(net)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    losses = []
    x_all, y_all = data
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (16,), generator=g)
        loss = nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if not all(math.isfinite(v) for v in losses):
        return float("nan"), float("nan")
    return sum(losses[:10]) / 10, sum(losses[-20:]) / 20


def one(model_name: str, criterion: str, split, train, steps: int, fix: str | None = None) -> dict:
    model = build(model_name)
    if fix == "reinit_head":
        reinit_head(model)
    options = {}
    exclude = None
    if fix and fix.startswith("exclude:"):
        exclude = fix.split(":", 1)[1].split(",")
    cls = pxprune.criteria.CRITERIA.get(criterion)
    rounds = min(ROUNDS_CAP, cls.default_rounds)
    entry: dict = {"model": model_name, "criterion": criterion, "fix": fix, "rounds": rounds}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mask = pxprune.prune(model, criterion, split, sparsity=SPARSITY, rounds=rounds,
                                 exclude=exclude, **options)
        entry["warnings"] = sorted({str(w.message)[:160] for w in caught
                                    if not issubclass(w.category, PathTheoryWarning)})
    except DegenerateScoresError as err:
        entry.update(error=str(err), refused=err.layers, zero_initialised=err.zero_initialised,
                     prune_s=time.perf_counter() - start)
        return entry
    entry["prune_s"] = time.perf_counter() - start
    report = mask.report(model, (3, 32, 32))
    entry.update(
        density=report.density,
        effective_density=report.effective_density,
        empty=len(report.empty_layers),
        layers=len(report.rows),
        empty_layers=report.empty_layers,
    )
    first, last = train_check(model, mask, train, steps)
    r_first, r_last = train_check(model, mask.shuffled(0), train, steps)
    entry.update(loss_start=first, loss_end=last, random_loss_start=r_first, random_loss_end=r_last)
    return entry


def table(results: list[dict], steps: int) -> str:
    lines = [
        "| model | criterion | fix | empty / layers | effective density | train loss start -> end "
        f"({steps} steps) | same per-layer budget, random | prune (s) |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for r in results:
        fix = r.get("fix") or ""
        if fix.startswith("exclude:"):
            fix = f"exclude {len(fix.split(':', 1)[1].split(','))} layers"
        if "error" in r:
            why = r["error"].split(":", 2)[-1].strip()
            lines.append(f"| {r['model']} | {r['criterion']} | {fix} | refused | | {why[:140]} | | "
                         f"{r['prune_s']:.0f} |")
            continue
        lines.append(
            f"| {r['model']} | {r['criterion']} | {fix} | {r['empty']} / {r['layers']} | "
            f"{r['effective_density']:.4f} | {r['loss_start']:.2f} -> {r['loss_end']:.2f} | "
            f"{r['random_loss_start']:.2f} -> {r['random_loss_end']:.2f} | {r['prune_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="docs/modern_models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else []
    train_ds = create_dataset("fashion-mnist", train=True, augment=False)
    split = pruning_split(train_ds, per_class=10, seed=0)
    g = torch.Generator().manual_seed(1)
    picks = torch.randperm(len(train_ds), generator=g)[:4096].tolist()
    xs, ys = zip(*(train_ds[i] for i in picks), strict=True)
    train = (torch.stack(xs), torch.tensor(ys))

    def save() -> None:
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(store)

    for model_name in args.models.split(","):
        for criterion in args.criteria.split(","):
            todo = [None]
            while todo:
                fix = todo.pop(0)
                key = (model_name, criterion, fix)
                entry = next((r for r in results if (r["model"], r["criterion"], r.get("fix")) == key), None)
                if entry is None:
                    print(f"{model_name} {criterion} {fix or ''}", file=sys.stderr, flush=True)
                    entry = one(model_name, criterion, split, train, args.steps, fix)
                    results.append(entry)
                    save()
                if "error" in entry and fix is None:
                    if entry.get("zero_initialised"):
                        todo.append("reinit_head")
                    elif entry.get("refused"):
                        todo.append("exclude:" + ",".join(entry["refused"]))
    order = {m: i for i, m in enumerate(MODELS)}
    results.sort(key=lambda r: (order.get(r["model"], 99), CRITERIA.index(r["criterion"])
                                if r["criterion"] in CRITERIA else 99, r.get("fix") or ""))
    save()
    doc = Path("docs/modern_models.md")
    head = doc.read_text().split("<!-- table -->")[0] if doc.exists() else ""
    doc.write_text(head + "<!-- table -->\n\n" + table(results, args.steps) + "\n")


if __name__ == "__main__":
    main()
