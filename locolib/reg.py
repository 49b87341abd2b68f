"""LOCO-REG: locality-promoting, spatially weighted L2 regularization (Section 6, Eq. 6.1).

Every k x k spatial convolution kernel ``w`` contributes ``lam * sum_ij g_ij * w_ij**2`` to the
loss, where the weight profile ``g`` depends only on the distance of tap (i, j) from the kernel
centre and has mean 1 (Eq. 6.1: ``g = (gamma, 1, eta) / Z`` for centre, edge neighbours and corners
with ``Z = (gamma + 4 (1 + eta)) / 9``). ``gamma = eta = 1`` is uniform ("standard") L2.

Strength convention. The paper used TensorFlow, whose ``l2(lam)`` regularizer adds
``lam * sum(w**2)`` to the loss, i.e. the gradient ``2 * lam * w``. PyTorch's optimizer argument
``weight_decay=lam`` adds ``lam * w`` to the gradient, i.e. it is *half* as strong. Everything here
follows the paper: the loss term is ``lam * sum(mask * w**2)`` and its gradient
``2 * lam * mask * w``; to reproduce uniform L2 with a PyTorch optimizer one would need
``weight_decay = 2 * lam``.

Two equivalent ways to apply it:

* :func:`loco_penalty` (or :meth:`LocoDecay.penalty`): a loss term, differentiated by autograd;
* :class:`LocoDecay`: the same gradient added in place after ``backward()`` with fused
  ``torch._foreach_*`` ops (coupled decay, like ``weight_decay`` in SGD), which avoids building
  an autograd graph for the penalty.

The module also holds the Table 6 helpers that derive per-layer ``(gamma_l, eta_l)`` from the
weights of trained networks or from their records (:func:`layer_ratios`, :func:`modulate`,
:func:`table6_parameters`, :func:`table6_frame`, :func:`table6_loco_params`), and
:func:`l2_equivalence`, which measures TensorFlow's L2 strength against PyTorch's
``weight_decay``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn

from locolib.kernels import (
    IndexSpec,
    Position,
    check_k,
    index_set,
    ring_distances,
    ring_index,
    spatial_convs,
    spatial_kernels,
    squared_distances,
)

__all__ = [
    "ring_weights",
    "loco_mask",
    "loco_penalty",
    "LocoDecay",
    "PERMUTATION_3X3",
    "permuted_mask",
    "realized_factor",
    "region_mean",
    "layer_ratios",
    "modulate",
    "table6_parameters",
    "per_model_ratios",
    "table6_frame",
    "table6_loco_params",
    "l2_equivalence",
    "I_C",
    "I_N",
    "I_CO",
    "Regularizer",
    "RegularizerSpec",
    "REGULARIZER_REGISTRY",
    "build_regularizer",
]

Number = float | int
PerLayer = Number | Sequence[Number]

# Index sets of Eq. 6.1 for a 3 x 3 kernel (row, column).
I_C: tuple[Position, ...] = index_set("c", 3)
I_N: tuple[Position, ...] = index_set("n", 3)
I_CO: tuple[Position, ...] = index_set("co", 3)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def _positive(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


def ring_weights(gamma: float, eta: float, k: int = 3, extension: str = "geometric") -> list[float]:
    """Unnormalised weight per ring of a k x k kernel from Eq. 6.1's (gamma, eta).

    Rings at distance 0, 1, sqrt2 get ``gamma``, ``1``, ``eta`` (Eq. 6.1). For k > 3 the paper gives
    no rule; the outer rings (squared distance ``d2 >= 2``) follow ``extension``:

    * ``"geometric"`` (default): ``eta ** (d2 - 1)``, i.e. ``exp((d2 - 1) * ln eta)``. Between the
      edge ring (d2 = 1, weight 1) and the corner ring (d2 = 2, weight eta) the weight changes by a
      factor eta per unit of *squared* distance; continuing that trend gives a Gaussian-shaped
      profile in the distance (the prior variance 1/(2 lam g) of each tap falls off like
      ``exp(-d2 ln eta)``). It reproduces Eq. 6.1 exactly for k = 3, is uniform for eta = 1, and
      keeps the ordering of rings that (1, eta) sets (increasing for eta > 1, decreasing for
      eta < 1). The centre stays at gamma: the paper treats the centre separately.
    * ``"constant"``: every ring beyond sqrt2 gets eta (a flat rim). (Chapters 04-07)
    """
    check_k(k)
    gamma = _positive("gamma", gamma)
    eta = _positive("eta", eta)
    out = []
    for d2 in squared_distances(k):
        if d2 == 0:
            out.append(gamma)
        elif d2 == 1:
            out.append(1.0)
        elif extension == "geometric":
            out.append(eta ** (d2 - 1))
        elif extension == "constant":
            out.append(eta)
        else:
            raise ValueError(f"unknown extension {extension!r}; use 'geometric' or 'constant'")
    return out


def loco_mask(
    gamma: float,
    eta: float,
    k: int = 3,
    rings: Sequence[float] | None = None,
    extension: str = "geometric",
) -> torch.Tensor:
    """The k x k float32 weight profile ``g`` of Eq. 6.1, normalised to mean 1.

    For k = 3: centre ``gamma``, the 4 edge neighbours 1, the 4 corners ``eta``, all divided by
    ``Z = (gamma + 4 (1 + eta)) / 9``. (The text before Eq. 6.1 says g should *sum* to 1, but the Z
    of Eq. 6.1 makes it *average* 1, i.e. sum k*k; we follow the equation, so ``(1, 1)`` gives
    all ones = uniform L2 with the same lam.)

    ``rings``: one positive weight per ring (see :func:`ring_distances`), overriding gamma and eta.
    Without it, k > 3 uses :func:`ring_weights` with ``extension``. (Chapters 04-07)
    """
    check_k(k)
    if rings is None:
        w = ring_weights(gamma, eta, k, extension)
    else:
        n = len(squared_distances(k))
        rings = list(rings)
        if len(rings) != n:
            raise ValueError(
                f"a {k}x{k} kernel has {n} rings at distances "
                f"{[round(d, 3) for d in ring_distances(k)]}; got {len(rings)} ring weights"
            )
        w = [_positive(f"ring weight {i}", v) for i, v in enumerate(rings)]
    mask = torch.tensor(w, dtype=torch.float64)[ring_index(k)]
    return (mask / mask.mean()).to(torch.float32)


#: The permuted-mask control's tap order (row-major 3 x 3): ``mask.flatten()[PERMUTATION_3X3]``.
#: The nine factors stay, their positions change so that no tap keeps a factor of its own ring:
#: the centre gets an edge factor, every edge neighbour a corner factor, the corners the centre's
#: factor (top left) and three edge factors. LOCO-REG (0.5, 2), ``(0.5, 1, 2) / Z`` by ring,
#: becomes ``[[0.5, 2, 1], [2, 1, 2], [1, 2, 1]] / Z``: the same mean and multiset of factors,
#: but not radial (unequal factors within the corners), and its ring means (1, 2, 0.875) / Z
#: neither rise nor fall with the distance from the centre.
PERMUTATION_3X3: tuple[int, ...] = (4, 0, 1, 2, 3, 6, 5, 8, 7)


def permuted_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 ``mask`` with its taps in the order :data:`PERMUTATION_3X3`. (Chapters 04-07)"""
    if tuple(mask.shape) != (3, 3):
        raise ValueError(f"the permuted mask is defined for 3x3 kernels, got shape {tuple(mask.shape)}")
    return mask.reshape(-1)[list(PERMUTATION_3X3)].reshape(3, 3)


