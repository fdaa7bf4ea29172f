"""The model registry, ``create_model`` and the one initialiser shared by every builder.

Builders are looked up by name (timm/torchvision style). ``create_model`` seeds the build from the
``init`` stream of docs/design/CONTRACTS.md section 4 inside ``torch.random.fork_rng``, so one
seed always gives the same theta_0 and the caller's global RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from typing import Protocol, TypeVar

import torch
import torchvision
from torch import nn

from pxprune.models.pretrained import attach, attach_backbone, read_checkpoint
from pxprune.registry import Registry
from pxprune.seeding import stream_seed

InputSize = tuple[int, int, int]

TORCHVISION_INPUT_SIZE: InputSize = (3, 224, 224)


@dataclass(frozen=True)
class ModelInfo:
    """What a builder declares about its model: the default ``input_size=(C, H, W)``, family, and
    the tasks (``pxprune.tasks``) its output serves. ``backbone``: for a model whose
    ``model.backbone`` is a torchvision classifier's trunk (DeepLabV3+), that classifier's name:
    ``pretrained=`` then names its weights (``IMAGENET1K_V1`` of ``resnet50``, or a checkpoint of
    it) and they load into ``model.backbone`` only (``pretrained.attach_backbone``)."""

    name: str
    input_size: InputSize
    family: str
    tasks: tuple[str, ...] = ("classification",)
    backbone: str | None = None


class ModelBuilder(Protocol):
    """``builder(*, num_classes, input_size) -> nn.Module``, already initialised."""

    def __call__(self, *, num_classes: int, input_size: InputSize) -> nn.Module: ...


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: ModelBuilder


B = TypeVar("B", bound=Callable[..., nn.Module])

_MODELS: Registry[_Entry] = Registry(
    "model", pattern=r"(?!.*--)[A-Za-z0-9][A-Za-z0-9_.-]*",
    rule="letters, digits, _, . and - (not --: it separates names from options in folder names)")


def register_model(name: str, *, input_size: Sequence[int], family: str,
                   tasks: Sequence[str] = ("classification",),
                   backbone: str | None = None) -> Callable[[B], B]:
    """Decorator registering ``builder(*, num_classes, input_size) -> nn.Module`` under ``name``
    (``backbone``: see :class:`ModelInfo`)."""
    info = ModelInfo(name=name, input_size=_check_input_size(input_size), family=family,
                     tasks=tuple(tasks), backbone=backbone)

    def decorator(builder: B) -> B:
        _MODELS.add(name, _Entry(info=info, builder=builder))
        return builder

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted (any torchvision classifier name also works)."""
    return _MODELS.names()


def _torchvision_names() -> set[str]:
    return set(torchvision.models.list_models(module=torchvision.models))


def _unknown(name: object) -> ValueError:
    return ValueError(
        f"unknown model {name!r}; choose one of: {', '.join(list_models())} "
        "(any torchvision classification model name, e.g. 'resnet34', also works)"
    )


def model_info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of a registered model or of an unregistered torchvision classifier."""
    if name in _MODELS:
        return _MODELS.get(name).info
    if isinstance(name, str) and name in _torchvision_names():
        return ModelInfo(name=name, input_size=TORCHVISION_INPUT_SIZE, family="torchvision")
    raise _unknown(name)


INITIALISED_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
INITIALISED_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def kaiming_init_(model: nn.Module, *, mode: str = "fan_in") -> nn.Module:
    """Initialise ``model`` in place as open_lth does and return it.

    Conv and linear weights: Kaiming-normal (He et al. 2015) with ReLU gain, ``mode`` fan-in by
    default; their biases 0. BatchNorm / GroupNorm / LayerNorm affine weight 1 and bias 0; BatchNorm
    running statistics reset. Other modules are left as they are.
    """
    for module in model.modules():
        if isinstance(module, INITIALISED_LINEAR):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, INITIALISED_NORMS):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model


def require_rgb(name: str, input_size: InputSize) -> None:
    """Torchvision architectures have a fixed 3-channel stem."""
    if input_size[0] != 3:
        raise ValueError(
            f"model {name!r} takes 3 input channels, got input_size={input_size}; "
            "repeat grey images to 3 channels or use one of our zoo models "
            "(resnet20/32/56, vgg16_bn_cifar, resnet18_tiny), which take any channel count"
        )


def _torchvision_builder(name: str) -> ModelBuilder:
    def build(*, num_classes: int, input_size: InputSize) -> nn.Module:
        require_rgb(name, input_size)
        # Unregistered names keep torchvision's own initialisation (it suits non-ReLU families).
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


def _check_input_size(input_size: Sequence[int]) -> InputSize:
    try:
        size = tuple(input_size)
    except TypeError:
        size = ()
    if len(size) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
    ):
        raise ValueError(
            f"input_size must be three positive integers (C, H, W), got {input_size!r}"
        )
    return size  # type: ignore[return-value]


@contextmanager
def _init_rng(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    init_seed = stream_seed(seed, "init")
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also reseed every CUDA generator, which
        # fork_rng(devices=[]) does not restore. Models are built on the CPU.
        torch.default_generator.manual_seed(init_seed)
        yield


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    seed: int | None = None,
    pretrained: str | PathLike[str] | None = None,
    input_size: Sequence[int] | None = None,
) -> nn.Module:
    """Build a registered model, or any torchvision classifier by name, on the CPU.

    ``seed``: an int builds from its ``init`` stream (same seed, bit-identical weights; the global
    RNG is unchanged); None draws from the global RNG. ``pretrained``: None, a torchvision weight
    name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``; ``imagenet`` is ``IMAGENET1K_V1``; read
    through torchvision's cache, downloaded once) or a checkpoint file, its layout detected or forced
    by a prefix (``torchvision:``, ``mocov2:``, ``dino:``, ``clip:``; pxprune.models.pretrained).
    Loading is strict; the classifier keeps its fresh initialisation when the checkpoint has none or
    one of another shape. What was loaded is kept as ``model.pretrained_weights`` (format, sha256,
    whether the head is new, input statistics). For a model with a ``model_info(name).backbone``
    (DeepLabV3+), the weights are that classifier's and load into ``model.backbone`` alone; the
    head keeps its fresh initialisation. ``input_size=(C, H, W)`` defaults to the model's
    ``model_info(name).input_size``.
    """
    info = model_info(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    size = _check_input_size(info.input_size if input_size is None else input_size)
    builder = _MODELS.get(name).builder if name in _MODELS else _torchvision_builder(name)
    # Read the checkpoint before building so a bad path fails fast.
    checkpoint = None
    if pretrained is not None and info.backbone is not None:
        checkpoint = read_checkpoint(pretrained, info.backbone, torchvision_weights=True)
    elif pretrained is not None:
        checkpoint = read_checkpoint(pretrained, name,
                                     torchvision_weights=info.family == "torchvision")
    with _init_rng(seed):
        model = builder(num_classes=num_classes, input_size=size)
    if checkpoint is not None and info.backbone is not None:
        attach_backbone(model, checkpoint, model_name=name, backbone=info.backbone)
    elif checkpoint is not None:
        attach(model, checkpoint, model_name=name)
    return model
