"""Configuration, recipes, --set, criterion specs and folder names (docs/design/CONTRACTS.md section 6, 8)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import pxprune
from pxprune.experiment import (
    DENSE,
    Flags,
    RunConfig,
    UserError,
    config_from_dict,
    criterion_label,
    default_out,
    list_recipes,
    parse_criterion,
    read_recipe,
    recipe_comment,
    resolve_config,
    run_label,
    sparsity_label,
    split_criteria,
)

PAPER_RECIPES = ("cifar10_resnet20", "cifar100_vgg16", "tinyimagenet_resnet18", "imagenet_resnet50")
TRANSFER_RECIPES = tuple(f"{d}_resnet50_pretrained" for d in ("cifar10", "cifar100", "tinyimagenet"))


def test_shipped_recipes_are_listed():
    # the transfer recipes are checked in tests/test_transfer_recipes.py
    assert set(list_recipes()) == {"demo", *PAPER_RECIPES, *TRANSFER_RECIPES,
                                   "voc2012_deeplabv3plus"}  # tests/test_segmentation.py


def test_demo_recipe_is_contracts_section_8():
    c = resolve_config("demo")
    assert c.recipe == "demo"
    assert (c.model.name, c.model.pretrained) == ("resnet20", None)
    assert (c.data.name, c.data.train_subset, c.data.per_class) == ("fashion-mnist", 20000, 10)
    assert c.prune.criterion == "px" and c.prune.options == {}
    assert c.prune.sparsity == 0.982 and c.prune.rounds is None
    assert c.prune.scope == "global" and not c.prune.shuffle
    t = c.train
    # 1 epoch, not 2: the 8-minute budget of `make demo` (README, demo.yaml)
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (1, 128, 0.1, 0.9, 1e-4)
    assert t.schedule == "cosine" and not t.nesterov and not t.reinit
    assert c.seed == 0


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10_resnet20", dict(model="resnet20", data="cifar10", epochs=160, lr=0.1,
                                  wd=1e-4, nesterov=False, milestones=(80, 120), batch=128)),
        ("cifar100_vgg16", dict(model="vgg16_bn_cifar", data="cifar100", epochs=160, lr=0.1,
                                wd=5e-4, nesterov=True, milestones=(60, 120), batch=128)),
        ("tinyimagenet_resnet18", dict(model="resnet18_tiny", data="tinyimagenet", epochs=200,
                                       lr=0.2, wd=1e-4, nesterov=False, milestones=(100, 150),
                                       batch=256)),
        ("imagenet_resnet50", dict(model="resnet50", data="imagenet", epochs=90, lr=0.1, wd=1e-4,
                                   nesterov=False, milestones=(30, 60, 80), batch=448)),
    ],
)
def test_paper_recipes_follow_paper_notes(name, expected):
    c = resolve_config(name)
    assert c.model.name == expected["model"] and c.data.name == expected["data"]
    t = c.train
    assert (t.epochs, t.lr, t.weight_decay, t.nesterov, t.milestones, t.batch_size) == (
        expected["epochs"], expected["lr"], expected["wd"], expected["nesterov"],
        expected["milestones"], expected["batch"])
    assert t.schedule == "step" and t.momentum == 0.9 and t.amp == "auto"
    assert c.prune.rounds is None  # every shipped recipe: the criterion's own default
    assert "GPU time" in recipe_comment(name)


def test_precedence_defaults_recipe_set_flags():
    base = RunConfig()
    assert base.train.epochs == 2 and base.data.train_subset is None
    c = resolve_config("cifar10_resnet20")
    assert c.train.epochs == 160  # recipe beats defaults
    c = resolve_config("cifar10_resnet20", ["train.epochs=5", "train.epochs=7"])
    assert c.train.epochs == 7  # later --set wins
    c = resolve_config("cifar10_resnet20", ["train.epochs=5"], Flags(epochs=3, seed=4, rounds=2))
    assert (c.train.epochs, c.seed, c.prune.rounds) == (3, 4, 2)  # flags beat --set


def test_set_values_are_type_checked_yaml_scalars():
    c = resolve_config("demo", [
        "train.amp=off", "train.weight_decay=1e-4", "train.milestones=[1, 2]", "data.root=2024",
        "data.train_subset=null", "prune.options.classifier=signed", "seed=3",
        "model.pretrained=null", "train.nesterov=true",
    ])
    assert c.train.amp == "off" and c.train.weight_decay == 1e-4
    assert c.train.milestones == (1, 2) and c.data.root == "2024"
    assert c.data.train_subset is None and c.prune.options == {"classifier": "signed"}
    assert c.seed == 3 and c.train.nesterov
    assert resolve_config("demo", ["train.milestones=3,5"]).train.milestones == (3, 5)


@pytest.mark.parametrize(
    "sets, words",
    [
        (["train.epoch=3"], ["unknown configuration key 'train.epoch'", "train.epochs"]),
        (["nosuch=3"], ["unknown configuration key"]),
        (["train.epochs=three"], ["train.epochs", "integer"]),
        (["train.epochs=2.5"], ["train.epochs", "integer"]),
        (["train.nesterov=maybe"], ["train.nesterov", "true or false"]),
        (["train.lr=fast"], ["train.lr", "number"]),
        (["train.amp=fp8"], ["train.amp", "fp16"]),
        (["train.schedule=linear"], ["train.schedule", "cosine"]),
        (["train.milestones=[120, 80]"], ["milestones"]),
        (["prune.scope=local"], ["scope", "layerwise"]),
        (["seed=-1"], ["seed"]),
        (["epochs"], ["key=value"]),
        (["prune.options.nosuch=1"], ["nosuch", "classifier"]),
        (["model.name=resnet999"], ["unknown model 'resnet999'", "resnet20"]),
        (["data.name=mnist"], ["unknown dataset 'mnist'", "fashion-mnist"]),
        (["prune.criterion=nosuch"], ["unknown criterion 'nosuch'", "px"]),
        (["prune.sparsity=1.0"], ["impossible sparsity"]),
        (["prune.sparsity=-0.1"], ["impossible sparsity"]),
    ],
)
def test_bad_settings_are_one_line_user_errors(sets, words):
    with pytest.raises(UserError) as info:
        resolve_config("demo", sets)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_recipe_names_the_choices(tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'nope'.*demo"):
        resolve_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3}\noptimizer: {lr: 1}\n")
    with pytest.raises(UserError, match="unknown section 'optimizer'"):
        resolve_config(str(bad))
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        resolve_config(str(bad))


def test_recipe_file_path_and_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("comment: x\ntrain:\n  epochs: 1\n  amp: off\nseed: 5\n")
    c = resolve_config(str(path))
    assert (c.recipe, c.train.epochs, c.train.amp, c.seed) == ("mine", 1, "off", 5)
    assert c.model.name == "resnet20"  # defaults fill the rest


def test_density_flag_and_dense_rules():
    assert resolve_config("demo", flags=Flags(density=0.018)).prune.sparsity == 0.982
    with pytest.raises(UserError, match="not both"):
        resolve_config("demo", flags=Flags(sparsity=0.5, density=0.5))
    with pytest.raises(UserError, match="density"):
        resolve_config("demo", flags=Flags(density=0.0))
    c = resolve_config("demo", flags=Flags(criterion="dense"))  # the recipe's 0.982 gives way
    assert (c.prune.criterion, c.prune.sparsity, c.prune.rounds) == (DENSE, 0.0, None)
    with pytest.raises(UserError, match="dense"):
        resolve_config("demo", flags=Flags(criterion="dense", sparsity=0.5))
    c = resolve_config("demo", flags=Flags(sparsity=0.0))
    assert c.prune.criterion == DENSE and run_label(c) == "dense"


def test_criterion_spec_parsing_and_labels():
    spec = parse_criterion("px[classifier=signed,bn=train]+shuffled")
    assert spec.name == "px" and spec.options == {"classifier": "signed", "bn": "train"}
    assert spec.shuffle and not spec.reinit
    assert parse_criterion("px--bn=train--classifier=signed").options == spec.options
    assert parse_criterion("px+reinit+shuffled").reinit
    assert criterion_label("px", {"classifier": "signed", "bn": "train"}) == \
        "px--bn=train--classifier=signed"
    assert criterion_label("px", {}, shuffle=True, reinit=True) == "px+shuffled+reinit"
    assert split_criteria("px[bn=train,classifier=signed],dense") == \
        ["px[bn=train,classifier=signed]", "dense"]
    for bad in ("", "px[bn=train", "px[bn]", "p x"):
        with pytest.raises(UserError):
            split_criteria(bad) if bad == "px[bn=train" else parse_criterion(bad)


def test_criterion_flag_drops_defaults_and_names_the_folder():
    spec = "px[classifier=signed,bn=train,dtype=float32]"
    c = resolve_config("demo", flags=Flags(criterion=spec))
    assert c.prune.options == {"bn": "train", "classifier": "signed"}  # dtype is its default
    assert default_out(c).as_posix() == "runs/demo/px--bn=train--classifier=signed/0.982/seed0"
    c = resolve_config("demo", ["train.reinit=true"], Flags(criterion="px+shuffled", seed=2,
                                                            density=0.64))
    assert default_out(c).as_posix() == "runs/demo/px+shuffled+reinit/0.36/seed2"
    with pytest.raises(UserError, match="no option 'nosuch'.*classifier"):
        resolve_config("demo", flags=Flags(criterion="px[nosuch=1]"))
    with pytest.raises(UserError, match="unknown criterion 'nosuch'"):
        resolve_config("demo", flags=Flags(criterion="nosuch"))


@pytest.mark.parametrize("value, text", [(0.982, "0.982"), (0.36, "0.36"), (0.5904, "0.5904"),
                                         (0.0, "0"), (0.5, "0.5"), (0.9313, "0.9313")])
def test_sparsity_labels(value, text):
    assert sparsity_label(value) == text


def test_config_yaml_round_trip():
    c = resolve_config("cifar100_vgg16", ["prune.options.classifier=signed"], Flags(seed=2))
    again = config_from_dict(yaml.safe_load(c.to_yaml()))
    assert again == c
    assert list(c.to_dict()) == ["recipe", "model", "data", "prune", "train", "seed"]
    assert "recipe" not in c.identity()
    assert yaml.safe_load(c.to_yaml())["train"]["amp"] == "auto"
    off = dataclasses.replace(c, train=dataclasses.replace(c.train, amp="off"))
    assert config_from_dict(yaml.safe_load(off.to_yaml())).train.amp == "off"


def test_read_recipe_keeps_a_config_files_recipe_name(tmp_path):
    c = resolve_config("demo", ["train.epochs=1"])
    path = tmp_path / "config.yaml"
    path.write_text(c.to_yaml())
    name, data = read_recipe(str(path))
    assert name == "demo" and data["train"]["epochs"] == 1


def test_list_criteria_is_the_registry():
    assert "px" in pxprune.list_criteria()
