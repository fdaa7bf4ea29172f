"""Datasets, file formats, lookup errors and the pruning split (tiny files in every real format)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from pxprune.data import (
    FAKE_WRITERS,
    DatasetNotFoundError,
    DatasetSpec,
    FakeImageDataset,
    create_dataset,
    get_spec,
    list_datasets,
    pruning_split,
    read_idx,
    split_hash,
    targets_of,
    train_subset,
    write_idx,
)
from pxprune.data.fake import write_cifar_pickle, write_fake_fashion_mnist
from pxprune.seeding import generator
from pxprune.tasks import get_task

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# ---------------------------------------------------------------- helpers written from the spec
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX by hand (independent of write_idx): 0, 0, type 0x08, ndim, big-endian sizes, data."""
    assert array.dtype == np.uint8
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + (array.tobytes())
    )


def write_fmnist_split(
    directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gz: bool
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        payload = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


def known_images(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 255
    images[:, 5, 7] = np.arange(n, dtype=np.uint8) * 20
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def norm(value: float, mean: float, std: float) -> float:
    return (value / 255.0 - mean) / std


# ---------------------------------------------------------------- IDX
def test_idx_reader_matches_torchvision_and_writer(tmp_path: Path) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images, labels = known_images(6)
    write_fmnist_split(tmp_path, "train", images, labels, gz=False)
    ours = read_idx(tmp_path / "train-images-idx3-ubyte", magic=2051)
    assert ours.dtype == torch.uint8 and ours.shape == (6, 28, 28)
    assert torch.equal(ours, read_image_file(str(tmp_path / "train-images-idx3-ubyte")))
    assert torch.equal(
        read_idx(tmp_path / "train-labels-idx1-ubyte", magic=2049).long(),
        read_label_file(str(tmp_path / "train-labels-idx1-ubyte")),
    )
    # our writer (gz and raw) round-trips, including a wider big-endian type
    for name in ("a.gz", "b"):
        write_idx(tmp_path / name, images)
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(images))
    wide = np.arange(-3, 9, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "c", wide)
    assert torch.equal(read_idx(tmp_path / "c"), torch.from_numpy(wide))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "bad magic", "wrong kind", "broken gzip", "empty"],
)
def test_corrupt_idx_is_value_error(tmp_path: Path, damage: str) -> None:
    images, _ = known_images(3)
    good = idx_bytes(images)
    path = tmp_path / "train-images-idx3-ubyte"
    if damage == "truncated":
        path.write_bytes(good[:-5])
    elif damage == "bad magic":
        path.write_bytes(b"\x01\x02" + good[2:])
    elif damage == "wrong kind":
        path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))  # labels where images belong
    elif damage == "broken gzip":
        path = path.with_suffix(".gz")
        path.write_bytes(gzip.compress(good)[:40])
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt IDX"):
        read_idx(path, magic=2051)


def test_corrupt_fashion_mnist_through_create_dataset(tmp_path: Path) -> None:
    images, labels = known_images(4)
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fmnist_split(raw, "train", images, labels[:3], gz=False)  # 4 images, 3 labels
    with pytest.raises(ValueError, match="4 images"):
        create_dataset("fashion-mnist", root=tmp_path, system_dir=tmp_path / "none")
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(images)[:100])
    with pytest.raises(ValueError, match="corrupt IDX"):
        create_dataset("fashion-mnist", root=tmp_path, system_dir=tmp_path / "none")


