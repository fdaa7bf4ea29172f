"""Pruning a pre-trained MobileNetV2: how much of the dense network's behaviour each mask keeps.

    .venv/bin/python docs/pretrained_mobilenet.py [--criteria px,snip,...] [--sparsities 0.5,0.8,...]
        [--size 160] [--split 32] [--fmnist 256] [--rounds-cap 20] [--out docs/pretrained_mobilenet]

Part (a) of the pre-trained experiment, no training anywhere. The model is torchvision's
mobilenet_v2 with its ImageNet weights (IMAGENET1K_V1, 1000-class head kept pre-trained), in eval
mode. For each criterion and sparsity: prune on a small split of Fashion-MNIST *training* images
labelled with the dense network's own top-1 predictions (there are no ImageNet labels for them, so
a 10-per-class split is not possible), apply the mask to a copy, and measure how often the pruned
network's top-1 agrees with the dense network's on real photos (scikit-image's RGB photos) and on
Fashion-MNIST *test* images; also the top-5 overlap (the dense top-1 among the pruned top-5), the
effective density, the empty layers and the prune time.

Writes ``<out>/results.json`` (re-entrant: finished (criterion, sparsity) entries are skipped;
atomic writes), ``<out>/agreement.png`` and the page: ``docs/pretrained_mobilenet.md`` when
``--out`` is the default, else ``<out>.md`` next to the out folder. A findings block between
``<!-- findings -->`` and ``<!-- /findings -->`` in an existing page is kept on rewrite.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

import pxprune
from pxprune.criteria import CRITERIA as REGISTRY
from pxprune.data import create_dataset, get_spec
from pxprune.data.base import AdaptedInputs
from pxprune.degenerate import DegenerateScoresError
from pxprune.paths import PathTheoryWarning

CRITERIA = ["px", "snip", "grasp", "synflow", "synflow_l2", "ntksap", "magnitude", "random"]
SPARSITIES = [0.5, 0.8, 0.9, 0.95]
DEFAULT_OUT = "docs/pretrained_mobilenet"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# scikit-image's bundled RGB photographs (``cat`` is the same picture as ``chelsea``; colorwheel
# and logo are drawings; the rest of skimage.data is grey, 3-D or needs a download).
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina"]
SPLIT_SEED = 0
EVAL_CHUNK = 64
FINDINGS_OPEN, FINDINGS_CLOSE = "<!-- findings -->", "<!-- /findings -->"
PART_B = "## Part (b)"


# ----------------------------------------------------------------------------------------- data
def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1]: shorter side to ``size`` (bilinear, antialiased), then centre crop."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x.unsqueeze(0), size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=True).squeeze(0)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size]


def load_photos(size: int) -> tuple[list[str], torch.Tensor]:
    import skimage.data

    names, images, seen = [], [], set()
    for name in PHOTOS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(skimage.data, name)()
        except Exception as err:  # noqa: BLE001 - a photo that needs a download is skipped
            print(f"skipping skimage.data.{name}: {type(err).__name__}", file=sys.stderr)
            continue
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        if img.ndim != 3 or img.shape[2] != 3:
            continue
        digest = hashlib.sha256(img.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        x = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0
        names.append(name)
        images.append(normalise(resize_crop(x, size)))
    return names, torch.stack(images)


def fmnist(train: bool, count: int, size: int, *, shuffle: bool) -> torch.Tensor:
    """``count`` Fashion-MNIST images (grey repeated to 3 channels, padded 28->32 by the dataset),
    resized to ``size`` and ImageNet-normalised. Train: a seeded random draw; test: the first."""
    ds = create_dataset("fashion-mnist", train=train, augment=False)
    ds = AdaptedInputs(ds, get_spec("fashion-mnist"), mean=MEAN, std=STD, size=size)
    if shuffle:
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SPLIT_SEED))[:count]
    else:
        idx = torch.arange(min(count, len(ds)))
    return torch.stack([ds[int(i)][0] for i in idx])


# ---------------------------------------------------------------------------------------- model
def build() -> nn.Module:
    model = pxprune.models.create_model("mobilenet_v2", num_classes=1000,
                                        pretrained="IMAGENET1K_V1")
    if model.pretrained_weights.head_new:
        model = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")
    return model.eval()


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])


def agreement(dense_top1: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    top1 = float((out.argmax(1) == dense_top1).float().mean())
    top5 = float((out.topk(5, dim=1).indices == dense_top1[:, None]).any(1).float().mean())
    return top1, top5


def one(model, criterion, sparsity, split, rounds_cap, size, photos, fm, dense) -> dict:
    rounds = min(REGISTRY.get(criterion).default_rounds, rounds_cap)
    entry: dict = {"criterion": criterion, "sparsity": sparsity, "rounds": rounds}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mask = pxprune.prune(model, criterion, split, sparsity=sparsity, rounds=rounds)
        entry["warnings"] = sorted({str(w.message)[:200] for w in caught
                                    if not issubclass(w.category, PathTheoryWarning)})
    except DegenerateScoresError as err:
        entry.update(error=f"DegenerateScoresError: {err}", refused=err.layers,
                     zero_initialised=err.zero_initialised, prune_s=time.perf_counter() - start)
        return entry
    except ValueError as err:
        entry.update(error=f"{type(err).__name__}: {err}", prune_s=time.perf_counter() - start)
        return entry
    entry["prune_s"] = time.perf_counter() - start
    report = mask.report(model, (3, size, size))
    pruned = copy.deepcopy(model)
    mask.apply(pruned)
    pruned.eval()
    entry["agree_photos"], entry["top5_photos"] = agreement(dense["photos"], logits(pruned, photos))
    entry["agree_fmnist"], entry["top5_fmnist"] = agreement(dense["fmnist"], logits(pruned, fm))
    entry.update(density=report.density, effective_density=report.effective_density,
                 empty=len(report.empty_layers), layers=len(report.rows),
                 empty_layers=report.empty_layers)
    return entry


# ----------------------------------------------------------------------------------------- page
def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def table(results: list[dict], criteria: list[str]) -> str:
    lines = [
        "| criterion | sparsity | rounds | agreement photos (top-1 / top-5) | agreement FMNIST "
        "(top-1 / top-5) | effective density | empty / layers | prune (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {c: i for i, c in enumerate(criteria)}
    for r in sorted(results, key=lambda r: (order.get(r["criterion"], 99), r["sparsity"])):
        name = f"**{r['criterion']}**" if r["criterion"] == "px" else r["criterion"]
        head = f"| {name} | {r['sparsity']:g} | {r['rounds']} |"
        if "error" in r:
            why = " ".join(r["error"].split())[:160].replace("|", "\\|")
            lines.append(f"{head} refused | {why} | | | {r['prune_s']:.1f} |")
            continue
        lines.append(
            f"{head} {r['agree_photos']:.3f} / {r['top5_photos']:.3f} | "
            f"{r['agree_fmnist']:.3f} / {r['top5_fmnist']:.3f} | {r['effective_density']:.4f} | "
            f"{r['empty']} / {r['layers']} | {r['prune_s']:.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], criteria: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c in criteria:
        pts = sorted((r["sparsity"], r["agree_fmnist"]) for r in results
                     if r["criterion"] == c and "error" not in r)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        if c == "px":
            ax.plot(xs, ys, "o-", color="crimson", lw=2.8, ms=7, label="PX", zorder=5)
        else:
            ax.plot(xs, ys, ".-", lw=1.2, alpha=0.8, label=c)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 agreement with dense (Fashion-MNIST test)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Pre-trained MobileNetV2, no training after pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def page(doc: Path, out: Path, store: dict, criteria: list[str], command: str) -> str:
    cfg = store["config"]
    try:
        rel = os.path.relpath(out, doc.parent)
    except ValueError:
        rel = str(out)
    findings = (f"{FINDINGS_OPEN}\n_Findings: to be written by the lead after the full run._\n"
                f"{FINDINGS_CLOSE}")
    part_b = ""
    if doc.exists():
        old = doc.read_text()
        if FINDINGS_OPEN in old and FINDINGS_CLOSE in old:
            findings = old[old.index(FINDINGS_OPEN):old.index(FINDINGS_CLOSE) + len(FINDINGS_CLOSE)]
        if PART_B in old:  # written by docs/pretrained_mobilenet_finetune.py: kept
            part_b = "\n" + old[old.index(PART_B):].rstrip() + "\n"
    preds = ", ".join(f"{n}: {p}" for n, p in zip(cfg["photos"], cfg["dense_photo_top1"],
                                                   strict=True))
    return f"""# Pruning a pre-trained MobileNetV2: (a) agreement without training, (b) fine-tuned

