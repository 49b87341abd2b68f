"""Looking inside trained networks: feature maps, weights by kernel position, padding.

* :func:`feature_maps` records the outputs of named modules (forward hooks) for a batch of inputs,
  e.g. the ReLU outputs of the conv blocks (:func:`relu_names`) for Figure 1;
  :func:`neighbour_correlation` measures how smoothly such maps change from pixel to pixel.
* :func:`position_means` and :func:`ring_means` are the per-position (and per-ring) mean weight
  or mean |weight| of a layer's k x k matrices: what Figure 2 shows "barely visible at best".
* :func:`load_run_model` / :func:`trained_model` give the network of a training run
  (:func:`locolib.train.train` with ``model_dir``), retraining a finished run into a scratch
  folder only when its weights were not kept.
* :func:`tap_coverage`: for how many output positions each tap of a padded convolution sees the
  input rather than the zero padding (small maps make outer taps see mostly padding).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from locolib.io import write_json
from locolib.kernels import ring_names, rings, spatial_convs, spatial_kernels
from locolib.locality import as_matrices, locality_test, magnitude_ratios, table4_row
from locolib.models import build_model
from locolib.notebook import FIGURE_WIDTH
from locolib.results import default_results_dir, read_record
from locolib.train import RunFiles, derive_seed, train

__all__ = [
    "conv_input_sizes",
    "relu_names",
    "feature_maps",
    "plot_feature_maps",
    "neighbour_correlation",
    "position_means",
    "ring_means",
    "load_run_model",
    "trained_model",
    "spatial_input_sizes",
    "tap_coverage",
    "run_layers",
    "layer_locality",
    "untrained_model",
    "position_profiles",
    "plot_position_profiles",
    "plot_layer_locality",
    "kernels_versus_records",
]


# --------------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------------
def relu_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.ReLU`` modules of ``model`` in module order (input side first).

    For the book's VGG13 and MobileNet every spatial convolution is followed by BatchNorm and
    one such ReLU, so these are the feature maps of the conv layers. (Chapter 04)
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the modules ``names`` for input ``x`` (model in eval mode), as CPU tensors.

    Hooks are removed afterwards and the model's train/eval mode is restored. Outputs are cloned,
    so in-place modules (``ReLU(inplace=True)``) are recorded as they leave the module. (Chapter 04)
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
    Constant maps (e.g. a ReLU map that is zero everywhere) have no correlation and are skipped. (Chapter 04)
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
    """k x k array: the mean of w (or |w|) at each position over all k x k matrices of a layer. (Chapters 04, 07)"""
    a = as_matrices(layer)
    return (np.abs(a) if absolute else a).mean(axis=0)


def ring_means(layer: Any, absolute: bool = True) -> dict[str, float]:
    """Mean of w (or |w|) over each ring of positions ("c", "n", "co", ...) and all matrices. (Chapter 07)"""
    p = position_means(layer, absolute)
    return {name: float(np.mean([p[q] for q in pos])) for name, pos in rings(p.shape[0]).items()}


# --------------------------------------------------------------------------------------------
# Trained networks of runs
# --------------------------------------------------------------------------------------------
def load_run_model(config: Any, weights: str | Path | Mapping[str, torch.Tensor],
                   device: str | torch.device = "cpu") -> nn.Module:
    """The network of run ``config`` (a :class:`locolib.config.RunConfig`) with its saved weights.

    ``weights``: a state dict or the file ``train(..., model_dir=...)`` wrote. The number of
    input channels and classes are read off the weights (first 4-D and last 2-D tensor). (Chapters 04, 07)
    """
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
    just to recover the weights (otherwise FileNotFoundError). Training is deterministic on one
    machine (on the CPU bitwise), but another CPU or library build can round differently; if the
    recovered run's final metrics differ from the stored record's, a warning says so and the
    recovered run's own record is returned, and kept beside the weights (``<key>.json`` in
    ``model_dir``) for later calls, so that the network and the record always belong together.
    (Chapters 04, 07)
    """
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    model_dir = Path(model_dir) if model_dir is not None else results_dir / "models"
    files = RunFiles.of(config, results_dir, model_dir=model_dir)
    weights, had_record = files.model, files.record.is_file()
    own_record = weights.with_suffix(".json")  # the record of recovered weights, where it differs
    record = train(config, results_dir=results_dir, device=device, progress=progress,
                   download=download, model_dir=model_dir)
    if weights.is_file() and own_record.is_file():
        record = read_record(own_record, config.key)
    elif not weights.is_file():
        if not (had_record and retrain_missing):
            raise FileNotFoundError(f"run {config.key} is finished but its weights are not in "
                                    f"{model_dir}; retrain it with model_dir set")
        # Said aloud: a reader who expected the book's records to be read sees why this takes time.
        print(f"run {config.key}: its weights are not committed, training it again to recover them "
              f"(its record took {record['timing']['total_s']:.0f} s on {record['device']['name']})", flush=True)
        with tempfile.TemporaryDirectory(prefix="locolib-recover-") as scratch:
            again = train(config, results_dir=scratch, device=device, progress=progress,
                          download=download, model_dir=model_dir)
        differs = [f"{key} {again['final'][key]:.6g} (stored {record['final'][key]:.6g})"
                   for key in ("test_error", "train_loss")
                   if not math.isclose(again["final"][key], record["final"][key], rel_tol=1e-4,
                                       abs_tol=1e-6)]
        if differs:
            warnings.warn(f"run {config.key}: retraining it here to recover its weights gave "
                          f"{', '.join(differs)}: this machine rounds differently from the one "
                          "that made the record; using the retrained run's record", stacklevel=2)
            write_json(own_record, again)
            record = again
    return load_run_model(config, weights, device or "cpu"), record


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------
def tap_coverage(size: int, k: int = 3, stride: int = 1, padding: int | None = None) -> np.ndarray:
    """k x k array: the fraction of output positions at which each tap reads the input (not the
    zero padding) for a convolution over a ``size`` x ``size`` map ("same" padding k // 2).

    On large maps every tap reads the input almost everywhere (coverage ~ 1). On a 2 x 2 map a
    3 x 3 kernel's centre reads it at all 4 outputs, an edge tap at 2 and a corner at 1: the outer
    taps get less gradient, so weight decay shrinks them more -- a "locality" due to padding. (Chapters 04, 06, 07)
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
    :func:`locolib.kernels.spatial_convs`, i.e. of ``weight_stats``) for the input batch ``x``. (Chapters 06, 07)"""
    convs = spatial_convs(model)
    seen: dict[int, tuple[int, int]] = {}

    def record(module: nn.Module, inputs: tuple) -> None:  # must return None: keeps the input
        seen.setdefault(id(module), tuple(inputs[0].shape[-2:]))

    _forward_in_eval_mode(model, x, [c.register_forward_pre_hook(record) for c in convs])
    missing = [i for i, c in enumerate(convs) if id(c) not in seen]
    if missing:
        raise RuntimeError(f"spatial convolutions {missing} were not called in the forward pass")
    return [seen[id(c)] for c in convs]


