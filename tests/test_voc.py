"""Pascal VOC 2012 segmentation (pxprune.data.voc) and the synthetic VOC-layout writer."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from pxprune.data import DatasetNotFoundError, create_dataset, data_source, get_spec
from pxprune.data.fake import write_fake_fashion_mnist
from pxprune.data.voc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    classes_present,
    colorize,
    full_side,
    voc_palette,
)
from pxprune.data.voc_synthetic import write_synthetic_voc

RED, GREEN = (220, 20, 20), (20, 220, 20)
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _halves(height: int, width: int, band: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Left half red = class 1, right half green = class 2, a 255 band between the halves and a
    1-px 255 frame (as VOC marks object borders)."""
    mid = width // 2
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :mid] = RED
    image[:, mid:] = GREEN
    label = np.full((height, width), 1, dtype=np.uint8)
    label[:, mid:] = 2
    label[:, mid - band // 2 : mid + band // 2] = 255
    label[[0, -1], :] = 255
    label[:, [0, -1]] = 255
    return image, label


def _write_item(base: Path, name: str, image: np.ndarray, label: np.ndarray) -> None:
    (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    # 4:4:4 and high quality: chroma subsampling would smear colours across the class boundary
    Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95, subsampling=0)
    png = Image.fromarray(label)
    png.putpalette(voc_palette())
    png.save(base / "SegmentationClass" / f"{name}.png")


def write_tiny_voc(root: Path) -> Path:
    """Three train and two val items in the real layout; returns the VOC2012 folder."""
    base = root / "VOCdevkit" / "VOC2012"
    landscape = _halves(30, 40)
    portrait = _halves(44, 30)
    person = np.zeros((36, 36), dtype=np.uint8)
    person[10:20, 10:20] = 15
    person[9, 9:21] = 255
    grey = np.full((36, 36, 3), 128, dtype=np.uint8)
    empty = np.zeros((36, 36), dtype=np.uint8)
    empty[0] = 255
    _write_item(base, "2007_000001", *landscape)
    _write_item(base, "2007_000002", *portrait)
    _write_item(base, "2007_000003", grey, person)
    _write_item(base, "2008_000001", grey, empty)
    _write_item(base, "2008_000002", *landscape)
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n2007_000003\n")
    (sets / "val.txt").write_text("2008_000001\n2008_000002\n")
    (sets / "trainval.txt").write_text((sets / "train.txt").read_text() + "2008_000001\n")
    return base


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_tiny_voc(root)
    return root


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: values in 0..255."""
    return (x * STD + MEAN) * 255


# ---------------------------------------------------------------- registry and reading
def test_registered(voc_root: Path) -> None:
    spec = get_spec("voc2012")
    assert spec.task == "segmentation" and spec.num_classes == 21 == len(VOC_CLASSES)
    assert spec.input_size == (3, 513, 513)
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    ds = create_dataset("voc2012", root=voc_root, train=True, crop_size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert data_source(ds) == str((voc_root / "VOCdevkit" / "VOC2012").resolve())
    # files already there: download=true must not reach for the network (there is none here)
    assert len(create_dataset("voc2012", root=voc_root, train=False, download=True)) == 2
    ds = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a pickled copy
    assert ds[0][0].shape == (3, 32, 32)


def test_reads_indices_through_torchvision(voc_root: Path) -> None:
    from torchvision.datasets import VOCSegmentation

    ds = create_dataset("voc2012", root=voc_root, train=False, augment=False, val="full")
    assert isinstance(ds.voc, VOCSegmentation) and len(ds) == 2
    assert ds.ids == ["2008_000001", "2008_000002"]
    x, y = ds[1]
    side = full_side(513)
    assert side == 520 and x.shape == (3, side, side) and y.shape == (side, side)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    _, label = _halves(30, 40)
    assert torch.equal(y[:30, :40], torch.from_numpy(label.astype(np.int64)))
    assert (y[30:] == 255).all() and (y[:, 40:] == 255).all()
    assert set(y.unique().tolist()) == {1, 2, 255}
    pixels = _pixels(x)
    assert torch.allclose(pixels[:, 10, 5], torch.tensor(RED, dtype=torch.float32), atol=12)
    assert torch.allclose(pixels[:, 10, 35], torch.tensor(GREEN, dtype=torch.float32), atol=12)
    assert torch.allclose(pixels[:, 100, 100], torch.zeros(3), atol=1e-3)  # black padding


def test_shapes_follow_crop_size(voc_root: Path) -> None:
    train = create_dataset("voc2012", root=voc_root, train=True, crop_size=24)
    val = create_dataset("voc2012", root=voc_root, train=False, crop_size=24)
    for ds in (train, val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.int64
    full = create_dataset("voc2012", root=voc_root, train=False, val="full", crop_size=600)
    assert full[0][0].shape == (3, 600, 600)
    # the centre crop of a landscape image keeps the middle columns: the 255 band stays central
    x, y = val[1]
    assert (y[5:-5, 10:14] == 255).all()
    assert (y[5:-5, :8] == 1).all() and (y[5:-5, 16:] == 2).all()


def test_options_are_validated(voc_root: Path) -> None:
    for options, word in (
        ({"crop_size": 0}, "crop_size"),
        ({"crop_size": True}, "crop_size"),
        ({"label_pad": "zero"}, "label_pad"),
        ({"val": "resize"}, "val"),
    ):
        with pytest.raises(ValueError, match=word) as info:
            create_dataset("voc2012", root=voc_root, **options)
        assert "\n" not in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        create_dataset("voc2012", root=tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message and "not found" in message
    assert str(tmp_path / "data" / "VOCdevkit" / "VOC2012") in message
    assert "data.download=true" in message
    base = write_tiny_voc(tmp_path)
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val.txt"):
        create_dataset("voc2012", root=tmp_path, train=False)
    (base / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="2007_000002.png"):
        create_dataset("voc2012", root=tmp_path, train=True)


def test_rgb_labels_are_refused(tmp_path: Path) -> None:
    base = write_tiny_voc(tmp_path)
    path = base / "SegmentationClass" / "2007_000001.png"
    Image.open(path).convert("RGB").save(path)
    ds = create_dataset("voc2012", root=tmp_path, train=True, crop_size=16)
    with pytest.raises(ValueError, match="class indices"):
        ds[0]


# ---------------------------------------------------------------- joint transforms
def test_augmentation_keeps_image_and_label_aligned(voc_root: Path) -> None:
    ds = create_dataset("voc2012", root=voc_root, train=True, crop_size=32)
    orientations = set()
    for seed in range(30):
        torch.manual_seed(seed)
        for index in (0, 1):
            x, y = ds[index]
            pixels = _pixels(x)
            red, green = pixels[0], pixels[1]
            ones, twos = y == 1, y == 2
            assert (red[ones] > green[ones] + 60).all(), seed
            assert (green[twos] > red[twos] + 60).all(), seed
            assert set(y.unique().tolist()) <= {1, 2, 255}
            if ones.any() and twos.any():
                cols = torch.arange(32).expand(32, 32)
                orientations.add(bool(cols[ones].float().mean() < cols[twos].float().mean()))
    assert orientations == {True, False}  # flips happen, and flip image and label together


def test_label_pad(voc_root: Path) -> None:
    black = ((0 - MEAN) / STD).view(3)
    for label_pad, fill in (("ignore", 255), ("background", 0)):
        ds = create_dataset("voc2012", root=voc_root, train=True, crop_size=100,
                            label_pad=label_pad)
        for seed in range(3):
            torch.manual_seed(seed)
            x, y = ds[0]  # 40x30 px scaled by at most 2: padded at the bottom
            assert x.shape == (3, 100, 100)
            assert (y[-1] == fill).all()
            assert torch.allclose(x[:, -1], black.view(3, 1).expand(3, 100))
            assert (y == fill).sum() >= 100 * 100 - 80 * 60
        if fill == 0:
            assert 255 in y.unique().tolist()  # the image's own void border stays 255


def test_reproducible_under_torch_seed(voc_root: Path) -> None:
    ds = create_dataset("voc2012", root=voc_root, train=True, crop_size=24)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        return ds[1]

    x0, y0 = draw(0)
    x1, y1 = draw(0)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    others = [draw(s) for s in (1, 2, 3)]
    assert any(not torch.equal(x0, x) or not torch.equal(y0, y) for x, y in others)
    val = create_dataset("voc2012", root=voc_root, train=False)
    assert torch.equal(val[0][0], val[0][0])


# ---------------------------------------------------------------- palette and classes
def test_palette_and_colorize() -> None:
    palette = voc_palette()
    assert len(palette) == 768

    def entry(i: int) -> tuple[int, ...]:
        return tuple(palette[3 * i : 3 * i + 3])

    assert entry(0) == (0, 0, 0) and entry(1) == (128, 0, 0)
    assert entry(15) == (192, 128, 128) and entry(20) == (0, 64, 128)
    assert entry(255) == (224, 224, 192)
    label = torch.tensor([[0, 1, 20], [255, 15, 3]], dtype=torch.int64)
    image = colorize(label)
    assert image.mode == "P" and image.getpalette()[:768] == palette
    assert np.array_equal(np.array(image), label.numpy())
    with pytest.raises(ValueError, match="0..255"):
        colorize(torch.tensor([[256]]))


def test_classes_present(voc_root: Path) -> None:
    train = create_dataset("voc2012", root=voc_root, train=True, crop_size=16)
    assert classes_present(train) == [{1, 2}, {1, 2}, {15}]
    val = create_dataset("voc2012", root=voc_root, train=False)
    assert classes_present(val) == [set(), {1, 2}]
    assert classes_present(Subset(train, [2, 0])) == [{15}, {1, 2}]
    assert classes_present(Subset(Subset(train, [0, 2]), [1])) == [{15}]
    with pytest.raises(TypeError, match="masks"):
        classes_present(Subset([1, 2], [0]))


# ---------------------------------------------------------------- synthetic VOC-layout data
def _files(base: Path) -> dict[str, bytes]:
    files = sorted(p for p in base.rglob("*") if p.is_file())
    return {str(p.relative_to(base)): p.read_bytes() for p in files}


def test_write_synthetic_voc(tmp_path: Path) -> None:
    fmnist = tmp_path / "fm"
    write_fake_fashion_mnist(fmnist, n_train=12, n_test=6)
    options = {"train": 6, "val": 3, "size": 48, "items": (2, 3), "seed": 0,
               "fmnist_root": fmnist}
    base = write_synthetic_voc(tmp_path / "a", **options)
    assert base == tmp_path / "a" / "VOCdevkit" / "VOC2012"
    sets = base / "ImageSets" / "Segmentation"
    train_ids = sets.joinpath("train.txt").read_text().split()
    val_ids = sets.joinpath("val.txt").read_text().split()
    assert train_ids == [f"synth_{i:06d}" for i in range(1, 7)]
    assert val_ids == [f"synth_{i:06d}" for i in range(7, 10)]
    assert sets.joinpath("trainval.txt").read_text().split() == train_ids + val_ids
    assert sorted(p.stem for p in (base / "JPEGImages").glob("*.jpg")) == train_ids + val_ids
    assert sorted(p.stem for p in (base / "SegmentationClass").glob("*.png")) == train_ids + val_ids
    values: set[int] = set()
    for name in train_ids + val_ids:
        png = Image.open(base / "SegmentationClass" / f"{name}.png")
        assert png.mode == "P" and png.size == (48, 48)
        assert png.getpalette()[:768] == voc_palette()
        values |= set(np.unique(np.array(png)).tolist())
        with Image.open(base / "JPEGImages" / f"{name}.jpg") as jpeg:
            assert jpeg.mode == "RGB" and jpeg.size == (48, 48)
    assert values <= set(range(11)) | {255} and 255 in values and 0 in values
    assert values & set(range(1, 11))

    train = create_dataset("voc2012", root=tmp_path / "a", train=True, crop_size=32)
    val = create_dataset("voc2012", root=tmp_path / "a", train=False, val="full")
    assert len(train) == 6 and len(val) == 3 and val.ids == val_ids
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64
    assert all(c <= set(range(1, 11)) for c in classes_present(train))

    again = write_synthetic_voc(tmp_path / "b", **options)
    assert _files(base) == _files(again)
    other = write_synthetic_voc(tmp_path / "c", **{**options, "seed": 1})
    assert _files(base) != _files(other)
    with pytest.raises(ValueError, match="items"):
        write_synthetic_voc(tmp_path / "d", **{**options, "items": (3, 2)})


def test_synthetic_cli_help(capsys) -> None:
    from pxprune.data.voc_synthetic import main

    with pytest.raises(SystemExit) as exit_:  # argparse's --help
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--fmnist-root" in out and "--items" in out and "python -m pxprune.data.voc_synthetic" in out