**What.** How much of a pre-trained network's behaviour survives pruning at initialisation, per
criterion, with no training afterwards: torchvision's `mobilenet_v2` with its ImageNet weights
(`IMAGENET1K_V1`, 1000-class head kept pre-trained, sha256 `{cfg['weights_sha256']}`), in eval mode.

**Protocol.**
- Inputs at {cfg['size']}x{cfg['size']} px (shorter side resized, bilinear and antialiased, then
  centre crop), ImageNet-normalised.
- Pruning split: {cfg['split']} Fashion-MNIST *training* images (a seeded random draw, seed
  {SPLIT_SEED}; grey repeated to 3 channels). ImageNet labels do not exist for them, so the usual
  10-per-class split is not possible; the **labels are the dense network's own top-1 predictions**
  (so SNIP, GraSP and the other label-using criteria have targets).
- `pxprune.prune(model, criterion, split, sparsity=s, rounds=min(default_rounds, {cfg['rounds_cap']}))`,
  global scope, seed 0, nothing excluded. A `DegenerateScoresError` or other `ValueError` is
  recorded as a refusal.
- The mask is applied to a copy (eval mode) and compared with the dense network on
  {len(cfg['photos'])} scikit-image RGB photos ({', '.join(cfg['photos'])}) and the first
  {cfg['fmnist']} Fashion-MNIST *test* images. Top-1 agreement: the pruned top-1 equals the dense
  top-1; top-5: the dense top-1 is among the pruned top-5. Effective density and empty (or cut-off)
  layers from `mask.report(model, (3, {cfg['size']}, {cfg['size']}))`.