# --------------------------------------------------------------------------------------------
# Chapter 07: locality per layer, and Table 4 of runs from kernels and from records
# --------------------------------------------------------------------------------------------
@cache
def conv_input_sizes(network: str, input_size: int = 32, width: float = 0.125,
                     in_channels: int = 1) -> list[int]:
    """Height of the feature map entering each spatial convolution of ``network`` (module order,
    as the layers of Table 6) for ``input_size`` x ``input_size`` inputs. (Chapter 06; Table 6)"""
    model = build_model(network, 10, in_channels=in_channels, width=width)
    with torch.no_grad():
        sizes = spatial_input_sizes(model, torch.zeros(1, in_channels, input_size, input_size))
    return [height for height, _ in sizes]


def _geometry(network: str, width: float, kernel_size: int, channels: int,
              input_size: int) -> tuple[tuple[int, int, bool], ...]:
    """(input map width, stride, depth-wise) of every spatial convolution of a run's network."""
    model = build_model(network, 10, in_channels=channels, width=width, kernel_size=kernel_size)
    sizes = spatial_input_sizes(model, torch.zeros(1, channels, input_size, input_size))
    return tuple((size[0], conv.stride[0], conv.groups > 1 and conv.groups == conv.in_channels)
                 for size, conv in zip(sizes, spatial_convs(model)))


