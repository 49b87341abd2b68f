"""Figures shared by the training chapters (05 and 06)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from scipy import stats

__all__ = ["paired_strip", "learning_curves"]


def paired_strip(ax: Axes, frame: pd.DataFrame, arms: Sequence[str], labels: Sequence[str] | None = None,
                 value: str = "test_error", scale: float = 100.0) -> None:
    """Every run of ``arms`` (one column each) as a dot, the runs of one seed joined by a grey
    line (the pairing), and each arm's mean with its 95% t-interval in black. (Chapters 05, 06)"""

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


def learning_curves(ax: Axes, history: pd.DataFrame, arms: dict[str, str], column: str = "test_error") -> None:
    """Mean (line) and range (band) over seeds of ``column`` per epoch for each arm; ``history``
    has columns arm, epoch and ``column`` (epochs without a value are skipped). (Chapter 05)"""
    for arm, label in arms.items():
        h = history[(history.arm == arm)].dropna(subset=[column])
        curve = h.groupby("epoch")[column].agg(["mean", "min", "max"])
        line, = ax.plot(curve.index, curve["mean"], "-o", ms=3, label=label)
        ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
