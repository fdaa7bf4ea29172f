"""Pascal VOC 2012 semantic segmentation, read from the official on-disk layout.

``<root>/VOCdevkit/VOC2012/`` holds ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
(palette 'P' PNGs whose pixel values are class indices: 0 background, 1..20 the classes, 255 the
"void" border that losses and metrics ignore) and ``ImageSets/Segmentation/{train,val}.txt``.
torchvision's ``VOCSegmentation`` lists the files (and downloads the official tar, checking its
md5, when ``download=True``). Items are ``(float32 (3, H, W) image normalised with the ImageNet
statistics, int64 (H, W) label)``.

Transforms move the image and its label together (image bilinear, label nearest, so labels stay
class indices). Training (``augment=True``): random scale U(0.5, 2.0), a random ``crop_size``
crop (padded at the bottom/right when smaller: image with black, label with 255 or 0, see
``label_pad``) and a horizontal flip with p=0.5; all randomness comes from torch's global RNG.
Evaluation: ``val="crop"`` resizes the shorter side to ``crop_size`` and takes the centre
``crop_size`` square; ``val="full"`` keeps the whole image and pads it at the bottom/right to a
fixed square (label 255 there, so the metric ignores the padding) so that batches stack.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from pxprune.data.base import AdaptedInputs, DatasetNotFoundError, DatasetSpec, register_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IGNORE_INDEX = 255
"""The label of void pixels (object borders, padding): losses and metrics skip them."""

VOC_MAX_SIDE = 500
"""No VOC 2012 image is larger than 500 px on either side."""

SPEC = DatasetSpec(
    name="voc2012",
    num_classes=21,
    input_size=(3, 513, 513),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    task="segmentation",
)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

LABEL_PADS = {"ignore": IGNORE_INDEX, "background": 0}
VAL_MODES = ("crop", "full")
SCALE_RANGE = (0.5, 2.0)


# ---------------------------------------------------------------- palette
def voc_palette() -> list[int]:
    """The standard VOC colour map: 256 (r, g, b) entries flattened to 768 ints.

    The bits of a class index are spread over the three channels from the most significant bit
    down (bit 0 to red, bit 1 to green, bit 2 to blue, then the next three bits one place lower),
    so class 1 is (128, 0, 0) and the void index 255 is (224, 224, 192), as in the official PNGs.
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def colorize(label: torch.Tensor | np.ndarray) -> Image.Image:
    """A label map (H, W) of class indices as a 'P' image with the VOC palette."""
    array = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label)
    if array.ndim != 2:
        raise ValueError(f"colorize needs a (H, W) label map, got shape {tuple(array.shape)}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise ValueError("colorize needs class indices in 0..255")
    image = Image.fromarray(array.astype(np.uint8))  # mode 'L'; putpalette makes it 'P'
    image.putpalette(voc_palette())
    return image


# ---------------------------------------------------------------- joint transforms
# Written with PIL and torch rather than torchvision.transforms.v2: v2's RandomResize draws an
# integer side, not a scale factor, and its crop pads image and mask with one fill per type only
# through a dict; a few explicit lines keep the order of the random draws (and so reproducibility
# under torch's global RNG) and the label's nearest interpolation obvious.


def read_label(label: Image.Image | str | os.PathLike) -> np.ndarray:
    """A segmentation PNG as a uint8 (H, W) array of class indices (never its colours)."""
    if not isinstance(label, Image.Image):
        with Image.open(label) as opened:
            return read_label(opened)
    if label.mode not in ("P", "L"):
        where = getattr(label, "filename", "") or "a label image"
        raise ValueError(
            f"{where} is a {label.mode!r} image; segmentation labels must be palette ('P') or "
            "grey ('L') PNGs whose pixel values are class indices"
        )
    return np.array(label, dtype=np.uint8)


def _to_tensors(image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL RGB image and label -> uint8 (3, H, W) and int64 (H, W) tensors."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    classes = torch.from_numpy(read_label(label).astype(np.int64))
    if tuple(pixels.shape[1:]) != tuple(classes.shape):
        raise ValueError(
            f"image is {tuple(pixels.shape[1:])} but its label {tuple(classes.shape)}; "
            "each JPEG and its PNG must have the same size"
        )
    return pixels.contiguous(), classes


def _resize(image: Image.Image, label: Image.Image, size: tuple[int, int]
            ) -> tuple[Image.Image, Image.Image]:
    """Resize to ``size`` = (width, height): image bilinear, label nearest (indices survive)."""
    if image.size == size:
        return image, label
    return (image.resize(size, Image.Resampling.BILINEAR),
            label.resize(size, Image.Resampling.NEAREST))


def _pad(pixels: torch.Tensor, classes: torch.Tensor, height: int, width: int, fill: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom/right to at least ``height`` x ``width``: image 0 (black), label
    ``fill``."""
    h, w = classes.shape
    if h >= height and w >= width:
        return pixels, classes
    padded = pixels.new_zeros((3, max(h, height), max(w, width)))
    padded[:, :h, :w] = pixels
    labels = classes.new_full((max(h, height), max(w, width)), fill)
    labels[:h, :w] = classes
    return padded, labels


@dataclass(frozen=True)
class Normalize:
    """uint8 (3, H, W) -> float32 normalised with ``mean`` / ``std`` (pixel values / 255)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (pixels.to(torch.float32) / 255.0 - mean) / std


@dataclass(frozen=True)
class TrainTransform:
    """Random scale, random ``crop_size`` crop (padded when smaller) and horizontal flip.

    Draws, in this order, from torch's global RNG: the scale factor, the crop's top and left, the
    flip. Padding goes at the bottom/right: black image, label ``label_fill``.
    """

    crop_size: int
    label_fill: int = IGNORE_INDEX
    scale: tuple[float, float] = SCALE_RANGE
    normalize: Normalize = Normalize()

    def __call__(self, image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale
        factor = low + (high - low) * float(torch.rand(()))
        width, height = image.size
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        pixels, classes = _to_tensors(*_resize(image, label, size))
        crop = self.crop_size
        pixels, classes = _pad(pixels, classes, crop, crop, self.label_fill)
        h, w = classes.shape
        top = int(torch.randint(0, h - crop + 1, ()))
        left = int(torch.randint(0, w - crop + 1, ()))
        pixels = pixels[:, top : top + crop, left : left + crop]
        classes = classes[top : top + crop, left : left + crop]
        if float(torch.rand(())) < 0.5:
            pixels, classes = pixels.flip(-1), classes.flip(-1)
        return self.normalize(pixels), classes.contiguous()


@dataclass(frozen=True)
class CenterCropTransform:
    """Resize the shorter side to ``crop_size``, then take the centre ``crop_size`` square."""

    crop_size: int
    normalize: Normalize = Normalize()

    def __call__(self, image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.crop_size
        width, height = image.size
        if width <= height:
            size = (crop, max(crop, round(height * crop / width)))
        else:
            size = (max(crop, round(width * crop / height)), crop)
        pixels, classes = _to_tensors(*_resize(image, label, size))
        top = (size[1] - crop) // 2
        left = (size[0] - crop) // 2
        pixels = pixels[:, top : top + crop, left : left + crop]
        classes = classes[top : top + crop, left : left + crop]
        return self.normalize(pixels.contiguous()), classes.contiguous()


def full_side(crop_size: int) -> int:
    """The side of ``val="full"`` items: ``max(500, crop_size)`` rounded up to a multiple of 8."""
    return 8 * math.ceil(max(VOC_MAX_SIDE, crop_size) / 8)


@dataclass(frozen=True)
class FullImageTransform:
    """The whole image, padded at the bottom/right to a ``side`` x ``side`` square.

    Padding is black in the image and 255 in the label, so the metric ignores it.
    """

    side: int
    normalize: Normalize = Normalize()

    def __call__(self, image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, classes = _to_tensors(image, label)
        h, w = classes.shape
        if h > self.side or w > self.side:
            raise ValueError(
                f"image of {h}x{w} px does not fit the val='full' square of {self.side} px; "
                "use val='crop' or a larger crop_size"
            )
        pixels, classes = _pad(pixels, classes, self.side, self.side, IGNORE_INDEX)
        return self.normalize(pixels), classes


def voc_transform(*, augment: bool, crop_size: int = 513, label_pad: str = "ignore",
                  val: str = "crop") -> Any:
    """The joint (image, label) transform of the builder's options (validated)."""
    _check_options(crop_size, label_pad, val)
    if augment:
        return TrainTransform(crop_size, label_fill=LABEL_PADS[label_pad])
    if val == "crop":
        return CenterCropTransform(crop_size)
    return FullImageTransform(full_side(crop_size))


def _check_options(crop_size: object, label_pad: object, val: object) -> None:
    if isinstance(crop_size, bool) or not isinstance(crop_size, int | np.integer) or crop_size < 1:
        raise ValueError(f"voc2012 crop_size must be a positive integer, got {crop_size!r}")
    if label_pad not in LABEL_PADS:
        raise ValueError(
            f"voc2012 label_pad must be one of {', '.join(LABEL_PADS)}, got {label_pad!r}")
    if val not in VAL_MODES:
        raise ValueError(f"voc2012 val must be one of {', '.join(VAL_MODES)}, got {val!r}")


# ---------------------------------------------------------------- dataset
class VOCSegmentationData(Dataset):
    """One split of VOC-layout segmentation data read through torchvision's ``VOCSegmentation``.

    ``images`` and ``masks`` are the JPEG and PNG paths (in the split file's order), ``ids`` the
    image ids and ``source`` the ``VOC2012`` folder. Items are
    ``(float32 (3, H, W), int64 (H, W))``.
    """

    classes = VOC_CLASSES

    def __init__(self, voc: Any, *, source: Path) -> None:
        self.voc = voc
        self.images = [Path(p) for p in voc.images]
        self.masks = [Path(p) for p in voc.masks]
        self.ids = [p.stem for p in self.images]
        self.source = source
        self.transforms = voc.transforms

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.voc[int(index)]


def _not_found(voc_root: Path, split: str, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Pascal VOC 2012 not found ({why}): {voc_root}/ must hold JPEGImages/<id>.jpg, "
        f"SegmentationClass/<id>.png and ImageSets/Segmentation/{split}.txt; "
        "--set data.download=true downloads the official VOCtrainval_11-May-2012.tar "
        "(2 GB, torchvision checks its md5)"
    )


@register_dataset(SPEC)
def voc2012(
    root: Path,
    *,
    train: bool,
    download: bool,
    augment: bool,
    crop_size: int = 513,
    label_pad: str = "ignore",
    val: str = "crop",
) -> VOCSegmentationData:
    """The ``train`` or ``val`` split of VOC 2012 segmentation under ``<root>/VOCdevkit/VOC2012``.

    ``crop_size``: side of training crops and of ``val="crop"`` items. ``label_pad``: the label of
    training-crop padding, ``"ignore"`` (255) or ``"background"`` (0, as the paper's reference
    code). ``val``: the evaluation transform, ``"crop"`` or ``"full"`` (see the module note).
    """
    transforms = voc_transform(augment=augment, crop_size=crop_size, label_pad=label_pad, val=val)
    from torchvision.datasets import VOCSegmentation  # lazy: torchvision takes seconds to import

    split = "train" if train else "val"
    voc_root = root / "VOCdevkit" / "VOC2012"
    split_file = voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    # torchvision fetches the tar whenever download=True and the tar is absent, even if the folder
    # was already extracted: only ask for it when the files are missing
    fetch = download and not split_file.is_file()
    try:
        voc = VOCSegmentation(
            str(root), year="2012", image_set=split, download=fetch, transforms=transforms)
    except (RuntimeError, FileNotFoundError) as exc:
        if fetch:
            raise _download_failed(root, exc) from exc
        why = "no such folder" if not voc_root.is_dir() else f"no {split_file.name}"
        raise _not_found(voc_root, split, why) from None
    except Exception as exc:  # network errors come in many types
        if not fetch:
            raise
        raise _download_failed(root, exc) from exc
    missing = [p for p in (*voc.images, *voc.masks) if not os.path.isfile(p)]
    if missing:
        raise _not_found(
            voc_root, split, f"{len(missing)} file(s) listed in {split}.txt are missing, "
            f"e.g. {missing[0]}")
    return VOCSegmentationData(voc, source=voc_root)


def _download_failed(root: Path, exc: BaseException) -> DatasetNotFoundError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DatasetNotFoundError(
        f"Pascal VOC 2012 not found and its download failed ({first}); extract "
        f"VOCtrainval_11-May-2012.tar in {root}/ so that {root / 'VOCdevkit' / 'VOC2012'}/ exists"
    )


# ---------------------------------------------------------------- classes per item
def mask_paths(dataset: Dataset) -> list[Path]:
    """The label PNG of every item of a VOC-layout dataset, looking through ``Subset``,
    ``ConcatDataset`` and ``AdaptedInputs``."""
    if isinstance(dataset, Subset):
        parent = mask_paths(dataset.dataset)
        return [parent[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [p for part in dataset.datasets for p in mask_paths(part)]
    if isinstance(dataset, AdaptedInputs):
        return mask_paths(dataset.dataset)
    masks = getattr(dataset, "masks", None)
    if masks is None:
        raise TypeError(
            f"{type(dataset).__name__} has no label files (`masks`); classes_present needs a "
            "VOC-layout segmentation dataset"
        )
    return [Path(p) for p in masks]


def classes_present(dataset: Dataset) -> list[set[int]]:
    """For each item, the object classes in its label map (1..20 for VOC).

    Background (0) and void (255) are left out. Reads the label PNGs directly, without decoding
    the images or running the transforms, so the augmentation's crop plays no part.
    """
    present = []
    for path in mask_paths(dataset):
        values = np.unique(read_label(path))
        present.append({int(v) for v in values if v not in (0, IGNORE_INDEX)})
    return present