# ---------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_items(tmp_path: Path, gz: bool) -> None:
    images, labels = known_images(10)
    write_fmnist_split(tmp_path / "FashionMNIST" / "raw", "t10k", images, labels, gz=gz)
    ds = create_dataset("fashion-mnist", root=tmp_path, train=False, system_dir=tmp_path / "none")
    assert len(ds) == 10
    assert torch.equal(targets_of(ds), torch.arange(10))
    x, y = ds[3]
    assert isinstance(y, int) and y == 3
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    zero = norm(0, FMNIST_MEAN, FMNIST_STD)
    # the 2-px border is the normalised raw 0, as are the image's own black pixels
    border = torch.cat(
        [x[:, :2].flatten(), x[:, -2:].flatten(), x[:, :, :2].flatten(), x[:, :, -2:].flatten()]
    )
    assert torch.allclose(border, torch.full_like(border, zero), atol=1e-6)
    assert x[0, 2, 2].item() == pytest.approx(norm(255, FMNIST_MEAN, FMNIST_STD), abs=1e-5)
    assert x[0, 2 + 5, 2 + 7].item() == pytest.approx(norm(60, FMNIST_MEAN, FMNIST_STD), abs=1e-5)
    assert x[0, 10, 10].item() == pytest.approx(zero, abs=1e-6)
    # the batched path (__getitems__, used by DataLoader) gives the same tensors
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(xb[3], x) and yb.tolist() == [0, 1, 2, 3]


def test_fashion_mnist_lookup_order(tmp_path: Path) -> None:
    system = tmp_path / "debian"
    images, labels = known_images(10)
    write_fmnist_split(system, "train", images, labels, gz=True)
    ds = create_dataset("fashion-mnist", root=tmp_path / "data", system_dir=system)
    assert len(ds) == 10 and ds.source == system
    write_fake_fashion_mnist(tmp_path / "data", n_train=20)
    ds = create_dataset("fashion-mnist", root=tmp_path / "data", system_dir=system)
    assert len(ds) == 20 and ds.source == tmp_path / "data" / "FashionMNIST" / "raw"
    # augmentation is not used for Fashion-MNIST: train items equal eval items
    plain = create_dataset(
        "fashion-mnist", root=tmp_path / "data", augment=False, system_dir=system
    )
    assert torch.equal(ds[5][0], plain[5][0])


def test_missing_fashion_mnist_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        create_dataset("fashion-mnist", root=tmp_path / "data", system_dir=tmp_path / "none")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "none") in message
    assert "data.download=true" in message


# ---------------------------------------------------------------- CIFAR
def cifar_rows(n: int) -> np.ndarray:
    """Row i: red plane 10*i at pixel (0, 0), green 255 at (1, 2), blue 7 everywhere else."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    data[:, 2] = 7
    data[:, 0, 0, 0] = np.arange(n) * 10
    data[:, 1, 1, 2] = 255
    return data.reshape(n, 3072)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_known_pixels(tmp_path: Path, protocol: int) -> None:
    base = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        entry = {"batch_label": "b", "labels": [i % 10, (i + 1) % 10], "data": cifar_rows(2)}
        write_cifar_pickle(base / f"data_batch_{i}", entry, protocol=protocol)
    write_cifar_pickle(
        base / "test_batch", {"labels": [4, 5, 6], "data": cifar_rows(3)}, protocol=protocol
    )
    spec = get_spec("cifar10")
    test = create_dataset("cifar10", root=tmp_path, train=False)
    assert len(test) == 3 and targets_of(test).tolist() == [4, 5, 6]
    x, y = test[2]
    assert (x.shape, x.dtype, y) == ((3, 32, 32), torch.float32, 6)
    assert x[0, 0, 0].item() == pytest.approx(norm(20, spec.mean[0], spec.std[0]), abs=1e-5)
    assert x[1, 1, 2].item() == pytest.approx(norm(255, spec.mean[1], spec.std[1]), abs=1e-5)
    assert x[2, 9, 9].item() == pytest.approx(norm(7, spec.mean[2], spec.std[2]), abs=1e-5)
    train = create_dataset("cifar10", root=tmp_path)
    assert len(train) == 10 and targets_of(train).tolist()[:4] == [1, 2, 2, 3]
    xa, _ = train[0]
    assert xa.shape == (3, 32, 32) and xa.dtype == torch.float32


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    for name, fine in (("train", [99, 0, 42]), ("test", [7])):
        entry = {
            "fine_labels": fine,
            "coarse_labels": [0] * len(fine),
            "data": cifar_rows(len(fine)),
        }
        write_cifar_pickle(base / name, entry)
    train = create_dataset("cifar100", root=tmp_path)
    assert targets_of(train).tolist() == [99, 0, 42]
    x, y = create_dataset("cifar100", root=tmp_path, train=False)[0]
    spec = get_spec("cifar100")
    assert y == 7 and x[2, 5, 5].item() == pytest.approx(
        norm(7, spec.mean[2], spec.std[2]), abs=1e-5
    )


def py2_str(x: bytes) -> bytes:
    """A Python-2 ``str`` opcode (SHORT_BINSTRING / BINSTRING)."""
    if len(x) < 256:
        return b"U" + bytes([len(x)]) + x
    return b"T" + struct.pack("<i", len(x)) + x


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the real files: str keys and data, numpy.core names."""
    n, width = data.shape
    array = [  # numpy.core.multiarray._reconstruct(ndarray, (0,), "b") then __setstate__
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
        py2_str(b"b"),
        b"\x87R(K\x01K" + bytes([n]) + b"M" + struct.pack("<H", width) + b"\x86",
        b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + py2_str(b"|"),
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + py2_str(data.tobytes()) + b"tb",
    ]
    items = b"".join(b"K" + bytes([label]) for label in labels)
    parts = [b"\x80\x02}q\x00(", py2_str(b"data"), *array, py2_str(b"labels"), b"](", items, b"eu."]
    return b"".join(parts)


