"""The kernel vocabulary of the book: sizes, rings and distances, index sets, significance stars,
the spatial kernels of any network (torch modules and ONNX graphs), and the per-layer weight
statistics a training record keeps of them (:func:`weight_stats`).

Every module that speaks about taps of a k x k kernel uses this one: :mod:`locolib.reg`
(LOCO-REG's masks, Table 6), :mod:`locolib.locality` (Eq. 7.1, Table 4), :mod:`locolib.cohesion`
(rings of Theorem 1), :mod:`locolib.locate` (window sizes), :mod:`locolib.inspection` and
:mod:`locolib.pretrained`; chapter 07 reads networks trained elsewhere with :func:`from_onnx`.

Rings. A k x k kernel (k odd) has its centre at c = (k - 1) / 2. Its taps fall into rings of
equal squared distance d2 = (i - c)^2 + (j - c)^2 from the centre, nearest first, named

    d2 = 0 "c" (centre), 1 "n" (the 4 edge neighbours), 2 "co" (the 4 diagonal neighbours: the
    corners of a 3 x 3), and every further d2 "r" if d2 = r^2 ("2", "3", ...), else "sqrt<d2>"
    ("sqrt5", "sqrt8", "sqrt10", ...).

For k = 3 that gives Eq. 6.1's I_c, I_n, I_co; for k = 5 the paper's six sets I_c, I_n, I_co,
I_2, I_sqrt5, I_sqrt8. An index set (:func:`index_set`) is a ring name, one of the aliases
"centre"/"center", "<r>" (distance r, d2 = r^2: "0", "1", "2") and "sqrt<d2>" for any ring
("sqrt1", "sqrt2", "sqrt4"), or an explicit collection of (row, col) positions.

Stars (Tables 4 and 5): *** p < .001, ** p < .01, * p < .1, the paper's levels (none at .05).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "weight_stats",
    "Position",
    "IndexSpec",
    "check_k",
    "squared_distances",
    "ring_names",
    "ring_distances",
    "ring_index",
    "rings",
    "index_set",
    "index_mask",
    "spec_name",
    "stars",
    "spatial_convs",
    "spatial_kernels",
    "ConvKernel",
    "from_onnx",
    "select",
]

Position = tuple[int, int]
IndexSpec = str | Collection[Sequence[int]]


# --------------------------------------------------------------------------------------------
# Sizes, rings and index sets
# --------------------------------------------------------------------------------------------
def check_k(k: Any, odd: bool = True) -> int:
    """``k`` as an int if it is a valid kernel (or window) size: a positive integer, and odd unless
    ``odd=False`` (an odd kernel has a centre tap). TypeError for a non-integer, else ValueError.
    (Chapters 01, 03-07)
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"a kernel size k must be an integer, got {k!r}")
    if k < 1 or (odd and k % 2 == 0):
        need = "an odd k >= 1 (3, 5, 7, ...): a k x k kernel needs a centre tap" if odd \
            else "a positive integer"
        raise ValueError(f"kernel size k = {k} is not valid: it must be {need}")
    return int(k)


def _by_d2(k: int) -> dict[int, tuple[Position, ...]]:
    """Positions of a k x k kernel grouped by squared distance from the centre, nearest first."""
    c = check_k(k) // 2
    groups: dict[int, list[Position]] = {}
    for i in range(k):
        for j in range(k):
            groups.setdefault((i - c) ** 2 + (j - c) ** 2, []).append((i, j))
    return {d2: tuple(groups[d2]) for d2 in sorted(groups)}


def squared_distances(k: int) -> list[int]:
    """The distinct squared distances of the taps of a k x k kernel from its centre, increasing. (Chapters 01, 04-07)"""
    return list(_by_d2(k))


def _ring_name(d2: int) -> str:
    special = {0: "c", 1: "n", 2: "co"}
    if d2 in special:
        return special[d2]
    r = math.isqrt(d2)
    return str(r) if r * r == d2 else f"sqrt{d2}"


def ring_names(k: int) -> list[str]:
    """The ring names of a k x k kernel, nearest first: ``ring_names(5)`` is
    ``["c", "n", "co", "2", "sqrt5", "sqrt8"]``. (Chapters 04-07)"""
    return [_ring_name(d2) for d2 in squared_distances(k)]


