"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2) as planned in open_lth.

A 3x3 conv-16 stem, three stages of n BasicBlocks with 16/32/64 filters (stride 2 at the first block
of stages 2 and 3), a 1x1 conv + BN shortcut where the shape changes, global average pooling and a
linear classifier; depth = 6n + 2. The same ``ResNet`` class serves the Tiny-ImageNet ResNet-18.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pxprune.models.factory import InputSize, kaiming_init_, register_model

CIFAR_INPUT_SIZE: InputSize = (3, 32, 32)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (He et al. 2016, Fig. 2 left)."""

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet(nn.Module):
    """A BasicBlock ResNet with a stride-1 3x3 stem and no max-pool (CIFAR / Tiny-ImageNet style).

    ``widths[i]`` filters and ``blocks[i]`` blocks in stage i; stage i > 0 starts with stride 2.
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty, equal length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        for stage, (planes, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            layer = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                layer.append(BasicBlock(in_planes, planes, stride=stride))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{stage}")(out)
        return self.fc(self.avgpool(out).flatten(1))


def cifar_resnet(depth: int, *, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """The open_lth CIFAR ResNet of ``depth`` = 6n + 2 layers (16/32/64 filters), initialised."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    model = ResNet((16, 32, 64), (n, n, n), num_classes=num_classes, in_channels=in_channels)
    return kaiming_init_(model)


@register_model("resnet8", input_size=CIFAR_INPUT_SIZE, family="cifar_resnet")
def resnet8(*, num_classes: int = 10, input_size: InputSize = CIFAR_INPUT_SIZE) -> ResNet:
    """CIFAR ResNet-8 (He et al. 2016, n = 1), 0.08M parameters: for quick checks and tests."""
    return cifar_resnet(8, num_classes=num_classes, in_channels=input_size[0])


@register_model("resnet20", input_size=CIFAR_INPUT_SIZE, family="cifar_resnet")
def resnet20(*, num_classes: int = 10, input_size: InputSize = CIFAR_INPUT_SIZE) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016; open_lth ``cifar_resnet_20``), 0.27M parameters."""
    return cifar_resnet(20, num_classes=num_classes, in_channels=input_size[0])


@register_model("resnet32", input_size=CIFAR_INPUT_SIZE, family="cifar_resnet")
def resnet32(*, num_classes: int = 10, input_size: InputSize = CIFAR_INPUT_SIZE) -> ResNet:
    """CIFAR ResNet-32 (He et al. 2016; open_lth ``cifar_resnet_32``)."""
    return cifar_resnet(32, num_classes=num_classes, in_channels=input_size[0])


@register_model("resnet56", input_size=CIFAR_INPUT_SIZE, family="cifar_resnet")
def resnet56(*, num_classes: int = 10, input_size: InputSize = CIFAR_INPUT_SIZE) -> ResNet:
    """CIFAR ResNet-56 (He et al. 2016; open_lth ``cifar_resnet_56``)."""
    return cifar_resnet(56, num_classes=num_classes, in_channels=input_size[0])