def test_cifar_python2_pickle(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rows = cifar_rows(3)
    (base / "test_batch").write_bytes(py2_cifar_pickle(rows, [9, 0, 1]))
    test = create_dataset("cifar10", root=tmp_path, train=False)
    assert targets_of(test).tolist() == [9, 0, 1]
    assert torch.equal(test.data.reshape(3, -1), torch.from_numpy(rows))


def test_cifar_augmentation_varies(tmp_path: Path) -> None:
    FAKE_WRITERS["cifar10"](tmp_path)
    train = create_dataset("cifar10", root=tmp_path)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", ["evil", "shape", "labels", "garbage"])
def test_corrupt_cifar_is_value_error(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "cifar-100-python" / "test"
    if payload == "garbage":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x80\x04not a pickle at all")
    else:
        entry: dict = {"fine_labels": [1, 2], "data": cifar_rows(2)}
        if payload == "evil":
            entry["x"] = _Evil()
        elif payload == "shape":
            entry["data"] = np.zeros((2, 100), dtype=np.uint8)
        else:
            entry["fine_labels"] = [1]
        write_cifar_pickle(path, entry)
    with pytest.raises(ValueError, match="CIFAR"):
        create_dataset("cifar100", root=tmp_path, train=False)


# ---------------------------------------------------------------- Tiny-ImageNet and ImageNet
def write_solid_jpeg(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 64), mode: str = "RGB"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert("L") if mode == "L" else img).save(path, format="JPEG", quality=100)


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # file order is not class order: classes follow the sorted wnids
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("n02\nn01\n")
    for wnid, color in zip(wnids, [(200, 100, 0), (0, 0, 255)], strict=True):
        for k in range(2):
            write_solid_jpeg(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", color)
    write_solid_jpeg(base / "val" / "images" / "val_0.JPEG", (200, 100, 0))
    write_solid_jpeg(base / "val" / "images" / "val_1.JPEG", (128, 128, 128), mode="L")
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t30\t40\n"
    )
    spec = get_spec("tinyimagenet")
    train = create_dataset("tinyimagenet", root=tmp_path)
    assert targets_of(train).tolist() == [0, 0, 1, 1]
    assert train[0][0].shape == (3, 64, 64) and train[0][0].dtype == torch.float32
    val = create_dataset("tinyimagenet", root=tmp_path, train=False)
    assert targets_of(val).tolist() == [1, 0]
    x, y = val[0]
    assert y == 1 and x.shape == (3, 64, 64)
    for c, value in enumerate((200, 100, 0)):
        assert x[c, 32, 32].item() == pytest.approx(
            norm(value, spec.mean[c], spec.std[c]), abs=0.05
        )
    grey, _ = val[1]  # a greyscale JPEG comes out as 3 channels
    assert grey.shape == (3, 64, 64)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="wnid"):
        create_dataset("tinyimagenet", root=tmp_path, train=False)


