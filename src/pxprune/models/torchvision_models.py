"""Torchvision ImageNet architectures registered in the zoo (torchvision.models, weights=None).

ResNet-18/50 (He et al. 2016; ResNet-50 is v1.5, the one the paper uses), VGG-16-BN (Simonyan &
Zisserman 2015) and MobileNetV2 (Sandler et al. 2018), initialised with ``kaiming_init_`` like
the rest of the zoo. ``create_model(..., pretrained="imagenet" | path)`` loads weights over them.
Any other torchvision classifier name resolves in ``create_model`` without being registered.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pxprune.models.factory import (
    TORCHVISION_INPUT_SIZE,
    InputSize,
    kaiming_init_,
    register_model,
    require_rgb,
)


def _build(name: str, num_classes: int, input_size: InputSize) -> nn.Module:
    require_rgb(name, input_size)
    # Built on the meta device: kaiming_init_ overwrites every parameter and buffer of these four
    # architectures (tests check it), so torchvision's own initialisation would be wasted work
    # (it doubles the build time of VGG-16-BN's 138M parameters).
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return kaiming_init_(model.to_empty(device="cpu"))


@register_model("resnet18", input_size=TORCHVISION_INPUT_SIZE, family="torchvision")
def resnet18(
    *, num_classes: int = 1000, input_size: InputSize = TORCHVISION_INPUT_SIZE
) -> nn.Module:
    """torchvision ResNet-18 (He et al. 2016)."""
    return _build("resnet18", num_classes, input_size)


@register_model("resnet50", input_size=TORCHVISION_INPUT_SIZE, family="torchvision")
def resnet50(
    *, num_classes: int = 1000, input_size: InputSize = TORCHVISION_INPUT_SIZE
) -> nn.Module:
    """torchvision ResNet-50 v1.5 (He et al. 2016; stride 2 in the 3x3 conv)."""
    return _build("resnet50", num_classes, input_size)


@register_model("vgg16_bn", input_size=TORCHVISION_INPUT_SIZE, family="torchvision")
def vgg16_bn(
    *, num_classes: int = 1000, input_size: InputSize = TORCHVISION_INPUT_SIZE
) -> nn.Module:
    """torchvision VGG-16 with batch norm (Simonyan & Zisserman 2015)."""
    return _build("vgg16_bn", num_classes, input_size)


@register_model("mobilenet_v2", input_size=TORCHVISION_INPUT_SIZE, family="torchvision")
def mobilenet_v2(
    *, num_classes: int = 1000, input_size: InputSize = TORCHVISION_INPUT_SIZE
) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al. 2018)."""
    return _build("mobilenet_v2", num_classes, input_size)
