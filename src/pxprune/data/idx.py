"""A small reader and writer for the IDX format of (Fashion-)MNIST, gzip-compressed or raw.

Layout (big-endian): two zero bytes, a type code, the number of dimensions ``d``, then ``d``
unsigned 32-bit sizes, then the data in C order. Images use magic 2051 (uint8, 3-D), labels 2049
(uint8, 1-D). Debian's ``dataset-fashion-mnist`` checksums differ from torchvision's list, which is
why we read the files ourselves instead of handing them to torchvision.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_GZIP_MAGIC = b"\x1f\x8b"

# type code -> big-endian numpy dtype
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"corrupt IDX file {path}: {why}; delete it and restore or re-download it")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"broken gzip stream ({exc})") from None


def read_idx(path: str | Path, *, magic: int | None = None) -> torch.Tensor:
    """Read one IDX file (gzip detected from its first bytes) into a tensor of its shape.

    ``magic`` (e.g. 2051 for images, 2049 for labels) is checked when given. A bad header, a wrong
    magic or a size that disagrees with the header raises ``ValueError``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise _corrupt(path, f"only {len(data)} bytes, no header")
    zero0, zero1, code, ndim = data[:4]
    if zero0 or zero1 or code not in _DTYPES or ndim == 0:
        raise _corrupt(path, f"bad magic number {int.from_bytes(data[:4], 'big')}")
    found_magic = (code << 8) | ndim
    if magic is not None and found_magic != magic:
        raise _corrupt(path, f"magic number {found_magic}, expected {magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, "truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise _corrupt(
            path, f"{len(data) - header} data bytes but the header {tuple(shape)} says {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    array = np.ascontiguousarray(torch.as_tensor(array).numpy())
    code = next(
        (
            c
            for c, name in _DTYPES.items()
            if np.dtype(name).kind == array.dtype.kind and np.dtype(name).itemsize == array.itemsize
        ),
        None,
    )
    if code is None:
        raise ValueError(f"IDX has no type code for dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.dtype(_DTYPES[code]), copy=False).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
