"""The book's training runs, defined once so that chapters share them.

A chapter describes its sweep by a plain settings dict (from its ``parameters`` cell) and gets
the runs with :func:`book_plan`; :func:`locolib.sweep.run_sweep` trains only the runs without a
result record, so a run trained by one chapter (Table 5) is reused by the next (Tables 4 and 6).
:func:`finished_records` reads the records of a plan without training anything (e.g. GPU runs
copied into ``results/``).

Besides the plan, this module holds what the LOCO-REG chapters compute from result records:

* :data:`PAPER_TABLE5`, :func:`paper_table5`: the paper's Table 5 with its differences
  (chapter 05 compares with it through :mod:`locolib.stats`); :func:`history_frame` learning
  curves;
* :func:`stats_layer_ratios`, :func:`table6_frame`, :func:`stats_table6_parameters`,
  :func:`table6_loco_params`: Table 6's layer-wise ``(gamma_l, eta_l)`` from the compact
  per-layer kernel sums every record stores (:func:`locolib.train.weight_stats`). So the
  trained weights themselves need not be kept: ``sum_{w in W_l} m(w, I)`` is the record's
  ``tap_sum`` (or ``tap_abs_sum``) summed over I and divided by |I|; the result equals
  :func:`locolib.reg.layer_ratios` / :func:`locolib.reg.table6_parameters` on the models
  (see tests/test_experiments.py). :func:`conv_input_sizes` gives the map size each layer sees;
* :func:`l2_equivalence`: TensorFlow's L2 strength vs PyTorch's ``weight_decay``, measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from locolib.config import KEY_FIELDS, REGULARIZERS, RunConfig, config_fields
from locolib.inspection import spatial_input_sizes
from locolib.models import build_model
from locolib.reg import LocoDecay, index_set, modulate, table6_from_ratios
from locolib.results import finished_record
from locolib.sweep import plan
from locolib.train import result_path

__all__ = [
    "SWEEP_KEYS",
    "book_plan",
    "finished_records",
    "PAPER_TABLE5",
    "paper_table5",
    "history_frame",
    "stats_layer_ratios",
    "per_model_ratios",
    "table6_frame",
    "stats_table6_parameters",
    "table6_loco_params",
    "l2_equivalence",
    "conv_input_sizes",
]

# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
#: Keys a settings dict may hold: the grid (datasets, networks, seeds, regularizers) and
#: RunConfig fields shared by all runs (gamma/eta apply to the LOCO-REG arm only).
SWEEP_KEYS: tuple[str, ...] = (
    "datasets", "networks", "seeds", "regularizers",
    *(name for name in config_fields() if name not in KEY_FIELDS),
)
_REQUIRED = ("datasets", "networks", "seeds")


def _seeds(v: Any) -> list[int]:
    """An int n means seeds 0..n-1; otherwise a list of seeds."""
    if isinstance(v, bool):
        raise TypeError(f"seeds must be an int count or a list of ints, got {v!r}")
    if isinstance(v, (int, np.integer)):
        if v < 1:
            raise ValueError(f"seeds: need at least one seed, got {v}")
        return list(range(int(v)))
    return [int(s) for s in v]


def book_plan(
    settings: Mapping[str, Any],
    regularizers: Sequence[str] | None = None,
    loco_params: Mapping | None = None,
) -> list[RunConfig]:
    """The runs described by a chapter's settings dict, e.g.
    ``{"datasets": ["digits"], "networks": ["vgg13"], "seeds": 10, "epochs": 15,
    "width": 0.125, "gamma": 0.8, "eta": 1.25}``: every dataset x network x regularizer x seed
    (Table 5's grid), in :func:`locolib.sweep.plan`'s seed-major order.

    ``seeds``: a count n (seeds 0..n-1) or a list. ``regularizers`` (keyword, or key in
    ``settings``; default both ``"l2"`` and ``"loco"``). ``loco_params``: per-(dataset, network)
    LOCO-REG parameters as in :func:`locolib.sweep.plan` (e.g. :func:`table6_loco_params`); they
    override ``gamma``/``eta``. Other keys are :class:`RunConfig` fields; unknown keys raise.
    """

    unknown = sorted(set(settings) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep settings {unknown}; allowed keys are {list(SWEEP_KEYS)}")
    missing = [k for k in _REQUIRED if k not in settings]
    if missing:
        raise ValueError(f"sweep settings need {missing} (allowed keys: {list(SWEEP_KEYS)})")
    s = dict(settings)
    datasets, networks, seeds = s.pop("datasets"), s.pop("networks"), _seeds(s.pop("seeds"))
    if isinstance(datasets, str) or isinstance(networks, str):
        raise TypeError("datasets and networks must be lists of names, e.g. ['digits']")
    regs = list(regularizers if regularizers is not None else s.pop("regularizers", REGULARIZERS))
    s.pop("regularizers", None)
    return plan(datasets, networks, regs, seeds, loco_params=loco_params, **s)


def finished_records(configs: Iterable[RunConfig],
                     results_dir: str | Path | None = None) -> list[dict]:
    """The stored records of those ``configs`` that are finished, in order; trains nothing
    (files that are not valid records are named in a warning: :func:`locolib.results.read_record`)."""

    records = (finished_record(result_path(c, results_dir), c.key) for c in configs)
    return [r for r in records if r is not None]


# --------------------------------------------------------------------------------------------
# Table 5
# --------------------------------------------------------------------------------------------
#: The paper's Table 5: mean test error (%) of 20 runs with standard L2 and with LOCO-REG
#: (layer-wise Table 6 parameters, c = 1.5), and the stars it prints for LOCO-REG
#: (*** p < .001, ** < .01, * < .1).
PAPER_TABLE5: tuple[tuple[str, str, float, float, str], ...] = (
    ("cifar10", "vgg13", 6.26, 6.13, "*"),
    ("cifar10", "resnet18", 5.29, 5.18, "**"),
    ("cifar10", "mobilenet", 11.01, 10.64, "*"),
    ("cifar100", "vgg13", 27.13, 26.31, "***"),
    ("cifar100", "resnet18", 25.61, 25.15, "***"),
    ("cifar100", "mobilenet", 36.3, 35.49, "***"),
    ("fashion_mnist", "vgg13", 5.0, 4.9, "***"),
    ("fashion_mnist", "resnet18", 4.65, 4.54, "**"),
    ("fashion_mnist", "mobilenet", 5.84, 5.73, "**"),
)


def paper_table5() -> pd.DataFrame:
    """:data:`PAPER_TABLE5` as a DataFrame with the absolute and relative differences."""
    df = pd.DataFrame(PAPER_TABLE5, columns=["dataset", "network", "paper_l2", "paper_loco",
                                             "paper_stars"])
    df["paper_difference"] = df.paper_loco - df.paper_l2
    df["paper_rel_difference"] = df.paper_difference / df.paper_l2
    return df


def history_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Learning curves: one row per (run, epoch) with dataset, network, regularizer, seed,
    epoch, lr, train_loss, train_acc, test_error (%) and penalty."""
    rows = []
    for rec in records:
        cfg = rec["config"]
        for h in rec["history"]:
            rows.append({"key": rec["key"], "dataset": cfg["dataset"], "network": cfg["network"],
                         "regularizer": cfg["regularizer"], "seed": cfg["seed"],
                         "epoch": h["epoch"], "lr": h["lr"], "train_loss": h["train_loss"],
                         "train_acc": h["train_acc"],
                         "test_error": 100.0 * h["test_error"] if "test_error" in h else np.nan,
                         "penalty": h.get("penalty")})
    return pd.DataFrame(rows, columns=["key", "dataset", "network", "regularizer", "seed", "epoch",
                                       "lr", "train_loss", "train_acc", "test_error", "penalty"])


# --------------------------------------------------------------------------------------------
# Table 6 from records
# --------------------------------------------------------------------------------------------
def _region_sum(entry: Mapping[str, Any], spec: str, absolute: bool) -> float:
    """sum over the layer's matrices w of m(w, I): the tap sums over I, divided by |I|."""

    k = int(entry["k"])
    taps = np.asarray(entry["tap_abs_sum" if absolute else "tap_sum"], dtype=float)
    idx = index_set(spec, k)
    return float(sum(taps[i, j] for i, j in idx) / len(idx))


def _layer_stats(records: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    records = list(records)
    if not records:
        raise ValueError("no records given")
    stats = [r["weight_stats"] for r in records]
    n = {len(s) for s in stats}
    if len(n) != 1:
        raise ValueError(f"records have different numbers of spatial layers: {sorted(n)}")
    return stats


def stats_layer_ratios(records: Sequence[Mapping[str, Any]], I: str, I2: str,
                       absolute: bool = True) -> list[float]:
    """r(M, l, I, I') of Table 6 for every layer, from the records' ``weight_stats``; equal to
    :func:`locolib.reg.layer_ratios` on the trained models. ``I``, ``I2``: "c", "n" or "co"."""
    stats = _layer_stats(records)
    out = []
    for l in range(len(stats[0])):
        rs = []
        for s in stats:
            den = _region_sum(s[l], I2, absolute)
            if den == 0:
                raise ValueError(f"layer {l}: sum of m(w, I') is 0, the ratio is undefined")
            rs.append(_region_sum(s[l], I, absolute) / den)
        out.append(sum(rs) / len(rs))
    return out


def per_model_ratios(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Each record's own Table 6 ratios (chapter 06, Figure 1): one row per (record, reading,
    ratio, layer) with dataset, network, seed, reading ("signed"/"absolute"), ratio ("r_n_c" or
    "r_n_co"), layer (1-based) and r; the paper's r is their mean over records."""
    rows = []
    for rec in records:
        cfg = rec["config"]
        for absolute in (False, True):
            for name, (I, I2) in {"r_n_c": ("n", "c"), "r_n_co": ("n", "co")}.items():
                for layer, r in enumerate(stats_layer_ratios([rec], I, I2, absolute), start=1):
                    rows.append({"dataset": cfg["dataset"], "network": cfg["network"], "seed": cfg["seed"],
                                 "reading": "absolute" if absolute else "signed", "ratio": name,
                                 "layer": layer, "r": r})
    return pd.DataFrame(rows)


def table6_frame(records: Sequence[Mapping[str, Any]], cs: Sequence[float] = (0.5, 1.0, 1.5, 2.5),
                 readings: Sequence[bool] = (False, True)) -> pd.DataFrame:
    """Table 6 per layer, c and reading (``absolute`` False: the printed signed means; True:
    magnitudes): r(I_n, I_c), r(I_n, I_co), gamma = a(r(I_n, I_c), c), a_co = a(r(I_n, I_co), c),
    the printed eta = 1 / a_co and the consistent eta = a_co, and ``valid`` (both a > 0, i.e. a
    usable positive mask). Invalid rows keep the numbers (eta printed is NaN if a_co = 0)."""

    stats = _layer_stats(records)
    rows = []
    for absolute in readings:
        r_c = stats_layer_ratios(records, "n", "c", absolute)
        r_co = stats_layer_ratios(records, "n", "co", absolute)
        for c in cs:
            for l, (rc, rco) in enumerate(zip(r_c, r_co)):
                g, a_co = modulate(rc, c), modulate(rco, c)
                rows.append({"reading": "absolute" if absolute else "signed", "c": float(c),
                             "layer": l + 1, "name": stats[0][l].get("name", ""),
                             "k": int(stats[0][l]["k"]), "r_n_c": rc, "r_n_co": rco,
                             "gamma": g, "a_co": a_co,
                             "eta_printed": 1.0 / a_co if a_co != 0 else math.nan,
                             "eta_consistent": a_co, "valid": bool(g > 0 and a_co > 0)})
    return pd.DataFrame(rows)


def stats_table6_parameters(records: Sequence[Mapping[str, Any]], c: float = 1.5,
                            absolute: bool = True, eta_rule: str = "printed",
                            decimals: int | None = 4) -> list[tuple[float, float]]:
    """Per-layer ``(gamma_l, eta_l)`` of Table 6 from records, as
    :func:`locolib.reg.table6_parameters` computes them from the models (same rules and errors).

    ``decimals``: round the parameters (default 4), so that the LOCO-REG runs they define get the
    same run keys when the records are recomputed with float noise (e.g. on another machine).
    """

    params = table6_from_ratios(stats_layer_ratios(records, "n", "c", absolute),
                                stats_layer_ratios(records, "n", "co", absolute), c, eta_rule)
    if decimals is None:
        return params
    return [(round(g, decimals), round(e, decimals)) for g, e in params]


def table6_loco_params(records: Iterable[Mapping[str, Any]], c: float = 1.5,
                       absolute: bool = True, eta_rule: str = "printed",
                       decimals: int | None = 4) -> dict[str, dict[str, tuple[float, ...]]]:
    """``{"dataset/network": {"gamma": per-layer, "eta": per-layer}}`` from the standard-L2
    records among ``records`` (each (dataset, network) cell averaged over its runs, as the
    paper's "means per layer l for each architecture and dataset across all trained models"),
    ready for :func:`book_plan`'s ``loco_params``."""
    cells: dict[str, list] = {}
    for rec in records:
        cfg = rec["config"]
        if cfg["regularizer"] == "l2":
            cells.setdefault(f"{cfg['dataset']}/{cfg['network']}", []).append(rec)
    if not cells:
        raise ValueError("no standard-L2 records given: Table 6 is derived from those")
    out = {}
    for cell, recs in sorted(cells.items()):
        params = stats_table6_parameters(recs, c, absolute, eta_rule, decimals)
        out[cell] = {"gamma": tuple(g for g, _ in params), "eta": tuple(e for _, e in params)}
    return out


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
    not.
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


def conv_input_sizes(network: str, input_size: int = 32, width: float = 0.125,
                     in_channels: int = 1) -> list[int]:
    """Height of the feature map entering each spatial convolution of ``network`` (module order,
    as the layers of Table 6) for ``input_size`` x ``input_size`` inputs."""


    model = build_model(network, 10, in_channels=in_channels, width=width)
    with torch.no_grad():
        sizes = spatial_input_sizes(model, torch.zeros(1, in_channels, input_size, input_size))
    return [height for height, _ in sizes]
