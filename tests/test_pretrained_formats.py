"""Pre-trained checkpoints in every real layout (docs/design/PRETRAINED.md): tiny files written here.

torchvision (flat, legacy without BN counters), MoCo v2 (``module.encoder_q.`` + projection head +
key encoder + queue), DINO (backbone only) and CLIP (a TorchScript archive with fp16 tensors, and a
plain state dict) load strictly; layouts are detected or forced; misfits are one error line; weight
names go through torchvision's cache; config.yaml records what was loaded; inputs take the weights'
statistics unless ``data.normalize: dataset``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import assert_user_error, cli
from pxprune.models import create_model, list_formats, load_pretrained
from pxprune.models.pretrained import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    weights_statistics,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 7  # classes of the target task: every checkpoint's head has another shape or none


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def backbone(seed: int = 0) -> dict[str, torch.Tensor]:
    """A 10-class ResNet-20's state dict: torchvision-style names (conv1, layer1.0..., fc)."""
    return create_model("resnet20", num_classes=10, seed=seed).state_dict()


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor], *, skip: str = "fc.") -> None:
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith(skip):
            assert torch.equal(own[key], value.float() if value.is_floating_point() else value), key


# ----------------------------------------------------------------------------- file writers
def write_torchvision(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def write_mocov2(path: Path, state: dict) -> Path:
    """MoCo v2's release: the DDP query encoder with its MLP projection head, plus (as in a
    training checkpoint) the key encoder and the queue."""
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    width = state["fc.weight"].shape[1]
    sd = {f"module.encoder_q.{k}": v for k, v in body.items()}
    sd.update({
        "module.encoder_q.fc.0.weight": torch.randn(width, width),
        "module.encoder_q.fc.0.bias": torch.randn(width),
        "module.encoder_q.fc.2.weight": torch.randn(128, width),
        "module.encoder_q.fc.2.bias": torch.randn(128),
        **{f"module.encoder_k.{k}": v.clone() for k, v in body.items()},
        "module.queue": torch.randn(128, 16),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    })
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd}, path)
    return path


def write_dino(path: Path, state: dict) -> Path:
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    return path


class _TextTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


TINY_CLIP = dict(layers=(1, 1, 1, 1), heads=2, output_dim=16, image_size=32, width=8)


