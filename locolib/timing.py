"""Timing alternatives side by side, for the benchmarks (benchmarks/README.md) and the device
check (benchmarks/gpu_check.py, book/running.md).

Two ways of doing the same thing are timed in rounds: in each round every case runs once (one
block of work), in an order that rotates from round to round, so that a drift of a shared
machine's load hits all cases alike. A comparison is the per-round ratio of two cases (paired
by round), summarized by its median and a distribution-free confidence interval of the median
(:func:`median_ci`). :func:`interleaved` can go on until that interval is narrow enough to
decide a goal: a 3 % cost needs an interval narrower than +-1 %.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from locolib.train import synchronize

__all__ = ["seconds", "interleaved", "median_ci", "Ratio", "ratio"]


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``fn()`` takes on ``device``: between two CUDA events on a GPU (the device's
    own clock; the host only waits once, at the end), else the host clock around it.
    (Chapters 05-07: the benchmarks of their training code)
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def interleaved(cases: Mapping[str, Callable[[], object]], device: torch.device, rounds: int,
                warmup: int = 1, enough: Callable[[dict[str, list[float]]], bool] | None = None,
                max_rounds: int | None = None, max_s: float = float("inf"),
                ) -> dict[str, list[float]]:
    """Seconds of each case per round, after ``warmup`` untimed rounds: ``rounds`` rounds, then
    more while ``enough(times)`` is False, up to ``max_rounds`` (default ``10 * rounds``) or
    until ``max_s`` seconds have passed since the first timed round.
    (Chapters 05-07: the benchmarks of their training code)
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    max_rounds = max_rounds or 10 * rounds
    r, t0 = 0, time.perf_counter()
    while True:
        if r == warmup:
            t0 = time.perf_counter()
        k = r % len(names)
        for name in names[k:] + names[:k]:
            s = seconds(cases[name], device)
            if r >= warmup:
                times[name].append(s)
        r += 1
        done = r - warmup
        if done < rounds:
            continue
        if (enough is None or enough(times) or done >= max_rounds
                or time.perf_counter() - t0 >= max_s):
            return times


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` and a confidence interval for it from order statistics (no
    assumption on the distribution): ``[x_(k), x_(n+1-k)]`` with ``k`` the largest rank whose
    binomial(n, 1/2) tail is at most ``(1 - level) / 2``; the extremes for n < 6.
    (Chapters 05-07: the benchmarks of their training code)
    """
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    k = int(stats.binom.ppf((1 - level) / 2, n, 0.5))  # P(B < k) <= alpha / 2
    k = max(k, 1)
    return statistics.median(x), x[k - 1], x[n - k]


@dataclass(frozen=True)
class Ratio:
    """Per-round ratio of two cases: median, confidence interval of the median, rounds.
    (Chapters 05-07: the benchmarks of their training code)
    """

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return (f"{self.median:.4f} (95% CI {self.low:.4f}-{self.high:.4f}, "
                f"{self.rounds} rounds)")

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "ci_low": self.low, "ci_high": self.high,
                "rounds": self.rounds}


def ratio(times: Mapping[str, Sequence[float]], num: str, den: str) -> Ratio:
    """The per-round ratio ``times[num] / times[den]`` (:func:`median_ci`).
    (Chapters 05-07: the benchmarks of their training code)
    """
    r = [a / b for a, b in zip(times[num], times[den])]
    return Ratio(*median_ci(r), len(r))
