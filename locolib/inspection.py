"""Looking inside trained networks: feature maps, weights by kernel position, Table 4 from records.

* :func:`feature_maps` records the outputs of named modules (forward hooks) for a batch of inputs,
  e.g. the ReLU outputs of the conv blocks (:func:`relu_names`) for Figure 1;
  :func:`neighbour_correlation` measures how smoothly such maps change from pixel to pixel.
* :func:`position_means` and :func:`ring_means` are the per-position (and per-ring) mean weight
  or mean |weight| of a layer's k x k matrices: what Figure 2 shows "barely visible at best".
* :func:`load_run_model` / :func:`trained_model` give the network of a training run
  (:func:`locolib.train.train` with ``model_dir``), retraining a finished run into a scratch
  folder only when its weights were not kept.
* :func:`stats_locality_test` and :func:`table4_row_from_stats` compute Table 4 (Eq. 7.1 and its
  t-test) exactly from the compact ``weight_stats`` that every training record stores, so runs
  whose weights were never saved (e.g. trained on a GPU elsewhere) can be tested too. They agree
  with :func:`locolib.locality.locality_test` on the kernels themselves (see the tests).
  :func:`table4_row_from_runs` pools the matrices of several runs of one network.
* :func:`tap_coverage`: for how many output positions each tap of a padded convolution sees the
  input rather than the zero padding (small maps make outer taps see mostly padding).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from locolib.locality import (TABLE4_PAIRS, LocalityTest, as_matrices, rings, split_halves, table4_cells,
                              table4_row)

__all__ = [
    "relu_names",
    "feature_maps",
    "neighbour_correlation",
    "position_means",
    "ring_means",
    "load_run_model",
    "trained_model",
    "ring_pair_index",
    "stats_locality_test",
    "table4_row_from_stats",
    "table4_row_from_runs",
    "spatial_input_sizes",
    "tap_coverage",
]


# --------------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------------
def relu_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.ReLU`` modules of ``model`` in module order (input side first).

    For the book's VGG13 and MobileNet every spatial convolution is followed by BatchNorm and
    one such ReLU, so these are the feature maps of the conv layers.
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the modules ``names`` for input ``x`` (model in eval mode), as CPU tensors.

    Hooks are removed afterwards and the model's train/eval mode is restored. Outputs are cloned,
    so in-place modules (``ReLU(inplace=True)``) are recorded as they leave the module.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no modules named {missing} in {type(model).__name__}")
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            out[name] = output.detach().clone().cpu()
        handles.append(modules[name].register_forward_hook(hook))
    _forward_in_eval_mode(model, x, handles)
    return {n: out[n].contiguous() for n in names}


def _forward_in_eval_mode(model: nn.Module, x: torch.Tensor, hooks: list) -> None:
    """Run ``model(x)`` in eval mode for its ``hooks``; then remove them and restore the mode."""
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def neighbour_correlation(maps: torch.Tensor | np.ndarray) -> float:
    """Mean over maps of the Pearson correlation between horizontally and vertically adjacent
    pixels (each map's pairs pooled). ``maps``: (..., H, W) with H, W >= 2.

    Close to 1: values change gradually from pixel to pixel; about 0: no spatial smoothness.
    Constant maps (e.g. a ReLU map that is zero everywhere) have no correlation and are skipped.
    """
    a = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps).double()
    if a.ndim < 2 or a.shape[-1] < 2 or a.shape[-2] < 2:
        raise ValueError(f"maps must have shape (..., H, W) with H, W >= 2, got {tuple(a.shape)}")
    a = a.reshape(-1, a.shape[-2], a.shape[-1])
    left, right = a[:, :, :-1].reshape(len(a), -1), a[:, :, 1:].reshape(len(a), -1)
    up, down = a[:, :-1, :].reshape(len(a), -1), a[:, 1:, :].reshape(len(a), -1)
    u, v = torch.cat([left, up], 1), torch.cat([right, down], 1)
    u = u - u.mean(1, keepdim=True)
    v = v - v.mean(1, keepdim=True)
    den = (u.square().sum(1) * v.square().sum(1)).sqrt()
    scale = a.abs().amax(dim=(1, 2)).clamp_min(1e-300)
    ok = den > 1e-12 * scale.square() * u.shape[1]  # scale-free: skip (numerically) constant maps
    if not bool(ok.any()):
        raise ValueError("every map is constant: no correlation can be computed")
    return float(((u * v).sum(1)[ok] / den[ok]).mean())


# --------------------------------------------------------------------------------------------
# Weights by position
# --------------------------------------------------------------------------------------------
def position_means(layer: Any, absolute: bool = False) -> np.ndarray:
    """k x k array: the mean of w (or |w|) at each position over all k x k matrices of a layer."""
    a = as_matrices(layer)
    return (np.abs(a) if absolute else a).mean(axis=0)


def ring_means(layer: Any, absolute: bool = True) -> dict[str, float]:
    """Mean of w (or |w|) over each ring of positions ("c", "n", "co", ...) and all matrices."""
    p = position_means(layer, absolute)
    return {name: float(np.mean([p[q] for q in pos])) for name, pos in rings(p.shape[0]).items()}


# --------------------------------------------------------------------------------------------
# Trained networks of runs
# --------------------------------------------------------------------------------------------
def load_run_model(config: Any, weights: str | Path | Mapping[str, torch.Tensor],
                   device: str | torch.device = "cpu") -> nn.Module:
    """The network of run ``config`` (a :class:`locolib.train.RunConfig`) with its saved weights.

    ``weights``: a state dict or the file ``train(..., model_dir=...)`` wrote. The number of
    input channels and classes are read off the weights (first 4-D and last 2-D tensor).
    """
    from locolib.models import build_model

    state = weights if isinstance(weights, Mapping) else torch.load(
        Path(weights), map_location="cpu", weights_only=True)
    convs = [v for v in state.values() if v.ndim == 4]
    dense = [v for v in state.values() if v.ndim == 2]
    if not convs or not dense:
        raise ValueError("weights hold no convolution or no dense layer: not a locolib network")
    model = build_model(config.network, int(dense[-1].shape[0]), in_channels=int(convs[0].shape[1]),
                        width=config.width, kernel_size=config.kernel_size)
    model.load_state_dict(state)
    return model.to(device).eval()


def trained_model(config: Any, results_dir: str | Path | None = None,
                  model_dir: str | Path | None = None, device: str | torch.device | None = None,
                  progress: bool = False, download: bool = True,
                  retrain_missing: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(network, record) of run ``config``: trained with :func:`locolib.train.train` if needed.

    ``model_dir`` (default ``<results_dir>/models``) keeps the final weights ``<key>.pt``. A run
    that is finished but whose weights were not kept (trained without ``model_dir``) is not
    redone in ``results_dir``: with ``retrain_missing`` it is retrained into a scratch folder
    just to recover the weights, and the recovered run's final metrics must equal the stored
    record's (training is deterministic; on CPU bitwise). Otherwise FileNotFoundError.
    """
    from locolib.results import default_results_dir
    from locolib.train import result_path, train

    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    model_dir = Path(model_dir) if model_dir is not None else results_dir / "models"
    weights = model_dir / f"{config.key}.pt"
    had_record = result_path(config, results_dir).is_file()
    record = train(config, results_dir=results_dir, device=device, progress=progress,
                   download=download, model_dir=model_dir)
    if not weights.is_file():
        if not (had_record and retrain_missing):
            raise FileNotFoundError(f"run {config.key} is finished but its weights are not in "
                                    f"{model_dir}; retrain it with model_dir set")
        with tempfile.TemporaryDirectory(prefix="locolib-recover-") as scratch:
            again = train(config, results_dir=scratch, device=device, progress=progress,
                          download=download, model_dir=model_dir)
        for key in ("test_error", "train_loss"):
            a, b = again["final"][key], record["final"][key]
            if not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6):
                raise RuntimeError(f"run {config.key}: retraining to recover its weights gave "
                                   f"{key} {a} instead of the stored {b}")
    return load_run_model(config, weights, device or "cpu"), record


