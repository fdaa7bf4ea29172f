"""A small, reproducible segmentation dataset in the real Pascal VOC layout, from Fashion-MNIST.

``python -m pxprune.data.voc_synthetic --out DIR`` writes ``DIR/VOCdevkit/VOC2012/`` with
``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs of class indices) and
``ImageSets/Segmentation/{train,val,trainval}.txt``, which the ``voc2012`` dataset then reads with
``data.root=DIR``. Each image is a smooth random-colour background with mild noise and a few
Fashion-MNIST items (training images for the train split, test images for val) pasted at random
places, rescaled and tinted. An item's class is its Fashion-MNIST label + 1 (1..10; 0 is the
background), its mask the pixels brighter than ``THRESHOLD``; a 1-2 px void (255) border surrounds
each item as in VOC, and later items occlude earlier ones. All randomness comes from numpy
generators seeded from ``seed`` (one per split, so the val images do not depend on ``train``):
the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pxprune._io import atomic_file, atomic_write_text
from pxprune.data.voc import IGNORE_INDEX, voc_palette

THRESHOLD = 40
"""Fashion-MNIST pixels above this intensity (of 255) belong to the item."""
SCALE_RANGE = (0.8, 2.0)
JPEG_QUALITY = 90
NOISE_STD = 6.0
ID_FORMAT = "synth_{:06d}"


def _check(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _load_fashion_mnist(root: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 (N, 28, 28) images and int labels of one split (the loader's lookup order)."""
    from pxprune.data.fashion_mnist import build_fashion_mnist

    dataset = build_fashion_mnist(Path(root).expanduser(), train=train, download=False,
                                  augment=False)
    return dataset.data.numpy(), dataset.targets.numpy()


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a (2 radius + 1)-pixel square."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two random colours in a random direction, plus noise (float)."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    canvas = start + (end - start) * t[..., None]
    return canvas + rng.normal(0, NOISE_STD, size=canvas.shape)


def _render(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int,
            items: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 RGB image, uint8 label map) pair."""
    canvas = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(items[0], items[1] + 1))):
        index = int(rng.integers(len(images)))
        side = min(size, max(1, round(28 * rng.uniform(*SCALE_RANGE))))
        item = np.asarray(
            Image.fromarray(images[index]).resize((side, side), Image.Resampling.BILINEAR),
            dtype=np.float64)
        tint = rng.uniform(0, 255, size=3)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        border = int(rng.integers(1, 3))
        mask = np.zeros((size, size), dtype=bool)
        mask[top : top + side, left : left + side] = item > THRESHOLD
        shade = np.zeros((size, size), dtype=np.float64)
        shade[top : top + side, left : left + side] = item / 255.0
        label[_dilate(mask, border) & ~mask] = IGNORE_INDEX
        label[mask] = int(labels[index]) + 1
        colour = tint * (0.35 + 0.65 * shade[..., None])
        canvas[mask] = colour[mask]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), label


def write_synthetic_voc(
    out: str | Path,
    *,
    train: int = 400,
    val: int = 100,
    size: int = 96,
    items: tuple[int, int] = (2, 4),
    seed: int = 0,
    fmnist_root: str | Path = "data",
) -> Path:
    """Write the synthetic dataset under ``out`` (see the module note); returns the ``VOC2012``
    folder, so ``create_dataset("voc2012", root=out)`` reads it.

    ``train`` / ``val``: number of images per split; ``size``: side of the square images;
    ``items``: the (min, max) number of pasted items per image; ``fmnist_root``: where
    Fashion-MNIST is found (``<fmnist_root>/FashionMNIST/raw/``, else Debian's package files).
    Ids run ``synth_000001`` .. over train then val. Files are replaced atomically; files of an
    earlier, larger run are left in place but no split file lists them.
    """
    train = _check("train", train, 0)
    val = _check("val", val, 0)
    size = _check("size", size, 8)
    seed = _check("seed", seed, 0)
    if len(items) != 2:
        raise ValueError(f"items must be a (min, max) pair, got {items!r}")
    low, high = _check("items min", items[0], 0), _check("items max", items[1], 0)
    if low > high:
        raise ValueError(f"items min {low} is larger than items max {high}")
    if train + val == 0:
        raise ValueError("nothing to write: train and val are both 0")

    base = Path(out).expanduser() / "VOCdevkit" / "VOC2012"
    palette = voc_palette()
    split_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)]
    ids: dict[str, list[str]] = {}
    number = 0
    for split, count, rng in (("train", train, split_rngs[0]), ("val", val, split_rngs[1])):
        ids[split] = []
        if count == 0:
            continue
        images, labels = _load_fashion_mnist(fmnist_root, train=split == "train")
        if len(images) == 0:
            raise ValueError(f"Fashion-MNIST's {split} images are empty under {fmnist_root}")
        for _ in range(count):
            number += 1
            name = ID_FORMAT.format(number)
            image, label = _render(rng, images, labels, size, (low, high))
            with atomic_file(base / "JPEGImages" / f"{name}.jpg") as f:
                Image.fromarray(image).save(f, format="JPEG", quality=JPEG_QUALITY)
            png = Image.fromarray(label)
            png.putpalette(palette)
            with atomic_file(base / "SegmentationClass" / f"{name}.png") as f:
                png.save(f, format="PNG")
            ids[split].append(name)
    sets = base / "ImageSets" / "Segmentation"
    for split, names in (*ids.items(), ("trainval", ids["train"] + ids["val"])):
        atomic_write_text(sets / f"{split}.txt", "".join(f"{n}\n" for n in names))
    return base


def _items(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        pair = (int(low), int(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    return pair


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: parse the options, write the dataset, print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m pxprune.data.voc_synthetic",
        description="Write a reproducible VOC-layout segmentation dataset made from Fashion-MNIST.")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write VOCdevkit/VOC2012/ into (use it as data.root)")
    parser.add_argument("--train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--size", type=int, default=96, help="image side in px (default 96)")
    parser.add_argument("--items", type=_items, default=(2, 4),
                        help="items per image, N or MIN-MAX (default 2-4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fmnist-root", type=Path, default=Path("data"),
                        help="root holding FashionMNIST/raw/ (default data; falls back to "
                        "Debian's dataset-fashion-mnist files)")
    args = parser.parse_args(argv)
    try:
        base = write_synthetic_voc(args.out, train=args.train, val=args.val, size=args.size,
                                   items=args.items, seed=args.seed, fmnist_root=args.fmnist_root)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(base)


if __name__ == "__main__":
    main()
