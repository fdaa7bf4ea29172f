"""Pre-trained weights: torchvision weight names and checkpoint files in four layouts.

``pretrained=SPEC`` is a torchvision weight name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``;
``imagenet`` is ``IMAGENET1K_V1``), read through torchvision's weights API and its hub cache, or a
checkpoint file whose layout is detected from its keys or forced by a prefix: ``torchvision:FILE``,
``mocov2:FILE``, ``dino:FILE``, ``clip:FILE``. Each layout is one :class:`CheckpointFormat` in
:data:`FORMATS` (how to read it, how its keys map onto the model's, what it drops, what it may leave
out, the input statistics its weights were trained with). Loading is strict: every tensor of the
model comes from the file except the keys the format may leave out (the classifier head, BN
counters), and every tensor of the file is loaded or dropped on purpose by the format
(docs/design/PRETRAINED.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from pxprune.registry import Registry

Stats = tuple[float, float, float]

IMAGENET = "imagenet"
IMAGENET_WEIGHTS = "IMAGENET1K_V1"
WEIGHT_ALIASES = {IMAGENET: IMAGENET_WEIGHTS}
"""Lower-case names for torchvision weight names."""

IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
CLIP_MEAN: Stats = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Stats = (0.26862954, 0.26130258, 0.27577711)

COUNTER = "num_batches_tracked"
SHA_DIGITS = 16
_WEIGHT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_LISTED = 5  # keys named in one error line

_FIX = (
    "pass a torchvision weight name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT or imagenet) or a "
    "checkpoint file, optionally with its layout: torchvision:FILE, mocov2:FILE, dino:FILE, clip:FILE"
)


# ------------------------------------------------------------------------------ formats
@dataclasses.dataclass(frozen=True)
class Mapped:
    """A checkpoint's tensors under the model's names, and the file keys dropped on purpose."""

    state: dict[str, Tensor]
    dropped: tuple[str, ...] = ()


class CheckpointFormat:
    """One checkpoint layout. Subclasses set the class attributes and override what differs.

    ``read`` turns a file into the flat mapping of its tensors; ``matches`` recognises the layout
    from those keys; ``to_model`` renames them to the model's and drops what the layout holds
    beyond the backbone; ``may_omit`` says which model keys a file may lack (filled from the model
    as built). ``mean``/``std`` are the input statistics the weights were trained with.
    """

    name: str = ""
    holds: str = ""
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD

    torchscript: bool = False
    """Whether a TorchScript archive is read (through ``torch.jit.load``, never unpickled)."""

    def read(self, path: Path) -> dict[str, Tensor]:
        return self.extract(_read_file(path, torchscript=self.torchscript), path)

    def extract(self, obj: Any, path: Path) -> dict[str, Tensor]:
        """The flat tensors of a read file (a dict under ``state_dict``/``model`` and a DDP
        ``module.`` prefix are unwrapped)."""
        return _unwrap(obj, path)

    def matches(self, keys: set[str]) -> bool:
        raise NotImplementedError

    def to_model(self, state: dict[str, Tensor]) -> Mapped:
        return Mapped(dict(state))

    def may_omit(self, key: str, head: set[str]) -> bool:
        """The classifier head (replaced when absent or of another shape) and BatchNorm counters
        (files from before PyTorch 0.4.1 have none; they start at 0)."""
        return key in head or key.rsplit(".", 1)[-1] == COUNTER

    def check_model(self, model: nn.Module, model_name: str) -> None:
        """Refuse architectures this layout cannot describe (before any key is compared)."""


class TorchvisionFormat(CheckpointFormat):
    name = "torchvision"
    holds = "a flat state dict with the model's own names (a dict under 'state_dict' or 'model' " \
            "and a DDP 'module.' prefix are accepted)"

    def matches(self, keys: set[str]) -> bool:
        return True  # the fallback: detection tries it last


class MocoV2Format(CheckpointFormat):
    name = "mocov2"
    holds = "{'state_dict': {'module.encoder_q.<torchvision name>': ...}}; the projection head " \
            "encoder_q.fc.0/fc.2 is dropped, encoder_k.*, queue and queue_ptr are ignored"
    _IGNORED = ("encoder_k.", "queue", "queue_ptr")

    def extract(self, obj: Any, path: Path) -> dict[str, Tensor]:
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]  # 'epoch', 'arch' (and 'optimizer') beside it are not weights
        return _tensors(obj, path)

    def matches(self, keys: set[str]) -> bool:
        return any(k.removeprefix("module.").startswith("encoder_q.") for k in keys)

    def to_model(self, state: dict[str, Tensor]) -> Mapped:
        kept: dict[str, Tensor] = {}
        dropped: list[str] = []
        for key, value in state.items():
            bare = key.removeprefix("module.")
            if bare.startswith("encoder_q.fc.") or bare.startswith(self._IGNORED):
                dropped.append(key)
            elif bare.startswith("encoder_q."):
                kept[bare.removeprefix("encoder_q.")] = value
            else:
                kept[key] = value  # not MoCo's: the strict check names it
        return Mapped(kept, tuple(dropped))


class DinoFormat(CheckpointFormat):
    name = "dino"
    holds = "a flat state dict of the backbone alone, torchvision names, no fc.* (DINO's " \
            "dino_resnet50_pretrain.pth)"

    def matches(self, keys: set[str]) -> bool:
        return ("conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)
                and not any(k.startswith("fc.") for k in keys))


class ClipFormat(CheckpointFormat):
    name = "clip"
    holds = "OpenAI's CLIP: a TorchScript archive (RN50.pt) or a plain state dict; visual.* is " \
            "the image tower, everything else (text tower, logit_scale, scalars) is ignored; " \
            "fp16 tensors are cast to fp32"
    mean = CLIP_MEAN
    std = CLIP_STD
    torchscript = True

    def matches(self, keys: set[str]) -> bool:
        return any(k.startswith("visual.") for k in keys) and any(
            k.startswith("transformer.") for k in keys)

    def to_model(self, state: dict[str, Tensor]) -> Mapped:
        # fp16 in the release; squaring fp16 weights (PX's path kernel) would underflow
        kept = {k: v.float() if v.is_floating_point() else v
                for k, v in state.items() if k.startswith("visual.")}
        return Mapped(kept, tuple(k for k in state if not k.startswith("visual.")))

    def check_model(self, model: nn.Module, model_name: str) -> None:
        if not isinstance(getattr(model, "visual", None), nn.Module):
            raise ValueError(
                f"a clip checkpoint holds CLIP's own ResNet-50 (three-conv stem, anti-aliased "
                f"strides, attention pool), which {model_name!r} is not: use model clip_rn50 "
                "(--set model.name=clip_rn50); its blocks are never grafted onto another stem"
            )


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format")
for _format in (TorchvisionFormat(), MocoV2Format(), DinoFormat(), ClipFormat()):
    FORMATS.add(_format.name, _format)
DETECTION_ORDER = ("mocov2", "clip", "dino", "torchvision")
"""Most specific first; torchvision (a flat state dict) takes whatever the others do not."""


def list_formats() -> list[str]:
    """The checkpoint layouts ``pretrained="<name>:FILE"`` can force."""
    return FORMATS.names()


# ------------------------------------------------------------------------------ reading files
def _missing_file(path: Path) -> ValueError:
    return ValueError(f"pretrained checkpoint {str(path)!r} does not exist; {_FIX}")


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``): a zip holding ``<name>/code/``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_file(path: Path, *, torchscript: bool) -> Any:
    """``torch.load(weights_only=True)``; a TorchScript archive (only where ``torchscript``) through
    ``torch.jit.load(...).state_dict()``, which runs none of the file's Python."""
    if not path.is_file():
        raise _missing_file(path)
    if is_torchscript(path):
        if not torchscript:
            raise ValueError(
                f"pretrained checkpoint {str(path)!r} is a TorchScript archive, which only the clip "
                "layout reads: pass clip:FILE, or save the model's state_dict with torch.save"
            )
        try:
            with warnings.catch_warnings():
                # deprecated for new code, but it is the only safe reader of CLIP's release
                warnings.simplefilter("ignore", FutureWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as error:  # torch raises many types for a damaged archive
            raise ValueError(
                f"pretrained checkpoint {str(path)!r} is not a readable TorchScript archive "
                f"({_first_line(error)}); {_FIX}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True,
                          mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises many types for a damaged or non-tensor file
        raise ValueError(
            f"pretrained checkpoint {str(path)!r} is not a readable torch file with "
            f"weights_only=True ({_first_line(error)}); save only the weights, "
            "torch.save(model.state_dict(), path), or " + _FIX[0].lower() + _FIX[1:]
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tensors(obj: Any, path: Path) -> dict[str, Tensor]:
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())):
        raise ValueError(f"pretrained checkpoint {str(path)!r} holds no state_dict; {_FIX}")
    return dict(obj)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = _tensors(obj, path)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_state_dict(path: str | PathLike[str]) -> dict[str, Tensor]:
    """A ``state_dict`` saved with ``torch.save`` (``weights_only=True``, on the CPU); a dict holding
    it under ``"state_dict"`` or ``"model"``, and a DDP ``module.`` prefix, are accepted."""
    return FORMATS.get("torchvision").read(Path(path))


def file_sha256(path: Path) -> str:
    """The first 16 hex digits of a file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:SHA_DIGITS]


def _detect(path: Path) -> tuple[CheckpointFormat, Any]:
    """The layout of a file, from its keys (and the object read, to reuse)."""
    if not path.is_file():
        raise _missing_file(path)
    if is_torchscript(path):
        return FORMATS.get("clip"), None
    obj = _read_file(path, torchscript=False)
    inner = obj
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            inner = obj[key]
            break
    keys = set(inner) if isinstance(inner, Mapping) else set()
    unprefixed = {k.removeprefix("module.") for k in keys if isinstance(k, str)}
    for name in DETECTION_ORDER:
        if FORMATS.get(name).matches(unprefixed):
            return FORMATS.get(name), obj
    raise AssertionError("torchvision matches every file")


# ------------------------------------------------------------------------------ sources
@dataclasses.dataclass(frozen=True)
class Source:
    """What ``pretrained=SPEC`` names: torchvision weights or a file, and how its layout is known."""

    spec: str
    weights: str | None = None
    file: Path | None = None
    format: str | None = None
    how: str = "detected"
    """``detected`` (from the keys), ``prefix`` (forced) or ``weights name`` (torchvision's)."""


def parse_spec(spec: str | PathLike[str]) -> Source:
    """Split ``pretrained=SPEC`` without reading anything (``ValueError`` for a wrong type)."""
    if isinstance(spec, PathLike):
        return Source(spec=os.fspath(spec), file=Path(spec).expanduser())
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"pretrained must be None, a weight name or a path, got {spec!r}; {_FIX}")
    text = spec.strip()
    if text in WEIGHT_ALIASES or _WEIGHT_NAME.fullmatch(text):
        return Source(spec=text, weights=WEIGHT_ALIASES.get(text, text), format="torchvision",
                      how="weights name")
    prefix, colon, rest = text.partition(":")
    if colon and prefix in FORMATS:
        if not rest:
            raise ValueError(f"pretrained {text!r} names no file after {prefix}:; {_FIX}")
        return Source(spec=text, file=Path(rest).expanduser(), format=prefix, how="prefix")
    return Source(spec=text, file=Path(text).expanduser())


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name weights, checked without reading files (None: it may)."""
    try:
        source = parse_spec(spec)
    except ValueError as error:
        return str(error)
    if source.file is not None and not source.file.is_file():
        return f"model.pretrained {spec!r}: file {str(source.file)!r} does not exist; {_FIX}"
    return None


def weights_statistics(spec: str | PathLike[str]) -> tuple[Stats, Stats, str]:
    """``(mean, std, format)``: the input statistics of the weights ``spec`` names (a file without
    a prefix is read to detect its layout)."""
    source = parse_spec(spec)
    if source.format is not None:
        fmt = FORMATS.get(source.format)
    else:
        assert source.file is not None
        fmt = _detect(source.file)[0]
    return fmt.mean, fmt.std, fmt.name


# ------------------------------------------------------------------------------ checkpoints
@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """What was loaded: recorded in config.yaml's provenance and kept on the model as
    ``model.pretrained_weights``."""

    spec: str
    format: str
    how: str
    file: str | None
    sha256: str | None
    head_new: bool
    mean: Stats
    std: Stats

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and renamed to the model's keys, not yet loaded."""

    source: Source
    format: CheckpointFormat
    mapped: Mapped
    file: Path | None
    sha256: str | None

    @property
    def where(self) -> str:
        return f"{self.source.spec!r} ({self.format.name} layout, {self.source.how})"


def read_checkpoint(spec: str | PathLike[str], model_name: str, *,
                    torchvision_weights: bool) -> Checkpoint:
    """Read the weights ``spec`` names for ``model_name`` (``torchvision_weights``: whether
    torchvision publishes weights for it)."""
    source = parse_spec(spec)
    if source.weights is not None:
        state, file = _torchvision_state(model_name, source.weights, allowed=torchvision_weights)
        fmt = FORMATS.get("torchvision")
        sha = file_sha256(file) if file is not None and file.is_file() else None
        return Checkpoint(source, fmt, fmt.to_model(state), file, sha)
    assert source.file is not None
    file = source.file
    if source.format is not None:
        fmt = FORMATS.get(source.format)
        state = fmt.read(file)
    else:
        fmt, obj = _detect(file)
        source = dataclasses.replace(source, format=fmt.name)
        state = fmt.read(file) if obj is None else fmt.extract(obj, file)
    return Checkpoint(source, fmt, fmt.to_model(state), file.resolve(), file_sha256(file))


def _torchvision_state(model_name: str, weight_name: str, *,
                       allowed: bool) -> tuple[dict[str, Tensor], Path | None]:
    import torchvision

    if not allowed:
        raise ValueError(
            f"model {model_name!r} has no ImageNet weights in torchvision ({weight_name!r}); "
            "pass the path of a checkpoint instead (torchvision:FILE, mocov2:FILE, dino:FILE, "
            "clip:FILE)")
    try:
        weights = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ValueError(f"torchvision publishes no weights for {model_name!r}; "
                         "pass the path of a checkpoint instead") from None
    try:
        chosen = weights[weight_name]
    except KeyError:
        available = ", ".join([*weights.__members__, IMAGENET])
        raise ValueError(f"torchvision has no {weight_name} weights for {model_name!r} "
                         f"(it has: {available}); or pass the path of a checkpoint") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(chosen.url).path)
    try:
        state = chosen.get_state_dict(progress=False)
    except Exception as error:  # urllib and http raise many types; none leaves a usable file
        raise ValueError(
            f"could not download torchvision's {weight_name} weights of {model_name!r} "
            f"({_first_line(error)}); fetch {chosen.url} on a machine with network access and "
            f"pass torchvision:FILE (or put it at {cached})"
        ) from error
    return dict(state), cached if cached.is_file() else None