def run_layers(records: Sequence[Mapping[str, Any]], input_size: int = 32) -> pd.DataFrame:
    """Chapter 07: one row per run and spatial layer of ``records``: network, regularizer,
    padding_mode, seed, layer (1-based), the width of the map it reads (for ``input_size``
    inputs), its stride, ``kind`` (dense or depthwise), ``coverage n/co`` (the mean
    :func:`tap_coverage` of the four edge taps over that of the four corners: 1 on a large map,
    2 on a 2 x 2 map), m(c,n) and m(n,co) of its magnitudes and the magnitude ratios of
    :func:`locolib.locality.magnitude_ratios` (from the records' ``weight_stats``). (Chapter 07)"""
    frames = []
    for rec in records:
        cfg, stats = rec["config"], rec["weight_stats"]
        geometry = _geometry(cfg["network"], cfg["width"], cfg["kernel_size"], stats[0]["shape"][1],
                             input_size)
        rows = []
        for entry, (size, stride, depthwise) in zip(stats, geometry):
            cov = ring_means(tap_coverage(size, entry["k"], stride)[None])
            rows.append({"map": size, "stride": stride, "kind": "depthwise" if depthwise else "dense",
                         "coverage n/co": cov["n"] / cov["co"],
                         "m(c,n) |w|": locality_test([entry], "c", "n", True).m,
                         "m(n,co) |w|": locality_test([entry], "n", "co", True).m})
        frames.append(pd.concat([magnitude_ratios(stats), pd.DataFrame(rows)], axis=1).assign(
            network=cfg["network"], regularizer=cfg["regularizer"],
            padding_mode=cfg.get("padding_mode", "zeros"), seed=cfg["seed"]))
    return pd.concat(frames, ignore_index=True)


def layer_locality(records: Sequence[Mapping[str, Any]], input_size: int = 32) -> pd.DataFrame:
    """Chapter 07: :func:`run_layers` averaged over the runs, per network and spatial layer
    (index: network, layer, map, stride): ``coverage n/co`` and m(c,n), m(n,co) of the
    magnitudes. (Chapter 07)"""
    cols = ["coverage n/co", "m(c,n) |w|", "m(n,co) |w|"]
    return run_layers(records, input_size).groupby(["network", "layer", "map", "stride"])[cols].mean()


def plot_layer_locality(by_layer: pd.DataFrame, names: Mapping[str, str] | None = None):
    """Chapter 07's figure of :func:`layer_locality`: m(c,n) (top) and m(n,co) (bottom) of the
    magnitudes per layer, one line per network; the first layer on each map width is labelled
    with that width in the line's colour. Drawn at the book's column width, labels at 9 pt."""
    fig, axes = plt.subplots(2, 1, figsize=(FIGURE_WIDTH, 5.6), sharex=True, layout="constrained")
    for ax, col in zip(axes, ["m(c,n) |w|", "m(n,co) |w|"]):
        for n, (network, g) in enumerate(by_layer.reset_index().groupby("network")):
            line, = ax.plot(g["layer"], g[col], "o-", label=(names or {}).get(network, network))
            # Label only the first layer on each map width, above the points of every other network
            # and below the rest: a label at every point would overlap.
            first = g[g["map"] != g["map"].shift()]
            for _, row in first.iterrows():
                ax.annotate(str(int(row["map"])), (row["layer"], row[col]), textcoords="offset points",
                            xytext=(0, 5 if n % 2 == 0 else -13), ha="center", fontsize=9,
                            color=line.get_color())
        ax.axhline(0, color="grey", lw=0.8)
        ax.margins(y=0.2)  # room for the labels above the highest points
        ax.set_ylabel(col)
        ax.set_title(col + " per layer, L2 runs")
    axes[-1].set_xlabel("spatial conv layer (input side first)")
    axes[0].legend()
    return fig


