"""Loading pre-trained weights: torchvision's ImageNet checkpoints or a local ``state_dict`` file.

The paper fine-tunes ImageNet-supervised ResNet-50 with a new classifier (docs/design/PAPER.md section 1):
the backbone must match exactly, the classifier is kept freshly initialised when its shape differs
or when the checkpoint has none.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

IMAGENET = "imagenet"
IMAGENET_WEIGHTS = "IMAGENET1K_V1"

_FIX = (
    "pass pretrained=None, 'imagenet' (torchvision models), or the path of a file written by "
    "torch.save(model.state_dict(), path)"
)


def read_pretrained(
    name: str, pretrained: str | PathLike[str], *, imagenet: bool
) -> dict[str, Tensor]:
    """The state dict named by ``pretrained``: ``"imagenet"`` (when ``imagenet``) or a file path."""
    if isinstance(pretrained, str) and pretrained == IMAGENET:
        if not imagenet:
            raise ValueError(
                f"model {name!r} has no ImageNet weights; pass the path of a checkpoint instead"
            )
        return _imagenet_state(name)
    if not isinstance(pretrained, str | PathLike):
        raise ValueError(
            f"pretrained must be None, 'imagenet' or a path, got {pretrained!r}; {_FIX}"
        )
    return read_state_dict(pretrained)


def _imagenet_state(name: str) -> dict[str, Tensor]:
    weights = torchvision.models.get_model_weights(name)
    try:
        chosen = weights[IMAGENET_WEIGHTS]
    except KeyError:
        available = ", ".join(w.name for w in weights)
        raise ValueError(
            f"torchvision has no {IMAGENET_WEIGHTS} weights for {name!r} (it has: {available}); "
            "pass the path of a downloaded state_dict instead"
        ) from None
    try:
        return chosen.get_state_dict(progress=False)
    except OSError as error:
        raise RuntimeError(
            f"could not download the ImageNet weights of {name!r} ({error}); fetch {chosen.url} "
            "on a machine with network access and pass its path as pretrained"
        ) from error


def read_state_dict(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Read a ``state_dict`` saved with ``torch.save`` (``weights_only=True``, on the CPU).

    A dict holding it under ``"state_dict"`` or ``"model"``, and a DDP ``module.`` prefix, are
    accepted.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"pretrained checkpoint {str(file)!r} does not exist; {_FIX}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(
            f"pretrained checkpoint {str(file)!r} is not a readable torch file ({error}); {_FIX}"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise ValueError(f"pretrained checkpoint {str(file)!r} holds no state_dict; {_FIX}")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def classifier_name(model: nn.Module) -> str | None:
    """The qualified name of the classifier: the last ``nn.Linear`` registered in ``model``."""
    last = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = qualified
    return last


def load_pretrained_(model: nn.Module, state: dict[str, Tensor], *, source: str = "") -> nn.Module:
    """Load ``state`` into ``model`` in place: strict for the backbone, tolerant for the classifier.

    The classifier's entries are dropped (it keeps its current initialisation) when their shapes
    differ from the model's (another ``num_classes``) or when the checkpoint has none of them.
    """
    own = model.state_dict()
    head = classifier_name(model)
    head_keys = (
        {f"{head}.{p}" for p in ("weight", "bias")} & own.keys() if head is not None else set()
    )
    given = head_keys & state.keys()
    replace = not given or any(state[k].shape != own[k].shape for k in given)
    if replace:
        state = {k: v for k, v in state.items() if k not in head_keys}
    expected = own.keys() - head_keys if replace else own.keys()
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state.keys() & own.keys()
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        ]
        raise ValueError(
            f"pretrained checkpoint {source!r} does not fit this architecture: "
            f"{'; '.join(problems)}; pass a checkpoint saved from the same model"
        )
    model.load_state_dict(state, strict=not replace)
    return model
