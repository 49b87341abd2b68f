"""ImageNet networks of torchvision for Table 4's upper block, loaded without ever hanging offline.

The paper tested Keras' pre-trained VGG16, ResNet50, InceptionV3, Xception, MobileNet and
DenseNet121. torchvision has all of them but Xception and MobileNet v1; :data:`IMAGENET_MODELS`
maps the paper's names to torchvision architectures and their original ("IMAGENET1K_V1")
weights. MobileNet v1 is replaced by **MobileNetV2**: like v1 every spatial convolution in it is a
3 x 3 (a full stem conv, then only depth-wise ones), whereas MobileNetV3 also has 5 x 5
depth-wise kernels and squeeze-excitation blocks.

:func:`load_imagenet_model` uses weights already in the torch hub cache
(``torch.hub.get_dir()/checkpoints``) without touching the network; otherwise, if downloads are
allowed, it first checks within a few seconds that the download host is reachable and only then
downloads. Either way the file is trusted only as far as it is checked: its SHA-256 must begin
with the digits torchvision publishes in its name (``resnet50-0676ba61.pth``), and it is read
with ``torch.load(weights_only=True)``, which unpickles tensors and nothing that runs code
(torchvision's own loader does neither for a file already cached). Whatever fails is reported,
not raised, as :class:`Loaded` with ``model=None`` and the reason, so a chapter can say plainly
what it skipped and why. The layers W_l of Eq. 7.1 of
a loaded model are ``locolib.kernels.spatial_kernels(model, 3)`` (depth-wise included, 1 x k and
k x 1 kernels left out).
"""

from __future__ import annotations

import pickle
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import torch
import torchvision.models as tvm
from torch import nn

from locolib.io import sha256
from locolib.kernels import spatial_kernels
from locolib.locality import table4_row

__all__ = [
    "IMAGENET_MODELS",
    "Loaded",
    "weights_enum",
    "cached_weights_path",
    "published_hash",
    "host_reachable",
    "build_imagenet_model",
    "load_imagenet_model",
    "imagenet_table4",
    "random_init_table4",
]

#: The paper's name -> (torchvision architecture, weights name).
IMAGENET_MODELS: dict[str, tuple[str, str]] = {
    "VGG16": ("vgg16", "IMAGENET1K_V1"),
    "ResNet50": ("resnet50", "IMAGENET1K_V1"),
    "InceptionV3": ("inception_v3", "IMAGENET1K_V1"),
    "MobileNetV2": ("mobilenet_v2", "IMAGENET1K_V1"),
    "DenseNet121": ("densenet121", "IMAGENET1K_V1"),
}


@dataclass
class Loaded:
    """The outcome of :func:`load_imagenet_model`: the model (None if unavailable), where its
    weights came from ("cache", "download", "random init") and, when skipped, why. (Chapter 07)"""

    name: str
    arch: str
    model: nn.Module | None
    source: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.model is not None


def _arch(name: str) -> tuple[str, str]:
    if name in IMAGENET_MODELS:
        return IMAGENET_MODELS[name]
    raise ValueError(f"unknown model {name!r}; choose one of {list(IMAGENET_MODELS)}")


def weights_enum(name: str) -> Any:
    """The torchvision weights entry (with its ``url``) of one of :data:`IMAGENET_MODELS`. (Chapter 07)"""

    arch, weights = _arch(name)
    return tvm.get_model_weights(arch)[weights]


def cached_weights_path(name: str) -> Path:
    """Where torch.hub keeps (or would keep) the weights file of model ``name``. (Chapter 07)"""

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights_enum(name).url).path).name


def published_hash(path: str | Path) -> str:
    """The start of the SHA-256 that torchvision publishes in a weights file's name
    (``vgg16-397923af.pth`` -> ``397923af``). (Chapter 07)"""
    m = re.fullmatch(r".+-([0-9a-f]{8,64})\.pth", Path(path).name)
    if m is None:
        raise ValueError(f"{Path(path).name}: no published hash in the file name")
    return m.group(1)


#: What torchvision's builders set when they load ImageNet weights (its inception_v3 builder).
_PRETRAINED_KWARGS = {"inception_v3": {"transform_input": True, "aux_logits": True,
                                       "init_weights": False}}