- Dense top-1 on the photos (sanity check of the weights): {preds}.

**Command.** `{command}`

**Machine.** {cfg['machine']}

{findings}

![agreement on Fashion-MNIST vs sparsity]({rel}/agreement.png)

{table(store['results'], criteria)}
{part_b}"""


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--sparsities", default=",".join(f"{s:g}" for s in SPARSITIES))
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--split", type=int, default=32)
    parser.add_argument("--fmnist", type=int, default=256)
    parser.add_argument("--rounds-cap", "--rounds_cap", dest="rounds_cap", type=int, default=20)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    criteria = [c for c in args.criteria.split(",") if c]
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    for c in criteria:
        REGISTRY.get(c)  # an unknown name fails before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = out.resolve() == Path(DEFAULT_OUT).resolve()
    doc = Path(DEFAULT_OUT + ".md") if default else out.parent / (out.name + ".md")
    command = shlex.join([".venv/bin/python", "docs/pretrained_mobilenet.py", *sys.argv[1:]])

    model = build()
    photo_names, photos = load_photos(args.size)
    fm = fmnist(False, args.fmnist, args.size, shuffle=False)
    split_x = fmnist(True, args.split, args.size, shuffle=True)
    dense = {"photos": logits(model, photos).argmax(1), "fmnist": logits(model, fm).argmax(1)}
    split = [(split_x, logits(model, split_x).argmax(1))]
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    config = {
        "size": args.size, "split": args.split, "fmnist": args.fmnist,
        "rounds_cap": args.rounds_cap, "photos": photo_names,
        "weights_sha256": model.pretrained_weights.sha256,
    }
    store_path = out / "results.json"
    store = json.loads(store_path.read_text()) if store_path.exists() else {"results": []}
    old = store.get("config")
    if old is not None and any(old.get(k) != v for k, v in config.items()):
        sys.exit(f"{store_path} was made with {old}, not {config}; use another --out")
    config.update(
        dense_photo_top1=[categories[int(i)] for i in dense["photos"]],
        machine=(f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs, torch {torch.__version__} with "
                 f"{torch.get_num_threads()} threads, pxprune {pxprune.__version__}"),
    )
    store["config"] = {**(old or {}), **config}
    results = store["results"]

    def save() -> None:
        atomic_write(store_path, json.dumps(store, indent=1))

    save()
    grid = [(c, s) for c in criteria for s in sparsities]
    bar = tqdm(grid, desc="grid", unit="mask", file=sys.stderr)
    for c, s in bar:
        bar.set_postfix_str(f"{c} {s:g}")
        if any(r["criterion"] == c and r["sparsity"] == s for r in results):
            continue
        entry = one(model, c, s, split, args.rounds_cap, args.size, photos, fm, dense)
        results.append(entry)
        save()
        brief = ("refused" if "error" in entry else
                 f"photos {entry['agree_photos']:.3f} fmnist {entry['agree_fmnist']:.3f} "
                 f"eff {entry['effective_density']:.4f} empty {entry['empty']}")
        bar.write(f"{c} {s:g}: {brief} ({entry['prune_s']:.1f} s)", file=sys.stderr)
    bar.close()

    shown = criteria + sorted({r["criterion"] for r in results} - set(criteria))
    plot(results, shown, out / "agreement.png")
    atomic_write(doc, page(doc, out, store, shown, command))
    print(f"wrote {store_path}, {out / 'agreement.png'} and {doc}")


if __name__ == "__main__":
    main()