# --------------------------------------------------------------------------------------------
# Which weights are regularized
# --------------------------------------------------------------------------------------------
def _per_layer(name: str, v: PerLayer, n: int) -> list[float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [float(v)] * n
    if isinstance(v, torch.Tensor) and v.ndim == 0:
        return [float(v)] * n
    vals = [float(x) for x in v]
    if len(vals) != n:
        raise ValueError(
            f"{name} has {len(vals)} per-layer values but the model has {n} spatial convolutions"
        )
    return vals


def _layer_masks(
    kernel_sizes: Sequence[int],
    gamma: PerLayer,
    eta: PerLayer,
    k_rings: Mapping[int, Sequence[float]] | None,
    extension: str,
    permuted: bool = False,
) -> list[torch.Tensor]:
    n = len(kernel_sizes)
    gs, es = _per_layer("gamma", gamma, n), _per_layer("eta", eta, n)
    k_rings = dict(k_rings or {})
    masks = []
    for k, g, e in zip(kernel_sizes, gs, es):
        mask = loco_mask(g, e, k, rings=k_rings.get(k), extension=extension)
        masks.append(permuted_mask(mask) if permuted else mask)
    return masks


def _sizes(convs: Sequence[nn.Conv2d]) -> list[int]:
    return [c.kernel_size[0] for c in convs]  # square and odd: spatial_convs checked it


def _no_spatial_error(model: nn.Module) -> ValueError:
    return ValueError(
        f"{type(model).__name__} has no spatial convolution (nn.Conv2d with kernel > 1x1): "
        "LOCO-REG has nothing to act on"
    )


def loco_penalty(
    model: nn.Module,
    gamma: PerLayer,
    eta: PerLayer,
    lam: float = 5e-4,
    k_rings: Mapping[int, Sequence[float]] | None = None,
    extension: str = "geometric",
) -> torch.Tensor:
    """``lam * sum(mask * w**2)`` over every spatial convolution kernel of ``model``.

    gamma, eta: floats, or one value per spatial convolution in ``model.modules()`` order
    (Table 6's per-layer parameters). ``k_rings`` maps a kernel size to explicit ring weights.
    1x1 convolutions and dense layers are *not* in this sum (see :class:`LocoDecay`, which adds
    uniform L2 for them). Gradient: ``2 * lam * mask * w`` (TensorFlow convention, see module doc). (Chapters 05, 06)
    """
    convs = spatial_convs(model)
    if not convs:
        raise _no_spatial_error(model)
    masks = _layer_masks(_sizes(convs), gamma, eta, k_rings, extension)
    total = None
    for conv, mask in zip(convs, masks):
        w = conv.weight
        term = (mask.to(device=w.device, dtype=w.dtype) * w.square()).sum()
        total = term if total is None else total + term
    return lam * total


# --------------------------------------------------------------------------------------------
# Optimizer form
# --------------------------------------------------------------------------------------------
class LocoDecay:
    """LOCO-REG (and uniform L2 on the other weights) as coupled decay added to the gradients.

    Regularized weights, as with a Keras ``kernel_regularizer`` on every conv/dense layer:

    * spatial ``nn.Conv2d`` kernels (incl. grouped/depthwise): gradient ``+= 2 lam mask * w``;
    * 1x1 ``nn.Conv2d`` and ``nn.Linear`` weights: gradient ``+= 2 lam w`` (uniform L2);
    * biases, BatchNorm/other normalisation parameters, and weights of any other layer type:
      nothing.

    Use: ``decay = LocoDecay(model, gamma, eta)``; give ``decay.params`` to the optimizer with
    ``weight_decay=0``; each step ``loss.backward(); decay.apply_(); opt.step()``. This gives the
    same gradients as ``(loss + decay.penalty()).backward()``. ``gamma = eta = 1`` is standard L2.
    ``permuted``: every 3 x 3 mask with its taps moved by :data:`PERMUTATION_3X3` (a control).

    The coefficients ``2 lam mask`` are materialised once per kernel with the parameter's shape,
    dtype, device and memory format (channels_last included), so :meth:`apply_` is one fused
    ``_foreach_addcmul_`` over the spatial kernels plus one ``_foreach_add_`` over the uniform
    weights. When every mask is uniform the spatial kernels take the scalar path too. The
    coefficient tensors are rebuilt if a parameter moves to another device/dtype/layout. (Chapters 04-07)
    """

    def __init__(
        self,
        model: nn.Module,
        gamma: PerLayer = 1.0,
        eta: PerLayer = 1.0,
        lam: float = 5e-4,
        k_rings: Mapping[int, Sequence[float]] | None = None,
        extension: str = "geometric",
        permuted: bool = False,
    ) -> None:
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.lam = float(lam)
        convs = spatial_convs(model)
        if not convs:
            raise _no_spatial_error(model)
        self.masks: list[torch.Tensor] = _layer_masks(_sizes(convs), gamma, eta, k_rings,
                                                      extension, permuted)
        seen: set[int] = set()
        self.spatial: list[nn.Parameter] = []
        masks = []
        for conv, mask in zip(convs, self.masks):
            if id(conv.weight) not in seen:  # a shared kernel is regularized once
                seen.add(id(conv.weight))
                self.spatial.append(conv.weight)
                masks.append(mask)
        self._spatial_masks = masks
        self.uniform: list[nn.Parameter] = []
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                self.uniform.append(m.weight)
        # All-ones masks need no coefficient tensor: treat those kernels as uniform weights.
        self._all_uniform = all(bool(torch.all(mk == 1)) for mk in masks)
        self._coefs: list[torch.Tensor] = []

    @property
    def params(self) -> list[nn.Parameter]:
        """All regularized parameters (spatial kernels first, then 1x1-conv and dense weights)."""
        return self.spatial + self.uniform

    def _coef_ok(self, c: torch.Tensor, p: torch.Tensor) -> bool:
        return c.device == p.device and c.dtype == p.dtype and c.stride() == p.stride()

    def _ensure_coefs(self) -> list[torch.Tensor]:
        if len(self._coefs) != len(self.spatial) or not all(
            self._coef_ok(c, p) for c, p in zip(self._coefs, self.spatial)
        ):
            coefs = []
            for p, mk in zip(self.spatial, self._spatial_masks):
                c = torch.empty_like(p, memory_format=torch.preserve_format, requires_grad=False)
                with torch.no_grad():
                    c.copy_((2.0 * self.lam * mk.double()).to(p.dtype).to(p.device).expand_as(p))
                coefs.append(c)
            self._coefs = coefs
        return self._coefs

    @torch.no_grad()
    def apply_(self) -> None:
        """Add the decay gradient in place to each regularized parameter's ``.grad``.

        Call after ``backward()`` and before ``optimizer.step()``. Parameters whose ``.grad`` is
        None (not used in this step) are skipped, as an optimizer would skip them.
        """
        if self.lam == 0:
            return
        two_lam = 2.0 * self.lam
        uni_p, uni_g = [], []
        for p in self.uniform:
            if p.grad is not None:
                uni_p.append(p)
                uni_g.append(p.grad)
        if self._all_uniform:
            for p in self.spatial:
                if p.grad is not None:
                    uni_p.append(p)
                    uni_g.append(p.grad)
        else:
            coefs = self._ensure_coefs()
            sp_g, sp_p, sp_c = [], [], []
            for p, c in zip(self.spatial, coefs):
                if p.grad is not None:
                    sp_g.append(p.grad)
                    sp_p.append(p)
                    sp_c.append(c)
            if sp_g:
                torch._foreach_addcmul_(sp_g, sp_p, sp_c)
        if uni_g:
            torch._foreach_add_(uni_g, uni_p, alpha=two_lam)

    def penalty(self) -> torch.Tensor:
        """The equivalent loss term: LOCO-REG on spatial kernels + lam * sum(w**2) on the others."""
        total = None
        for p, mk in zip(self.spatial, self._spatial_masks):
            term = (mk.to(device=p.device, dtype=p.dtype) * p.square()).sum()
            total = term if total is None else total + term
        for p in self.uniform:
            total = total + p.square().sum()
        return self.lam * total


# --------------------------------------------------------------------------------------------
# Table 6: per-layer parameters from trained weights
# --------------------------------------------------------------------------------------------
def region_mean(kernels: torch.Tensor, spec: IndexSpec, absolute: bool = True) -> torch.Tensor:
    """m(w, I) of Table 6 for every k x k matrix in ``kernels`` (shape (..., k, k)) -> (...).

    ``absolute=True`` averages |w| (weight magnitudes); ``False`` averages the signed weights as
    the formula is printed (see :func:`layer_ratios` for why magnitudes are the default). (Chapters 05-07)
    """
    k = kernels.shape[-1]
    if kernels.ndim < 2 or kernels.shape[-2] != k:
        raise ValueError(f"expected square kernels (..., k, k), got shape {tuple(kernels.shape)}")
    idx = index_set(spec, k)
    w = kernels.abs() if absolute else kernels
    rows = torch.tensor([i for i, _ in idx], device=w.device)
    cols = torch.tensor([j for _, j in idx], device=w.device)
    return w[..., rows, cols].mean(dim=-1)


def _record_sum(entry: Mapping[str, Any], spec: IndexSpec, absolute: bool) -> float:
    """sum over a layer's matrices w of m(w, I), from the tap sums its record stores
    (:func:`locolib.kernels.weight_stats`): the sums over I divided by |I|."""
    taps = entry["tap_abs_sum" if absolute else "tap_sum"]
    idx = index_set(spec, int(entry["k"]))
    return float(sum(taps[i][j] for i, j in idx) / len(idx))


def _kernel_sum(kernels: torch.Tensor, spec: IndexSpec, absolute: bool) -> float:
    """sum over a layer's matrices w of m(w, I), from the kernels themselves."""
    return float(region_mean(kernels.detach().double(), spec, absolute).sum())


#: One layer of one network: spec, absolute -> sum over its matrices of m(w, I).
LayerSum = Callable[[IndexSpec, bool], float]


def _layer_sums(source) -> list[list[LayerSum]]:
    """Per network, per spatial layer, the function that sums m(w, I) over the layer's matrices.

    ``source``: an nn.Module, a list of modules, one model's kernels (a list of tensors), a list
    of those, or result records (mappings with ``weight_stats``): Table 6 is computed the same
    way from all of them."""
    if isinstance(source, nn.Module):
        source = [source]
    items = list(source)
    if not items:
        raise ValueError("no models or records given")
    if all(isinstance(x, torch.Tensor) for x in items):
        items = [items]
    out = []
    for x in items:
        if isinstance(x, nn.Module):
            out.append([_bind(_kernel_sum, w) for w in spatial_kernels(x)])
        elif isinstance(x, Mapping):
            out.append([_bind(_record_sum, e) for e in x["weight_stats"]])
        elif isinstance(x, Iterable) and not isinstance(x, torch.Tensor):
            out.append([_bind(_kernel_sum, w) for w in x])
        else:
            raise TypeError(f"expected modules, lists of kernel tensors or records, got {type(x).__name__}")
    n = {len(layers) for layers in out}
    if len(n) != 1:
        raise ValueError(f"models have different numbers of spatial layers: {sorted(n)}")
    return out


def _bind(fn: Callable[[Any, IndexSpec, bool], float], layer: Any) -> LayerSum:
    return lambda spec, absolute: fn(layer, spec, absolute)


def layer_ratios(source, I: IndexSpec, I2: IndexSpec, absolute: bool = True) -> list[float]:
    """r(M, l, I, I') of Table 6 for every layer l.

    ``r = mean over models of  sum_{w in W_l} m(w, I) / sum_{w in W_l} m(w, I')``, where W_l is
    every k x k matrix of layer l (all output x input channel pairs).

    ``source``: trained models (nn.Module), per model a list of per-layer kernel tensors
    (..., k, k) as returned by :func:`spatial_kernels` (one model alone is also accepted), or the
    models' result records, whose ``weight_stats`` keep the per-layer tap sums (so the trained
    weights themselves need not be kept; tests/test_reg.py checks both give the same numbers).

    On magnitudes, r(I_n, I_c) of one network is the reciprocal of the ``c/n`` ring ratio of
    :func:`locolib.locality.magnitude_ratios` (chapters 04 and 07 read that one).

    With the printed (signed) m, the sums over a layer's matrices nearly cancel (weights of
    either sign are equally common), so the ratio is ill-conditioned and can be negative; the
    locality argument of Sections 5-7 is about weight *magnitudes*, hence ``absolute=True``. (Chapters 05-07)
    """
    models = _layer_sums(source)
    out = []
    for l in range(len(models[0])):
        rs = []
        for layers in models:
            den = layers[l](I2, absolute)
            if den == 0:
                raise ValueError(f"layer {l}: sum of m(w, I') is 0, the ratio is undefined")
            rs.append(layers[l](I, absolute) / den)
        out.append(sum(rs) / len(rs))
    return out


def modulate(r: float, c: float = 1.5) -> float:
    """a(r, c) = 1 + c (r - 1) of Table 6: stretch the deviation of r from 1 by c. (Chapters 05-07)"""
    return 1.0 + c * (float(r) - 1.0)


def table6_parameters(
    source,
    c: float = 1.5,
    absolute: bool = True,
    eta_rule: str = "printed",
    decimals: int | None = None,
) -> list[tuple[float, float]]:
    """Per-layer ``(gamma_l, eta_l)`` of Table 6 from trained models or their records (the
    ``source`` of :func:`layer_ratios`).

    ``eta_rule="printed"``:  ``(a(r(I_n, I_c), c), 1 / a(r(I_n, I_co), c))`` as printed.
    ``eta_rule="consistent"``: ``(a(r(I_n, I_c), c),     a(r(I_n, I_co), c))``.

    Direction of the printed rule. If trained weights are larger at the centre, r(I_n, I_c) < 1
    and gamma = a(r) < 1: the centre is regularised *less* than its neighbours, as Section 6
    wants (coefficient ~ neighbour/centre magnitude, i.e. inversely to the magnitude). If weights
    keep falling off to the corners, r(I_n, I_co) > 1, so a(r) > 1 and the printed
    eta = 1/a(r) < 1: the corners are regularised *less* than the edge neighbours, which
    contradicts Section 6 ("weights near the center should be larger") and is the opposite of the
    gamma rule (coefficient ~ corner/neighbour magnitude, i.e. proportional to the magnitude).
    The ``"consistent"`` rule applies the gamma logic to the corners (eta > 1 when corners are
    smaller). See tests/test_reg.py for a hand-made check of both directions.

    ``decimals``: round the parameters, so that the LOCO-REG runs they define get the same run
    keys when records are recomputed with float noise (e.g. on another machine).

    Raises ValueError when a(r, c) <= 0 (r < 1 - 1/c): the mask would not be positive. (Chapters 05-07)
    """
    if eta_rule not in ("printed", "consistent"):
        raise ValueError(f"eta_rule must be 'printed' or 'consistent', got {eta_rule!r}")
    r_n_c, r_n_co = layer_ratios(source, "n", "c", absolute), layer_ratios(source, "n", "co", absolute)
    out = []
    for l, (rc, rco) in enumerate(zip(r_n_c, r_n_co, strict=True)):
        g, a_co = modulate(rc, c), modulate(rco, c)
        if g <= 0 or a_co <= 0:
            raise ValueError(
                f"layer {l}: a(r, c={c}) <= 0 for r(I_n,I_c)={rc:.3g}, r(I_n,I_co)={rco:.3g}; "
                "choose a smaller c"
            )
        out.append((g, 1.0 / a_co if eta_rule == "printed" else a_co))
    if decimals is None:
        return out
    return [(round(g, decimals), round(e, decimals)) for g, e in out]


def per_model_ratios(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Each record's own Table 6 ratios (chapter 06, Figure 1): one row per (record, reading,
    ratio, layer) with dataset, network, seed, reading ("signed"/"absolute"), ratio ("r_n_c" or
    "r_n_co"), layer (1-based) and r; the paper's r is their mean over records. (Chapter 06)"""
    rows = []
    for rec in records:
        cfg = rec["config"]
        for absolute in (False, True):
            for name, (I, I2) in {"r_n_c": ("n", "c"), "r_n_co": ("n", "co")}.items():
                for layer, r in enumerate(layer_ratios([rec], I, I2, absolute), start=1):
                    rows.append({"dataset": cfg["dataset"], "network": cfg["network"], "seed": cfg["seed"],
                                 "reading": "absolute" if absolute else "signed", "ratio": name,
                                 "layer": layer, "r": r})
    return pd.DataFrame(rows)


def table6_frame(records: Sequence[Mapping[str, Any]], cs: Sequence[float] = (0.5, 1.0, 1.5, 2.5),
                 readings: Sequence[bool] = (False, True)) -> pd.DataFrame:
    """Table 6 per layer, c and reading (``absolute`` False: the printed signed means; True:
    magnitudes), from records: r(I_n, I_c), r(I_n, I_co), gamma = a(r(I_n, I_c), c),
    a_co = a(r(I_n, I_co), c), the printed eta = 1 / a_co and the consistent eta = a_co, and
    ``valid`` (both a > 0, i.e. a usable positive mask). Invalid rows keep the numbers (eta
    printed is NaN if a_co = 0). (Chapter 06)"""
    layers = records[0]["weight_stats"] if records else []
    rows = []
    for absolute in readings:
        r_c = layer_ratios(records, "n", "c", absolute)
        r_co = layer_ratios(records, "n", "co", absolute)
        for c in cs:
            for l, (rc, rco) in enumerate(zip(r_c, r_co)):
                g, a_co = modulate(rc, c), modulate(rco, c)
                rows.append({"reading": "absolute" if absolute else "signed", "c": float(c),
                             "layer": l + 1, "name": layers[l].get("name", ""),
                             "k": int(layers[l]["k"]), "r_n_c": rc, "r_n_co": rco,
                             "gamma": g, "a_co": a_co,
                             "eta_printed": 1.0 / a_co if a_co != 0 else math.nan,
                             "eta_consistent": a_co, "valid": bool(g > 0 and a_co > 0)})
    return pd.DataFrame(rows)


def table6_loco_params(records: Iterable[Mapping[str, Any]], c: float = 1.5,
                       absolute: bool = True, eta_rule: str = "printed",
                       decimals: int | None = 4) -> dict[str, dict[str, tuple[float, ...]]]:
    """``{"dataset/network": {"gamma": per-layer, "eta": per-layer}}`` from the standard-L2
    records among ``records`` (each (dataset, network) cell averaged over its runs, as the
    paper's "means per layer l for each architecture and dataset across all trained models"),
    rounded to ``decimals`` (:func:`table6_parameters`), ready for LOCO-REG runs' ``gamma`` and
    ``eta`` (:meth:`locolib.plans.Study.layerwise_arms`). (Chapters 05-07)"""
    cells: dict[str, list] = {}
    for rec in records:
        cfg = rec["config"]
        if cfg["regularizer"] == "l2":
            cells.setdefault(f"{cfg['dataset']}/{cfg['network']}", []).append(rec)
    if not cells:
        raise ValueError("no standard-L2 records given: Table 6 is derived from those")
    out = {}
    for cell, recs in sorted(cells.items()):
        params = table6_parameters(recs, c, absolute, eta_rule, decimals)
        out[cell] = {"gamma": tuple(g for g, _ in params), "eta": tuple(e for _, e in params)}
    return out


# --------------------------------------------------------------------------------------------
# The regularizers a run can name
# --------------------------------------------------------------------------------------------
class Regularizer(Protocol):
    """What training needs of a regularizer: add its gradient in place after ``backward()``
    (:meth:`apply_`) and report its loss term (:meth:`penalty`, for the records). (Chapters 04-07)"""

    def apply_(self) -> None: ...

    def penalty(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class RegularizerSpec:
    """A registered regularizer: ``build(model, config)`` (config: a
    :class:`locolib.config.RunConfig`) returns a :class:`Regularizer` for ``model``. (Chapters 04-07)"""

    build: Callable[[nn.Module, Any], Regularizer]
    description: str
    #: ``masks(config, kernel_sizes)``: the per-layer k x k masks it applies to spatial kernels
    #: (relative to lam), for :func:`realized_factor`; None where it has none.
    masks: Callable[[Any, Sequence[int]], list[torch.Tensor]] | None = None


def _loco_masks(config: Any, kernel_sizes: Sequence[int]) -> list[torch.Tensor]:
    return _layer_masks(kernel_sizes, config.gamma, config.eta, None, "geometric",
                        config.regularizer == "loco_permuted")


def _loco_decay(model: nn.Module, config: Any) -> LocoDecay:
    return LocoDecay(model, gamma=config.gamma, eta=config.eta, lam=config.lam,
                     permuted=config.regularizer == "loco_permuted")


#: The regularizers by name (RunConfig's ``regularizer``). Adding one is one entry here (plus a
#: test); its parameters, if it needs new ones, are RunConfig fields with defaults.
REGULARIZER_REGISTRY: dict[str, RegularizerSpec] = {
    "l2": RegularizerSpec(_loco_decay, "standard L2 on every conv and dense weight (gamma = eta = 1)",
                          _loco_masks),
    "loco": RegularizerSpec(_loco_decay, "LOCO-REG (Eq. 6.1): spatial kernels weighted by "
                                         "(gamma, 1, eta) for centre, edges, corners", _loco_masks),
    "loco_permuted": RegularizerSpec(
        _loco_decay, "control: LOCO-REG's 3x3 mask of (gamma, eta) with its nine factors at "
        "non-radial positions (PERMUTATION_3X3)", _loco_masks),
}


def build_regularizer(model: nn.Module, config: Any) -> Regularizer:
    """The regularizer that ``config.regularizer`` names, for ``model``. (Chapters 04-07)"""
    return REGULARIZER_REGISTRY[config.regularizer].build(model, config)


def realized_factor(config: Any, weight_stats: Sequence[Mapping[str, Any]],
                    weighting: str = "sq") -> float:
    """The mean mask factor that ``config``'s regularizer realized on a network's spatial kernels
    (``weight_stats``: a record's, :func:`locolib.kernels.weight_stats`; ``config``: its
    :class:`locolib.config.RunConfig`).

    ``sum(mask * S) / sum(S)`` over every layer and tap, with ``S`` the per-tap sums of ``w**2``
    (``weighting="sq"``: the spatial penalty over ``lam * sum(w**2)``, the decay realized
    relative to L2 at the same lam) or of ``|w|`` (``"abs"``). Every mask has mean 1, so the
    factor is 1 for L2 and for weights spread evenly over the taps; below 1 where the weights sit
    on lightly penalized taps. (Chapters 05, 06)
    """
    key = {"sq": "tap_sq_sum", "abs": "tap_abs_sum"}.get(weighting)
    if key is None:
        raise ValueError(f"weighting must be 'sq' or 'abs', got {weighting!r}")
    if any(key not in e for e in weight_stats):
        raise ValueError(f"the weight statistics have no {key!r} (a record made before it was "
                         "kept); use weighting='abs'")
    spec = REGULARIZER_REGISTRY[config.regularizer]
    if spec.masks is None:
        raise ValueError(f"regularizer {config.regularizer!r} declares no masks")
    masks = spec.masks(config, [int(e["k"]) for e in weight_stats])
    num = den = 0.0
    for e, mask in zip(weight_stats, masks):
        s = torch.tensor(e[key], dtype=torch.float64)
        num += float((mask.double() * s).sum())
        den += float(s.sum())
    return num / den


# --------------------------------------------------------------------------------------------
# TensorFlow vs PyTorch L2 strength
# --------------------------------------------------------------------------------------------
def l2_equivalence(lam: float = 5e-4, steps: int = 5, seed: int = 0,
                   lr: float = 0.1, momentum: float = 0.9) -> dict[str, float]:
    """Train a tiny conv net a few SGD steps three ways from the same start and data:
    LocoDecay(gamma = eta = 1, lam) (TensorFlow's ``lam * sum(w**2)``), PyTorch SGD with
    ``weight_decay = 2 lam`` and with ``weight_decay = lam``, all decaying the same weights
    (conv and dense weights, not biases or BatchNorm).

    Returns the largest absolute weight difference of LocoDecay from each of the two, and the
    largest weight change over the steps (for scale): the first is float rounding, the second is
    not. (Chapter 05)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)

    def net() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 64, 3)).double()

    def run(mode: str) -> list[torch.Tensor]:
        model = net()
        decay = LocoDecay(model, 1.0, 1.0, lam=lam)
        ids = {id(p) for p in decay.params}
        others = [p for p in model.parameters() if id(p) not in ids]
        wd = {"loco": 0.0, "2lam": 2 * lam, "lam": lam}[mode]
        opt = torch.optim.SGD([{"params": decay.params, "weight_decay": wd},
                               {"params": others, "weight_decay": 0.0}], lr=lr, momentum=momentum)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.double()), y).backward()
            if mode == "loco":
                decay.apply_()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    start = [p.detach().clone() for p in net().parameters()]
    a, b, c = run("loco"), run("2lam"), run("lam")
    diff = lambda u, v: max(float((p - q).abs().max()) for p, q in zip(u, v))  # noqa: E731
    return {"max_diff_weight_decay_2lam": diff(a, b), "max_diff_weight_decay_lam": diff(a, c),
            "max_change": diff(a, start)}
