"""CIFAR VGG-16 with batch norm (Simonyan & Zisserman 2015) as planned in open_lth.

3x3 convs (with bias) + BN + ReLU following ``VGG16_CFG``, a 2x2 max-pool at each "M", then
average pooling of the remaining map to 1x1 (AvgPool2d(2) for 32 px inputs), flatten and
Linear(512, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pxprune.models.factory import InputSize, kaiming_init_, register_model

CIFAR_INPUT_SIZE: InputSize = (3, 32, 32)
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class VGG(nn.Module):
    """A VGG-BN feature stack from ``cfg`` (ints: conv widths, "M": max-pool) and a linear head."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        *,
        num_classes: int = 10,
        input_size: InputSize = CIFAR_INPUT_SIZE,
    ) -> None:
        super().__init__()
        channels, height, width = input_size
        layers: list[nn.Module] = []
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            else:
                layers += [
                    nn.Conv2d(channels, int(item), 3, padding=1, bias=True),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(),
                ]
                channels = int(item)
        if height < 1 or width < 1:
            raise ValueError(
                f"input_size {tuple(input_size)} is too small for this VGG; use >= 16 px"
            )
        self.features = nn.Sequential(*layers)
        # Pool the final map to 1x1 so the classifier sees `channels` features at any input size.
        self.avgpool = nn.AvgPool2d((height, width))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg16_bn_cifar", input_size=CIFAR_INPUT_SIZE, family="vgg_cifar")
def vgg16_bn_cifar(*, num_classes: int = 10, input_size: InputSize = CIFAR_INPUT_SIZE) -> VGG:
    """CIFAR VGG-16-BN (open_lth ``cifar_vgg_16``), 14.77M parameters at 100 classes."""
    return kaiming_init_(VGG(VGG16_CFG, num_classes=num_classes, input_size=input_size))
