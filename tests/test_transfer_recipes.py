"""The transfer recipes (Fig. 3: pre-trained ResNet-50 fine-tuned): they parse, say what they are, and
train 2 steps on fake files in each dataset's on-disk format from a stand-in checkpoint (no network)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from conftest import cli
from pxprune.data import FAKE_WRITERS
from pxprune.experiment import (
    build_model,
    list_recipes,
    load_data,
    make_trainer,
    recipe_comment,
    resolve_config,
)
from pxprune.selection import prunable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

TRANSFER = {
    "cifar10_resnet50_pretrained": ("cifar10", 10),
    "cifar100_resnet50_pretrained": ("cifar100", 100),
    "tinyimagenet_resnet50_pretrained": ("tinyimagenet", 200),
}
# ResNet-50 at 224 px takes 2-25 s a step on 2 cores: the fast suite runs ResNet-18, the same
# torchvision family, head replacement, data files, resize and optimizer
SMALL = "resnet18"


def test_transfer_recipes_are_listed(capsys) -> None:
    assert set(TRANSFER) <= set(list_recipes())
    code, out, _ = cli(capsys, "list", "recipes")
    assert code == 0 and all(name in out for name in TRANSFER)


@pytest.mark.parametrize("name", sorted(TRANSFER))
def test_transfer_recipe_is_the_paper_s(name: str) -> None:
    c = resolve_config(name)
    dataset, _ = TRANSFER[name]
    assert (c.model.name, c.model.pretrained) == ("resnet50", "IMAGENET1K_V1")
    assert (c.data.name, c.data.image_size, c.data.normalize) == (dataset, 224, "dataset")
    assert c.data.per_class == 10 and c.data.train_subset is None
    t = c.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.nesterov) == (
        182, 256, 0.1, 0.9, 1e-4, False)
    assert (t.schedule, t.milestones, t.amp) == ("step", (91, 136), "auto")
    p = c.prune
    assert (p.criterion, p.sparsity, p.rounds, p.scope, p.options) == ("px", 0.982, None, "global", {})
    comment = recipe_comment(name)
    assert "GPU time" in comment and "data.normalize" in comment


def _stand_in(arch: str, path) -> dict[str, torch.Tensor]:
    """A random ImageNet-shaped (1000-class) torchvision state dict standing in for the weights."""
    torch.manual_seed(123)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    torch.save(state, path)
    return state


def _cases():
    for name in sorted(TRANSFER):
        yield pytest.param(name, SMALL, id=f"{name}-{SMALL}")
        yield pytest.param(name, "resnet50", id=name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name, arch", list(_cases()))
def test_transfer_recipe_trains_two_steps_on_fake_files(name: str, arch: str, tmp_path) -> None:
    weights = tmp_path / f"{arch}-imagenet.pth"
    state = _stand_in(arch, weights)
    data_root = tmp_path / "data"
    config = resolve_config(name, [f"data.root={data_root}", "train.batch_size=2",
                                   f"model.name={arch}", f"model.pretrained={weights}"])
    FAKE_WRITERS[config.data.name](data_root)
    data = load_data(config, split=False)
    assert data.spec.input_size == (3, 224, 224) and data.spec.num_classes == TRANSFER[name][1]
    assert data.normalization == "dataset"
    x, _ = data.train[0]
    assert x.shape == (3, 224, 224)
    model = build_model(config, data.spec)
    # the backbone is the checkpoint's, the classifier new (and pruned with the rest by default)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[-1].bn2.running_var, state["layer4.1.bn2.running_var"]
                       if arch == "resnet18" else state["layer4.2.bn2.running_var"])
    assert model.fc.weight.shape == (TRANSFER[name][1], model.fc.in_features)
    assert "fc.weight" in prunable_parameters(model)
    trainer = make_trainer(model, data, config, "cpu")
    g = trainer.optimizer.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.1, 0.9, 1e-4, False)
    stats = trainer.train_epoch(max_steps=2)
    assert stats.steps == 2 and math.isfinite(stats.loss)
    assert math.isfinite(trainer.evaluate(max_steps=1).loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
