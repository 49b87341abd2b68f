"""Datasets (offline: scikit-learn digits; error path for missing torchvision files) and the
batched flip + crop augmentation."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from locolib.data import (
    ImageData,
    _to32,
    apply_augment,
    augment_batch,
    augment_params,
    load_dataset,
    normalize,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset("digits", seed=0)


def test_digits_split_shapes_and_content(digits):
    from sklearn.datasets import load_digits

    d = digits
    assert d.name == "digits" and d.num_classes == 10 and d.in_channels == 1
    assert d.x_train.shape == (1297, 1, 32, 32) and d.x_test.shape == (500, 1, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.y_train.shape == (1297,) and d.y_test.shape == (500,)
    # every 8x8 digit appears exactly once, as 4x4 blocks of its (0..16 -> 0..255) pixels
    sk = load_digits()
    orig = torch.from_numpy(np.rint(sk.images * 255 / 16).astype(np.uint8))
    both = torch.cat([d.x_train, d.x_test])[:, 0]
    small = both[:, ::4, ::4]
    key = lambda t: {bytes(r.numpy().tobytes()) for r in t.reshape(len(t), -1)}  # noqa: E731
    assert key(small) == key(orig) and len(key(small)) == len(key(orig))
    assert torch.equal(both, small.repeat_interleave(4, 1).repeat_interleave(4, 2))
    labels = torch.cat([d.y_train, d.y_test])
    assert torch.equal(torch.bincount(labels), torch.from_numpy(np.bincount(sk.target)))
    # stratified: each class's share of the test set is within one image of 500/1797
    share = torch.bincount(d.y_test, minlength=10).double()
    expect = torch.from_numpy(np.bincount(sk.target)).double() * 500 / 1797
    assert (share - expect).abs().max() <= 1.0


def test_digits_seeded(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    assert not torch.equal(other.y_test, digits.y_test)


def test_channel_stats_and_normalize(digits):
    mean, std = digits.channel_stats()
    x = digits.x_train.numpy().astype(np.float64) / 255
    assert mean.dtype == torch.float32 and mean.shape == (1,)
    assert mean.item() == pytest.approx(x.mean(), rel=1e-6)
    assert std.item() == pytest.approx(x.std(), rel=1e-6)
    z = normalize(digits.x_train, mean, std)
    assert z.dtype == torch.float32
    assert z.mean().item() == pytest.approx(0, abs=1e-4) and z.std().item() == pytest.approx(1, abs=1e-3)
    rgb = ImageData("t", torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 32, 32),
                    torch.zeros(2, dtype=torch.int64), None, None, 2)
    m3, s3 = rgb.channel_stats()
    assert torch.allclose(m3, torch.full((3,), 0.5)) and torch.allclose(s3, torch.full((3,), 0.5))


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python"),
                                         ("fashion_mnist", "FashionMNIST")])
def test_missing_torchvision_data_is_a_clear_error(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / folder) in msg and "download=True" in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10.*digits"):
        load_dataset("mnist")


def test_fashion_mnist_scaling():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    r = _to32(x, "resize")
    assert r.shape == (2, 1, 32, 32) and r.dtype == torch.uint8 and (r == 200).all()
    p = _to32(x, "pad")
    assert p.shape == (2, 1, 32, 32) and torch.equal(p[:, :, 2:30, 2:30], x) and p.sum() == x.sum()
    with pytest.raises(ValueError):
        _to32(x, "crop")


# ---------------------------------------------------------------- augmentation
def _images(n=64, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, 32, 32, generator=g) + 3.0  # nonzero everywhere: padding is visible


def test_augment_deterministic_and_shape():
    x = _images()
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    u8 = augment_batch(torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8), torch.Generator())
    assert u8.dtype == torch.uint8


def test_augment_outputs_are_windows_of_padded_images():
    x = _images(n=24)
    out = augment_batch(x, torch.Generator().manual_seed(1))
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found_shift = found_flip = False
    for i in range(len(x)):
        matches = [
            (t, l, f)
            for t in range(9)
            for l in range(9)
            for f in (False, True)
            if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(xp[i, :, t:t + 32, l:l + 32]))
        ]
        assert len(matches) == 1, (i, matches)
        t, l, f = matches[0]
        found_shift |= (t, l) != (4, 4)
        found_flip |= f
    assert found_shift and found_flip


def test_augment_flip_rate_and_offset_range():
    g = torch.Generator().manual_seed(0)
    top, left, flipped = augment_params(4000, g, flip=True, pad=4)
    assert top.min() == 0 and top.max() == 8 and left.min() == 0 and left.max() == 8
    # Binomial(4000, 1/2): sd = 31.6; 5 sd = 158
    assert abs(int(flipped.sum()) - 2000) < 158
    # every offset equally likely: 4000/9 = 444 each, sd ~ 20
    assert (torch.bincount(top, minlength=9) - 444).abs().max() < 100
    _, _, none = augment_params(100, g, flip=False)
    assert not none.any()
    x = _images(n=8)
    assert torch.equal(augment_batch(x, g, flip=False, pad=0), x)


def test_augment_matches_per_image_torchvision_reference():
    x = _images(n=40)
    g = torch.Generator().manual_seed(11)
    top, left, flipped = augment_params(len(x), torch.Generator().manual_seed(11))
    fast = augment_batch(x, g)
    ref = []
    for i in range(len(x)):
        img = TF.pad(x[i], [4, 4, 4, 4], fill=0)
        img = TF.crop(img, int(top[i]), int(left[i]), 32, 32)
        if flipped[i]:
            img = TF.horizontal_flip(img)
        ref.append(img)
    assert torch.equal(fast, torch.stack(ref))
    assert torch.equal(apply_augment(x, top, left, flipped), fast)


def test_augment_rejects_bad_input():
    with pytest.raises(ValueError, match="N x C x H x W"):
        augment_batch(torch.zeros(3, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="pad"):
        augment_batch(torch.zeros(1, 3, 32, 32), torch.Generator(), pad=-1)


@pytest.mark.slow
def test_mnist5k_is_a_fixed_stratified_low_data_split():
    from locolib.data import MNIST5K_TRAIN, dataset_spec

    d = load_dataset("mnist5k")
    assert d.x_train.shape == (MNIST5K_TRAIN, 1, 32, 32) and d.x_test.shape == (4000, 1, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.num_classes == 10
    assert torch.bincount(d.y_train).tolist() == [100] * 10, "100 training images per class"
    assert torch.bincount(d.y_test).tolist() == [400] * 10
    # 28 x 28 digits zero-padded by 2 pixels: the border is empty, the digits are not resized
    assert d.x_train[..., :2, :].max() == 0 and d.x_train[..., -2:].max() == 0
    again = load_dataset("mnist5k")
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    other = load_dataset("mnist5k", seed=1)
    assert not torch.equal(other.y_train, d.y_train) or not torch.equal(other.x_train, d.x_train)
    spec = dataset_spec("mnist5k")
    assert (spec.n_train, spec.n_test, spec.channels, spec.offline, spec.flip) == (1000, 4000, 1, True, False)


def test_a_registered_dataset_is_one_entry(monkeypatch):
    from locolib import data as D

    def toy(root, download, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (20, 1, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.arange(20) % 2
        return D.ImageData("toy", x[:12], y[:12], x[12:], y[12:], 2)

    monkeypatch.setitem(D.DATASETS, "toy", D.DatasetSpec(toy, 2, 1, 12, 8, "random pixels", offline=True))
    assert load_dataset("toy").x_test.shape == (8, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown dataset 'toys'.*register one"):
        load_dataset("toys")


def test_the_validation_split_is_disjoint_stratified_and_drawn_by_the_data_seed():
    from locolib.data import validation_split

    y = torch.arange(10).repeat_interleave(400)  # mnist5k's held-out images: 400 per class
    val, test = validation_split(y, 2000, seed=3)
    assert len(val) == len(test) == 2000
    assert not set(val.tolist()) & set(test.tolist())
    assert sorted(val.tolist() + test.tolist()) == list(range(4000))
    assert torch.bincount(y[val]).tolist() == [200] * 10 == torch.bincount(y[test]).tolist()
    again, _ = validation_split(y, 2000, seed=3)
    other, _ = validation_split(y, 2000, seed=4)
    assert torch.equal(val, again) and not torch.equal(val, other)
    with pytest.raises(ValueError, match="between 0 and the 4000 held-out images"):
        validation_split(y, 4000, seed=0)
