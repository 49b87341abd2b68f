"""Locating features on a feature map (paper Sections 4 and 5, Figure 3, Table 1).

Three pieces:

* Figure 3: place two non-overlapping k x k features on a 2-D map, either where the summed values
  are largest (the paper's blue features) or where the cohesion F_tot of the gravity model is
  largest (red, the "locality" strategy; F_tot as in ``locolib.cohesion.total_force``: each
  unordered pair of parts once, m_a m_b / d^q). "Two features" means the pair of
  non-overlapping windows with the largest total score, found exhaustively over all pairs
  (``method="pair"``); ``method="greedy"`` (best window, then the best window not overlapping
  it) is offered for comparison. Ties are reported, never hidden.
* Robustness of both placements to noise (Gaussian, salt-and-pepper), vectorised over trials.
* Section 4.2 in 1-D: locate a single feature at the argmax of a filtered noisy line and compare
  filters (centre-only, uniform, Table 1's Gaussian and Laplacian, sharpening, minimax-optimal).

And Section 5 in two functions: the optimal weights w_j = m(j) l(j).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import sympy
from matplotlib.patches import Rectangle
from numpy.lib.stride_tricks import sliding_window_view
from scipy import integrate, stats
from scipy.stats import binomtest, ttest_rel

from locolib import minimax
from locolib.kernels import check_k

Strategy = Literal["sum", "cohesion"]
STRATEGIES: tuple[str, ...] = ("sum", "cohesion")
NOISES: tuple[str, ...] = ("gaussian", "salt_pepper")
COLOURS = {"sum": "tab:blue", "cohesion": "tab:red"}  # the paper's blue and red features

# The input of the paper's Figure 3 as printed (6 rows x 16 columns).
FIGURE3_MAP = np.array([
    [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 1, 2, 2, 1, 0, 2, 3, 1, 1, 1, 0],
    [1, 0, 0, 0, 1, 2, 6, 3, 1, 1, 2, 5, 1, 2, 1, 0],
    [0, 0, 0, 0, 1, 1, 3, 2, 2, 3, 2, 3, 2, 0, 0, 0],
    [0, 1, 0, 0, 0, 1, 2, 2, 2, 2, 3, 2, 2, 1, 0, 0],
    [0, 0, 0, 1, 0, 1, 1, 1, 2, 3, 3, 2, 1, 1, 0, 0],
], dtype=np.int64)
FIGURE3_MAP.setflags(write=False)


# ----------------------------------------------------------------------------- window scores

def cohesion_kernel(k: int = 3, q: Any = 2, exact: bool = False) -> np.ndarray:
    """U with F_tot(w) = w^T U w for a flattened k x k window w (row-major).

    U[a, b] = 1 / d(a, b)^q for a < b and 0 otherwise: each unordered pair once, no self-force.
    ``exact=True`` gives an object array of sympy numbers (exact for integer or rational q). (Chapter 03)
    """
    check_k(k, odd=False)
    pos = np.array(list(itertools.product(range(k), repeat=2)))
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    upper = np.triu(np.ones_like(d2, dtype=bool), 1)
    if exact:

        qq = sympy.sympify(q)
        return np.array([[sympy.Integer(int(d)) ** (-qq / 2) if u else sympy.Integer(0)
                          for d, u in zip(row, urow)] for row, urow in zip(d2, upper)], dtype=object)
    q = float(q)
    if not q > 0:
        raise ValueError(f"the distance exponent q must be positive, got {q}")
    return np.where(upper, np.where(upper, d2, 1).astype(float) ** (-q / 2), 0.0)


def _windows(maps: Any, k: int) -> np.ndarray:
    """(..., H-k+1, W-k+1, k*k): every k x k window of the last two axes, flattened row-major."""
    check_k(k, odd=False)
    a = np.asarray(maps)
    if a.ndim < 2 or a.shape[-2] < k or a.shape[-1] < k:
        raise ValueError(f"maps must be (..., H, W) with H, W >= k = {k}, got shape {a.shape}")
    w = sliding_window_view(a, (k, k), axis=(-2, -1))
    return w.reshape(*w.shape[:-2], k * k)


def window_sum(maps: Any, k: int = 3) -> np.ndarray:
    """Sum of every k x k window: shape (..., H-k+1, W-k+1), indexed by the window's top-left. (Chapter 03)"""
    return _windows(maps, k).sum(-1)


