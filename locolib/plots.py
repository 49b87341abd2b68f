"""Figures of the training chapters (05 and 06)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

__all__ = ["paired_strip", "learning_curves", "lam_curves", "layer_ratios"]


def paired_strip(ax: Axes, frame: pd.DataFrame, arms: Sequence[str], labels: Sequence[str] | None = None,
                 value: str = "test_error", scale: float = 100.0) -> None:
    """Chapters 05-06: every run of ``arms`` (one column each) as a dot, the runs of one seed joined by a grey
    line (the pairing), and each arm's mean with its 95% t-interval in black."""

    wide = frame[frame.arm.isin(arms)].pivot_table(index="seed", columns="arm", values=value)
    wide = scale * wide[list(arms)]
    for _, row in wide.iterrows():
        ax.plot(range(len(arms)), row.to_numpy(), color="0.8", lw=0.8, zorder=1)
    for x, arm in enumerate(arms):
        v = wide[arm].dropna().to_numpy()
        ax.scatter(np.full(len(v), x), v, s=14, alpha=0.8, zorder=2)
        if len(v) > 1:
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            ax.errorbar(x + 0.18, v.mean(), yerr=half, fmt="s", color="black", capsize=4, zorder=3)
    ax.set_xticks(range(len(arms)), labels or arms)
    ax.set_xlim(-0.4, len(arms) - 0.4)


def learning_curves(ax: Axes, history: pd.DataFrame, arms: dict[str, str], column: str = "test_error",
                    scale: float = 100.0) -> None:
    """Chapter 05's learning curves: mean (line) and range (band) over seeds of ``column`` times
    ``scale`` (percent by default) per epoch for each arm; ``history`` has columns arm, epoch and
    ``column`` (epochs without a value are skipped)."""
    for arm, label in arms.items():
        h = history[(history.arm == arm)].dropna(subset=[column])
        curve = scale * h.groupby("epoch")[column].agg(["mean", "min", "max"])
        line, = ax.plot(curve.index, curve["mean"], "-o", ms=3, label=label)
        ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")


def lam_curves(fig: Figure, curves: pd.DataFrame, best: pd.Series, labels: dict[str, str]) -> None:
    """Chapter 05's Figure 4, one line per regularizer (``labels``: regularizer -> legend text)
    against lam in a 2 x 2 grid: validation and test error (mean +- standard error over seeds,
    the best lam by validation ringed), the realized decay factor, and the legend.
    ``curves``: :func:`locolib.stats.lam_curves`."""
    axes = fig.subplots(2, 2).flat
    columns = [("val_error", "validation error (%)", 100), ("test_error", "test error (%)", 100),
               ("realized_sq", "realized factor of $\\lambda$", 1)]
    for ax, (column, title, scale) in zip(axes, columns):
        for r, label in labels.items():
            c = curves[curves.regularizer == r]
            line = ax.errorbar(c.lam, scale * c[f"{column}_mean"], yerr=scale * c[f"{column}_sem"],
                               marker="o", ms=3, capsize=2, label=label).lines[0]
            at = c[c.lam == best[r]]
            ax.plot(at.lam, scale * at[f"{column}_mean"], "o", ms=9, mfc="none",
                    color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("$\\lambda$")
        ax.set_title(title)
    axes[2].set_yscale("log")
    axes[3].legend(*axes[0].get_legend_handles_labels(), loc="center")
    axes[3].axis("off")


def layer_ratios(axes: Sequence[Axes], per_model: pd.DataFrame) -> None:
    """Chapter 06's Figure 1 for one network: on ``axes[0]`` the signed, on ``axes[1]`` the
    absolute reading, each network's ratio per layer (dots) and their mean (line), neighbours
    over centre and neighbours over corners. ``per_model``: :func:`locolib.reg.per_model_ratios`
    of one dataset and network."""
    labels = {"r_n_c": "$r(I_n, I_c)$: neighbours / centre", "r_n_co": "$r(I_n, I_{co})$: neighbours / corners"}
    for ax, reading in zip(axes, ["signed", "absolute"]):
        pm = per_model[per_model.reading == reading]
        for k, (ratio, color) in enumerate([("r_n_c", "tab:green"), ("r_n_co", "tab:purple")]):
            sub = pm[pm.ratio == ratio]
            ax.scatter(sub.layer + (k - 0.5) * 0.25, sub.r, s=10, alpha=0.5, color=color)
            mean = sub.groupby("layer").r.mean()
            ax.plot(mean.index + (k - 0.5) * 0.25, mean.values, "-o", ms=4, color=color, label=labels[ratio])
        ax.axhline(1, color="gray", lw=0.8)
        if reading == "signed":
            ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("layer (input side first)")
        ax.set_ylabel("ratio")
        ax.set_title(f"{reading} means")
    axes[1].legend()