def ring_distances(k: int) -> list[float]:
    """Distinct distances from the centre of a k x k kernel, increasing.

    ``ring_distances(3) == [0, 1, sqrt(2)]``; ``ring_distances(5) == [0, 1, sqrt2, 2, sqrt5, sqrt8]``. (Chapters 04-07)
    """
    return [math.sqrt(d2) for d2 in squared_distances(k)]


def ring_index(k: int) -> torch.Tensor:
    """k x k int64 tensor: the ring (position in :func:`ring_distances`) of every tap. (Chapters 04-07)"""
    index = torch.empty(check_k(k), k, dtype=torch.int64)
    for r, positions in enumerate(_by_d2(k).values()):
        for p in positions:
            index[p] = r
    return index


def rings(k: int) -> dict[str, tuple[Position, ...]]:
    """The rings of a k x k kernel (k odd) by name, nearest first, with their (row, col) positions.
    (Chapters 01, 04-07)
    """
    return {_ring_name(d2): positions for d2, positions in _by_d2(k).items()}


def _parse_ring(name: str) -> int | None:
    """Squared distance named by a ring name or alias, None if it is not one."""
    key = name.strip().lower()
    fixed = {"c": 0, "centre": 0, "center": 0, "n": 1, "co": 2}
    if key in fixed:
        return fixed[key]
    if key.isdigit():
        return int(key) ** 2
    if key.startswith("sqrt") and key[4:].isdigit():
        return int(key[4:])
    return None


def index_set(spec: IndexSpec, k: int = 3) -> tuple[Position, ...]:
    """The (row, col) positions of a k x k kernel named by ``spec`` (see the module docstring):
    a ring name or alias, or explicit positions (checked: inside the kernel, none repeated). (Chapters 04-07)"""
    groups = _by_d2(k)
    if isinstance(spec, str):
        d2 = _parse_ring(spec)
        if d2 is None:
            raise ValueError(f"unknown index set {spec!r}; rings of a {k} x {k} kernel are "
                             f"{ring_names(k)} (or pass explicit (row, col) positions)")
        if d2 not in groups:
            raise ValueError(f"a {k} x {k} kernel has no ring at squared distance {d2} from its "
                             f"centre ({spec!r}); its rings are {ring_names(k)}")
        return groups[d2]
    positions = tuple(tuple(int(v) for v in p) for p in spec)
    if not positions:
        raise ValueError("an explicit index set must not be empty")
    for p in positions:
        if len(p) != 2 or not all(0 <= v < k for v in p):
            raise ValueError(f"position {p} is not a (row, col) index of a {k} x {k} kernel")
    if len(set(positions)) != len(positions):
        raise ValueError(f"explicit index set {positions} repeats a position")
    return positions  # type: ignore[return-value]


def index_mask(spec: IndexSpec, k: int) -> np.ndarray:
    """k x k boolean array, True on the positions of :func:`index_set`. (Chapters 04, 07)"""
    mask = np.zeros((k, k), dtype=bool)
    for p in index_set(spec, k):
        mask[p] = True
    return mask


def spec_name(spec: IndexSpec) -> str:
    """A printable name of an index set: the name itself, or the tuple of positions. (Chapter 07)"""
    return spec if isinstance(spec, str) else repr(tuple(tuple(p) for p in spec))


