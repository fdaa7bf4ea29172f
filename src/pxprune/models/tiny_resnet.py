"""Tiny-ImageNet ResNet-18 as used by the PX code (docs/design/PAPER.md section 1).

ResNet-18 (He et al. 2016) adapted to 64 px inputs: a stride-1 3x3 conv-64 stem without max-pool,
BasicBlocks [2, 2, 2, 2] with 64/128/256/512 filters (stage 1 stride 1), 1x1 conv + BN shortcuts
where the shape changes, adaptive average pooling and a 512 -> num_classes classifier.
"""

from __future__ import annotations

from pxprune.models.cifar_resnet import ResNet
from pxprune.models.factory import InputSize, kaiming_init_, register_model

TINY_INPUT_SIZE: InputSize = (3, 64, 64)


@register_model("resnet18_tiny", input_size=TINY_INPUT_SIZE, family="tiny_resnet")
def resnet18_tiny(*, num_classes: int = 200, input_size: InputSize = TINY_INPUT_SIZE) -> ResNet:
    """Tiny-ImageNet ResNet-18, 11.27M parameters at 200 classes."""
    model = ResNet(
        (64, 128, 256, 512), (2, 2, 2, 2), num_classes=num_classes, in_channels=input_size[0]
    )
    return kaiming_init_(model)