class _TinyCLIP(nn.Module):
    """OpenAI's CLIP layout, reduced: ``visual`` (a ModifiedResNet), a text tower, scalars."""

    def __init__(self) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        torch.manual_seed(3)
        self.visual = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=32,
                                     width=8)
        self.transformer = _TextTower()
        self.token_embedding = nn.Embedding(10, 8)
        self.text_projection = nn.Parameter(torch.randn(8, 16))
        self.logit_scale = nn.Parameter(torch.ones([]))
        for module in self.modules():  # CLIP's convert_weights: conv/linear in fp16, BN fp32
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.data = module.weight.data.half()
                if module.bias is not None:
                    module.bias.data = module.bias.data.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(TorchScript RN50.pt-like archive, plain state dict, the tensors they hold)."""
    pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("clip")
    model = _TinyCLIP()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; CLIP's files are not
        torch.jit.script(model).save(str(root / "RN50.pt"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, root / "clip_state.pt")
    return root / "RN50.pt", root / "clip_state.pt", state


def tiny_clip_classifier(num_classes: int = K) -> nn.Module:
    pytest.importorskip("open_clip")
    from pxprune.models.clip import CLIPClassifier

    return CLIPClassifier(num_classes, **TINY_CLIP)


WRITERS = {"torchvision": write_torchvision, "mocov2": write_mocov2, "dino": write_dino}


# ----------------------------------------------------------------------------- each format loads
@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_resnet_layout_loads_strictly_and_is_detected(layout, tmp_path):
    state = backbone()
    path = WRITERS[layout](tmp_path / f"{layout}.pth", state)
    fresh = create_model("resnet20", num_classes=K, seed=1)
    model = create_model("resnet20", num_classes=K, seed=1, pretrained=path)
    assert_loaded(model, state)
    assert torch.equal(model.fc.weight, fresh.fc.weight)  # the new head keeps its init
    info = model.pretrained_weights
    assert (info.format, info.how, info.head_new) == (layout, "detected", True)
    assert info.sha256 == sha16(path) and info.file == str(path.resolve())
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_a_checkpoint_of_the_same_head_keeps_it(tmp_path):
    state = backbone()
    model = create_model("resnet20", num_classes=10, seed=1,
                         pretrained=write_torchvision(tmp_path / "tv.pt", state))
    assert_loaded(model, state, skip="-")
    assert not model.pretrained_weights.head_new


def test_a_legacy_file_without_bn_counters_loads_with_counters_at_zero(tmp_path):
    state = {k: v for k, v in backbone().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet-legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the pre-zip format
    model = create_model("resnet20", num_classes=K, seed=1, pretrained=path)
    assert_loaded(model, state)
    counters = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 0 for c in counters)


def test_mocov2_drops_the_projection_head_and_ignores_the_key_encoder(tmp_path):
    state = backbone()
    path = write_mocov2(tmp_path / "moco_v2_800ep_pretrain.pth.tar", state)
    model = create_model("resnet20", num_classes=K, seed=1, pretrained=f"mocov2:{path}")
    assert_loaded(model, state)
    assert model.pretrained_weights.how == "prefix" and model.pretrained_weights.head_new


@pytest.mark.parametrize("which", ["torchscript", "state dict"])
def test_clip_loads_the_image_tower_in_fp32_with_a_new_head(which, clip_files):
    script, plain, state = clip_files
    path = script if which == "torchscript" else plain
    model = tiny_clip_classifier()
    head = model.head.weight.clone()
    info = load_pretrained(model, path, model_name="clip_rn50")
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    assert any(v.dtype == torch.float16 for v in visual.values())  # the file really is fp16
    assert_loaded(model, visual, skip="-")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values()
               if v.is_floating_point())
    assert torch.equal(model.head.weight, head)
    assert (info.format, info.how, info.head_new) == ("clip", "detected", True)
    assert (info.mean, info.std) == (CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, K)


def test_clip_is_never_grafted_onto_a_torchvision_resnet(clip_files):
    script, plain, _ = clip_files
    for path in (script, f"clip:{plain}"):
        with pytest.raises(ValueError, match="clip_rn50") as err:
            create_model("resnet18", num_classes=K, pretrained=path)
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- detection, prefixes
def test_detection_and_statistics_by_layout(tmp_path, clip_files):
    state = backbone()
    for layout, write in WRITERS.items():
        mean, std, found = weights_statistics(write(tmp_path / f"{layout}.pt", state))
        assert (found, mean, std) == (layout, IMAGENET_MEAN, IMAGENET_STD)
    for path in clip_files[:2]:
        assert weights_statistics(path) == (CLIP_MEAN, CLIP_STD, "clip")
    assert weights_statistics("IMAGENET1K_V2")[2] == "torchvision"
    assert weights_statistics(f"clip:{tmp_path / 'not-read.pt'}")[2] == "clip"  # the prefix rules
    assert list_formats() == ["clip", "dino", "mocov2", "torchvision"]


def test_a_prefix_forces_the_layout(tmp_path, clip_files):
    state = backbone()
    dino = write_dino(tmp_path / "dino.pt", state)
    model = create_model("resnet20", num_classes=K, seed=1, pretrained=f"torchvision:{dino}")
    assert_loaded(model, state)
    assert (model.pretrained_weights.format, model.pretrained_weights.how) == ("torchvision",
                                                                              "prefix")
    moco = write_mocov2(tmp_path / "moco.pt", state)
    with pytest.raises(ValueError, match=r"dino layout, prefix.*unexpected.*encoder_k\."):
        create_model("resnet20", num_classes=K, pretrained=f"dino:{moco}")
    with pytest.raises(ValueError, match="TorchScript archive, which only the clip layout reads"):
        create_model("resnet20", num_classes=K, pretrained=f"torchvision:{clip_files[0]}")


# ----------------------------------------------------------------------------- strictness
def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def _named_keys(text: str) -> int:
    return len(re.findall(r"\b(?:conv1|layer\d|bn\d?|extra|fc)[\w.]*\.(?:weight|bias|running_\w+)"
                          r"|\bextra\.\w+", text))


def test_missing_unexpected_and_mismatched_keys_are_one_line_naming_them(tmp_path):
    state = backbone()
    missing = dict(state)
    del missing["layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing \(1\): layer2\.0\.conv1\.weight") as err:
        create_model("resnet20", num_classes=K, pretrained=write_torchvision(tmp_path / "m.pt",
                                                                             missing))
    _one_line(err)
    extra = {**state, **{f"extra.t{i}": torch.zeros(1) for i in range(8)}}
    with pytest.raises(ValueError, match=r"unexpected \(8\): extra\.t\d.* \.\.\.") as err:
        create_model("resnet20", num_classes=K, pretrained=write_torchvision(tmp_path / "u.pt",
                                                                             extra))
    assert _named_keys(_one_line(err)) == 5
    wide = {**state, "conv1.weight": torch.zeros(32, 3, 3, 3)}
    with pytest.raises(ValueError, match=r"shape mismatch \(1\): conv1\.weight \(32, 3, 3, 3\)"
                       r" vs \(16, 3, 3, 3\)") as err:
        create_model("resnet20", num_classes=K, pretrained=write_torchvision(tmp_path / "s.pt",
                                                                             wide))
    _one_line(err)
    everything = {**extra, "conv1.weight": torch.zeros(32, 3, 3, 3)}
    del everything["layer2.0.conv1.weight"]
    with pytest.raises(ValueError) as err:
        create_model("resnet20", num_classes=K, pretrained=write_torchvision(tmp_path / "a.pt",
                                                                             everything))
    text = _one_line(err)
    assert "missing (1)" in text and "unexpected (8)" in text and "shape mismatch (1)" in text
    assert _named_keys(text) <= 5


def test_a_partial_head_is_not_a_new_head(tmp_path):
    state = backbone()
    del state["fc.bias"]
    with pytest.raises(ValueError, match=r"missing \(1\): fc\.bias"):
        create_model("resnet20", num_classes=10, pretrained=write_torchvision(tmp_path / "h.pt",
                                                                              state))


def test_unreadable_files_name_the_fix(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file.*torchvision:FILE"):
        create_model("resnet20", pretrained=bad)
    with pytest.raises(ValueError, match="does not exist"):
        create_model("resnet20", pretrained=f"dino:{tmp_path / 'none.pt'}")
    with pytest.raises(ValueError, match="names no file"):
        create_model("resnet20", pretrained="mocov2:")


# ----------------------------------------------------------------------------- torchvision names
@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME: torchvision's weights API looks in <TORCH_HOME>/hub/checkpoints/."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path / "torch_home"


def test_weight_names_resolve_through_torchvisions_cache_offline(torch_home):
    import torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = create_model("resnet18", num_classes=1000, seed=0).state_dict()
    torch.save(state, cached)
    for name in ("imagenet", "IMAGENET1K_V1", "DEFAULT"):
        model = create_model("resnet18", num_classes=K, seed=1, pretrained=name)
        assert_loaded(model, state)
        info = model.pretrained_weights
        assert (info.spec, info.format, info.how, info.head_new) == (name, "torchvision",
                                                                     "weights name", True)
        assert info.file == str(cached) and info.sha256 == sha16(cached)
    with pytest.raises(ValueError, match="no IMAGENET1K_V2 weights for 'resnet18'.*IMAGENET1K_V1"):
        create_model("resnet18", num_classes=K, pretrained="IMAGENET1K_V2")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("resnet20", pretrained="IMAGENET1K_V1")


def test_offline_without_the_file_names_the_file_form(torch_home, monkeypatch):
    from urllib.error import URLError

    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"could not download.*resnet18-f37072fd\.pth.*"
                                         r"torchvision:FILE") as err:
        create_model("resnet18", num_classes=K, pretrained="imagenet")
    _one_line(err)


# ----------------------------------------------------------------------------- runs and the CLI
def tiny_run(root: Path, *more: str) -> list[str]:
    return ["--set", f"data.root={root}", "data.train_subset=null", "data.per_class=1",
            "train.batch_size=8", *more, "--criterion", "magnitude", "--quiet"]


def test_cli_prune_records_the_weights_and_theta0_is_them(fmnist, tmp_path, capsys):
    state = backbone()
    dino = write_dino(tmp_path / "dino_resnet50_pretrain.pth", state)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "prune", *tiny_run(fmnist), "--pretrained", dino, "--out", out)
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["pretrained"] == str(dino)
    assert "normalize" not in config["data"] and "image_size" not in config["data"]
    loaded = config["provenance"]["pretrained"]
    assert loaded["format"] == "dino" and loaded["how"] == "detected"
    assert loaded["sha256"] == sha16(dino) and loaded["head_new"] is True
    inputs = config["provenance"]["inputs"]
    assert inputs["normalization"] == "dino" and inputs["mean"] == list(IMAGENET_MEAN)
    init = torch.load(out / "init.pt", weights_only=True)["state_dict"]
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(init[key], value), key
    assert init["fc.weight"].shape[0] == 10


def test_cli_exit_2_on_a_bad_or_misfitting_file(fmnist, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = cli(capsys, "prune", *tiny_run(fmnist), "--pretrained", bad,
                       "--out", tmp_path / "a")
    assert_user_error(code, err, "not a readable torch file")
    wrong = write_torchvision(tmp_path / "resnet32.pt",
                              create_model("resnet32", seed=0).state_dict())
    code, _, err = cli(capsys, "prune", *tiny_run(fmnist), "--pretrained", f"torchvision:{wrong}",
                       "--out", tmp_path / "b")
    assert_user_error(code, err, "unexpected", "resnet20")
    code, _, err = cli(capsys, "prune", *tiny_run(fmnist), "--pretrained", "dino:missing.pt",
                       "--out", tmp_path / "c")
    assert_user_error(code, err, "does not exist")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- normalisation
def _config(*sets: str):
    from pxprune.experiment import resolve_config

    return resolve_config("demo", list(sets))


def test_inputs_take_the_weights_statistics_unless_normalize_dataset(fmnist, tmp_path, clip_files):
    from pxprune.data import get_spec
    from pxprune.experiment.data import input_spec, load_data

    base = get_spec("fashion-mnist")
    dino = write_dino(tmp_path / "dino.pt", backbone())
    assert input_spec(_config()) == (base, "dataset")
    assert input_spec(_config(f"model.pretrained={dino}", "data.normalize=dataset")) == (base,
                                                                                        "dataset")
    spec, whose = input_spec(_config(f"model.pretrained={dino}"))
    assert (spec.mean, spec.std, whose) == (IMAGENET_MEAN, IMAGENET_STD, "dino")
    spec, whose = input_spec(_config(f"model.pretrained=clip:{clip_files[1]}"))
    assert (spec.mean, spec.std, whose) == (CLIP_MEAN, CLIP_STD, "clip")

    sets = [f"data.root={fmnist}", "data.train_subset=null", "data.per_class=1"]
    plain = load_data(_config(*sets), train=False, split=False).test
    adapted = load_data(_config(*sets, f"model.pretrained={dino}"), train=False, split=False)
    x, y = plain[3]
    z, y2 = adapted.test[3]
    mean, std = torch.tensor(base.mean).view(-1, 1, 1), torch.tensor(base.std).view(-1, 1, 1)
    want = (x * std + mean - torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(-1, 1, 1)
    assert y == y2 and torch.allclose(z, want, atol=1e-5)
    assert torch.equal(adapted.test.targets, plain.targets)

    sized = load_data(_config(*sets, "data.image_size=64", "data.normalize=dataset"))
    assert sized.spec.input_size == (3, 64, 64) and sized.split[0][0].shape == (3, 64, 64)
    assert sized.train[0][0].shape == (3, 64, 64) and len(sized.split) == 10


def test_new_data_keys_are_written_only_when_set():
    from pxprune.experiment.config import config_from_dict

    default = _config()
    assert "normalize" not in default.to_yaml() and "image_size" not in default.to_yaml()
    assert default.data.normalize == "weights" and default.data.image_size is None
    custom = _config("data.normalize=dataset", "data.image_size=224")
    data = yaml.safe_load(custom.to_yaml())["data"]
    assert (data["normalize"], data["image_size"]) == ("dataset", 224)
    assert config_from_dict(yaml.safe_load(custom.to_yaml())) == custom
    from pxprune.experiment import UserError

    with pytest.raises(UserError, match="weights, dataset"):
        _config("data.normalize=imagenet")
    with pytest.raises(UserError, match="does not exist"):
        _config("model.pretrained=clip:/no/such/RN50.pt")
