"""CLIP's RN50 image tower with a classifier: ``clip_rn50`` (Radford et al. 2021).

The tower is open-clip-torch's ``ModifiedResNet``, used as it is (never rewritten here): a three-conv
stem (3x3 convs 3->w/2 stride 2, w/2->w/2, w/2->w, then AvgPool2d(2), no max-pool), bottlenecks
whose stride is an AvgPool2d after the 3x3 conv and before the 1x1 shortcut conv (anti-aliasing),
and attention pooling (the mean token attends over the final map, 32 heads) to a 1024-d feature.
:class:`CLIPClassifier` puts it under ``visual`` and adds ``head = nn.Linear(output_dim,
num_classes)``, so its state dict is exactly OpenAI's ``visual.*`` keys (docs/design/PRETRAINED.md
section 1) plus ``head.weight``/``head.bias``: the clip-format loader relies on this.

From scratch, ``create_model("clip_rn50", seed=...)`` initialises it like the rest of the zoo
(``kaiming_init_``: Kaiming-normal convs and linears, BN 1/0) rather than with CLIP's
``init_parameters``, whose zero ``bn3`` gammas would cut every residual path at theta_0 (every
criterion that reads weights would then raise on them); the positional embedding keeps CLIP's
N(0, 1/embed_dim). The attention pool's grid is ``input_size // 32`` (7x7 at 224 px): the model
only takes images of its build size, and 224-px weights only load into a 224-px model.

Which weights each criterion can prune (docs/design/PX.md section 5; every conv and linear is
prunable, the positional embedding is not):

- ``px``, ``synflow``, ``synflow_l2``: the query and key projections (``visual.attnpool.q_proj``,
  ``visual.attnpool.k_proj``) only set the attention probabilities, which multiply the values; no
  path runs through them, they score 0 and pruning raises ``DegenerateScoresError`` naming them.
  Pass the ``exclude=`` it names (:data:`QK_PROJECTIONS`): they stay dense (2 x 2048 x 2048 =
  8.4M of the 38.2M prunable weights at full width, 22%) and the sparsity is reached on the
  rest (stem, bottlenecks, ``v_proj``, ``c_proj``, ``head``), which paths do cross.
- ``snip``, ``grasp``, ``magnitude``, ``random`` (and ``ntksap``): every conv and linear, query
  and key projections included (they read gradients through the softmax, magnitudes, or nothing).
  A mask that keeps only part of them is reported with them "cut off from every input-output
  path": mask reports use the same path engine, which the softmax's inputs are not on.

Fine-tuning from OpenAI's release: ``create_model("clip_rn50", num_classes=K, pretrained="clip:RN50.pt")``
(docs/design/PRETRAINED.md; the loader keeps ``visual.*`` in fp32 and a new ``head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pxprune.models.factory import (
    TORCHVISION_INPUT_SIZE,
    InputSize,
    kaiming_init_,
    register_model,
    require_rgb,
)

RN50_LAYERS = (3, 4, 6, 3)
RN50_OUTPUT_DIM = 1024
RN50_HEADS = 32
RN50_WIDTH = 64
RN50_IMAGE_SIZE = 224

QK_PROJECTIONS = ("visual.attnpool.q_proj.weight", "visual.attnpool.k_proj.weight")
"""The weights on no path of PX's linearised network: pass them as ``exclude=`` to px/synflow."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's preprocessing statistics (RGB, after bicubic Resize(224) + CenterCrop(224))."""



class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed. A ``ValueError`` too, so the CLI reports it as a
    one-line user error (exit 2) like any other bad model choice."""


def _modified_resnet() -> type[nn.Module]:
    try:
        from open_clip.modified_resnet import ModifiedResNet
    except ImportError as error:
        raise MissingDependencyError(
            "clip_rn50 needs open-clip-torch (CLIP's ModifiedResNet), which is not installed: "
            "pip install 'pxprune[clip]'"
        ) from error
    return ModifiedResNet


class CLIPClassifier(nn.Module):
    """``head(visual(x))``: a CLIP ``ModifiedResNet`` image tower and a linear classifier.

    Keyword arguments shrink the tower for tests (e.g. ``width=8, layers=(1, 1, 1, 1), heads=2,
    output_dim=16, image_size=32``); the defaults are RN50's. ``image_size`` must be a multiple of
    32 (the attention pool's grid is ``image_size // 32``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        layers: Sequence[int] = RN50_LAYERS,
        output_dim: int = RN50_OUTPUT_DIM,
        heads: int = RN50_HEADS,
        image_size: int = RN50_IMAGE_SIZE,
        width: int = RN50_WIDTH,
    ) -> None:
        super().__init__()
        if image_size < 32 or image_size % 32:
            raise ValueError(
                f"clip_rn50 takes square images whose side is a multiple of 32 (its attention "
                f"pool has a fixed (side // 32)^2 grid), got {image_size}; resize to 224"
            )
        self.visual = _modified_resnet()(
            layers=list(layers), output_dim=output_dim, heads=heads, image_size=image_size,
            width=width,
        )
        self.head = nn.Linear(output_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def build_clip_resnet(num_classes: int = 1000, **kwargs: Any) -> CLIPClassifier:
    """A :class:`CLIPClassifier` (``kwargs`` as there) initialised like the zoo: ``kaiming_init_``,
    and the positional embedding drawn as CLIP draws it, N(0, 1/embed_dim)."""
    # Built on the meta device: kaiming_init_ overwrites every conv, linear and BN, so CLIP's own
    # initialisation would be wasted work (and its zero bn3 gammas are what we avoid).
    with torch.device("meta"):
        model = CLIPClassifier(num_classes, **kwargs)
    model = kaiming_init_(model.to_empty(device="cpu"))
    embedding = model.visual.attnpool.positional_embedding
    nn.init.normal_(embedding, std=embedding.shape[1] ** -0.5)
    return model


@register_model("clip_rn50", input_size=(3, RN50_IMAGE_SIZE, RN50_IMAGE_SIZE), family="clip")
def clip_rn50(
    *, num_classes: int = 1000, input_size: InputSize = TORCHVISION_INPUT_SIZE
) -> CLIPClassifier:
    """CLIP RN50's image tower (38.3M parameters) + ``head``: 1024 -> num_classes."""
    require_rgb("clip_rn50", input_size)
    if input_size[1] != input_size[2]:
        raise ValueError(f"clip_rn50 takes square images, got input_size={input_size}")
    return build_clip_resnet(num_classes, image_size=input_size[1])
