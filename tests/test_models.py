"""The networks of Table 3 (VGG13, MobileNet adaptations) and the CIFAR ResNet18."""

import math

import pytest
import torch
from torch import nn

from locolib.kernels import spatial_convs
from locolib.models import MODEL_NAMES, build_model

torch.set_num_threads(1)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_ch", [1, 3])
def test_output_shapes(name, in_ch):
    torch.manual_seed(0)
    m = build_model(name, 7, in_channels=in_ch, width=1 / 16).eval()
    out = m(torch.randn(2, in_ch, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_vgg13_parameter_count():
    # conv kernels (no bias), C_in -> C_out, 3 x 3 each
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512)]
    conv = sum(9 * a * b for a, b in chans)
    assert conv == 9 * (192 + 4096 + 8192 + 16384 + 32768 + 65536 + 131072 + 3 * 262144) == 9_402_048
    bn = sum(2 * b for _, b in chans)  # gamma and beta
    assert bn == 5_888
    fc = 512 * 10 + 10
    assert n_params(build_model("vgg13", 10)) == conv + bn + fc == 9_413_066


def test_mobilenet_parameter_count():
    stem = 3 * 3 * 3 * 64 + 2 * 64
    dw_ch = [64, 64, 128, 128, 256, 256, 256, 512, 512]  # depthwise input depths (Table 3)
    pw = [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
          (512, 512), (512, 512)]
    dw = sum(9 * c + 2 * c for c in dw_ch)
    pwc = sum(a * b + 2 * b for a, b in pw)
    fc = 512 * 10 + 10
    assert stem + dw + pwc + fc == 884_042
    assert n_params(build_model("mobilenet", 10)) == 884_042


def test_resnet18_parameter_count():
    def conv(a, b, k=3):
        return k * k * a * b

    def bn(c):
        return 2 * c

    total = conv(3, 64) + bn(64)
    cin = 64
    for _i, c in enumerate([64, 128, 256, 512]):
        for _j in range(2):
            total += conv(cin, c) + bn(c) + conv(c, c) + bn(c)
            if cin != c:  # projection shortcut (first block of stages 2-4)
                total += conv(cin, c, 1) + bn(c)
            cin = c
    total += 512 * 10 + 10
    assert total == 11_173_962  # the torchvision-style CIFAR ResNet18
    assert n_params(build_model("resnet18", 10)) == total


def test_layer_structure():
    vgg = build_model("vgg13", 10)
    mob = build_model("mobilenet", 10)
    res = build_model("resnet18", 10)
    assert len(spatial_convs(vgg)) == 10
    # Table 3 MobileNet: the 3x3 stem + 9 depthwise 3x3 layers (and 9 pointwise 1x1 layers)
    assert len(spatial_convs(mob)) == 10
    convs = [m for m in mob.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19
    dws = [c for c in convs if c.groups > 1]
    assert [c.in_channels for c in dws] == [64, 64, 128, 128, 256, 256, 256, 512, 512]
    assert all(c.groups == c.in_channels == c.out_channels for c in dws)
    assert [c.stride[0] for c in dws] == [2, 1, 2, 1, 1, 2, 1, 1, 2]
    pws = [c for c in convs if c.kernel_size == (1, 1)]
    assert [c.out_channels for c in pws] == [64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert len(spatial_convs(res)) == 17  # stem + 8 blocks x 2
    assert sum(1 for m in res.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)) == 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in res.modules())
    # BatchNorm (and ReLU) after every conv in the Table 3 networks
    for m in (vgg, mob):
        mods = list(m.features.modules())
        for i, mod in enumerate(mods):
            if isinstance(mod, nn.Conv2d):
                assert isinstance(mods[i + 1], nn.BatchNorm2d) and isinstance(mods[i + 2], nn.ReLU)
                assert mod.bias is None
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5


def test_feature_map_sizes():
    """Table 3 reduces 32x32 to 1x1 before the FC layer (VGG: 5 max-pools; MobileNet: 4 stride-2
    depthwise layers + one max-pool)."""
    torch.manual_seed(0)
    for name in ("vgg13", "mobilenet"):
        m = build_model(name, 10, width=1 / 16).eval()
        assert m.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (1, 1)


