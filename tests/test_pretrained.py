"""ImageNet models of torchvision: kernel extraction and offline-safe loading (no downloads here)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from locolib import locality as lo
from locolib import pretrained as P
from locolib.io import sha256
from locolib.kernels import spatial_kernels

torch.set_num_threads(1)


def count_square(model: nn.Module, k: int = 3) -> tuple[int, int]:
    """(layers, depth-wise layers) with k x k kernels, counted independently of spatial_kernels."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (k, k)]
    return len(convs), sum(m.groups > 1 and m.groups == m.in_channels for m in convs)


# Known 3 x 3 counts of the architectures: VGG16 13 convs; ResNet50 one per bottleneck (3+4+6+3);
# MobileNetV2 the stem plus 17 depth-wise; DenseNet121 one per dense layer (6+12+24+16).
@pytest.mark.parametrize("name,layers,depthwise", [
    ("ResNet50", 16, 0), ("MobileNetV2", 18, 17), ("DenseNet121", 58, 0), ("InceptionV3", None, 0),
])
def test_3x3_kernels_of_random_models(name, layers, depthwise):
    model = P.build_imagenet_model(name)
    ks = spatial_kernels(model, 3)
    n, dw = count_square(model)
    assert len(ks) == n and dw == depthwise
    if layers is not None:
        assert n == layers
    assert all(k.shape[-2:] == (3, 3) and not k.requires_grad for k in ks)
    assert sum(k.shape[1] == 1 for k in ks) >= depthwise
    if name == "InceptionV3":   # its 1 x 3 and 3 x 1 kernels are not k x k matrices
        assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 3) for m in model.modules())


@pytest.mark.slow
def test_vgg16_has_13_3x3_kernels():
    assert len(spatial_kernels(P.build_imagenet_model("VGG16"), 3)) == 13


def test_random_initialisation_shows_no_locality():
    """i.i.d. initial weights: every ring is alike, so m is near 0 and not significant."""
    ks = spatial_kernels(P.build_imagenet_model("ResNet50", seed=3), 3)
    for inner, outer in lo.TABLE4_PAIRS:
        for absolute in (False, True):
            r = lo.locality_test(ks, inner, outer, absolute)
            assert abs(r.m) < 4 / r.n ** 0.5 and r.p_two_sided > 1e-4


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = spatial_kernels(P.build_imagenet_model("MobileNetV2", seed=5), 3)
    assert torch.equal(before, torch.random.get_rng_state())
    b = spatial_kernels(P.build_imagenet_model("MobileNetV2", seed=5), 3)
    c = spatial_kernels(P.build_imagenet_model("MobileNetV2", seed=6), 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_unknown_model_name():
    with pytest.raises(ValueError, match="choose one of"):
        P.build_imagenet_model("Xception")


def test_skips_quickly_without_cache_and_without_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    t = time.perf_counter()
    out = P.load_imagenet_model("VGG16", allow_download=False)
    assert time.perf_counter() - t < 5
    assert not out.ok and out.source == "skipped" and "cache" in out.reason
    assert P.cached_weights_path("VGG16") == tmp_path / "checkpoints" / "vgg16-397923af.pth"


def test_skips_when_the_host_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(P, "host_reachable", lambda url, timeout=3.0: False)
    out = P.load_imagenet_model("ResNet50")
    assert not out.ok and "not reachable" in out.reason


def _published(monkeypatch, path) -> None:
    """Let torchvision's URL of MobileNetV2 name the file ``path`` (its published hash)."""
    url = f"https://download.pytorch.org/models/{path.name}"
    monkeypatch.setattr(P, "weights_enum", lambda name: SimpleNamespace(url=url))


def _crafted(tmp_path, monkeypatch, model: nn.Module) -> Path:
    """``model``'s weights in a temporary TORCH_HOME, named as torchvision names its files."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    tmp = folder / "x.pth"
    torch.save(model.state_dict(), tmp)
    path = folder / f"mobilenet_v2-{sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    _published(monkeypatch, path)
    assert P.cached_weights_path("MobileNetV2") == path
    return path


def test_uses_weights_from_the_hub_cache(tmp_path, monkeypatch):
    reference = P.build_imagenet_model("MobileNetV2", seed=9)
    _crafted(tmp_path, monkeypatch, reference)
    monkeypatch.setattr(P, "host_reachable", lambda *a, **k: pytest.fail("no network needed"))
    out = P.load_imagenet_model("MobileNetV2")
    assert out.ok and out.source == "cache"
    for x, y in zip(spatial_kernels(out.model, 3), spatial_kernels(reference, 3)):
        assert torch.equal(x, y)


def test_an_altered_weights_file_is_refused(tmp_path, monkeypatch):
    path = _crafted(tmp_path, monkeypatch, P.build_imagenet_model("MobileNetV2", seed=9))
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    out = P.load_imagenet_model("MobileNetV2", allow_download=False)
    assert not out.ok and "\n" not in out.reason
    assert f"{path} is not torchvision's file: its SHA-256 begins" in out.reason


class _Planted:
    """What a planted file may hold: unpickling it with weights_only=False opens ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_planted_file_in_the_hub_cache_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = P.cached_weights_path("MobileNetV2")  # torchvision's own name and hash
    assert path.is_relative_to(tmp_path)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"features.0.0.weight": _Planted(marker)}, path)
    out = P.load_imagenet_model("MobileNetV2", allow_download=False)
    assert not marker.exists(), "the planted file ran code"
    assert not out.ok and "is not torchvision's file" in out.reason and "\n" not in out.reason
    assert "weights_only" not in out.reason


def test_a_file_with_the_published_hash_still_loads_only_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    tmp = folder / "x.pth"
    torch.save({"features.0.0.weight": _Planted(marker)}, tmp)
    path = folder / f"mobilenet_v2-{sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    _published(monkeypatch, path)
    out = P.load_imagenet_model("MobileNetV2", allow_download=False)
    assert not marker.exists() and not out.ok
    assert "holds more than tensors" in out.reason and "weights_only" not in out.reason


def test_pretrained_false_gives_random_init():
    out = P.load_imagenet_model("MobileNetV2", pretrained=False)
    assert out.ok and out.source == "random init"


def test_host_reachable():
    assert not P.host_reachable("https://host.invalid/x.pth", timeout=1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert P.host_reachable(f"http://127.0.0.1:{port}/x", timeout=1.0)


def test_chapter_helpers_without_downloads():
    status, tidy = P.imagenet_table4(["MobileNetV2", "VGG16"], pretrained=False)
    assert tidy is None and list(status.weights) == ["skipped", "skipped"]
    assert list(status.torchvision) == ["mobilenet_v2", "vgg16"]
    control = P.random_init_table4(["MobileNetV2"])
    assert set(control.model) == {"MobileNetV2 (random init)"} and len(control) == 12
    assert control.m.abs().max() < 0.05