# --------------------------------------------------------------------------------------------
# Table 4 from the compact weight statistics of a record
# --------------------------------------------------------------------------------------------
def ring_pair_index(inner: str, outer: str, k: int) -> int:
    """Position r of the consecutive ring pair (inner, outer) = (ring r, ring r+1) of a k x k
    kernel, as in ``weight_stats``' ``ring_diff_*`` lists: (c, n) -> 0, (n, co) -> 1, ..."""
    names = list(rings(k))
    if inner not in names or names.index(inner) + 1 >= len(names) \
            or names[names.index(inner) + 1] != outer:
        pairs = [f"({a},{b})" for a, b in zip(names, names[1:])]
        raise ValueError(f"({inner},{outer}) is not a pair of consecutive rings of a {k} x {k} "
                         f"kernel; weight_stats only hold {', '.join(pairs)}")
    return names.index(inner)


def _layer_moments(entry: Mapping[str, Any], r: int, absolute: bool) -> tuple[int, float, float]:
    """(n, sum of z, sum of z^2) of one layer, z = s / sigma (population std over the layer)."""
    tag = "abs_" if absolute else ""
    n = int(entry["count"])
    s1 = float(entry[f"ring_{tag}diff_sum"][r])
    s2 = float(entry[f"ring_{tag}diff_sq_sum"][r])
    var = s2 / n - (s1 / n) ** 2
    # Relative threshold, as in locality.standardized_differences: rounding noise is zero spread.
    if not (var > 0 and var > 1e-12 * s2 / n):
        raise ValueError(f"layer {entry.get('name', '?')!r}: the ring difference has zero spread "
                         f"over its {n} matrices, so it cannot be standardised")
    sigma = math.sqrt(var)
    return n, s1 / sigma, s2 / var


