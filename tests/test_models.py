"""Model zoo: every registered model builds, runs, and is reproducible from its seed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from pxprune.models import (
    ModelInfo,
    create_model,
    kaiming_init_,
    list_models,
    model_info,
    register_model,
)
from pxprune.models import pretrained as pretrained_module
from pxprune.models.factory import INITIALISED_LINEAR

NUM_CLASSES = 7  # not a default anywhere, so a builder that ignores num_classes fails

ZOO = {"resnet8", "resnet20", "resnet32", "resnet56", "vgg16_bn_cifar", "resnet18_tiny"}
TORCHVISION = {"resnet18", "resnet50", "vgg16_bn", "mobilenet_v2"}
CLIP = {"clip_rn50"}  # tests/test_clip.py covers it further
DEEPLAB = {"deeplabv3plus_resnet50", "deeplabv3plus_resnet50_os16", "deeplabv3plus_mobilenet_v2",
           "deeplabv3plus_mobilenet_v2_os8"}  # tests/test_deeplab.py covers them further


def test_registered_names() -> None:
    assert set(list_models()) == ZOO | TORCHVISION | CLIP | DEEPLAB
    assert list_models() == sorted(list_models())


def _test_size(name: str) -> tuple[int, int, int]:
    info = model_info(name)
    # torchvision models run at 64 px to keep the suite fast; they pool adaptively.
    return (3, 64, 64) if info.family in ("torchvision", "deeplab") else info.input_size


@pytest.fixture(scope="module")
def seeded() -> Callable[[str], nn.Module]:
    """``create_model(name, num_classes=NUM_CLASSES, seed=0)``, built once per module."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = create_model(name, num_classes=NUM_CLASSES, seed=0)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list_models())
def test_model_info(name: str) -> None:
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.name == name
    expected = {
        "torchvision": (3, 224, 224),
        "clip": (3, 224, 224),
        "tiny_resnet": (3, 64, 64),
        "deeplab": (3, 513, 513),
    }.get(info.family, (3, 32, 32))
    assert info.input_size == expected


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name: str, seeded: Callable[[str], nn.Module]) -> None:
    model = seeded(name).eval()
    x = torch.randn(2, *_test_size(name), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    if "segmentation" in model_info(name).tasks:  # per-pixel logits at the input's size
        assert out.shape == (2, NUM_CLASSES, *_test_size(name)[1:])
    else:
        assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


# VGG-16-BN (138M parameters) takes ~2 s per build on 2 cores; its three builds here are `slow`.
SEED_CASES = [
    pytest.param(n, marks=pytest.mark.slow) if n == "vgg16_bn" else n for n in list_models()
]


@pytest.mark.parametrize("name", SEED_CASES)
def test_seed_reproducible_and_rng_untouched(name: str, seeded: Callable[[str], nn.Module]) -> None:
    reference = seeded(name).state_dict()
    torch.rand(5)  # move the global RNG: the seeded build must not depend on it
    before = torch.get_rng_state()
    again = create_model(name, num_classes=NUM_CLASSES, seed=0).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)

    other = create_model(name, num_classes=NUM_CLASSES, seed=1)
    for module_name, module in other.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            key = f"{module_name}.weight"
            assert not torch.equal(module.weight, reference[key]), key


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models_fully_initialised(name: str) -> None:
    # The registered torchvision builders skip torchvision's init (meta device + to_empty), so
    # kaiming_init_ must cover every module that owns a parameter or a buffer.
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES)
    for module_name, module in model.named_modules():
        owns = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if owns:
            covered = isinstance(module, INITIALISED_LINEAR + (nn.BatchNorm2d,))
            assert covered, f"{name}.{module_name} ({type(module).__name__}) is not initialised"


@pytest.mark.parametrize("name", list_models())
def test_norm_layers_start_fresh(name: str, seeded: Callable[[str], nn.Module]) -> None:
    for module in seeded(name).modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
            assert module.num_batches_tracked.item() == 0


def test_unseeded_build_draws_from_global_rng() -> None:
    torch.manual_seed(123)
    a = create_model("resnet20")
    torch.manual_seed(123)
    b = create_model("resnet20")
    c = create_model("resnet20")
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(b.fc.weight, c.fc.weight)


def test_resnet20_parameter_count() -> None:
    # ResNet-20, 10 classes (weights + BN affine, no buffers):
    #   stem    conv 3*16*9 = 432, BN 2*16 = 32                                      ->     464
    #   stage 1 3 blocks x (2 convs 16*16*9 = 2304, 2 BN 32)        = 3 * 4672        ->  14,016
    #   stage 2 block 0: 16*32*9 + 32*32*9 + 2*64 + 1x1 16*32 + 64 = 4608+9216+128+512+64 = 14,528
    #           blocks 1-2: 2 x (2 * 9216 + 128)                    = 37,120          ->  51,648
    #   stage 3 block 0: 32*64*9 + 64*64*9 + 2*128 + 1x1 32*64 + 128
    #                    = 18432+36864+256+2048+128 = 57,728
    #           blocks 1-2: 2 x (2 * 36864 + 256)                   = 147,968         -> 205,696
    #   fc      64*10 + 10                                                            ->     650
    #   total   464 + 14,016 + 51,648 + 205,696 + 650 = 272,474
    model = create_model("resnet20", seed=0)
    assert sum(p.numel() for p in model.parameters()) == 272_474