def test_imagenet_layout(tmp_path: Path) -> None:
    base = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c, color in enumerate([(255, 0, 0), (0, 255, 0)]):
            write_solid_jpeg(base / split / f"n0{c}" / f"{split}{c}.JPEG", color, size=(50, 30))
    spec = get_spec("imagenet")
    val = create_dataset("imagenet", root=tmp_path, train=False)
    x, y = val[1]
    assert (x.shape, x.dtype, y) == ((3, 224, 224), torch.float32, 1)
    assert x[1, 112, 112].item() == pytest.approx(norm(255, spec.mean[1], spec.std[1]), abs=0.05)
    assert targets_of(val).tolist() == [0, 1]
    assert create_dataset("imagenet", root=tmp_path)[0][0].shape == (3, 224, 224)
    write_solid_jpeg(base / "val" / "n07" / "x.JPEG", (0, 0, 0))
    with pytest.raises(ValueError, match="differ"):
        create_dataset("imagenet", root=tmp_path, train=False)


# ---------------------------------------------------------------- contract over every dataset
def test_every_dataset_has_a_fake_writer() -> None:
    assert set(list_datasets()) <= set(FAKE_WRITERS)
    assert "fashion-mnist" in list_datasets()


@pytest.mark.parametrize("name", list_datasets())
def test_dataset_contract(tmp_path: Path, name: str) -> None:
    spec = get_spec(name)
    assert isinstance(spec, DatasetSpec) and spec.name == name
    assert len(spec.mean) == len(spec.std) == spec.input_size[0] == 3
    FAKE_WRITERS[name](tmp_path)
    segmentation = spec.task == "segmentation"
    options = {"crop_size": 24} if segmentation else {}
    size = (3, 24, 24) if segmentation else spec.input_size
    for train in (True, False):
        for augment in (None, False):
            ds = create_dataset(name, root=tmp_path, train=train, augment=augment, **options)
            assert len(ds) > 0
            x, y = ds[len(ds) - 1]
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
            assert tuple(x.shape) == size
            if segmentation:  # (H, W) class indices, 255 ignored
                assert y.dtype == torch.long and tuple(y.shape) == size[1:]
                assert set(y.unique().tolist()) <= set(range(spec.num_classes)) | {255}
            else:
                assert type(y) is int and 0 <= y < spec.num_classes
                labels = targets_of(ds)
                assert labels.dtype == torch.long and len(labels) == len(ds)
                assert int(labels[-1]) == y
            if not (train if augment is None else augment):
                assert torch.equal(ds[0][0], ds[0][0])  # the eval transform is deterministic
    full = create_dataset(name, root=tmp_path, augment=False, **options)
    if segmentation:
        from pxprune.data.voc import classes_present

        split = get_task(spec.task).pruning_split(full, per_class=1, seed=0)
        shown = set().union(*classes_present(full))
        assert shown and shown <= set().union(*classes_present(split))
    else:
        split = pruning_split(full, per_class=1)
        assert len(split) == len(torch.unique(targets_of(split)))


@pytest.mark.parametrize("name", list_datasets())
def test_missing_data_is_one_line(tmp_path: Path, name: str) -> None:
    options = {"system_dir": tmp_path / "none"} if name == "fashion-mnist" else {}
    with pytest.raises(DatasetNotFoundError) as info:
        create_dataset(name, root=tmp_path / "data", **options)
    message = str(info.value)
    assert "\n" not in message and "not found" in message and str(tmp_path / "data") in message


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fashion-mnist"):
        create_dataset("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="cifar10"):
        get_spec("nope")
    with pytest.raises(TypeError, match="system_dir"):
        create_dataset("fashion-mnist", root=tmp_path, colour=True)
    with pytest.raises(TypeError, match="none"):
        create_dataset("cifar10", root=tmp_path, system_dir=tmp_path)


# ---------------------------------------------------------------- labels
class _NoTargets(Dataset):
    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1), torch.tensor(self.labels[i])


