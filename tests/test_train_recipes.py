"""Every shipped recipe loads and trains 2 steps on fake data in its dataset's on-disk format."""

from __future__ import annotations

import math

import pytest
import torch

from pxprune.data import FAKE_WRITERS
from pxprune.experiment import build_model, list_recipes, load_data, make_trainer, resolve_config

SLOW = {"imagenet_resnet50"}  # ResNet-50 at 224 px: 2 s on 2 idle cores, 25 s on busy ones
SMALL_MODEL = "model.name=resnet20"


def _cases():
    for name in list_recipes():
        if resolve_config(name).model.pretrained is not None:
            continue  # tests/test_transfer_recipes.py trains them from a stand-in checkpoint
        if name in SLOW:
            yield pytest.param(name, (), marks=pytest.mark.slow, id=name)
            # the same recipe, data files and optimizer with a small network, in the fast suite
            yield pytest.param(name, (SMALL_MODEL,), id=f"{name}-resnet20")
        else:
            yield pytest.param(name, (), id=name)


@pytest.mark.parametrize("name, extra", list(_cases()))
def test_recipe_trains_two_steps_on_fake_files(name, extra, tmp_path):
    config = resolve_config(name, [f"data.root={tmp_path}", "data.train_subset=null",
                                   "train.batch_size=2", *extra])
    FAKE_WRITERS[config.data.name](tmp_path)
    data = load_data(config, split=False)
    model = build_model(config, data.spec)
    trainer = make_trainer(model, data, config, "cpu")
    g = trainer.optimizer.param_groups[0]
    t = resolve_config(name).train
    assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (t.momentum, t.weight_decay,
                                                                  t.nesterov)
    assert g["lr"] == pytest.approx(t.lr)
    stats = trainer.train_epoch(max_steps=2)
    assert stats.steps == 2 and math.isfinite(stats.loss)
    ev = trainer.evaluate(max_steps=1)
    assert math.isfinite(ev.loss)
    assert (ev.acc5 is None) == (data.spec.num_classes <= 10)
    assert all(torch.isfinite(p).all() for p in model.parameters())
