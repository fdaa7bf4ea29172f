"""The model zoo: ``create_model(name, ...)``, ``list_models()``, ``register_model``.

Registered: CIFAR ResNet-20/32/56 and VGG-16-BN, Tiny-ImageNet ResNet-18, and torchvision ResNet-18,
ResNet-50, VGG-16-BN and MobileNetV2, and CLIP's RN50 image tower (``clip_rn50``, needs the
``clip`` extra); any other torchvision classifier name also resolves.
"""

from pxprune.models import (  # noqa: F401  (register)
    cifar_resnet,
    clip,
    deeplab,
    tiny_resnet,
    torchvision_models,
    vgg,
)
from pxprune.models.factory import (
    ModelInfo,
    create_model,
    kaiming_init_,
    list_models,
    model_info,
    register_model,
)
from pxprune.models.pretrained import (
    PretrainedWeights,
    list_formats,
    load_pretrained,
    load_pretrained_,
    read_state_dict,
)

__all__ = [
    "ModelInfo",
    "PretrainedWeights",
    "create_model",
    "kaiming_init_",
    "list_formats",
    "list_models",
    "load_pretrained",
    "load_pretrained_",
    "model_info",
    "read_state_dict",
    "register_model",
]