def test_targets_of() -> None:
    fake = FakeImageDataset(12, (3, 8, 8), num_classes=4)
    assert targets_of(fake).tolist() == [i % 4 for i in range(12)]
    sub = Subset(Subset(fake, [1, 2, 3, 5, 7]), [0, 3, 4])
    assert targets_of(sub).tolist() == [1, 1, 3]
    assert targets_of(ConcatDataset([fake, _NoTargets([3, 2])])).tolist()[-3:] == [3, 3, 2]
    assert targets_of(_NoTargets([2, 0, 1])).dtype == torch.long
    with pytest.raises(ValueError, match="unlabelled"):
        targets_of([torch.zeros(2), torch.zeros(2)])  # type: ignore[arg-type]


# ---------------------------------------------------------------- pruning split, train subset
def test_pruning_split_per_class_and_determinism() -> None:
    fake = FakeImageDataset(60, (1, 2, 2), num_classes=5)
    split = pruning_split(fake, per_class=3, seed=0)
    labels = targets_of(split)
    assert torch.equal(torch.bincount(labels), torch.full((5,), 3))
    assert split.indices == sorted(split.indices) and len(set(split.indices)) == 15
    assert split.indices == pruning_split(fake, per_class=3, seed=0).indices
    assert split.indices != pruning_split(fake, per_class=3, seed=1).indices
    assert split_hash(split) == split_hash(list(split.indices))
    assert split_hash(split) != split_hash(pruning_split(fake, per_class=3, seed=1))
    assert split_hash([1, 2, 3]) == split_hash(torch.tensor([1, 2, 3]))
    assert len(split_hash([])) == 64
    # all examples when per_class equals the class size
    assert sorted(pruning_split(fake, per_class=12).indices) == list(range(60))


def test_pruning_split_errors() -> None:
    fake = FakeImageDataset(20, (1, 2, 2), num_classes=10)
    with pytest.raises(ValueError, match="per_class"):
        pruning_split(fake, per_class=3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="per_class"):
            pruning_split(fake, per_class=bad)  # type: ignore[arg-type]
    gap = Subset(fake, [i for i in range(20) if i % 10 != 4])  # class 4 has no example
    with pytest.raises(ValueError, match="4 \\(0 examples\\)"):
        pruning_split(gap, per_class=1)


def test_pruning_split_of_a_subset() -> None:
    fake = FakeImageDataset(100, (1, 2, 2), num_classes=4)
    subset = train_subset(fake, 40, seed=0)
    split = pruning_split(subset, per_class=2, seed=3)
    assert split.dataset is subset and max(split.indices) < 40
    picked = [subset.indices[i] for i in split.indices]
    assert torch.equal(torch.bincount(fake.targets[picked]), torch.full((4,), 2))
    assert [int(split[k][1]) for k in range(len(split))] == targets_of(split).tolist()


def test_train_subset() -> None:
    fake = FakeImageDataset(50, (1, 2, 2), num_classes=5)
    a = train_subset(fake, 20)
    assert len(a) == 20 and a.indices == sorted(a.indices) and len(set(a.indices)) == 20
    assert a.indices == train_subset(fake, 20, seed=0).indices
    assert a.indices != train_subset(fake, 20, seed=1).indices
    # a distinct derivation from the pruning split's stream
    same_stream = torch.randperm(50, generator=generator(0, "split"))[:20].sort().values.tolist()
    assert a.indices != same_stream
    assert len(train_subset(fake, 50)) == 50
    for bad in (0, 51):
        with pytest.raises(ValueError, match="train_subset"):
            train_subset(fake, bad)