def test_5x5_variant():
    # 5x5 where the input map is larger than 5 (32, 16, 8), 3x3 on the 4x4 and 2x2 maps
    vgg = build_model("vgg13", 100, kernel_size=5, width=1 / 16)
    assert [c.kernel_size[0] for c in spatial_convs(vgg)] == [5] * 6 + [3] * 4
    mob = build_model("mobilenet", 10, kernel_size=5, width=1 / 16)
    # stem 32, dw on maps 32, 16, 16, 8, 8, 8, 4, 4, 4
    assert [c.kernel_size[0] for c in spatial_convs(mob)] == [5] * 7 + [3] * 3
    res = build_model("resnet18", 10, kernel_size=5, width=1 / 16)
    # stem + stage1 (32) + stage2 (first conv on 32, the rest 16) + stage3 (16, then 8), stage4 first on 8
    assert [c.kernel_size[0] for c in spatial_convs(res)] == [5] * 14 + [3] * 3
    for m in (vgg, mob, res):
        assert m(torch.randn(2, 3, 32, 32)).shape[0] == 2


def test_width_scaling_and_errors():
    m = build_model("vgg13", 10, width=0.5)
    assert [c.out_channels for c in spatial_convs(m)] == [32, 32, 64, 64, 128, 128, 256, 256, 256, 256]
    tiny = build_model("mobilenet", 10, width=0.01)
    assert min(c.out_channels for c in tiny.modules() if isinstance(c, nn.Conv2d)) == 4
    with pytest.raises(ValueError, match="vgg13.*mobilenet.*resnet18"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="kernel_size"):
        build_model("vgg13", 10, kernel_size=4)
    with pytest.raises(ValueError, match="init"):
        build_model("vgg13", 10, init="xavier")


def test_keras_init_bounds():
    torch.manual_seed(0)
    m = build_model("mobilenet", 10, init="keras", conv_bias=True)
    stem = m.features[0][0]
    assert stem.weight.abs().max() <= math.sqrt(6 / (27 + 9 * 64))
    assert stem.weight.abs().max() > 0.9 * math.sqrt(6 / (27 + 9 * 64))
    assert stem.bias.abs().max() == 0
    dw = m.features[1][0]  # Keras DepthwiseConv2D fans: 9 * C and 9
    assert dw.weight.abs().max() <= math.sqrt(6 / (9 * 64 + 9))
    assert dw.weight.abs().max() > 0.9 * math.sqrt(6 / (9 * 64 + 9))


def test_a_registered_network_is_one_entry(monkeypatch):
    from locolib import models as M

    class Tiny(nn.Module):
        def __init__(self, num_classes, in_channels, width, kernel_size, conv_bias, min_channels):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, kernel_size, padding=kernel_size // 2, bias=conv_bias)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    monkeypatch.setitem(M.NETWORKS, "tiny", M.NetworkSpec(Tiny, "one convolution"))
    model = build_model("tiny", 3, in_channels=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown network 'tinier'.*register one"):
        build_model("tinier", 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_padding_mode_reaches_every_padded_convolution(name, mode):
    def build(padding_mode):
        torch.manual_seed(0)
        # train(): BatchNorm on batch statistics keeps an untrained net's maps away from zero
        return build_model(name, 10, in_channels=1, width=1 / 16, padding_mode=padding_mode).train()

    zeros, other = build("zeros"), build(mode)
    padded = [m for m in other.modules() if isinstance(m, nn.Conv2d) and max(m.padding) > 0]
    assert padded and all(m.padding_mode == mode for m in padded)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(zeros(x), other(x)), "same weights, other padding, other output"
    conv = padded[0]
    y = conv(torch.ones(1, conv.in_channels, 8, 8))
    # A constant map stays constant: no zeros under the border taps.
    assert torch.allclose(y[..., 0, 0], y[..., 4, 4], atol=1e-6)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        build_model(name, 10, padding_mode="replicate!")