def stats_locality_test(stats: Sequence[Mapping[str, Any]], inner: str, outer: str,
                        absolute: bool = False) -> LocalityTest:
    """:func:`locolib.locality.locality_test` from ``weight_stats`` entries (one per layer).

    Exact: per layer the count and the sums of s and s^2 give sigma(W_l), and hence the sum and
    sum of squares of the standardised differences, which is all the mean and the one-sample
    t-test need. All entries must have the same kernel size and (inner, outer) must be
    consecutive rings (see :func:`ring_pair_index`).
    """
    from scipy import stats as st

    stats = list(stats)
    if not stats:
        raise ValueError("no layers given")
    ks = sorted({int(e["k"]) for e in stats})
    if len(ks) > 1:
        raise ValueError(f"all layers must share k; got k in {ks} (select one kernel size)")
    r = ring_pair_index(inner, outer, ks[0])
    n, z1, z2 = 0, 0.0, 0.0
    for entry in stats:
        a, b, c = _layer_moments(entry, r, absolute)
        n, z1, z2 = n + a, z1 + b, z2 + c
    if n < 2:
        raise ValueError("the t-test needs at least two matrices")
    mean = z1 / n
    var = max(z2 - n * mean * mean, 0.0) / (n - 1)
    t = mean / math.sqrt(var / n) if var > 0 else math.copysign(math.inf, mean)
    p = float(st.t.sf(t, n - 1))
    p2 = float(min(1.0, 2 * st.t.sf(abs(t), n - 1)))
    return LocalityTest(inner=inner, outer=outer, absolute=absolute, m=mean, t=t, p=p,
                        p_two_sided=p2, n=n, n_layers=len(stats))


def table4_row_from_stats(stats: Sequence[Mapping[str, Any]], model: str = "model",
                          middle: Literal["upper", "lower"] = "upper",
                          pairs: Sequence[tuple[str, str]] = TABLE4_PAIRS,
                          k: int | None = None) -> pd.DataFrame:
    """:func:`locolib.locality.table4_row` (same columns) from a record's ``weight_stats``.

    ``k``: use only the layers with k x k kernels (default: the kernel size of the first layer;
    required to be the only one unless given).
    """
    layers, _ = _kernel_layers(stats, k)
    return table4_row(layers, model, middle, pairs, test=stats_locality_test)