# --------------------------------------------------------------------------------------------
# Significance
# --------------------------------------------------------------------------------------------
def stars(p: float | None) -> str:
    """The paper's significance code (Tables 4 and 5): *** p < .001, ** p < .01, * p < .1.

    No p-value (None or NaN, e.g. too few runs for a test) gives "" ; a number outside [0, 1] is
    an error. (Chapter 07)
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    if not 0 <= p <= 1:
        raise ValueError(f"a p-value lies in [0, 1], got {p}")
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.1 else ""


# --------------------------------------------------------------------------------------------
# Spatial kernels of torch modules
# --------------------------------------------------------------------------------------------
def spatial_convs(model: nn.Module, k: int | None = None) -> list[nn.Conv2d]:
    """Every ``nn.Conv2d`` (grouped and depth-wise included) with spatial extent > 1, in
    ``modules()`` order (for sequential networks: input side first).

    ``k=None``: all of them, as LOCO-REG and ``weight_stats`` need; a non-square or even kernel
    (no centre tap) is a ValueError. ``k`` given: only the k x k ones (the layers W_l of Eq. 7.1);
    others, such as InceptionV3's 1 x 3 and 3 x 1 kernels, are left out. (Chapters 04-07)
    """
    out = []
    for m in model.modules():
        if not isinstance(m, nn.Conv2d) or tuple(m.kernel_size) == (1, 1):
            continue
        kh, kw = m.kernel_size
        if k is not None:
            if (kh, kw) == (k, k):
                out.append(m)
            continue
        if kh != kw:
            raise ValueError(f"LOCO-REG needs square kernels, got {kh}x{kw} in {m}")
        if kh % 2 == 0:
            raise ValueError(f"LOCO-REG needs an odd kernel size (a centre tap), got {kh}x{kw} in {m}")
        out.append(m)
    return out


def spatial_kernels(model: nn.Module, k: int | None = None) -> list[torch.Tensor]:
    """The weights (C_out, C_in / groups, k, k) of :func:`spatial_convs`, detached, in order. (Chapters 04-07)"""
    return [m.weight.detach() for m in spatial_convs(model, k)]


# --------------------------------------------------------------------------------------------
# Spatial kernels of ONNX graphs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ConvKernel:
    """The weight of one 2-D convolution of a graph: ``weight`` (C_out, C_in / groups, kh, kw).

    Behaves as its weight array where an array is expected (``np.asarray(layer)``), so a list of
    square ones goes straight into :func:`locolib.locality.m_score` and the Table 4 functions. (Chapter 07)
    """

    name: str
    weight: np.ndarray
    groups: int = 1

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return int(self.weight.shape[-2]), int(self.weight.shape[-1])

    @property
    def square(self) -> bool:
        kh, kw = self.kernel_shape
        return kh == kw

    @property
    def k(self) -> int | None:
        """The kernel size of a square kernel, None for 1 x k or k x 1 ones."""
        return self.kernel_shape[0] if self.square else None

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    @property
    def kind(self) -> str:
        """"depthwise" (one input channel per group), "grouped", or "dense" (groups = 1)."""
        if self.groups == 1:
            return "dense"
        return "depthwise" if self.weight.shape[1] == 1 else "grouped"

    @property
    def matrices(self) -> int:
        """The number of kh x kw matrices: one per output channel and input channel of its group."""
        return int(self.weight.shape[0] * self.weight.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.weight, dtype=dtype)


def _onnx_constants(graph: Any) -> dict[str, np.ndarray]:
    """Every tensor whose value the graph fixes: initializers, Constant nodes, and Identity of those."""
    from onnx import helper, numpy_helper  # noqa: PLC0415 -- optional dependency (locolib[book])

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_floats"):
                    values[node.output[0]] = np.asarray(helper.get_attribute_value(attr), np.float32)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def from_onnx(model: str | Path | Any) -> list[ConvKernel]:
    """The spatial kernels of every 2-D convolution with a kernel larger than 1 x 1 in an ONNX
    graph, one :class:`ConvKernel` per ``Conv`` node in graph order (input side first).

    ``model``: a path to an ``.onnx`` file or a loaded ``onnx.ModelProto``. Weights may be
    initializers or outputs of ``Constant`` nodes (PaddlePaddle exports store them so), also
    behind an ``Identity``. Grouped and depth-wise convolutions keep their (C_out, 1, k, k)
    weights and their ``groups``. 1 x k and k x 1 kernels are returned too, marked by
    ``square == False``: they are not k x k matrices, so :func:`select` leaves them out and a
    chapter reports them apart. 1 x 1 convolutions, ``ConvTranspose``, quantised ``ConvInteger``
    and convolutions that are not 2-D are not spatial k x k kernels and are not returned. A
    ``Conv`` whose weight is computed at run time is an error, and so is a file that is not an
    ONNX model (an empty one, say). (Chapter 07)
    """
    import onnx  # noqa: PLC0415 -- optional dependency (locolib[book])

    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        from google.protobuf.message import DecodeError  # noqa: PLC0415 -- onnx's dependency

        try:
            proto = onnx.load(str(model))
        except DecodeError as err:
            raise ValueError(f"{model}: not an ONNX model ({err})") from None
        if proto.ir_version == 0:  # every ONNX file states its IR version; an empty one parses
            raise ValueError(f"{model}: not an ONNX model (empty, or no IR version)")
    graph = proto.graph
    values = _onnx_constants(graph)
    out = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0] or f"Conv_{index}"
        if node.input[1] not in values:
            raise ValueError(f"Conv node {name!r}: its weight {node.input[1]!r} is neither an "
                             "initializer nor the output of a Constant node")
        weight = values[node.input[1]]
        if weight.ndim != 4 or weight.shape[-2] * weight.shape[-1] == 1:
            continue
        groups = next((onnx.helper.get_attribute_value(a) for a in node.attribute
                       if a.name == "group"), 1)
        weight = np.array(weight, copy=True)
        weight.setflags(write=False)
        out.append(ConvKernel(name=name, weight=weight, groups=int(groups)))
    return out


def select(layers: Iterable[ConvKernel], k: int | None = None,
           kind: str | Sequence[str] | None = None) -> list[ConvKernel]:
    """The square layers of ``layers`` (k x k with k = ``k`` if given), of ``kind`` if given
    ("dense", "depthwise", "grouped", or several), in their order. (Chapter 07)"""
    kinds = None if kind is None else {kind} if isinstance(kind, str) else set(kind)
    return [layer for layer in layers if layer.square and (k is None or layer.k == k)
            and (kinds is None or layer.kind in kinds)]


def weight_stats(model: nn.Module) -> list[dict[str, Any]]:
    """Compact per-layer statistics of the spatial kernels, enough for Tables 4 and 6 later
    without storing the weights.

    One entry per spatial convolution (module order, as LOCO-REG's per-layer parameters):
    ``name``, ``shape``, ``count`` (number of k x k matrices w), the k x k sums over them of
    ``w`` (``tap_sum``), ``|w|`` (``tap_abs_sum``) and ``w**2`` (``tap_sq_sum``), and for
    consecutive rings r, r+1 around the centre (:func:`ring_distances`: for 3x3
    centre, edge neighbours, corners) the
    sums over w of ``s = m(w, ring r) - m(w, ring r+1)`` and ``s**2`` (``ring_diff_sum``,
    ``ring_diff_sq_sum``; ``ring_abs_diff_*`` the same on |w|). So every sum of m(w, I) in Table 6
    is ``tap_sum`` summed over I / |I|, and Table 4's per-layer mean and (population) spread of
    s(w, I_c, I_n), s(w, I_n, I_co) follow from ``count`` and the two sums. (Chapters 04-07)
    """
    out = []
    names = {id(m): n for n, m in model.named_modules()}
    for conv in spatial_convs(model):
        w = conv.weight.detach().double().cpu()
        k = w.shape[-1]
        flat = w.reshape(-1, k * k)
        rings = ring_index(k).reshape(-1)
        n_rings = len(ring_distances(k))
        entry: dict[str, Any] = {"name": names.get(id(conv), ""), "shape": list(w.shape),
                                 "count": int(flat.shape[0]), "k": k,
                                 "ring_distances": ring_distances(k)}
        # w**2 per tap: the realized penalty of any mask (locolib.reg.realized_factor)
        entry["tap_sq_sum"] = flat.square().sum(0).reshape(k, k).tolist()
        for tag, v in (("", flat), ("abs_", flat.abs())):
            entry[f"tap_{tag}sum"] = v.sum(0).reshape(k, k).tolist()
            ring_means = torch.stack([v[:, rings == r].mean(1) for r in range(n_rings)], 1)
            diff = ring_means[:, :-1] - ring_means[:, 1:]  # s(w, ring r, ring r+1)
            entry[f"ring_{tag}diff_sum"] = diff.sum(0).tolist()
            entry[f"ring_{tag}diff_sq_sum"] = diff.square().sum(0).tolist()
        out.append(entry)
    return out
