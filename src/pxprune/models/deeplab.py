"""DeepLabV3+ for semantic segmentation (Chen et al. 2018), built from torchvision's parts.

The layout is that of the public DeepLabV3Plus-Pytorch (VainF) ``deeplabv3plus_resnet50`` and
``deeplabv3plus_mobilenet``: ``model.backbone`` is a torchvision ``IntermediateLayerGetter``
returning ``{"low_level": ..., "out": ...}`` and ``model.classifier`` is :class:`DeepLabHeadV3Plus`.
The forward returns the logits (N, num_classes, H, W), bilinearly resized (align_corners=False)
to the input's H, W: a plain tensor, not torchvision's ``{"out": ...}`` dict.

Backbones (``weights=None``; their state-dict keys are the torchvision classifier's, so ImageNet,
MoCo v2 and DINO checkpoints of that classifier load into ``model.backbone``):

- ResNet-50 v1.5, ``replace_stride_with_dilation=[False, True, True]`` for output stride 8 (ASPP
  rates 12, 24, 36; the paper's and VainF's default) or ``[False, False, True]`` for output
  stride 16 (rates 6, 12, 18). Low level: ``layer1`` (256 channels, stride 4); high level:
  ``layer4`` (2048 channels); avgpool and fc are dropped. Keys: ``backbone.layer1.0.conv1.weight``
  is torchvision's ``layer1.0.conv1.weight``.
- MobileNetV2 ``features``: low level ``features[:4]`` (24 channels, stride 4); high level
  ``features[:18]``, i.e. up to the last inverted residual block (320 channels), as VainF's
  ``deeplabv3plus_mobilenet`` does (``features[18]``, the 1x1 conv to 1280 channels, is dropped).
  Output stride 16 (the default, as VainF's) or 8: the stride-2 blocks past the output stride run
  at stride 1 and every later depthwise conv is dilated, the first block of such a stage keeping
  the previous dilation, as torchvision's ResNet ``replace_stride_with_dilation`` and VainF's
  MobileNetV2 do. Keys: ``backbone.0.0.weight`` is torchvision's ``features.0.0.weight``.

The head (VainF's ``DeepLabHeadV3Plus``; bias-free convs, each followed by BN and ReLU):
``project`` 1x1 conv low-level -> 48; ``aspp`` (1x1 conv, three 3x3 atrous convs and image pooling,
256 channels each, concatenated to 1280, then a 1x1 conv to 256 and Dropout(0.1)); the ASPP output
resized to the low-level map and concatenated with the projection (304 channels); ``classifier``
3x3 conv 304 -> 256, then a 1x1 conv 256 -> num_classes with a bias.

Initialisation: ``kaiming_init_``, as the rest of the zoo (Kaiming-normal fan-in with ReLU gain,
which is VainF's head initialisation; conv biases 0, where VainF keeps PyTorch's default for the
final conv's bias; BN weight 1, bias 0). ``create_model(..., pretrained=...)`` then loads the
backbone (``pxprune.models.pretrained.attach_backbone``) and leaves the head at this
initialisation.

ASPP's image-pooling branch has BatchNorm on a 1x1 map: in training mode a batch of one image
raises (``Expected more than 1 value per channel when training``), in torchvision, VainF and here
alike; train with batches of two or more (or call ``.eval()`` for single images).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP

from pxprune.models.factory import InputSize, kaiming_init_, register_model, require_rgb

DEEPLAB_INPUT_SIZE: InputSize = (3, 513, 513)
"""VainF's and the paper's PASCAL VOC crop."""
DEEPLAB_CLASSES = 21  # PASCAL VOC: 20 classes and background
TASKS = ("segmentation",)

LOW_LEVEL_PROJECTION = 48
ASPP_CHANNELS = 256
ASPP_DROPOUT = 0.1

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
"""Atrous rates by output stride (the rates of the paper double when the stride halves)."""
RESNET50_DILATION = {8: [False, True, True], 16: [False, False, True]}
"""torchvision ResNet ``replace_stride_with_dilation`` by output stride."""

MOBILENET_V2_LOW_LEVEL = 3  # features[3]: the last block at stride 4, 24 channels
MOBILENET_V2_OUT = 17  # features[17]: the last inverted residual block, 320 channels


class DeepLabHeadV3Plus(nn.Module):
    """The DeepLabV3+ decoder: ASPP on the high-level features, fused with projected low-level
    features, then a 3x3 conv and the 1x1 classifier (VainF's ``DeepLabHeadV3Plus``).

    ``aspp`` is torchvision's ``ASPP`` (the same modules and names as VainF's, which copied it)
    with its Dropout(0.5) set to 0.1, VainF's value: torchvision's constructor takes the rates but
    not the dropout, which is only the module's ``p``.
    """

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(low_level_channels, LOW_LEVEL_PROJECTION, 1, bias=False),
            nn.BatchNorm2d(LOW_LEVEL_PROJECTION),
            nn.ReLU(inplace=True),
        )
        self.aspp = ASPP(in_channels, rates, ASPP_CHANNELS)
        dropout = self.aspp.project[-1]
        if not isinstance(dropout, nn.Dropout):  # torchvision's layout changed: fail loudly
            raise TypeError(f"torchvision's ASPP.project ends with {type(dropout).__name__}, "
                            "not Dropout: pxprune's DeepLabV3+ head needs updating")
        dropout.p = ASPP_DROPOUT
        fused = LOW_LEVEL_PROJECTION + ASPP_CHANNELS  # 304
        self.classifier = nn.Sequential(
            nn.Conv2d(fused, ASPP_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(ASPP_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(ASPP_CHANNELS, num_classes, 1),
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        low_level = self.project(features["low_level"])
        high_level = self.aspp(features["out"])
        high_level = F.interpolate(high_level, size=low_level.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return self.classifier(torch.cat([low_level, high_level], dim=1))


class DeepLabV3Plus(nn.Module):
    """``backbone`` (an ``IntermediateLayerGetter`` giving ``low_level`` and ``out``) and
    ``classifier`` (:class:`DeepLabHeadV3Plus`); returns logits at the input's resolution."""

    def __init__(self, backbone: IntermediateLayerGetter, classifier: DeepLabHeadV3Plus, *,
                 output_stride: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------ backbones
def _check_output_stride(output_stride: int) -> None:
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


def resnet50_backbone(output_stride: int = 8) -> tuple[IntermediateLayerGetter, int, int]:
    """torchvision's ResNet-50 with dilated later stages: (backbone, low-level channels,
    high-level channels)."""
    _check_output_stride(output_stride)
    resnet = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=RESNET50_DILATION[output_stride])
    backbone = IntermediateLayerGetter(resnet, return_layers={"layer1": "low_level",
                                                              "layer4": "out"})
    return backbone, 256, 2048