def window_cohesion(maps: Any, k: int = 3, q: Any = 2) -> np.ndarray:
    """F_tot (gravity model, exponent q) of every k x k window, indexed by its top-left.

    Float arithmetic for numeric maps; for object arrays (integers, Fractions, sympy numbers)
    the same formula is evaluated exactly, which is how it is tested against
    ``locolib.cohesion.total_force``. (Chapter 03)
    """
    w = _windows(maps, k)
    exact = w.dtype == object
    u = cohesion_kernel(k, q, exact=exact)
    if exact:
        return np.einsum("...a,ab,...b->...", w, u, w, optimize=False)
    w = w.astype(float)
    return ((w @ u) * w).sum(-1)


def window_scores(maps: Any, strategy: Strategy, k: int = 3, q: Any = 2) -> np.ndarray:
    """The score of every k x k window of ``maps`` by ``strategy``: its sum or its cohesion.
    (Chapter 03; Figure 3)"""
    if strategy == "sum":
        return window_sum(maps, k)
    if strategy == "cohesion":
        return window_cohesion(maps, k, q)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


# ----------------------------------------------------------------------------- placing two features

def window_positions(shape: Sequence[int], k: int = 3) -> np.ndarray:
    """Top-left (row, col) of every k x k window of an H x W map, row-major: shape (P, 2). (Chapter 03)"""
    h, w = shape[-2] - k + 1, shape[-1] - k + 1
    if h < 1 or w < 1:
        raise ValueError(f"a {shape[-2]} x {shape[-1]} map holds no {k} x {k} window")
    return np.array(list(itertools.product(range(h), range(w))))


