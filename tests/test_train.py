"""Training: masks stay exactly zero, schedules, AMP resolution, metrics, resumable state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pxprune import Mask
from pxprune.data import FakeImageDataset
from pxprune.selection import prunable_parameters, weight_tensor
from pxprune.train import (
    Trainer,
    evaluate,
    load_checkpoint,
    load_plain_state_dict,
    make_loader,
    make_optimizer,
    make_scheduler,
    plain_state_dict,
    resolve_amp,
    save_checkpoint,
)


class Net(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def net(seed: int = 0, classes: int = 4) -> Net:
    torch.manual_seed(seed)
    return Net(classes)


def half_mask(model: nn.Module, seed: int = 1) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < 0.5
                 for n, p in prunable_parameters(model).items()})


def trainer(model, *, seed=0, epochs=2, nesterov=False, amp="off", schedule="cosine",
            classes=4, n=12):
    train = FakeImageDataset(n, (3, 8, 8), classes, seed=1)
    test = FakeImageDataset(8, (3, 8, 8), classes, seed=2)
    return Trainer(model, train, test, num_classes=classes, epochs=epochs, batch_size=4, lr=0.5,
                   momentum=0.9, weight_decay=0.1, nesterov=nesterov, schedule=schedule,
                   milestones=(1,), amp=amp, seed=seed)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_pruned_weights_stay_exactly_zero(nesterov, amp):
    model = net()
    mask = half_mask(model)
    mask.apply(model)
    t = trainer(model, nesterov=nesterov, amp=amp)
    before = {n: weight_tensor(m).detach().clone()
              for n, m in [("conv.weight", model.conv), ("fc.weight", model.fc)]}
    for _ in range(2):
        t.train_epoch()
    for name, module in [("conv.weight", model.conv), ("fc.weight", model.fc)]:
        original = weight_tensor(module)
        assert torch.equal(original[~mask[name]], torch.zeros_like(original[~mask[name]]))
        # momentum buffers of pruned weights are zero too, and kept weights did move
        buf = t.optimizer.state[original]["momentum_buffer"]
        assert torch.equal(buf[~mask[name]], torch.zeros_like(buf[~mask[name]]))
        assert not torch.equal(original[mask[name]], before[name][mask[name]])
    state = plain_state_dict(model)
    assert "conv.weight" in state and not any("parametrizations" in k for k in state)
    assert torch.equal(state["conv.weight"][~mask["conv.weight"]],
                       torch.zeros(int((~mask["conv.weight"]).sum())))


def test_step_and_cosine_schedules():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, schedule="step", epochs=4, steps_per_epoch=3, milestones=(1, 3))
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [1.0] * 3 and lrs[3:9] == pytest.approx([0.1] * 6)
    assert lrs[9:] == pytest.approx([0.01] * 3)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt, schedule="cosine", epochs=2, steps_per_epoch=2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05,
                                 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        make_scheduler(opt, schedule="linear", epochs=1, steps_per_epoch=1)


def test_optimizer_settings():
    model = net()
    opt = make_optimizer(model, lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.2, 0.9, 5e-4, True)
    assert len(g["params"]) == len(list(model.parameters()))


def test_amp_resolution():
    assert resolve_amp("auto", "cpu").dtype is None
    assert resolve_amp("off", "cpu").name == "off"
    fp16 = resolve_amp("fp16", "cpu")
    assert fp16.dtype == torch.float16 and fp16.scaler
    bf16 = resolve_amp("bf16", "cpu")
    assert bf16.dtype == torch.bfloat16 and not bf16.scaler
    cuda = resolve_amp("auto", "cuda")
    assert cuda.dtype == torch.float16 and cuda.scaler
    with pytest.raises(ValueError):
        resolve_amp("fp8", "cpu")


@pytest.mark.parametrize("classes", [4, 12])
def test_evaluate_reports_top5_only_above_ten_classes(classes):
    model = net(classes=classes)
    loader = make_loader(FakeImageDataset(10, (3, 8, 8), classes), batch_size=4, shuffle=False)
    ev = evaluate(model, loader, num_classes=classes, amp=resolve_amp("off", "cpu"), device="cpu")
    assert ev.samples == 10 and 0.0 <= ev.acc <= 1.0 and ev.loss > 0
    if classes > 10:
        assert ev.acc5 is not None and ev.acc <= ev.acc5 <= 1.0
    else:
        assert ev.acc5 is None
    assert model.training  # the mode is restored


def test_data_order_comes_from_the_seed():
    def order(seed):
        t = trainer(net(), seed=seed)
        return [b[1].tolist() for b in t.train_loader], [b[1].tolist() for b in t.train_loader]

    a, b = order(0), order(0)
    assert a == b
    assert a[0] != a[1] or order(1) != a  # epochs differ or seeds differ


def test_resumed_trainer_equals_uninterrupted(tmp_path):
    ref_model = net()
    mask = half_mask(ref_model)
    mask.apply(ref_model)
    ref = trainer(ref_model, epochs=3)
    for _ in range(3):
        ref.train_epoch()
    ref_eval = ref.evaluate()

    first_model = net()
    mask.apply(first_model)
    first = trainer(first_model, epochs=3)
    first.train_epoch()
    save_checkpoint(tmp_path / "last.pt", first.state_dict())
    first.train_epoch()  # lost: the "crash" happens after this

    state = load_checkpoint(tmp_path / "last.pt")
    model = net(seed=5)  # a different draw: everything must come from the checkpoint
    load_plain_state_dict(model, state["model"])
    mask.apply(model)
    again = trainer(model, epochs=3)
    again.load_state_dict(state, model_loaded=True)
    assert again.epoch == 1
    again.train_epoch()
    again.train_epoch()
    for (n, a), b in zip(plain_state_dict(ref_model).items(), plain_state_dict(model).values(),
                         strict=True):
        assert torch.equal(a, b), n
    ev = again.evaluate()
    assert (ev.loss, ev.acc) == (ref_eval.loss, ref_eval.acc)


def test_plain_state_dict_round_trip_and_misfit():
    model = net()
    mask = half_mask(model)
    mask.apply(model)
    state = plain_state_dict(model)
    fresh = net(seed=3)
    load_plain_state_dict(fresh, state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    masked = net(seed=4)
    mask.apply(masked)
    load_plain_state_dict(masked, state)
    assert torch.equal(masked.conv.weight, model.conv.weight)
    with pytest.raises(ValueError, match="does not fit"):
        load_plain_state_dict(net(classes=5), state)


def test_corrupt_checkpoints_are_value_errors(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable pxprune checkpoint"):
        load_checkpoint(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="not a pxprune checkpoint"):
        load_checkpoint(bad)
    t = trainer(net())
    save_checkpoint(bad, t.state_dict())
    state = torch.load(bad, weights_only=True)  # everything is plain data
    assert state["epoch"] == 0 and "data" in state["rng"]


def test_global_rng_is_left_alone():
    state = torch.get_rng_state()
    t = trainer(net())
    t.train_epoch()
    assert torch.equal(torch.get_rng_state(), state)
