"""DeepLabV3+ (pxprune.models.deeplab): structure, names, counts, seeds, pre-trained backbones.

Runs at 64 px. Pre-trained ResNet-50 backbones come from files written here in the real layouts
(a torchvision state dict, MoCo v2's ``.pth.tar``, DINO's backbone-only dict; random tensors);
MobileNetV2 uses torchvision's real IMAGENET1K_V1 file when it is in torch's hub cache (offline).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import randomize_bn
from pxprune.models import create_model, list_models, model_info
from pxprune.models.deeplab import (
    DEEPLAB_INPUT_SIZE,
    DeepLabHeadV3Plus,
    DeepLabV3Plus,
)
from pxprune.models.factory import INITIALISED_LINEAR
from pxprune.models.offline import MOBILENET_V2_FILE
from pxprune.models.pretrained import (
    FORMATS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Checkpoint,
    Source,
    attach_backbone,
)
from pxprune.selection import prunable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

K = 21  # PASCAL VOC
SIZE = 64
RESNET = "deeplabv3plus_resnet50"
MOBILENET = "deeplabv3plus_mobilenet_v2"
NAMES = {  # name -> (backbone, output stride)
    RESNET: ("resnet50", 8),
    "deeplabv3plus_resnet50_os16": ("resnet50", 16),
    MOBILENET: ("mobilenet_v2", 16),
    "deeplabv3plus_mobilenet_v2_os8": ("mobilenet_v2", 8),
}
RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


@pytest.fixture(scope="module")
def seeded() -> Callable[[str], nn.Module]:
    """``create_model(name, num_classes=K, seed=0)``, built once per module; never trained or
    changed by a test (tests that train build their own)."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = create_model(name, num_classes=K, seed=0).eval()
        return cache[name]

    return get


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def meta_classifier(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, **kw)


def backbone_keys(name: str, state: dict) -> dict[str, str]:
    """Our backbone key -> torchvision classifier key, for the classifier's ``state``."""
    if name == "resnet50":
        return {k: k for k in state if not k.startswith("fc.")}
    return {k.removeprefix("features."): k for k in state
            if k.startswith("features.") and int(k.split(".")[1]) <= 17}


# ----------------------------------------------------------------------------- registry
def test_registered_names_and_defaults():
    assert {n for n in list_models() if n.startswith("deeplab")} == set(NAMES)
    for name, (backbone, _) in NAMES.items():
        info = model_info(name)
        assert info.tasks == ("segmentation",) and info.family == "deeplab"
        assert info.input_size == DEEPLAB_INPUT_SIZE == (3, 513, 513)
        assert info.backbone == backbone
    assert model_info("resnet50").backbone is None
    with pytest.raises(ValueError, match="3 input channels"):
        create_model(MOBILENET, num_classes=K, input_size=(1, SIZE, SIZE))