def window_pairs(shape: Sequence[int], k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Flat window indices (a, b), a < b, of every unordered pair of non-overlapping windows. (Chapter 03)"""
    pos = window_positions(shape, k)
    a, b = np.triu_indices(len(pos), 1)
    apart = (np.abs(pos[a] - pos[b]) >= k).any(axis=1)
    if not apart.any():
        raise ValueError(f"a {shape[-2]} x {shape[-1]} map holds no two non-overlapping {k} x {k} windows")
    return a[apart], b[apart]


def _argmax_ties(values: np.ndarray, rng: np.random.Generator | None, rtol: float) -> np.ndarray:
    """argmax along the last axis; exact ties (up to rtol) broken uniformly at random by rng,
    or by the first index when rng is None."""
    best = values.max(axis=-1, keepdims=True)
    tied = values >= best - rtol * np.maximum(np.abs(best), 1.0)
    first = tied.argmax(axis=-1)
    multi = tied.sum(axis=-1) > 1
    if rng is None or not multi.any():
        return first
    keys = np.where(tied[multi], rng.random(tied[multi].shape), -1.0)
    first[multi] = keys.argmax(axis=-1)
    return first


def best_pair_index(scores: np.ndarray, pairs: tuple[np.ndarray, np.ndarray],
                    rng: np.random.Generator | None = None, rtol: float = 1e-12) -> np.ndarray:
    """For window scores (..., P), the index into ``pairs`` of the pair with the largest total. (Chapter 03)"""
    return _argmax_ties(scores[..., pairs[0]] + scores[..., pairs[1]], rng, rtol)


@dataclass(frozen=True)
class Placement:
    """Two placed features: windows by top-left (row, col), their centres, and the total score. (Chapter 03)"""

    strategy: str
    windows: tuple[tuple[int, int], tuple[int, int]]
    score: float
    k: int = 3
    ties: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()  # every optimal pair, this one included

    @property
    def centres(self) -> tuple[tuple[int, int], tuple[int, int]]:
        c = self.k // 2
        return tuple((r + c, col + c) for r, col in self.windows)  # type: ignore[return-value]

    @property
    def unique(self) -> bool:
        return len(self.ties) <= 1


def place_two(grid: Any, strategy: Strategy = "sum", k: int = 3, q: Any = 2,
              method: Literal["pair", "greedy"] = "pair", rtol: float = 1e-12) -> Placement:
    """The two non-overlapping k x k features of Figure 3 for one map.

    ``method="pair"`` maximises the pair's total score over all non-overlapping pairs (exhaustive);
    ``"greedy"`` takes the best window, then the best window not overlapping it. Ties go to the
    first pair in row-major order; all tied optima are listed in ``Placement.ties``. (Chapter 03)
    """
    grid = np.asarray(grid)
    scores = window_scores(grid, strategy, k, q).ravel().astype(float)
    pos = window_positions(grid.shape, k)
    as_tuple = lambda i: (int(pos[i][0]), int(pos[i][1]))  # noqa: E731
    if method == "pair":
        a, b = window_pairs(grid.shape, k)
        totals = scores[a] + scores[b]
        best = totals.max()
        tied = np.flatnonzero(totals >= best - rtol * max(abs(best), 1.0))
        ties = tuple((as_tuple(a[i]), as_tuple(b[i])) for i in tied)
        return Placement(strategy, ties[0], float(best), k, ties)
    if method == "greedy":
        first = int(np.argmax(scores))
        apart = (np.abs(pos - pos[first]) >= k).any(axis=1)
        second = int(np.flatnonzero(apart)[np.argmax(scores[apart])])
        windows = tuple(sorted((as_tuple(first), as_tuple(second))))
        return Placement(strategy, windows, float(scores[first] + scores[second]), k,  # type: ignore[arg-type]
                         (windows,))
    raise ValueError(f"method must be 'pair' or 'greedy', got {method!r}")


def figure3_placements(k: int = 3, q: Any = 2) -> dict[str, Placement]:
    """Figure 3 reproduced: the blue (sum) and red (cohesion) features on the printed map. (Chapter 03)"""
    return {s: place_two(FIGURE3_MAP, s, k, q) for s in STRATEGIES}  # type: ignore[arg-type]


def ranked_pairs(grid: Any, strategy: Strategy, k: int = 3, q: Any = 2, top: int = 5) -> pd.DataFrame:
    """The ``top`` best non-overlapping pairs (centres and total), to show how close the runners-up are. (Chapter 03)"""
    grid = np.asarray(grid)
    scores = window_scores(grid, strategy, k, q).ravel().astype(float)
    pos = window_positions(grid.shape, k) + k // 2
    a, b = window_pairs(grid.shape, k)
    totals = scores[a] + scores[b]
    order = np.argsort(-totals, kind="stable")[:top]
    return pd.DataFrame({"strategy": strategy,
                         "centre 1": [tuple(int(v) for v in pos[a[i]]) for i in order],
                         "centre 2": [tuple(int(v) for v in pos[b[i]]) for i in order],
                         "total": totals[order]})


def draw_placement(ax: Any, grid: Any, placement: Placement, title: str | None = None) -> None:
    """The map with its values printed in the cells and the two features as coloured boxes. (Chapter 03)"""

    grid = np.asarray(grid)
    ax.imshow(grid, cmap="Greys", vmin=grid.min(), vmax=grid.max() * 1.6)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=9)
    colour = COLOURS.get(placement.strategy, "black")
    for r, c in placement.windows:
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), placement.k, placement.k, fill=False,
                               edgecolor=colour, linewidth=2.5))
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.tick_params(labelsize=9)
    ax.set_title(title or f"{placement.strategy}: centres {placement.centres}")


# ----------------------------------------------------------------------------- robustness to noise

def perturb(grid: Any, kind: str, level: float, n: int, rng: np.random.Generator,
            nonnegative: bool = False) -> np.ndarray:
    """n noisy copies (n, H, W) of ``grid``.

    ``"gaussian"``: add N(0, level^2) to every cell. ``"salt_pepper"``: each cell independently
    with probability ``level`` is replaced, half the time by 0 (pepper) and half by the map's
    maximum (salt). ``nonnegative`` clips at 0 afterwards (masses as after a ReLU). (Chapter 03)
    """
    grid = np.asarray(grid, dtype=float)
    if kind == "gaussian":
        if level < 0:
            raise ValueError(f"a standard deviation must be >= 0, got {level}")
        out = grid + level * rng.standard_normal((n, *grid.shape))
    elif kind == "salt_pepper":
        if not 0 <= level <= 1:
            raise ValueError(f"a replacement probability lies in [0, 1], got {level}")
        u = rng.random((n, *grid.shape))
        out = np.where(u < level / 2, 0.0, np.where(u < level, grid.max(), grid))
    else:
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    return np.maximum(out, 0.0) if nonnegative else out


def _shift(chosen: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Mean distance the two centres moved, best matching, nearest clean optimum.

    chosen: (n, 2, 2) centres per trial; clean: (t, 2, 2) centres of the tied clean optima.
    """
    d = np.linalg.norm(chosen[:, None, :, None, :] - clean[None, :, None, :, :], axis=-1)  # n,t,2,2
    straight = d[..., 0, 0] + d[..., 1, 1]
    crossed = d[..., 0, 1] + d[..., 1, 0]
    return np.minimum(straight, crossed).min(axis=1) / 2


def robustness_trials(grid: Any = FIGURE3_MAP,
                      levels: Mapping[str, Sequence[float]] | None = None,
                      n_trials: int = 1000, seed: int = 0, k: int = 3, q: Any = 2,
                      nonnegative: bool = False, chunk: int = 2000) -> pd.DataFrame:
    """Per-trial outcome of both strategies on the same noisy maps (a paired design).

    For each noise kind and level, ``n_trials`` noisy maps are drawn (seeded by seed, kind and
    level index) and both strategies place two features on each. Ties on a noisy map (possible
    with salt-and-pepper) are broken uniformly at random. A trial *keeps* the placement when
    the noisy placement is one of the clean map's optimal pairs (Figure 3's sum placement has
    two tied optima; either counts). ``shift``: mean distance the two centres moved (see
    ``_shift``). ``pair``: the chosen pair as an index into ``window_pairs`` (for
    ``agreement_trials``).

    Columns: noise, level, trial, strategy, pair, kept, shift. (Chapter 03)
    """
    grid = np.asarray(grid, dtype=float)
    if levels is None:
        levels = {"gaussian": (0.1, 0.25, 0.5, 1.0, 2.0), "salt_pepper": (0.01, 0.02, 0.05, 0.1, 0.2)}
    pairs = window_pairs(grid.shape, k)
    centres = window_positions(grid.shape, k) + k // 2
    frames = []
    for kind_index, (kind, values) in enumerate(levels.items()):
        if kind not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
        for level_index, level in enumerate(values):
            rng = np.random.default_rng([seed, kind_index, level_index])
            maps = perturb(grid, kind, level, n_trials, rng, nonnegative)
            for strategy in STRATEGIES:
                clean = place_two(grid, strategy, k, q)  # type: ignore[arg-type]
                flat = {tuple(int(v) for v in p): i for i, p in enumerate(window_positions(grid.shape, k))}
                clean_pairs = {(flat[a], flat[b]) for a, b in clean.ties}
                clean_centres = np.array([[centres[a], centres[b]] for a, b in clean_pairs], dtype=float)
                chosen = np.concatenate([
                    best_pair_index(window_scores(maps[s:s + chunk], strategy, k, q).reshape(
                        len(maps[s:s + chunk]), -1), pairs, rng)
                    for s in range(0, n_trials, chunk)])
                a, b = pairs[0][chosen], pairs[1][chosen]
                kept = np.array([(x, y) in clean_pairs for x, y in zip(a, b)])
                shift = _shift(np.stack([centres[a], centres[b]], axis=1).astype(float), clean_centres)
                frames.append(pd.DataFrame({"noise": kind, "level": float(level),
                                            "trial": np.arange(n_trials), "strategy": strategy,
                                            "pair": chosen, "kept": kept, "shift": shift}))
    return pd.concat(frames, ignore_index=True)


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) binomial confidence interval of a proportion. (Chapter 03)"""

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def agreement_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """A reference-free robustness measure: do two independent noisy copies of the map get the
    same placement? Trial i is paired with trial i + n // 2 of the same noise, level and
    strategy (the same trial pairs for both strategies). Columns: noise, level, trial (the pair's
    number), strategy, agree. Unlike ``kept`` it does not depend on how ties of the clean map
    are counted: a strategy whose clean optimum is tied agrees with itself only by chance. (Chapter 03)"""
    frames = []
    for (kind, level, strategy), t in trials.groupby(["noise", "level", "strategy"], sort=False):
        pair = t.sort_values("trial")["pair"].to_numpy()
        half = len(pair) // 2
        frames.append(pd.DataFrame({"noise": kind, "level": level, "trial": np.arange(half),
                                    "strategy": strategy,
                                    "agree": pair[:half] == pair[half:2 * half]}))
    return pd.concat(frames, ignore_index=True)


def summarize_robustness(trials: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per noise, level and strategy: n, kept, p_kept with its exact CI, mean shift and its SE,
    and the agreement rate of independent noisy copies (``agreement_trials``) with its exact CI. (Chapter 03)"""
    agree = agreement_trials(trials).groupby(["noise", "level", "strategy"], sort=False)["agree"]
    rows = []
    for (kind, level, strategy), t in trials.groupby(["noise", "level", "strategy"], sort=False):
        kept, n = int(t["kept"].sum()), len(t)
        low, high = proportion_ci(kept, n, confidence)
        a = agree.get_group((kind, level, strategy))
        a_low, a_high = proportion_ci(int(a.sum()), len(a), confidence)
        rows.append({"noise": kind, "level": level, "strategy": strategy, "n": n, "kept": kept,
                     "p_kept": kept / n, "ci_low": low, "ci_high": high,
                     "mean_shift": t["shift"].mean(),
                     "shift_se": t["shift"].std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
                     "n_pairs": len(a), "p_agree": a.mean(), "agree_low": a_low, "agree_high": a_high})
    return pd.DataFrame(rows)


