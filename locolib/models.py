"""The paper's networks for 32 x 32 inputs: VGG13 and MobileNet adaptations (Table 3), ResNet18.

Conventions (the paper's TensorFlow models are not available, so these are choices):

* Every convolution is followed by BatchNorm and ReLU (Table 3 caption). Convolutions have no
  bias by default (``conv_bias=False``): BatchNorm's shift makes it redundant, and the
  regularizer never touches biases anyway. Padding is "same" (k // 2), with zeros by default;
  ``padding_mode`` ("reflect", "circular") pads every convolution of any registered network
  with copies of the map instead (the padding study, chapter 07).
* ``width`` multiplies every channel count (``max(min_channels, round(c * width))``) for scaled-down
  runs; the input channels and the classifier output are not scaled.
* ``kernel_size=5`` is the paper's 5x5 variant (Section 7.1): a spatial convolution becomes 5x5
  when the width/height of its *input* feature map (for a 32 x 32 input) is larger than 5, i.e. at
  32, 16 and 8 pixels; convolutions on 4x4 and 2x2 maps stay 3x3. For VGG13 that is layers 1-6.
  The same rule is applied to MobileNet and ResNet18 (not done in the paper).
* ``init="torch"`` keeps PyTorch's default initialisation; ``init="keras"`` uses Keras defaults
  (Glorot-uniform kernels, zero biases) as in the paper's TensorFlow code.

Table 3 quirk: its VGG13 column prints every filter as 3x3x3xC_out; the input depth is of course
the previous layer's C_out (64, 128, ...), as implemented here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["build_model", "MODEL_NAMES", "PADDING_MODES", "NETWORKS", "NetworkSpec", "VGG13", "MobileNet",
           "ResNet18", "BasicBlock"]

INPUT_SIZE = 32
#: How a convolution pads its input (``torch.nn.Conv2d``'s ``padding_mode``); "zeros" is the default.
PADDING_MODES = ("zeros", "reflect", "circular")


def _ch(c: int, width: float, min_channels: int) -> int:
    return max(min_channels, int(round(c * width)))


def _spatial_k(map_size: int, kernel_size: int) -> int:
    """Kernel for a conv on a map_size x map_size input: kernel_size if the map is larger, else 3."""
    return kernel_size if map_size > kernel_size else 3


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
    """A k x k convolution (same padding), BatchNorm and ReLU: the block of the book's networks.
    (Chapters 04-07; Table 3)"""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class VGG13(nn.Module):
    """Table 3 VGG13: [64, 64, MP, 128, 128, MP, 256, 256, MP, 512, 512, MP, 512, 512, MP], FC.
    (Chapters 04-07; Table 3)
    """

    cfg = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 kernel_size: int = 3, conv_bias: bool = False, min_channels: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, INPUT_SIZE
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                cout = _ch(v, width, min_channels)
                layers.append(conv_bn_relu(cin, cout, _spatial_k(size, kernel_size), bias=conv_bias))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)  # 1 x 1 x 512 after five max-pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class MobileNet(nn.Module):
    """Table 3 MobileNet: 3x3 conv 64 (s1), 9 (depthwise 3x3 + pointwise 1x1) pairs, MP 2x2, FC.
    (Chapters 04-07; Table 3)
    """

    # (depthwise stride, pointwise output channels); the depthwise layer keeps its input depth.
    cfg = ((2, 64), (1, 128), (2, 128), (1, 256), (1, 256), (2, 256), (1, 512), (1, 512), (2, 512))

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 kernel_size: int = 3, conv_bias: bool = False, min_channels: int = 4) -> None:
        super().__init__()
        c0 = _ch(64, width, min_channels)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, c0, _spatial_k(INPUT_SIZE, kernel_size),
                                                bias=conv_bias)]
        cin, size = c0, INPUT_SIZE
        for stride, cout in self.cfg:
            cout = _ch(cout, width, min_channels)
            k = _spatial_k(size, kernel_size)
            layers.append(conv_bn_relu(cin, cin, k, stride=stride, groups=cin, bias=conv_bias))
            layers.append(conv_bn_relu(cin, cout, 1, bias=conv_bias))
            cin, size = cout, size // stride
        layers.append(nn.MaxPool2d(2, 2))  # 2 x 2 -> 1 x 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, ReLU between/after, 1x1 conv-BN projection shortcut.
    (Chapters 04-07; Table 3)
    """

    def __init__(self, cin: int, cout: int, stride: int, k1: int = 3, k2: int = 3,
                 bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, k1, stride=stride, padding=k1 // 2, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, k2, stride=1, padding=k2 // 2, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet18: 3x3 stem conv 64 (no max-pool), BasicBlocks [2, 2, 2, 2] with 64-512
    channels (strides 1, 2, 2, 2), global average pooling, FC. (Chapters 04-07; Table 3)"""

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 kernel_size: int = 3, conv_bias: bool = False, min_channels: int = 4) -> None:
        super().__init__()
        c0 = _ch(64, width, min_channels)
        k0 = _spatial_k(INPUT_SIZE, kernel_size)
        self.conv1 = nn.Conv2d(in_channels, c0, k0, padding=k0 // 2, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(c0)
        cin, size, stages = c0, INPUT_SIZE, []
        for i, c in enumerate((64, 128, 256, 512)):
            cout = _ch(c, width, min_channels)
            blocks = []
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                k1, k2 = _spatial_k(size, kernel_size), _spatial_k(size // stride, kernel_size)
                blocks.append(BasicBlock(cin, cout, stride, k1, k2, conv_bias))
                cin, size = cout, size // stride
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def _keras_init_(model: nn.Module) -> None:
    """Glorot-uniform kernels with Keras' fans, zero biases.

    Keras kernels are (kh, kw, C_in, C_out): fan_in = kh*kw*C_in, fan_out = kh*kw*C_out. A
    DepthwiseConv2D kernel is (kh, kw, C, 1), so Keras uses fan_in = kh*kw*C, fan_out = kh*kw.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            rf = w[0, 0].numel() if w.ndim > 2 else 1
            fan_in, fan_out = w.shape[1] * rf, w.shape[0] * rf
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
                fan_in, fan_out = m.in_channels * rf, rf
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            with torch.no_grad():
                w.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: a class built as ``cls(num_classes, in_channels, width, kernel_size,
    conv_bias, min_channels)`` for 32 x 32 inputs, and a line for readers. (Chapters 04-07; Table 3)"""

    cls: Callable[..., nn.Module]
    description: str


#: The networks by name. Adding one is one entry here (plus a test): a module for 32 x 32 inputs
#: with the constructor of :class:`NetworkSpec`.
NETWORKS: dict[str, NetworkSpec] = {
    "vgg13": NetworkSpec(VGG13, "VGG13 of Table 3: ten 3x3 convolutions with BatchNorm, one FC"),
    "mobilenet": NetworkSpec(MobileNet, "MobileNet of Table 3: depthwise 3x3 + pointwise 1x1"),
    "resnet18": NetworkSpec(ResNet18, "ResNet18 for 32x32 inputs (3x3 stem, no max-pool)"),
}
#: The built-in network names (:data:`NETWORKS` is the registry).
MODEL_NAMES = tuple(NETWORKS)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    kernel_size: int = 3,
    conv_bias: bool = False,
    min_channels: int = 4,
    init: str = "torch",
    padding_mode: str = "zeros",
) -> nn.Module:
    """Build a registered network (:data:`NETWORKS`) for 32 x 32 inputs (see module doc).

    Initialisation draws from torch's global RNG: call ``torch.manual_seed`` first for a
    reproducible model. ``padding_mode`` (:data:`PADDING_MODES`) is set on every padded
    convolution after construction, so registered networks need not know about it. (Chapters 04-07)
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {list(NETWORKS)} "
                         "(or register one in locolib.models.NETWORKS)")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    model = NETWORKS[name].cls(num_classes, in_channels, width, kernel_size, conv_bias, min_channels)
    if init == "keras":
        _keras_init_(model)
    elif init != "torch":
        raise ValueError(f"init must be 'torch' or 'keras', got {init!r}")
    for m in model.modules():
        # Conv2d pads with F.pad(mode=padding_mode) in forward whenever the mode is not "zeros";
        # the padding widths it uses are fixed at construction, so setting the mode here suffices.
        if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
            m.padding_mode = padding_mode
    return model