def head_name(model: nn.Module) -> str | None:
    """The qualified name of the classifier: the last ``nn.Linear`` registered in ``model``."""
    last = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = qualified
    return last


classifier_name = head_name


def _listed(label: str, keys: list[str], budget: int) -> str:
    more = " ..." if len(keys) > budget else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:budget])}{more}"


def _misfit(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """The misfit keys as one line part (up to five named in all); empty when there are none."""
    problems = [(label, keys) for label, keys in (
        ("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if not problems:
        return ""
    budget = max(1, _LISTED // len(problems))
    return "; ".join(_listed(label, keys, budget) for label, keys in problems)


def load_checkpoint_(model: nn.Module, checkpoint: Checkpoint, *, model_name: str) -> bool:
    """Load ``checkpoint`` into ``model`` in place, strictly; returns whether the head is new.

    The head keeps the model's own initialisation when the checkpoint has none of its tensors or
    they have another shape; any other key missing, left over or of another shape is one
    ``ValueError`` line naming up to five keys.
    """
    fmt = checkpoint.format
    fmt.check_model(model, model_name)
    own = model.state_dict()
    state = dict(checkpoint.mapped.state)
    head = head_name(model)
    head_keys = {f"{head}.{p}" for p in ("weight", "bias")} & own.keys() if head else set()
    given = head_keys & state.keys()
    head_new = not given or any(state[k].shape != own[k].shape for k in given)
    if head_new:
        state = {k: v for k, v in state.items() if k not in head_keys}
    optional = head_keys if head_new else set()
    missing = sorted(k for k in own.keys() - state.keys() if not fmt.may_omit(k, optional))
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    problems = _misfit(missing, unexpected, mismatched)
    if problems:
        raise ValueError(
            f"pretrained checkpoint {checkpoint.where} does not fit {model_name!r}: {problems}"
            "; pass a checkpoint of this architecture or force its layout "
            "(torchvision:, mocov2:, dino:, clip:)"
        )
    for key in own.keys() - state.keys():  # the new head and absent BN counters
        state[key] = own[key] if key in head_keys else torch.zeros_like(own[key])
    model.load_state_dict(state, strict=True)
    return head_new


def load_pretrained(model: nn.Module, spec: str | PathLike[str], *, model_name: str,
                    torchvision_weights: bool = True) -> PretrainedWeights:
    """Read the weights ``spec`` names and load them into ``model`` (strict, in place)."""
    checkpoint = read_checkpoint(spec, model_name, torchvision_weights=torchvision_weights)
    return attach(model, checkpoint, model_name=model_name)


def attach(model: nn.Module, checkpoint: Checkpoint, *, model_name: str) -> PretrainedWeights:
    """Load ``checkpoint`` into ``model`` and keep what was loaded as
    ``model.pretrained_weights`` (as timm keeps ``pretrained_cfg``)."""
    head_new = load_checkpoint_(model, checkpoint, model_name=model_name)
    return _record(model, checkpoint, head_new=head_new)


def _record(model: nn.Module, checkpoint: Checkpoint, *, head_new: bool) -> PretrainedWeights:
    fmt = checkpoint.format
    info = PretrainedWeights(
        spec=checkpoint.source.spec, format=fmt.name, how=checkpoint.source.how,
        file=str(checkpoint.file) if checkpoint.file is not None else None,
        sha256=checkpoint.sha256, head_new=head_new, mean=fmt.mean, std=fmt.std)
    model.pretrained_weights = info
    return info


# ------------------------------------------------------------------------------ backbones
BACKBONE_PREFIXES: dict[str, str] = {"resnet50": "", "mobilenet_v2": "features."}
"""Where a torchvision classifier keeps the trunk that a segmentation model's ``model.backbone``
reuses (pxprune.models.deeplab): the backbone's key ``k`` is the classifier's ``prefix + k``."""


def _classifier_keys(name: str) -> set[str]:
    """The state-dict keys of torchvision's classifier ``name`` (built on the meta device)."""
    import torchvision

    with torch.device("meta"):
        return set(torchvision.models.get_model(name, weights=None).state_dict())


def attach_backbone(model: nn.Module, checkpoint: Checkpoint, *, model_name: str,
                    backbone: str) -> PretrainedWeights:
    """Load a checkpoint of torchvision's classifier ``backbone`` into ``model.backbone``, strictly,
    and keep what was loaded as ``model.pretrained_weights`` (``head_new`` True).

    The checkpoint's keys (the classifier's names, after its layout's own mapping) lose the prefix
    of :data:`BACKBONE_PREFIXES`; the classifier's tensors beyond the backbone (``fc.*``,
    ``classifier.*``, MobileNetV2's ``features.18``) are dropped. Every backbone tensor must be
    given with its shape (BN counters may be absent: they start at 0) and nothing else may be
    left: otherwise one ``ValueError`` line names up to five keys, under the classifier's names.
    The head (``model.classifier``) keeps its initialisation.
    """
    if backbone not in BACKBONE_PREFIXES:
        raise ValueError(f"no backbone layout for {backbone!r}; known: "
                         f"{', '.join(sorted(BACKBONE_PREFIXES))} (pretrained.BACKBONE_PREFIXES)")
    fmt = checkpoint.format
    fmt.check_model(model, model_name)
    target = model.get_submodule("backbone")
    prefix = BACKBONE_PREFIXES[backbone]
    own = target.state_dict()
    expected = {prefix + k for k in own}
    beyond = _classifier_keys(backbone) - expected  # the classifier's own, not the backbone's
    given = {k: v for k, v in checkpoint.mapped.state.items() if k not in beyond}
    missing = sorted(k for k in expected - given.keys() if not fmt.may_omit(k, set()))
    unexpected = sorted(given.keys() - expected)
    mismatched = sorted(
        f"{k} {tuple(given[k].shape)} vs {tuple(own[k[len(prefix):]].shape)}"
        for k in given.keys() & expected if given[k].shape != own[k[len(prefix):]].shape)
    problems = _misfit(missing, unexpected, mismatched)
    if problems:
        raise ValueError(
            f"pretrained checkpoint {checkpoint.where} does not fit the {backbone} backbone of "
            f"{model_name!r}: {problems}; pass a checkpoint of torchvision's {backbone} "
            "(its own names; torchvision:, mocov2: and dino: layouts)"
        )
    state = {k[len(prefix):]: v for k, v in given.items()}
    for key in own.keys() - state.keys():  # absent BN counters
        state[key] = torch.zeros_like(own[key])
    target.load_state_dict(state, strict=True)
    return _record(model, checkpoint, head_new=True)


def load_pretrained_(model: nn.Module, state: dict[str, Tensor], *, source: str = "") -> nn.Module:
    """Load a state dict with the model's own names into ``model`` (strict, head tolerant)."""
    fmt = FORMATS.get("torchvision")
    checkpoint = Checkpoint(Source(spec=source, format=fmt.name, how="given"), fmt,
                            Mapped(dict(state)), None, None)
    load_checkpoint_(model, checkpoint, model_name=type(model).__name__)
    return model