#: Keys of torchvision's DenseNet files from before '.' left module names ("norm.1" ->
#: "norm1"); its densenet builder renames them so.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_checked(arch: str, path: Path) -> nn.Module:
    """Architecture ``arch`` with the weights file ``path``, checked against its published
    hash and unpickled with ``weights_only=True``; ValueError (one line) if the file is not
    torchvision's."""
    expected, actual = published_hash(path), sha256(path)
    if not actual.startswith(expected):
        raise ValueError(f"{path} is not torchvision's file: its SHA-256 begins {actual[:len(expected)]}, "
                         f"not {expected} (delete it to download it again)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False
        raise ValueError(f"{path} holds more than tensors; not loaded") from None
    if arch.startswith("densenet"):
        state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    model = tvm.get_model(arch, weights=None, **_PRETRAINED_KWARGS.get(arch, {}))
    model.load_state_dict(state)
    return model


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds.

    Runs in a daemon thread that is abandoned after the timeout, so a slow DNS lookup (which
    socket timeouts do not cover) cannot hang the caller either. (Chapter 07)
    """
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def build_imagenet_model(name: str, seed: int = 0) -> nn.Module:
    """Model ``name`` with torchvision's random initialisation (no weights, nothing downloaded),
    seeded by ``seed`` without touching the caller's global RNG state. (Chapter 07)"""

    arch, _ = _arch(name)
    kwargs = {"init_weights": True, "aux_logits": False} if arch == "inception_v3" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tvm.get_model(arch, weights=None, **kwargs).eval()


def load_imagenet_model(name: str, pretrained: bool = True, allow_download: bool = True,
                        timeout: float = 3.0) -> Loaded:
    """Model ``name`` with its ImageNet weights, or a :class:`Loaded` saying why not.

    ``pretrained=False`` returns the randomly initialised model (``source="random init"``).
    Otherwise weights in the torch hub cache are used as they are; else, with
    ``allow_download`` and the host answering within ``timeout`` seconds, they are downloaded
    (VGG16's file is 528 MB). Nothing here raises for a missing network. (Chapter 07)
    """

    arch, _ = _arch(name)
    if not pretrained:
        return Loaded(name, arch, build_imagenet_model(name), "random init")
    url = weights_enum(name).url
    path = cached_weights_path(name)
    if path.is_file():
        source = "cache"
    elif not allow_download:
        return Loaded(name, arch, None, "skipped",
                      f"weights not in the torch hub cache ({path}) and downloads are disabled")
    elif not host_reachable(url, timeout):
        return Loaded(name, arch, None, "skipped",
                      f"weights not in the torch hub cache ({path}) and "
                      f"{urlparse(url).hostname} is not reachable (no internet)")
    else:
        source = "download"
    try:
        if source == "download":
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=published_hash(path),
                                           progress=False)
        model = _load_checked(arch, path)
    except Exception as err:  # noqa: BLE001 -- a failed download or a damaged file: report it
        first = (str(err).splitlines() or [type(err).__name__])[0]
        return Loaded(name, arch, None, "skipped", f"loading the weights failed: {first}")
    return Loaded(name, arch, model.eval(), source)


def imagenet_table4(names: list[str], pretrained: bool = True,
                    timeout: float = 3.0) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Chapter 07: Table 4 of the ImageNet networks ``names`` where their weights can be had.

    Returns (status, tidy): per network where its weights came from or why it was skipped
    (``pretrained=False`` skips them all without trying), and the Table 4 cells of the loaded
    ones (:func:`locolib.locality.table4_row` on their 3 x 3 kernels), None if none loaded. (Chapter 07)
    """
    status, rows = [], []
    for name in names:
        if not pretrained:
            status.append({"model": name, "torchvision": IMAGENET_MODELS[name][0], "weights": "skipped",
                           "why skipped": "not tried: the profile sets pretrained=False"})
            continue
        out = load_imagenet_model(name, timeout=timeout)
        status.append({"model": name, "torchvision": out.arch, "weights": out.source,
                       "why skipped": out.reason})
        if out.ok:
            rows.append(table4_row(spatial_kernels(out.model, 3), name))
    return pd.DataFrame(status), pd.concat(rows, ignore_index=True) if rows else None


def random_init_table4(names: list[str]) -> pd.DataFrame:
    """Chapter 07's control: Table 4 of the architectures ``names`` with their random initial
    weights (no download), labelled "<name> (random init)". (Chapter 07)"""
    return pd.concat([table4_row(spatial_kernels(build_imagenet_model(name), 3), f"{name} (random init)")
                      for name in names], ignore_index=True)
