"""clip_rn50: CLIP's RN50 image tower (open_clip's ModifiedResNet) + head; every criterion on it."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

import pxprune
from conftest import assert_unchanged, snapshot
from pxprune.degenerate import DegenerateScoresError
from pxprune.models import create_model, model_info
from pxprune.models.clip import QK_PROJECTIONS, MissingDependencyError, build_clip_resnet

pytestmark = pytest.mark.usefixtures("one_thread")
needs_open_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                     reason="needs the clip extra: pip install 'pxprune[clip]'")

SMALL = dict(width=8, layers=(1, 1, 1, 1), heads=2, output_dim=16, image_size=32)
PATH_CRITERIA = {"px", "synflow", "synflow_l2"}  # queries/keys are on no path: they need exclude=
CRITERIA = [n for n in pxprune.list_criteria() if not n.startswith("_")]


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_clip_resnet(5, **SMALL)


@needs_open_clip
def test_rn50_state_dict_is_openai_visual_keys_plus_head() -> None:
    # docs/design/PRETRAINED.md section 1: 339 visual entries (55 num_batches_tracked kept), 38.3M
    # visual parameters, the three-conv stem, torchvision-shaped bottlenecks, a 7x7+1 attention pool.
    model = create_model("clip_rn50", num_classes=10, seed=0)
    state = model.state_dict()
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    assert set(state) - set(visual) == {"head.weight", "head.bias"}
    assert len(visual) == 339 and sum(k.endswith("num_batches_tracked") for k in visual) == 55
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual.")) == 38_316_896
    shapes = {
        "visual.conv1.weight": (32, 3, 3, 3),
        "visual.conv2.weight": (32, 32, 3, 3),
        "visual.conv3.weight": (64, 32, 3, 3),
        "visual.layer1.0.conv1.weight": (64, 64, 1, 1),
        "visual.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "visual.layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "visual.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "visual.attnpool.positional_embedding": (50, 2048),
        "visual.attnpool.q_proj.weight": (2048, 2048),
        "visual.attnpool.k_proj.bias": (2048,),
        "visual.attnpool.c_proj.weight": (1024, 2048),
        "head.weight": (10, 1024),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not any(".fc." in k or k.startswith("visual.fc") for k in state)
    # anti-aliasing: strides are average pools, every conv but the first has stride 1
    assert model.visual.layer2[0].conv2.stride == (1, 1)
    assert isinstance(model.visual.layer2[0].avgpool, torch.nn.AvgPool2d)
    assert model.visual.attnpool.num_heads == 32 and model_info("clip_rn50").family == "clip"


@needs_open_clip
def test_from_scratch_init_leaves_every_path_open() -> None:
    model = _small()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name  # no zero bn3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert torch.equal(_small().visual.attnpool.positional_embedding,
                       model.visual.attnpool.positional_embedding)


@needs_open_clip
def test_input_size_sets_the_attention_grid() -> None:
    model = create_model("clip_rn50", num_classes=3, seed=0, input_size=(3, 64, 64)).eval()
    assert model.visual.attnpool.positional_embedding.shape == (5, 2048)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("clip_rn50", input_size=(3, 48, 48))
    with pytest.raises(ValueError, match="square"):
        create_model("clip_rn50", input_size=(3, 64, 32))
    with pytest.raises(ValueError, match="3 input channels"):
        create_model("clip_rn50", input_size=(1, 64, 64))


def test_missing_open_clip_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'pxprune\[clip\]'") as info:
        create_model("clip_rn50")
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)


@needs_open_clip
@pytest.mark.filterwarnings("ignore::pxprune.paths.PathTheoryWarning")
@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_prunes_clip_and_leaves_it_bit_identical(name: str) -> None:
    model = _small().train()
    snap = snapshot(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g))]
    options: dict = {}
    if name in PATH_CRITERIA:
        with pytest.raises(DegenerateScoresError, match="exclude") as info:
            pxprune.prune(model, name, batches, sparsity=0.5, rounds=2, seed=0)
        assert sorted(info.value.layers) == sorted(QK_PROJECTIONS)
        assert_unchanged(model, snap)
        options = {"exclude": list(info.value.layers)}
    scores = pxprune.score(model, name, batches, seed=0, **options)
    assert all(torch.isfinite(s).all() for s in scores.values()), name
    assert set(QK_PROJECTIONS) & set(scores) == (set() if options else set(QK_PROJECTIONS))
    mask = pxprune.prune(model, name, batches, sparsity=0.5, rounds=2, seed=0, **options)
    assert set(mask) == set(scores)
    for key, keep in mask.items():
        assert keep.dtype == torch.bool and keep.shape == scores[key].shape, key
    assert mask.kept == mask.total - math.floor(round(0.5 * mask.total, 9))
    assert_unchanged(model, snap)
