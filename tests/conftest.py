"""Tiny models and data shared by the tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pxprune.data.fake import write_fake_fashion_mnist


def mlp(
    act: type[nn.Module] = nn.ReLU, widths=(3, 4, 5, 2), seed: int = 0, **act_kw
) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(widths) - 2:
            layers.append(act(**act_kw))
    return nn.Sequential(*layers)


class TinyCNN(nn.Module):
    """conv-relu-conv-relu-flatten-linear, bias-free, 1x4x4 inputs."""

    def __init__(self, seed: int = 0, bn: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(2) if bn else nn.Identity()
        self.c2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(2) if bn else nn.Identity()
        self.fc = nn.Linear(2 * 4 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = self.b2(self.c2(x)).relu()
        return self.fc(x.flatten(1))


class ResBlockNet(nn.Module):
    """A small residual CNN with BN, max-pool, average pooling and an in-place add."""

    def __init__(self, seed: int = 0, extra_bn: bool = False, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.extra = nn.BatchNorm2d(8) if extra_bn else nn.Identity()
        self.bnb = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(nn.functional.relu(self.bn(self.stem(x))))
        out = nn.functional.relu(self.bna(self.a(x)), inplace=True)
        out = self.bnb(self.extra(self.b(out)))
        out += x
        out = torch.relu(out)
        return self.fc(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture
def images() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g))]


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "grad": [p.requires_grad for p in model.parameters()],
        "ids": [id(p) for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    state = model.state_dict()
    assert set(state) == set(snap["state"])
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), k
    assert [m.training for m in model.modules()] == snap["training"]
    assert [p.requires_grad for p in model.parameters()] == snap["grad"]
    assert [id(p) for p in model.parameters()] == snap["ids"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST in the real IDX layout (20 training, 8 test images)."""
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=20, n_test=8)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall on a busy machine).
    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the ``pxprune`` command in-process: (exit code, stdout, stderr)."""
    from pxprune.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *words: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, naming every word given."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