# The interval columns of each measure of :func:`summarize_robustness` (None: +-1.96 standard errors).
ROBUSTNESS_INTERVALS = {"p_kept": ("ci_low", "ci_high"), "p_agree": ("agree_low", "agree_high"), "mean_shift": None}


def draw_robustness(ax: Any, summary: pd.DataFrame, noise: str, measure: str) -> None:
    """One measure of :func:`summarize_robustness` (``p_kept``, ``p_agree`` or ``mean_shift``)
    against the level of ``noise`` on a log axis, one line per strategy in its colour, with
    the 95% intervals of the summary (exact binomial; the shift: +-1.96 standard errors). (Chapter 03)"""
    for strategy in STRATEGIES:
        t = summary[(summary.noise == noise) & (summary.strategy == strategy)]
        interval = ROBUSTNESS_INTERVALS[measure]
        if interval:
            err = np.vstack([t[measure] - t[interval[0]], t[interval[1]] - t[measure]])
        else:
            err = 1.96 * t["shift_se"].to_numpy()
        name = "max sum (blue)" if strategy == "sum" else "max cohesion (red)"
        ax.errorbar(t["level"], t[measure], yerr=err, marker="o", ms=4, capsize=3, color=COLOURS[strategy],
                    label=name)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)


def paired_comparison(trials: pd.DataFrame, a: str = "cohesion", b: str = "sum",
                      metric: str = "kept") -> pd.DataFrame:
    """Exact McNemar test per noise and level: is the boolean ``metric`` ("kept", or "agree" on
    ``agreement_trials``) true more often for strategy ``a`` than for ``b`` on the same noisy
    maps? Columns: only_a, only_b (discordant trials), p_a_better, p_b_better (one-sided exact
    binomial p-values on the discordant trials). (Chapter 03)"""

    rows = []
    for (kind, level), t in trials.groupby(["noise", "level"], sort=False):
        ka = t[t.strategy == a].sort_values("trial")[metric].to_numpy()
        kb = t[t.strategy == b].sort_values("trial")[metric].to_numpy()
        only_a, only_b = int((ka & ~kb).sum()), int((kb & ~ka).sum())
        m = only_a + only_b
        p_a = binomtest(only_a, m, 0.5, alternative="greater").pvalue if m else 1.0
        p_b = binomtest(only_b, m, 0.5, alternative="greater").pvalue if m else 1.0
        rows.append({"noise": kind, "level": level, "n": len(ka), f"only_{a}": only_a,
                     f"only_{b}": only_b, f"p_{a}_better": float(p_a), f"p_{b}_better": float(p_b)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Section 4.2 in 1-D

# 1-D counterparts of Table 1 (unnormalised; every filter is used at unit L2 norm, which does not
# move an argmax). Table 1's Gaussian is the outer product of (.25, .5, .25) with itself, so
# that is its exact 1-D factor. Its Laplacian is not separable; we use its centre row
# (-1, 8, -1), the 1-D Laplacian-based sharpening filter (-1, 3, -1) = identity - (1, -2, 1).
FILTERS_1D: dict[str, tuple[float, ...]] = {
    "centre-only": (0.0, 1.0, 0.0),
    "uniform": (1.0, 1.0, 1.0),
    "Gaussian (Table 1)": (0.25, 0.5, 0.25),
    "sharpening (-1, 3, -1)": (-1.0, 3.0, -1.0),
    "Laplacian row (-1, 8, -1)": (-1.0, 8.0, -1.0),
}


def unit(w: Sequence[float]) -> np.ndarray:
    """w scaled to unit L2 norm (the theorem's constraint). (Chapter 03)"""
    w = np.asarray(w, dtype=float)
    if w.ndim != 1 or len(w) % 2 == 0 or not np.isfinite(w).all() or not np.any(w):
        raise ValueError(f"a filter is an odd-length non-zero finite vector for offsets -k..k, got {w}")
    return w / np.linalg.norm(w)


def filter_bank(g: Callable[[int], float], ks: Sequence[int] = (1, 2)) -> dict[str, np.ndarray]:
    """``FILTERS_1D`` plus the minimax-optimal filters of Theorem 2 (``locolib.minimax.solve``),
    signed and non-negative, for each half-width k in ``ks``; all at unit norm. (Chapter 03)"""

    bank = {name: unit(w) for name, w in FILTERS_1D.items()}
    for k in ks:
        for nonnegative in (False, True):
            w, _ = minimax.solve(g, k=k, nonnegative=nonnegative)
            bank[f"minimax k={k} {'w>=0' if nonnegative else 'signed'}"] = unit(w)
    return bank


def _padded(filters: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    ws = [unit(w) for w in filters.values()]
    kmax = max(len(w) // 2 for w in ws)
    out = np.zeros((len(ws), 2 * kmax + 1))
    for i, w in enumerate(ws):
        out[i, kmax - len(w) // 2: kmax + len(w) // 2 + 1] = w
    return list(filters), out


def locate_1d(g: Callable[[int], float], filters: Mapping[str, Sequence[float]],
              noise_levels: Sequence[float], n_trials: int, half_width: int = 20,
              seed: int = 0, chunk: int = 10000) -> np.ndarray:
    """Estimated locations x' = argmax_{|x| <= half_width} f(x, w), shape (levels, filters, trials).

    m(x) = g(x) + s eps_x with eps_x i.i.d. N(0, 1) on |x| <= half_width + K (K the largest
    filter half-width, shorter filters zero-padded, so every window lies on the line). The true
    location is x* = 0. One noise draw per trial serves every level and filter (common random
    numbers: differences between filters are estimated precisely). Ties (measure zero) go to the
    smallest x. (Chapter 03)
    """
    if half_width < 1:
        raise ValueError(f"half_width must be >= 1, got {half_width}")
    _, w = _padded(filters)
    kmax = w.shape[1] // 2
    xs = np.arange(-half_width - kmax, half_width + kmax + 1)
    clean = np.array([float(g(int(x))) for x in xs])
    noise = np.random.default_rng(seed).standard_normal((n_trials, len(xs)))
    out = np.empty((len(noise_levels), len(w), n_trials), dtype=np.int64)
    for i, s in enumerate(noise_levels):
        for start in range(0, n_trials, chunk):  # bounded memory: chunk x positions x filters
            lines = clean + s * noise[start:start + chunk]
            windows = sliding_window_view(lines, 2 * kmax + 1, axis=1)  # n, 2R+1, 2K+1
            out[i, :, start:start + chunk] = ((windows @ w.T).argmax(axis=1) - half_width).T
    return out


def localisation_table(x: np.ndarray, names: Sequence[str], noise_levels: Sequence[float],
                       confidence: float = 0.95) -> pd.DataFrame:
    """Summarise ``locate_1d``'s estimates x (levels, filters, trials): per filter and noise level
    s, P(x' != x*) with an exact CI and the mean |x' - x*| with its standard error. (Chapter 03)"""
    n = x.shape[-1]
    rows = []
    for i, s in enumerate(noise_levels):
        for j, name in enumerate(names):
            err = np.abs(x[i, j])
            wrong = int((err != 0).sum())
            low, high = proportion_ci(wrong, n, confidence)
            rows.append({"filter": name, "s": float(s), "n": n, "p_wrong": wrong / n,
                         "ci_low": low, "ci_high": high, "mean_abs_error": err.mean(),
                         "abs_error_se": err.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan})
    return pd.DataFrame(rows)


def compare_filters(x: np.ndarray, names: Sequence[str], noise_levels: Sequence[float],
                    a: str, b: str) -> pd.DataFrame:
    """Paired comparison of filters a and b on the same noisy lines, per noise level: differences
    (a - b) of P(x' != x*) and of mean |x' - x*|, with one-sided p-values that a errs *less*
    (exact McNemar on the trials where exactly one errs; paired t-test on |error|). (Chapter 03)"""

    ia, ib = list(names).index(a), list(names).index(b)
    rows = []
    for i, s in enumerate(noise_levels):
        ea, eb = np.abs(x[i, ia]), np.abs(x[i, ib])
        only_a, only_b = int(((ea != 0) & (eb == 0)).sum()), int(((eb != 0) & (ea == 0)).sum())
        m = only_a + only_b
        p_wrong = binomtest(only_b, m, 0.5, alternative="greater").pvalue if m else 1.0
        same = np.array_equal(ea, eb)
        p_abs = 1.0 if same else ttest_rel(ea, eb, alternative="less").pvalue
        rows.append({"s": float(s), "a": a, "b": b, "p_wrong_diff": (only_a - only_b) / len(ea),
                     "abs_error_diff": float(ea.mean() - eb.mean()),
                     "p_a_fewer_errors": float(p_wrong), "p_a_smaller_abs_error": float(p_abs)})
    return pd.DataFrame(rows)


def merge_identical(filters: Mapping[str, Sequence[float]], atol: float = 1e-9) -> dict[str, np.ndarray]:
    """Filters equal up to zero padding merged into one entry named "a = b = ..." (first kept). (Chapter 03)"""
    names, w = _padded(filters)
    merged: dict[str, np.ndarray] = {}
    groups: list[list[int]] = []
    for i in range(len(names)):
        for group in groups:
            if np.allclose(w[i], w[group[0]], atol=atol, rtol=0):
                group.append(i)
                break
        else:
            groups.append([i])
    for group in groups:
        merged[" = ".join(names[i] for i in group)] = unit(filters[names[group[0]]])
    return merged


def centre_only_p_correct(g: Callable[[int], float], s: float, half_width: int = 20) -> float:
    """P(x' = 0) for the centre-only filter, by numerical integration (no simulation):
    P(m(0) > m(x) for all x != 0) = int phi(z) prod_{x != 0} Phi(z + (g(0) - g(x)) / s) dz. (Chapter 03)"""

    gaps = np.array([g(0) - g(x) for x in range(-half_width, half_width + 1) if x != 0]) / s
    value, _ = integrate.quad(lambda z: stats.norm.pdf(z) * np.prod(stats.norm.cdf(z + gaps)),
                              -np.inf, np.inf, epsabs=1e-12, limit=200)
    return float(value)


# ----------------------------------------------------------------------------- Section 5

def strength_weights(m: Sequence[float], l: Sequence[float] | Callable[[int], float]) -> np.ndarray:
    """Section 5's optimum w_j = m(j) l(j) for offsets j = -k..k (m given for those offsets).

    ``l`` is a sequence of the same length or a function of the offset j. (Chapter 03)
    """
    m = np.asarray(m, dtype=float)
    if m.ndim != 1 or len(m) % 2 == 0:
        raise ValueError(f"m holds values for offsets -k..k (odd length), got shape {m.shape}")
    k = len(m) // 2
    lv = np.array([l(j) for j in range(-k, k + 1)], dtype=float) if callable(l) else np.asarray(l, float)
    if lv.shape != m.shape:
        raise ValueError(f"l must match m's shape {m.shape}, got {lv.shape}")
    return m * lv


def alignment_loss(w: Sequence[float], m: Sequence[float], l: Sequence[float] | Callable[[int], float],
                   p: float = 2.0) -> float:
    """Section 5's objective sum_j ||m(j) l(j) - w_j||_p for scalars, read as sum_j |.|^p.

    (The L_p norm of a scalar is its absolute value for every p; raising it to the p-th power
    changes neither the minimiser nor the zero minimum.) (Chapter 03)
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    return float((np.abs(strength_weights(m, l) - np.asarray(w, float)) ** p).sum())