@pytest.mark.parametrize("name", sorted(NAMES))
def test_forward_backward_reaches_backbone_and_head(name):
    model = create_model(name, num_classes=K, seed=0).train()
    assert isinstance(model, DeepLabV3Plus) and model.output_stride == NAMES[name][1]
    out = model(images())
    assert isinstance(out, torch.Tensor) and out.shape == (2, K, SIZE, SIZE)
    out.square().mean().backward()
    first = next(p for n, p in model.named_parameters() if n.startswith("backbone."))
    deepest = [p for n, p in model.named_parameters()
               if n.startswith(("backbone.layer4.", "backbone.17.")) and p.dim() == 4][-1]
    for weight in (first, deepest, model.classifier.project[0].weight,
                   model.classifier.aspp.convs[4][1].weight, model.classifier.classifier[3].weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_odd_sizes_come_back_at_the_input_size_and_one_image_needs_eval(seeded):
    model = seeded(MOBILENET)
    with torch.no_grad():
        assert model(images(1, 65)).shape == (1, K, 65, 65)  # 513 px crops are odd too
    fresh = create_model(MOBILENET, num_classes=K, seed=0).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # image pooling's BN
        fresh(images(1))


# ----------------------------------------------------------------------------- structure
def _dilations(module: nn.Module, prefix: str) -> dict[str, tuple]:
    return {n: (m.stride, m.dilation, m.padding) for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and n.startswith(prefix)}


@pytest.mark.parametrize("stride", [8, 16])
def test_resnet50_structure(stride, seeded):
    name = RESNET if stride == 8 else "deeplabv3plus_resnet50_os16"
    model = seeded(name)
    with torch.no_grad():
        features = model.backbone(images())
    assert list(features) == ["low_level", "out"]
    assert features["low_level"].shape == (2, 256, 16, 16)
    assert features["out"].shape == (2, 2048, SIZE // stride, SIZE // stride)

    replace = [False, True, True] if stride == 8 else [False, False, True]
    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace)
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        assert _dilations(model.backbone, layer) == _dilations(reference, layer)
    conv2 = model.backbone.layer4[1].conv2
    assert conv2.dilation == ((4, 4) if stride == 8 else (2, 2))
    assert model.backbone.layer3[1].conv2.dilation == ((2, 2) if stride == 8 else (1, 1))
    assert "avgpool" not in dict(model.backbone.named_children())
    assert "fc" not in dict(model.backbone.named_children())

    head = model.classifier
    assert isinstance(head, DeepLabHeadV3Plus)
    aspp = head.aspp
    assert aspp.convs[0][0].kernel_size == (1, 1) and aspp.convs[0][0].in_channels == 2048
    assert [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == list(RATES[stride])
    assert [aspp.convs[i][0].padding[0] for i in (1, 2, 3)] == list(RATES[stride])
    assert isinstance(aspp.convs[4][0], nn.AdaptiveAvgPool2d)
    assert aspp.convs[4][1].weight.shape == (256, 2048, 1, 1)
    assert aspp.project[0].weight.shape == (256, 1280, 1, 1)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1]
    assert head.project[0].weight.shape == (48, 256, 1, 1)
    assert head.classifier[0].weight.shape == (256, 304, 3, 3)
    final = head.classifier[3]
    assert final.weight.shape == (K, 256, 1, 1) and final.bias is not None
    biased = [n for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biased == ["classifier.classifier.3"]
    conv_bn = [n for n, m in head.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(conv_bn) == 8  # project, 5 ASPP branches, ASPP projection, decoder conv


@pytest.mark.parametrize("stride", [8, 16])
def test_mobilenet_v2_structure(stride, seeded):
    name = MOBILENET if stride == 16 else "deeplabv3plus_mobilenet_v2_os8"
    model = seeded(name)
    with torch.no_grad():
        features = model.backbone(images())
    assert features["low_level"].shape == (2, 24, 16, 16)
    assert features["out"].shape == (2, 320, SIZE // stride, SIZE // stride)
    assert "18" not in dict(model.backbone.named_children())  # the 1280-channel conv is dropped
    # VainF's output_stride: the first block of a dilated stage keeps the previous dilation
    want = ({7: (1, 1), 8: (1, 2), 13: (1, 2), 14: (1, 2), 15: (1, 4), 17: (1, 4)} if stride == 8
            else {7: (2, 1), 8: (1, 1), 13: (1, 1), 14: (1, 1), 15: (1, 2), 17: (1, 2)})
    for index, (conv_stride, dilation) in want.items():
        depthwise = [m for m in model.backbone[str(index)].modules()
                     if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels
        conv = depthwise[0]
        assert (conv.stride, conv.dilation, conv.padding) == (
            (conv_stride,) * 2, (dilation,) * 2, (dilation,) * 2), index
    assert [model.classifier.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == list(RATES[stride])
    assert model.classifier.project[0].weight.shape == (48, 24, 1, 1)
    assert model.classifier.aspp.convs[0][0].in_channels == 320


@pytest.mark.parametrize("name", sorted(NAMES))
def test_backbone_names_and_shapes_are_torchvisions(name, seeded):
    backbone, _ = NAMES[name]
    reference = meta_classifier(backbone).state_dict()
    own = seeded(name).state_dict()
    ours = {k.removeprefix("backbone."): v for k, v in own.items() if k.startswith("backbone.")}
    mapping = backbone_keys(backbone, reference)
    assert ours.keys() == mapping.keys()
    for key, theirs in mapping.items():
        assert ours[key].shape == reference[theirs].shape, key
    if backbone == "resnet50":
        assert set(ours) == {k for k in reference if not k.startswith("fc.")}
    assert all(k.startswith(("backbone.", "classifier.")) for k in own)


def test_parameter_count_of_deeplabv3plus_resnet50(seeded):
    # prunable conv weights, 21 classes; the reference: backbone 23,454,912 + head 16,250,112
    # head: project 256*48 + ASPP 2048*256 (1x1) + 3 * 2048*256*9 + pooling 2048*256
    #       + projection 1280*256 + decoder 304*256*9 + classifier 256*21
    for name in (RESNET, "deeplabv3plus_resnet50_os16"):
        weights = prunable_parameters(seeded(name))
        backbone = sum(p.numel() for n, p in weights.items() if n.startswith("backbone."))
        head = sum(p.numel() for n, p in weights.items() if n.startswith("classifier."))
        assert (backbone, head, backbone + head) == (23_454_912, 16_250_112, 39_705_024)
        assert head == (256 * 48 + 2048 * 256 + 3 * 2048 * 256 * 9 + 2048 * 256 + 1280 * 256
                        + 304 * 256 * 9 + 256 * K)
    weights = prunable_parameters(seeded(MOBILENET))
    features = meta_classifier("mobilenet_v2").features[:18]
    convs = sum(m.weight.numel() for m in features.modules() if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for n, p in weights.items() if n.startswith("backbone.")) == convs
    assert sum(p.numel() for n, p in weights.items() if n.startswith("classifier.")) == (
        24 * 48 + 320 * 256 + 3 * 320 * 256 * 9 + 320 * 256 + 1280 * 256 + 304 * 256 * 9 + 256 * K)


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v2"])
def test_every_module_is_initialised(backbone):
    # built on the meta device and then kaiming_init_: every module owning tensors must be one
    # kaiming_init_ covers
    with torch.device("meta"):
        model = _meta_deeplab(backbone)
    for module_name, module in model.named_modules():
        owns = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if owns:
            covered = isinstance(module, INITIALISED_LINEAR + (nn.BatchNorm2d,))
            assert covered, f"{module_name} ({type(module).__name__}) is not initialised"


def _meta_deeplab(backbone: str) -> nn.Module:
    from pxprune.models.deeplab import ASPP_RATES, BACKBONES

    features, low, high = BACKBONES[backbone](16)
    return DeepLabV3Plus(features, DeepLabHeadV3Plus(high, low, K, ASPP_RATES[16]),
                         output_stride=16)


def test_norm_layers_start_fresh_and_head_is_kaiming(seeded):
    model = seeded(RESNET)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
            assert module.num_batches_tracked.item() == 0
    final = model.classifier.classifier[3]
    assert torch.equal(final.bias, torch.zeros(K))
    decoder = model.classifier.classifier[0].weight  # fan_in 304*9, std sqrt(2/fan_in)
    assert abs(decoder.std().item() / (2 / (304 * 9)) ** 0.5 - 1) < 0.02
    assert abs(decoder.mean().item()) < 1e-3


@pytest.mark.parametrize("name", [MOBILENET, RESNET])
def test_seed_gives_identical_weights_and_leaves_the_rng(name, seeded):
    reference = seeded(name).state_dict()
    before = torch.get_rng_state()
    again = create_model(name, num_classes=K, seed=0).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    other = create_model(name, num_classes=K, seed=1).state_dict()
    assert not torch.equal(other["classifier.classifier.0.weight"],
                           reference["classifier.classifier.0.weight"])
    assert not torch.equal(other["backbone.0.0.weight" if "mobilenet" in name else
                                 "backbone.conv1.weight"],
                           reference["backbone.0.0.weight" if "mobilenet" in name else
                                     "backbone.conv1.weight"])


# ----------------------------------------------------------------------------- pre-trained files
def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-50 classifier's state dict with random weights, BN statistics and
    counters (so that nothing equals a fresh build by chance)."""
    torch.manual_seed(5)
    model = randomize_bn(torchvision.models.resnet50(weights=None), seed=6)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            value.fill_(5)
    return state


def write_torchvision(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def write_mocov2(path: Path, state: dict) -> Path:
    """MoCo v2's release layout: the DDP query encoder with its MLP projection head (fc.0, fc.2),
    plus part of the key encoder and the queue, as in a training checkpoint."""
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    sd = {f"module.encoder_q.{k}": v for k, v in body.items()}
    sd.update({
        "module.encoder_q.fc.0.weight": torch.randn(2048, 2048),
        "module.encoder_q.fc.0.bias": torch.randn(2048),
        "module.encoder_q.fc.2.weight": torch.randn(128, 2048),
        "module.encoder_q.fc.2.bias": torch.randn(128),
        "module.encoder_k.conv1.weight": body["conv1.weight"].clone(),
        "module.encoder_k.bn1.weight": body["bn1.weight"].clone(),
        "module.queue": torch.randn(128, 16),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    })
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd}, path)
    return path


def write_dino(path: Path, state: dict) -> Path:
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    return path


WRITERS = {"torchvision": write_torchvision, "mocov2": write_mocov2, "dino": write_dino}
FILE_NAMES = {"torchvision": "resnet50.pth", "mocov2": "moco_v2_200ep_pretrain.pth.tar",
              "dino": "dino_resnet50_pretrain.pth"}


@pytest.fixture(scope="module")
def resnet50_files(tmp_path_factory, resnet50_state) -> dict[str, Path]:
    """One file per layout, written once for the module (about 100 MB each)."""
    root = tmp_path_factory.mktemp("resnet50")
    return {layout: write(root / FILE_NAMES[layout], resnet50_state)
            for layout, write in WRITERS.items()}


def assert_backbone_is(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    assert own.keys() == {k for k in state if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def assert_head_untouched(model: nn.Module, fresh: nn.Module) -> None:
    head = {k: v for k, v in fresh.state_dict().items() if k.startswith("classifier.")}
    own = model.state_dict()
    assert head and all(torch.equal(own[k], v) for k, v in head.items())


@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_layout_loads_the_backbone_strictly(layout, resnet50_files, resnet50_state,
                                                  seeded):
    path = resnet50_files[layout]
    model = create_model(RESNET, num_classes=K, seed=0, pretrained=path)
    assert_backbone_is(model, resnet50_state)
    assert_head_untouched(model, seeded(RESNET))
    info = model.pretrained_weights
    assert (info.format, info.how, info.head_new) == (layout, "detected", True)
    assert info.sha256 == sha16(path) and info.file == str(path.resolve())
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(images())).all()


def test_a_prefix_forces_the_layout(resnet50_files, resnet50_state):
    model = create_model("deeplabv3plus_resnet50_os16", num_classes=K, seed=0,
                         pretrained=f"mocov2:{resnet50_files['mocov2']}")
    assert_backbone_is(model, resnet50_state)
    assert (model.pretrained_weights.format, model.pretrained_weights.how) == ("mocov2", "prefix")
    with pytest.raises(ValueError, match=r"dino layout, prefix.*unexpected \(\d+\): encoder_k\."):
        create_model(RESNET, num_classes=K, pretrained=f"dino:{resnet50_files['mocov2']}")


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME: torchvision's weights API looks in <TORCH_HOME>/hub/checkpoints/."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path / "torch_home"


def test_a_weight_name_is_the_backbone_classifiers(torch_home, resnet50_files, resnet50_state):
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cached = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    os.link(resnet50_files["torchvision"], cached)  # torchvision reads a cached file unhashed
    model = create_model(RESNET, num_classes=K, seed=0, pretrained="IMAGENET1K_V1")
    assert_backbone_is(model, resnet50_state)
    info = model.pretrained_weights
    assert (info.format, info.how, info.file, info.head_new) == (
        "torchvision", "weights name", str(cached), True)
    with pytest.raises(ValueError, match="no IMAGENET1K_V9 weights for 'resnet50'"):
        create_model(RESNET, num_classes=K, pretrained="IMAGENET1K_V9")


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_missing_or_misshapen_backbone_tensor_is_named(tmp_path, resnet50_state):
    missing = dict(resnet50_state)
    del missing["layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"resnet50 backbone of 'deeplabv3plus_resnet50': "
                                         r"missing \(1\): layer2\.0\.conv1\.weight;") as err:
        create_model(RESNET, num_classes=K,
                     pretrained=write_torchvision(tmp_path / "missing.pth", missing))
    _one_line(err)
    (tmp_path / "missing.pth").unlink()
    wide = {**resnet50_state, "conv1.weight": torch.zeros(32, 3, 7, 7)}
    with pytest.raises(ValueError, match=r"shape mismatch \(1\): conv1\.weight \(32, 3, 7, 7\) "
                                         r"vs \(64, 3, 7, 7\)") as err:
        create_model(RESNET, num_classes=K, pretrained=write_dino(tmp_path / "wide.pth", wide))
    assert "missing (" not in _one_line(err) and "unexpected (" not in str(err.value)


def _checkpoint(state: dict[str, torch.Tensor], layout: str = "torchvision") -> Checkpoint:
    fmt = FORMATS.get(layout)
    return Checkpoint(Source(spec="in memory", format=layout, how="given"), fmt,
                      fmt.to_model(dict(state)), None, None)


def test_unexpected_keys_are_named_and_the_classifiers_own_are_dropped(resnet50_state, seeded):
    model = create_model("deeplabv3plus_resnet50_os16", num_classes=K, seed=0)
    extra = {**resnet50_state, **{f"extra.t{i}": torch.zeros(1) for i in range(7)}}
    with pytest.raises(ValueError, match=r"unexpected \(7\): extra\.t0, .* \.\.\.;") as err:
        attach_backbone(model, _checkpoint(extra), model_name="m", backbone="resnet50")
    assert len(re.findall(r"extra\.t\d", _one_line(err))) == 5
    # a checkpoint of another head width (fc of a 10-class ResNet-50) loads: fc is never used
    ten = {**resnet50_state, "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}
    info = attach_backbone(model, _checkpoint(ten), model_name="m", backbone="resnet50")
    assert info.head_new and model.pretrained_weights is info
    assert_backbone_is(model, resnet50_state)
    assert_head_untouched(model, create_model("deeplabv3plus_resnet50_os16", num_classes=K,
                                              seed=0))


def test_bn_counters_may_be_absent_and_start_at_zero(resnet50_state):
    model = create_model(RESNET, num_classes=K, seed=0)
    legacy = {k: v for k, v in resnet50_state.items() if not k.endswith("num_batches_tracked")}
    attach_backbone(model, _checkpoint(legacy, "dino"), model_name=RESNET, backbone="resnet50")
    counters = {k: v for k, v in model.backbone.state_dict().items()
                if k.endswith("num_batches_tracked")}
    assert counters and all(int(v) == 0 for v in counters.values())
    assert torch.equal(model.backbone.layer3[2].bn2.running_var,
                       resnet50_state["layer3.2.bn2.running_var"])


def test_a_checkpoint_of_another_backbone_does_not_fit(resnet50_state):
    model = create_model(MOBILENET, num_classes=K, seed=0)
    with pytest.raises(ValueError, match=r"mobilenet_v2 backbone of .*missing \(\d+\): "
                                         r"features\.0\.0\.weight.*unexpected") as err:
        attach_backbone(model, _checkpoint(resnet50_state), model_name=MOBILENET,
                        backbone="mobilenet_v2")
    text = _one_line(err)
    assert len(re.findall(r"\b(?:features|layer\d|conv1|bn1)[\w.]*\.(?:weight|bias|running_\w+)",
                          text)) <= 5


# ----------------------------------------------------------------------------- real weights
def _cached_mobilenet_v2() -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    if not path.is_file():
        pytest.skip(f"torchvision's MobileNetV2 IMAGENET1K_V1 is not in the hub cache ({path}); "
                    "`python -m pxprune.models.offline` installs it")
    return path


def test_mobilenet_v2_loads_torchvisions_real_imagenet_weights(seeded):
    cached = _cached_mobilenet_v2()
    reference = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").features.state_dict()
    for name in (MOBILENET, "deeplabv3plus_mobilenet_v2_os8"):
        model = create_model(name, num_classes=K, seed=0, pretrained="IMAGENET1K_V1")
        own = model.backbone.state_dict()
        assert own.keys() == {k for k in reference if int(k.split(".")[0]) <= 17}
        for key, value in own.items():
            assert torch.equal(value, reference[key]), key
        assert_head_untouched(model, seeded(name))
        info = model.pretrained_weights
        assert (info.format, info.how, info.head_new) == ("torchvision", "weights name", True)
        assert info.file == str(cached) and info.sha256 == sha16(cached)
        with torch.no_grad():
            assert torch.isfinite(model.eval()(images(1))).all()