def _depthwise(block: nn.Module) -> nn.Conv2d:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    if len(convs) != 1 or convs[0].groups != convs[0].in_channels:
        raise TypeError(f"expected one depthwise conv in {type(block).__name__}, got {convs}")
    return convs[0]


def dilate_mobilenet_v2_(features: nn.Sequential, output_stride: int) -> nn.Sequential:
    """Turn torchvision's MobileNetV2 ``features`` (stride 32) into output stride 8 or 16 in
    place: each stride-2 block past the output stride runs at stride 1 with the dilation so far,
    and every block after it has its depthwise conv dilated by the stride removed (VainF's
    MobileNetV2 ``output_stride``; padding = dilation keeps the map size)."""
    _check_output_stride(output_stride)
    current_stride, dilation = 2, 1  # features[0]: the stride-2 stem conv
    for block in list(features)[1:]:
        if not isinstance(block, torchvision.models.mobilenetv2.InvertedResidual):
            continue  # features[18], the last 1x1 conv
        conv = _depthwise(block)
        stride = conv.stride[0]
        block_dilation = dilation  # the first block of a dilated stage keeps the previous one
        if stride > 1 and current_stride >= output_stride:
            dilation *= stride
            stride = 1
        elif stride > 1:
            current_stride *= stride
        conv.stride = (stride, stride)
        conv.dilation = (block_dilation, block_dilation)
        conv.padding = (block_dilation, block_dilation)
        block.stride = stride  # its residual connection is unchanged (stride-2 blocks have none)
    return features


def mobilenet_v2_backbone(output_stride: int = 16) -> tuple[IntermediateLayerGetter, int, int]:
    """torchvision's MobileNetV2 ``features[:18]``, dilated to ``output_stride``: (backbone,
    low-level channels, high-level channels)."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    dilate_mobilenet_v2_(features, output_stride)
    backbone = IntermediateLayerGetter(features, return_layers={
        str(MOBILENET_V2_LOW_LEVEL): "low_level", str(MOBILENET_V2_OUT): "out"})
    return backbone, 24, 320


BACKBONES = {"resnet50": resnet50_backbone, "mobilenet_v2": mobilenet_v2_backbone}


def deeplabv3plus(backbone: str, *, num_classes: int = DEEPLAB_CLASSES,
                  output_stride: int = 8) -> DeepLabV3Plus:
    """DeepLabV3+ on ``backbone`` (``resnet50`` or ``mobilenet_v2``), initialised with
    ``kaiming_init_``."""
    _check_output_stride(output_stride)
    # Built on the meta device: kaiming_init_ overwrites every parameter and buffer (the tests
    # check it), so torchvision's own initialisation of 40M parameters would be wasted work.
    with torch.device("meta"):
        features, low_channels, high_channels = BACKBONES[backbone](output_stride)
        head = DeepLabHeadV3Plus(high_channels, low_channels, num_classes,
                                 ASPP_RATES[output_stride])
        model = DeepLabV3Plus(features, head, output_stride=output_stride)
    return kaiming_init_(model.to_empty(device="cpu"))


# ------------------------------------------------------------------------------ registered
def _register(name: str, backbone: str, output_stride: int, doc: str) -> None:
    def build(*, num_classes: int = DEEPLAB_CLASSES,
              input_size: InputSize = DEEPLAB_INPUT_SIZE) -> nn.Module:
        require_rgb(name, input_size)
        return deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    register_model(name, input_size=DEEPLAB_INPUT_SIZE, family="deeplab", tasks=TASKS,
                   backbone=backbone)(build)


_register("deeplabv3plus_resnet50", "resnet50", 8,
          "DeepLabV3+ on ResNet-50, output stride 8, ASPP rates 12/24/36.")
_register("deeplabv3plus_resnet50_os16", "resnet50", 16,
          "DeepLabV3+ on ResNet-50, output stride 16, ASPP rates 6/12/18.")
_register("deeplabv3plus_mobilenet_v2", "mobilenet_v2", 16,
          "DeepLabV3+ on MobileNetV2 (320-channel features), output stride 16, rates 6/12/18.")
_register("deeplabv3plus_mobilenet_v2_os8", "mobilenet_v2", 8,
          "DeepLabV3+ on MobileNetV2 (320-channel features), output stride 8, rates 12/24/36.")