def plot_feature_maps(images: np.ndarray, maps: Mapping[str, torch.Tensor], layers: Sequence[int],
                      n_channels: int = 4) -> plt.Figure:
    """Chapter 04's Figure 1: one row per input of ``images`` (N x C x H x W, its first channel shown
    on the left), then for each layer of ``maps`` (name -> N x channels x h x w, the layers
    ``layers``, counted from 0) its ``n_channels`` channels most active on these inputs, in
    grayscale with white = high, each map on its own scale."""
    fig, axes = plt.subplots(len(images), 1 + n_channels * len(maps), figsize=(FIGURE_WIDTH, 0.62 * len(images) + 0.4),
                             squeeze=False)
    for li, (layer, m) in enumerate(zip(layers, maps.values(), strict=True)):
        for c, ch in enumerate(m.mean(dim=(0, 2, 3)).argsort(descending=True)[:n_channels]):
            for r in range(len(images)):
                axes[r, 1 + n_channels * li + c].imshow(m[r, ch], cmap="gray", vmin=0,
                                                        vmax=max(float(m[r, ch].max()), 1e-12))
        # one title per layer, over its channels
        axes[0, 1 + n_channels * li].set_title(f"layer {layer + 1}: {m.shape[-1]}x{m.shape[-1]}", fontsize=9,
                                               loc="left")
    for r, image in enumerate(images):
        axes[r, 0].imshow(image[0], cmap="gray")
    axes[0, 0].set_title("input", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.06, hspace=0.06)
    return fig


def plot_position_profiles(profiles: Mapping[str, Sequence[np.ndarray]], titles: Sequence[str],
                           cmap: str, vmin: float, vmax: float, label: str):
    """Chapter 04's maps of :func:`position_profiles`: one row per entry of ``profiles`` (its key
    labels the row), one column per layer (``titles``), one colour scale from ``vmin`` to
    ``vmax``. No numbers are printed in the cells: at the column width a layer's 3x3 map is
    about 60 px wide, too small for readable numbers; a table shows them."""
    rows, cols = len(profiles), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(FIGURE_WIDTH, 0.4 + 0.75 * rows), squeeze=False,
                             layout="constrained")
    for row, (name, layers) in zip(axes, profiles.items()):
        for ax, p in zip(row, layers, strict=True):
            image = ax.imshow(p, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name)
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, label=label)
    return fig


def kernels_versus_records(configs: Sequence[Any], records: Sequence[Mapping[str, Any]],
                           results_dir: str | Path, model_dir: str | Path,
                           download: bool = False) -> dict[str, Any]:
    """Chapter 07's check of the one path: for each run, Table 4 of every kernel size (all its
    pairs of consecutive rings) from the trained kernels and from the record's ``weight_stats``.
    Returns the largest difference in m and whether every star agrees."""
    largest, same_stars = 0.0, True
    for config, stored in zip(configs, records, strict=True):
        # the network with its own record (the stored one, or the retrained run's: see trained_model)
        model, rec = trained_model(config, results_dir=results_dir, model_dir=model_dir,
                                   download=download)
        if rec["key"] != stored["key"]:
            raise ValueError(f"records do not follow configs: {stored['key']} for {config.key}")
        for k in sorted({int(e["k"]) for e in rec["weight_stats"]}):
            pairs = list(zip(ring_names(k), ring_names(k)[1:]))
            from_kernels = table4_row(spatial_kernels(model, k), "run", pairs=pairs)
            from_stats = table4_row(rec["weight_stats"], "run", pairs=pairs, k=k)
            same_stars &= bool((from_kernels.stars == from_stats.stars).all())
            largest = max(largest, float((from_kernels.m - from_stats.m).abs().max()))
    return {"largest difference in m": largest, "same stars": same_stars}


def untrained_model(config: Any, num_classes: int, in_channels: int) -> nn.Module:
    """The network of run ``config`` as it was before training: its initial weights, drawn from
    the run's own "init" stream (:func:`locolib.train.derive_seed`), without touching the
    caller's RNG (chapter 04 compares trained with untrained feature maps)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        return build_model(config.network, num_classes, in_channels=in_channels, width=config.width,
                           kernel_size=config.kernel_size, init=config.init).eval()


def position_profiles(models: Sequence[nn.Module], absolute: bool) -> list[np.ndarray]:
    """Per spatial layer, the k x k mean of w (or |w|) at each position divided by the layer's
    mean |w|, averaged over ``models`` (chapter 04, Figure 4)."""
    per_model = [[position_means(w, absolute) / position_means(w, True).mean() for w in spatial_kernels(m)]
                 for m in models]
    return [np.mean(layer, axis=0) for layer in zip(*per_model)]