def _kernel_layers(stats: Sequence[Mapping[str, Any]], k: int | None) -> tuple[list, int]:
    stats = list(stats)
    if not stats:
        raise ValueError("no layers given")
    sizes = sorted({int(e["k"]) for e in stats})
    if k is None:
        if len(sizes) > 1:
            raise ValueError(f"the layers have kernel sizes {sizes}: pass k to pick one")
        k = sizes[0]
    layers = [e for e in stats if int(e["k"]) == k]
    if not layers:
        raise ValueError(f"no {k} x {k} layers (kernel sizes are {sizes})")
    return layers, k


def table4_row_from_runs(runs: Sequence[Sequence[Mapping[str, Any]]], model: str = "model",
                         middle: Literal["upper", "lower"] = "upper",
                         pairs: Sequence[tuple[str, str]] = TABLE4_PAIRS,
                         k: int | None = None) -> pd.DataFrame:
    """Table 4 cells for several runs of one network pooled: ``runs`` holds each run's
    ``weight_stats``. Every run is split into its own lower and upper halves, each layer is
    standardised by its own sigma, and the test then uses all matrices of all runs (for one run
    this is :func:`table4_row_from_stats`). ``n_layers`` counts layers over all runs.
    """
    runs = [_kernel_layers(r, k)[0] for r in runs]
    if not runs:
        raise ValueError("no runs given")
    halves = [split_halves(r, middle) for r in runs]
    parts = {"all": [e for r in runs for e in r],
             "lower": [e for lo, _ in halves for e in lo],
             "upper": [e for _, up in halves for e in up]}
    return table4_cells(parts, model, pairs, test=stats_locality_test)


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------
def tap_coverage(size: int, k: int = 3, stride: int = 1, padding: int | None = None) -> np.ndarray:
    """k x k array: the fraction of output positions at which each tap reads the input (not the
    zero padding) for a convolution over a ``size`` x ``size`` map ("same" padding k // 2).

    On large maps every tap reads the input almost everywhere (coverage ~ 1). On a 2 x 2 map a
    3 x 3 kernel's centre reads it at all 4 outputs, an edge tap at 2 and a corner at 1: the outer
    taps get less gradient, so weight decay shrinks them more -- a "locality" due to padding.
    """
    if size < 1 or k < 1 or stride < 1:
        raise ValueError("size, k and stride must be >= 1")
    pad = k // 2 if padding is None else int(padding)
    n_out = (size + 2 * pad - k) // stride + 1
    if n_out < 1:
        raise ValueError(f"a {k} x {k} kernel with padding {pad} does not fit a {size} x {size} map")
    starts = np.arange(n_out) * stride - pad  # input row of tap 0 for each output row
    inside = np.array([[(0 <= s + i < size) for s in starts] for i in range(k)], dtype=float)
    per_axis = inside.mean(axis=1)  # fraction of output rows at which tap row i is inside
    return np.outer(per_axis, per_axis)


@torch.no_grad()
def spatial_input_sizes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """(height, width) of the input map of every spatial convolution of ``model`` (the order of
    :func:`locolib.reg.spatial_convs`, i.e. of ``weight_stats``) for the input batch ``x``."""
    from locolib.reg import spatial_convs

    convs = spatial_convs(model)
    seen: dict[int, tuple[int, int]] = {}

    def record(module: nn.Module, inputs: tuple) -> None:  # must return None: keeps the input
        seen.setdefault(id(module), tuple(inputs[0].shape[-2:]))

    _forward_in_eval_mode(model, x, [c.register_forward_pre_hook(record) for c in convs])
    missing = [i for i, c in enumerate(convs) if id(c) not in seen]
    if missing:
        raise RuntimeError(f"spatial convolutions {missing} were not called in the forward pass")
    return [seen[id(c)] for c in convs]
