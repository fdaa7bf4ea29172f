"""The segmentation task (loss, mIoU, pixel accuracy, per-class IoU, the pruning split) and every
criterion on a small segmentation network's (N, K, H, W) output with 255-ignored labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import pxprune
from pxprune.criteria import CRITERIA
from pxprune.tasks import get_task
from pxprune.tasks.segmentation import confusion_matrix, cover_split, iou_from_confusion

K = 4


class TinySeg(nn.Module):
    """conv-BN-ReLU at half resolution, a 1x1 classifier with bias, bilinear upsampling."""

    def __init__(self, classes: int = K, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.ReLU(),
                                  nn.Conv2d(6, classes, 1))

    def forward(self, x):
        return F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


def labels(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n, side, side), generator=g)
    y[:, 0, :] = 255  # a border, as VOC marks object outlines
    return y


# ------------------------------------------------------------------------------ metrics
def test_miou_from_a_hand_computed_confusion_matrix_with_an_absent_class():
    task = get_task("segmentation")
    meter = task.eval_meter(4, "cpu")
    # labels: class 0 x3, class 1 x2, 255 x1; class 2 in predictions only; class 3 nowhere
    target = torch.tensor([[[0, 0, 0], [1, 1, 255]]])
    pred = torch.tensor([[[0, 0, 2], [1, 0, 3]]])
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 10
    task.eval_update(meter, logits, target)
    values = task.eval_compute(meter)
    # confusion (rows = label): [[2,0,1,0],[1,1,0,0],[0]*4,[0]*4]; the 255 pixel counts nowhere
    assert meter.confmat.tolist() == [[2, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    iou0, iou1, iou2 = 2 / (3 + 3 - 2), 1 / (2 + 1 - 1), 0 / 1
    assert values["test_iou"] == [pytest.approx(iou0), pytest.approx(iou1), pytest.approx(iou2),
                                  None]
    assert values["test_miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert values["test_pixel_acc"] == pytest.approx(3 / 5)
    assert values["samples"] == 1


def test_miou_equals_torchmetrics_over_several_batches():
    from torchmetrics.classification import MulticlassJaccardIndex

    task = get_task("segmentation")
    meter = task.eval_meter(K + 1, "cpu")  # class K is never labelled nor predicted
    reference = MulticlassJaccardIndex(num_classes=K + 1, ignore_index=255, average="macro")
    per_class = MulticlassJaccardIndex(num_classes=K + 1, ignore_index=255, average="none")
    g = torch.Generator().manual_seed(1)
    for b in range(3):
        y = labels(2, seed=b)
        logits = torch.randn(2, K + 1, 8, 8, generator=g)
        logits[:, K] = -1e4
        task.eval_update(meter, logits, y)
        reference.update(logits.argmax(1), y)
        per_class.update(logits.argmax(1), y)
    values = task.eval_compute(meter)
    # torchmetrics' macro average leaves out classes absent from labels and predictions alike
    assert values["test_miou"] == pytest.approx(float(reference.compute()), rel=1e-6)
    assert values["test_iou"][:K] == pytest.approx(per_class.compute()[:K].tolist(), rel=1e-6)
    assert values["test_iou"][K] is None


def test_confusion_matrix_and_iou_helpers():
    c = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 255, 1]), 3)
    assert c.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    ious, miou = iou_from_confusion(c)
    assert ious == [1.0, 0.5, 0.0] and miou == pytest.approx(0.5)


def test_loss_ignores_255_and_upsamples_to_the_labels():
    task = get_task("segmentation")
    y = labels(2)
    logits = torch.randn(2, K, 4, 4, requires_grad=True)  # half the labels' size
    loss = task.loss(logits, y)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert loss.item() == pytest.approx(F.cross_entropy(up, y, ignore_index=255).item())
    every = torch.full_like(y, 255)
    zero = task.loss(logits, every)
    assert zero.item() == 0.0
    zero.backward()  # a crop of ignored pixels only: no NaN, no gradient
    assert not torch.isnan(logits.grad).any()


def test_train_meter_and_the_metrics_summed_over_processes():
    task = get_task("segmentation")
    y = labels(2)
    logits = torch.randn(2, K, 8, 8)
    halves = []
    for part in (slice(0, 1), slice(1, 2)):
        m = task.eval_meter(K, "cpu")
        task.eval_update(m, logits[part], y[part])
        halves.append(m)
    whole = task.eval_meter(K, "cpu")
    task.eval_update(whole, logits, y)

    def add(tensor, op="sum"):  # a stand-in for all_reduce over the two "processes"
        other = next(getattr(halves[1], n) for n in halves[1]._defaults
                     if getattr(halves[0], n) is tensor)
        tensor += other
        return tensor

    halves[0].reduce_(add)
    got, want = task.eval_compute(halves[0]), task.eval_compute(whole)
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-6)  # float32 sums
    assert {k: v for k, v in got.items() if k != "test_loss"} == \
        {k: v for k, v in want.items() if k != "test_loss"}


# ------------------------------------------------------------------------------ pruning split
def test_cover_split_takes_n_images_per_class_present():
    g = torch.Generator().manual_seed(0)
    ys = torch.zeros(40, 6, 6, dtype=torch.long)
    for i in range(40):  # image i shows class 1 + i % 3, and class 3 also on every 5th image
        ys[i, :2] = 1 + i % 3
        if i % 5 == 0:
            ys[i, 4:] = 3
    data = TensorDataset(torch.randn(40, 3, 6, 6, generator=g), ys)
    split = cover_split(data, per_class=2, seed=0)
    shown = [{int(c) for c in ys[i].unique() if c > 0} for i in split.indices]
    for c in (1, 2, 3):
        assert sum(c in s for s in shown) >= 2
    # greedy: every image taken was needed by some class when it was taken
    assert len(split) <= 6
    assert cover_split(data, per_class=2, seed=0).indices == split.indices
    assert cover_split(data, per_class=2, seed=1).indices != split.indices


# ------------------------------------------------------------------------------ criteria
@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_prunes_a_segmentation_network(name):
    model = TinySeg()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, 8, generator=g)
    batches = [(x[:2], labels(2, seed=1)), (x[2:], labels(2, seed=2))]
    model.eval()
    mask = pxprune.prune(model, name, batches, sparsity=0.6, rounds=2)
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    assert kept == round(total * 0.4)
    assert set(mask) == {"backbone.0.weight", "head.0.weight", "head.2.weight"}


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if CRITERIA.get(n).needs_targets])
def test_label_using_criteria_ignore_255(name):
    """An extra image whose every pixel is 255 changes no score."""
    model = TinySeg().double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    y = labels(3, seed=4)
    base = pxprune.score(model, name, [(x[:2], y[:2])])
    ignored = torch.full_like(y[2:], 255)
    more = pxprune.score(model, name, [(x[:2], y[:2]), (x[2:], ignored)])
    for n in base:
        torch.testing.assert_close(more[n], base[n], rtol=1e-9, atol=1e-12)


def test_taps_that_only_meet_padding_are_explained_as_off_every_path():
    """A rate-8 dilated 3x3 conv on a 4x4 map (DeepLab's ASPP at a small crop): its 8 outer taps
    never see the input, score 0 under every criterion, and the warning says why."""
    from pxprune.degenerate import ZeroScoresWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=8, dilation=8, bias=False), nn.ReLU(),
                          nn.Conv2d(4, K, 1))
    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(ZeroScoresWarning, match="no input-output path at this input size "
                                               r"\(3x4x4\): kernel taps that only ever meet"):
        pxprune.prune(model, "px", [(x, labels(2, side=4))], sparsity=0.5, rounds=1)


# ------------------------------------------------------------------------------ the recipe
def test_the_voc_recipe_is_the_paper_s():
    from pxprune.experiment import resolve_config

    c = resolve_config("voc2012_deeplabv3plus")
    assert (c.model.name, c.model.pretrained) == ("deeplabv3plus_resnet50", "IMAGENET1K_V1")
    assert (c.data.name, c.data.crop_size, c.data.per_class) == ("voc2012", 513, 10)
    t = c.train
    assert (t.epochs, t.batch_size, t.lr, t.backbone_lr) == (80, 4, 0.01, 0.001)
    assert (t.schedule, t.milestones, t.momentum, t.weight_decay) == ("step", (50, 60), 0.9, 1e-4)
    assert (c.prune.criterion, c.prune.sparsity, c.prune.scope) == ("px", 0.982, "global")


def test_two_training_steps_of_the_voc_recipe_on_a_tiny_voc_folder(tmp_path, capsys):
    """The real pipeline: VOC layout on disk, DeepLabV3+ with torchvision's real ImageNet
    MobileNetV2 backbone, PX on the cover split, two SGD steps with two learning rates, mIoU."""
    import json

    import torchvision

    from conftest import cli
    from pxprune.data.fake import write_fake_voc2012

    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    if not (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]).is_file():
        pytest.skip("torchvision's MobileNetV2 weights are not in torch's hub cache; "
                    "`python -m pxprune.models.offline` installs them")
    write_fake_voc2012(tmp_path / "voc", train=4, val=2, size=40)
    out = tmp_path / "run"
    code, stdout, err = cli(
        capsys, "run", "--recipe", "voc2012_deeplabv3plus", "--set",
        "model.name=deeplabv3plus_mobilenet_v2", f"data.root={tmp_path / 'voc'}",
        "data.crop_size=32", "data.per_class=1", "train.batch_size=2", "train.amp=off",
        "--epochs", "1", "--rounds", "2", "--sparsity", "0.5", "--out", out, "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_miou"] <= 1 and 0 <= metrics["test_pixel_acc"] <= 1
    assert len(metrics["test_iou"]) == 21
    config = (out / "config.yaml").read_text()
    assert "backbone_lr: 0.001" in config and "crop_size: 32" in config
    assert "sha256" in config  # the backbone weights were loaded and recorded
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].split(",") == ["epoch", "lr", "train_loss", "train_pixel_acc", "test_loss",
                                     "test_miou", "test_pixel_acc", "seconds"]
    assert "test_miou" in stdout


def test_backbone_lr_is_a_second_group_that_the_schedule_scales_too():
    from pxprune.train.loop import make_optimizer, make_scheduler

    model = TinySeg()
    opt = make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=False,
                         backbone_lr=0.001)
    head, backbone = opt.param_groups
    assert (head["lr"], backbone["lr"]) == (0.01, 0.001)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in backbone["params"])
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    sched = make_scheduler(opt, schedule="step", epochs=3, steps_per_epoch=2, milestones=[1])
    for _ in range(2):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.0001])
    with pytest.raises(ValueError, match="no parameter under 'backbone.'"):
        make_optimizer(nn.Linear(2, 2), lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False,
                       backbone_lr=0.01)