def test_resnet20_prunable_layers() -> None:
    model = create_model("resnet20", seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 19  # stem + 9 blocks x 2
    assert sum(m.kernel_size == (1, 1) for m in convs) == 2  # shortcuts into stages 2 and 3
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    assert all(m.bias is None for m in convs)
    assert model.fc.bias is not None


@pytest.mark.parametrize(("name", "blocks"), [("resnet32", 15), ("resnet56", 27)])
def test_cifar_resnet_depth(name: str, blocks: int) -> None:
    model = create_model(name, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 2 * blocks + 1


def test_kaiming_init() -> None:
    model = create_model("resnet56", seed=0)
    assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))
    # 64*64*9 = 36,864 draws per layer; pooled over the 17 such layers the std is exact to ~0.1 %.
    big = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 64]
    std = torch.cat([w.flatten() for w in big]).std().item()
    assert std == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)
    assert kaiming_init_(model) is model


def test_input_size_override() -> None:
    grey = create_model("resnet20", seed=0, input_size=(1, 28, 28))
    assert grey.conv1.in_channels == 1
    assert grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    vgg = create_model("vgg16_bn_cifar", seed=0, input_size=(3, 64, 64)).eval()
    with torch.no_grad():
        assert vgg(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="3 input channels"):
        create_model("mobilenet_v2", input_size=(1, 64, 64))
    with pytest.raises(ValueError, match="input_size"):
        create_model("resnet20", input_size=(3, 32))


def test_vgg_cifar_matches_the_plan() -> None:
    model = create_model("vgg16_bn_cifar", num_classes=100, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(m.bias is not None for m in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert isinstance(model.avgpool, nn.AvgPool2d) and model.avgpool.kernel_size == (2, 2)
    assert (model.fc.in_features, model.fc.out_features) == (512, 100)


def test_tiny_resnet_matches_the_plan() -> None:
    model = create_model("resnet18_tiny", num_classes=200, seed=0)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.layer1[0].downsample, nn.Identity)
    assert model.layer2[0].conv1.stride == (2, 2)
    assert (model.fc.in_features, model.fc.out_features) == (512, 200)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet20") as info:
        create_model("resnet21")
    assert "torchvision" in str(info.value)
    with pytest.raises(ValueError, match="vgg16_bn_cifar"):
        model_info("no_such_model")


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_unregistered_torchvision_name_resolves() -> None:
    assert "resnet34" not in list_models()
    assert model_info("resnet34").input_size == (3, 224, 224)
    model = create_model("resnet34", num_classes=NUM_CLASSES, seed=0).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, NUM_CLASSES)
    again = create_model("resnet34", num_classes=NUM_CLASSES, seed=0)
    assert torch.equal(model.fc.weight, again.fc.weight)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("resnet20", input_size=(3, 32, 32), family="cifar_resnet")(lambda **_: None)


def test_pretrained_from_local_file(tmp_path) -> None:
    source = create_model("resnet20", seed=0)
    path = tmp_path / "resnet20.pt"
    torch.save(source.state_dict(), path)

    same = create_model("resnet20", seed=1, pretrained=path)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in source.state_dict().items())

    # Another num_classes: the backbone loads, the classifier keeps the seed-1 initialisation.
    fresh = create_model("resnet20", num_classes=100, seed=1)
    other = create_model("resnet20", num_classes=100, seed=1, pretrained=str(path))
    assert other.fc.weight.shape == (100, 64)
    assert torch.equal(other.fc.weight, fresh.fc.weight)
    assert torch.equal(other.conv1.weight, source.conv1.weight)
    assert torch.equal(other.layer3[2].bn2.running_var, source.layer3[2].bn2.running_var)

    # Wrapped checkpoints with a DDP prefix are accepted too.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    assert torch.equal(
        create_model("resnet20", pretrained=wrapped).conv1.weight, source.conv1.weight
    )


def test_pretrained_torchvision_from_local_file(tmp_path) -> None:
    source = create_model("mobilenet_v2", num_classes=1000, seed=0)
    path = tmp_path / "mobilenet_v2.pt"
    torch.save(source.state_dict(), path)
    model = create_model("mobilenet_v2", num_classes=NUM_CLASSES, seed=1, pretrained=path)
    assert model.classifier[1].out_features == NUM_CLASSES
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


def test_pretrained_imagenet_route(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network in tests: stand in for torchvision's download with a local 1000-class state dict.
    source = create_model("mobilenet_v2", num_classes=1000, seed=0).state_dict()
    asked: list[str] = []

    def fake_download(name: str, weights: str, *, allowed: bool) -> tuple[dict, None]:
        asked.append((name, weights))
        return source, None

    monkeypatch.setattr(pretrained_module, "_torchvision_state", fake_download)
    model = create_model("mobilenet_v2", num_classes=NUM_CLASSES, pretrained="imagenet")
    assert asked == [("mobilenet_v2", "IMAGENET1K_V1")]
    assert model.pretrained_weights.head_new and model.pretrained_weights.format == "torchvision"
    assert model.classifier[1].out_features == NUM_CLASSES
    assert torch.equal(model.features[1].conv[0][0].weight, source["features.1.conv.0.0.weight"])


def test_pretrained_errors(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        create_model("resnet20", pretrained=corrupt)
    with pytest.raises(ValueError, match="does not exist"):
        create_model("resnet20", pretrained=tmp_path / "missing.pt")
    wrong = tmp_path / "resnet32.pt"
    torch.save(create_model("resnet32", seed=0).state_dict(), wrong)
    with pytest.raises(ValueError, match="unexpected"):
        create_model("resnet20", pretrained=wrong)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match="no state_dict"):
        create_model("resnet20", pretrained=not_a_state_dict)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("resnet20", pretrained="imagenet")
