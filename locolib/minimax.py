"""Locating a feature under noise (paper Section 4.2, Theorem 2).

Model: a 1-d feature map m(x) = g(x) + eps_x with the feature at x* = 0 and i.i.d. noise of mean 0
and variance s^2; a filter w = (w_{-k}, ..., w_k) gives f(x, w) = sum_j w_j m(x + j). The expected
gap to a competitor x != 0 is E[f(0, w) - f(x, w)] = a_x . w with a_x = (g(j) - g(x + j))_j.

Two readings of the paper's objective, w of unit L2 norm (optionally w >= 0):

* ``"maxmin"``, weights chosen first (what the paper's prose describes): max_w inf_{x != 0} a_x . w.
  By minimax duality it is the distance from 0 to the convex hull of the a_x (for w >= 0: to that
  hull minus the non-negative orthant); it is solved exactly as a least-distance programme (NNLS).
* ``"minmax"``, the formula as printed: min_x max_w a_x . w = min_x ||a_x|| (||max(a_x, 0)|| for
  w >= 0); the maximising w depends on x, and the one returned is that of the binding x.

The inner range is infinite. Competitors 0 < |x| <= x_max are solved for exactly; every |x| > x_max
is covered by a lower bound that holds under the paper's assumptions on g (:func:`_tail_bound`),
and x_max doubles until that bound cannot change the value by more than ``TOLERANCE``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import sympy
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import nnls

Profile = Callable[[int], float]
Reading = Literal["maxmin", "minmax"]

TOLERANCE = 1e-10  # certified accuracy of every value returned here
MAX_RANGE = 1 << 14
ASSUMPTIONS = {
    "finite": "g(x) is a finite real number",
    "symmetric": "g(-x) = g(x)",
    "decreasing": "g(x) > g(x+1) for x >= 0",
    "convex": "g(x) - g(x+1) > g(x+1) - g(x+2) for x >= 0",
}

# ---------------------------------------------------------------- feature profiles g


def gaussian(sigma: float) -> Profile:
    return lambda x: math.exp(-x * x / (2 * sigma**2))


def laplace(tau: float) -> Profile:
    return lambda x: math.exp(-abs(x) / tau)


def cauchy(c: float) -> Profile:
    return lambda x: 1 / (1 + x * x / c)


def power(p: float) -> Profile:
    return lambda x: (1 + abs(x)) ** -float(p)


def profile_grid() -> dict[str, Profile]:
    """The profiles the chapter checks Theorem 2 on (Gaussians are convex enough only for sigma < 0.91)."""
    return {
        **{f"Gaussian sigma={s}": gaussian(s) for s in (0.5, 0.7, 0.85)},
        **{f"Laplace tau={t}": laplace(t) for t in (0.5, 1, 2, 5)},
        **{f"Cauchy c={c}": cauchy(c) for c in (0.25, 1, 1.9)},
        **{f"power p={p}": power(p) for p in (0.5, 1, 2, 4)},
    }


# ---------------------------------------------------------------- assumptions and coefficients


def _real(g: Profile, x: int) -> float:
    """g(x) as a float, NaN if it is not a finite real number."""
    try:
        value = float(g(x))
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _first_failure(ok: np.ndarray) -> int | None:
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def check_assumptions(g: Profile, x_max: int = 20) -> dict[str, int | None]:
    """The paper's assumptions on g checked for |x| <= x_max (keys and wording: ``ASSUMPTIONS``).

    Each value is None where the assumption holds there, else the first x >= 0 where it fails.
    """
    _require_int(x_max, "x_max", 2)
    values = np.array([_real(g, x) for x in range(-x_max, x_max + 1)])
    right, left = values[x_max:], values[x_max::-1]  # g(x) and g(-x) for x = 0..x_max
    drop = right[:-1] - right[1:]
    checks = {
        "finite": ~np.isnan(right) & ~np.isnan(left),
        "symmetric": np.isclose(left, right, rtol=1e-12, atol=0),
        "decreasing": drop > 0,
        "convex": drop[:-1] > drop[1:],
    }
    return {name: _first_failure(ok) for name, ok in checks.items()}


def _require_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_assumptions(g: Profile, x_max: int) -> None:
    failed = {name: x for name, x in check_assumptions(g, x_max).items() if x is not None}
    if failed:
        broken = "; ".join(f"{ASSUMPTIONS[name]} fails at x = {x}" for name, x in failed.items())
        raise ValueError(f"g violates the assumptions of Theorem 2: {broken}")


def coefficients(g: Profile, k: int, xs: Sequence[int]) -> np.ndarray:
    """Rows a_x = (g(j) - g(x + j))_{j=-k..k}: E[f(0, w) - f(x, w)] = a_x . w."""
    xs, j = np.asarray(xs, dtype=int), np.arange(-k, k + 1)
    r = int(np.abs(xs).max()) + k
    values = np.array([_real(g, x) for x in range(-r, r + 1)])
    return values[j + r] - values[xs[:, None] + j + r]


def _competitors(x_max: int) -> np.ndarray:
    """1, -1, 2, -2, ...: on ties the smallest positive competitor comes first."""
    return np.arange(1, x_max + 1).repeat(2) * np.tile([1, -1], x_max)


def _tail_bound(g: Profile, w: np.ndarray, x_max: int) -> float:
    """A lower bound on a_x . w for all |x| > x_max >= 2k, valid under the assumptions.

    For x > x_max: a_x . w = sum_j w_j (g(j) - g(x)) + sum_j w_j (g(x) - g(x + j)). The first sum is
    >= sum_j w_j (g(j) - g(x_max + 1)) when sum_j w_j >= 0 (g decreasing); in the second,
    |g(x) - g(x + j)| <= |j| (g(x_max + 1 - k) - g(x_max + 2 - k)) because the steps of g shrink.
    The bound is symmetric in j, so it also covers x < -x_max.
    """
    k = len(w) // 2
    j = np.arange(-k, k + 1)
    if w.sum() < 0:
        return -math.inf
    step = g(x_max + 1 - k) - g(x_max + 2 - k)
    return float(w @ (np.array([g(i) for i in j]) - g(x_max + 1)) - step * (np.abs(j) @ np.abs(w)))


def _certified(g: Profile, k: int, x_max: int, step: Callable) -> tuple[np.ndarray, float]:
    """Run ``step(A, x_max) -> (w, value, tail)`` on the competitors 0 < |x| <= x_max, doubling
    x_max until ``tail`` (a lower bound for the competitors beyond) certifies ``value``."""
    _require_int(k, "k", 1)
    _require_int(x_max, "x_max", 2 * k + 1)
    while True:
        _require_assumptions(g, x_max + k + 1)
        w, value, tail = step(coefficients(g, k, _competitors(x_max)), x_max)
        if tail >= value - TOLERANCE:
            return w, float(value)
        if x_max >= MAX_RANGE:
            raise ValueError(f"competitors beyond |x| = {x_max} could not be bounded; is sum(w) < 0?")
        x_max *= 2


# ---------------------------------------------------------------- the minimax problem


def _max_min(A: np.ndarray, nonnegative: bool) -> tuple[np.ndarray, float]:
    """max over unit w (w >= 0 optionally) of min_x a_x . w, assuming it is positive.

    Equivalent to the least-distance programme min ||v|| s.t. A v >= 1 (and v >= 0), w = v / ||v||,
    value 1 / ||v||, which Lawson and Hanson (1974, ch. 23) reduce to one NNLS problem:
    u = argmin_{u >= 0} ||E u - e_last|| with E = [G^T; h^T], r = E u - e_last, v = -r[:-1] / r[-1].
    """
    n = A.shape[1]
    G, h = A, np.ones(len(A))
    if nonnegative:
        G, h = np.vstack([A, np.eye(n)]), np.r_[h, np.zeros(n)]
    E, target = np.vstack([G.T, h]), np.eye(n + 1)[-1]
    u, _ = nnls(E, target, maxiter=50 * len(h))
    r = E @ u - target
    v = -r[:-1] / r[-1]
    if nonnegative:
        v = np.clip(v, 0, None)  # rounding leaves -1e-16 where the bound w >= 0 is active
    return v / np.linalg.norm(v), 1 / np.linalg.norm(v)


def solve(
    g: Profile, k: int = 1, nonnegative: bool = False, reading: Reading = "maxmin", x_max: int = 16
) -> tuple[np.ndarray, float]:
    """Optimal unit-norm weights for offsets -k..k and the optimal worst-case expected gap.

    ``reading="maxmin"``: max_{||w|| = 1} inf_{x != 0} E[f(0, w) - f(x, w)] (weights first);
    ``"minmax"``: min_{x != 0} max_w, with the weights that are best against the binding x.
    ``nonnegative`` restricts to w >= 0. g must satisfy the paper's assumptions (checked for
    |x| <= x_max + k + 1, see :func:`check_assumptions`); values are exact to ``TOLERANCE``.
    """
    if reading not in ("maxmin", "minmax"):
        raise ValueError(f"reading must be 'maxmin' or 'minmax', got {reading!r}")

    def step(A: np.ndarray, x_max: int) -> tuple[np.ndarray, float, float]:
        if reading == "maxmin":
            w, value = _max_min(A, nonnegative)
            return w, value, _tail_bound(g, w, x_max)
        # max over unit w of a . w is ||a|| at w = a / ||a|| (positive part for w >= 0); for
        # |x| > x_max every a_x >= g(j) - g(x_max + 1 - k) >= 0 entrywise, which bounds ||a_x||
        best = np.clip(A, 0, None) if nonnegative else A
        norms = np.linalg.norm(best, axis=1)
        i = int(np.argmin(norms))
        floor = np.array([g(j) for j in range(-k, k + 1)]) - g(x_max + 1 - k)
        return best[i] / norms[i], norms[i], float(np.linalg.norm(floor))

    return _certified(g, k, x_max, step)


def worst_gap(g: Profile, weights: Sequence[float], x_max: int = 16) -> float:
    """inf_{x != 0} E[f(0, w) - f(x, w)] of the given filter (offsets -k..k, not normalised)."""
    w = _filter(weights)
    return _certified(g, len(w) // 2, x_max, lambda A, x: (w, (A @ w).min(), _tail_bound(g, w, x)))[1]


def worst_snr(g: Profile, weights: Sequence[float], x_max: int = 16) -> float:
    """inf_{x != 0} of E[f(0,w) - f(x,w)] / sd(f(0,w) - f(x,w)) at noise level s = 1.

    At noise level s every ratio is divided by s, so the filter maximising it is the same for all s.
    Beyond |x| > 2k the windows are disjoint and sd = sqrt(2) ||w||.
    """
    w = _filter(weights)
    far = math.sqrt(2) * np.linalg.norm(w)

    def step(A: np.ndarray, x_max: int) -> tuple[np.ndarray, float, float]:
        sd = np.sqrt([variance(w, x) for x in _competitors(x_max)])
        return w, (A @ w / sd).min(), _tail_bound(g, w, x_max) / far

    return _certified(g, len(w) // 2, x_max, step)[1]


def _filter(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or len(w) % 2 == 0 or len(w) < 3 or not np.isfinite(w).all():
        raise ValueError(f"weights must be 2k+1 >= 3 finite numbers for offsets -k..k, got {weights!r}")
    return w


def laplacian_filter(g: Profile, k: int = 1) -> tuple[np.ndarray, float]:
    """b / ||b|| and ||b|| for b = (a_1 + a_{-1}) / 2, i.e. b_j = g(j) - (g(j-1) + g(j+1)) / 2.

    For every unit w, min(a_1 . w, a_{-1} . w) <= b . w <= ||b||: ||b|| bounds the signed maxmin
    value, and b / ||b|| is the unique optimum exactly when it keeps every |x| >= 2 gap >= ||b||.
    """
    _require_int(k, "k", 1)
    b = np.array([g(j) - (g(j - 1) + g(j + 1)) / 2 for j in range(-k, k + 1)])
    return b / np.linalg.norm(b), float(np.linalg.norm(b))


def neighbour_filter(beta: float, k: int = 1) -> np.ndarray:
    """Unit-norm filter with w_0 proportional to 1 and every other w_j to beta: beta = 0 is
    centre-only, beta = 1 uniform, beta < 0 a sharpening (Laplacian-like) filter."""
    w = np.full(2 * k + 1, float(beta))
    w[k] = 1.0
    return w / np.linalg.norm(w)


def summary(g: Profile, k: int) -> dict[str, object]:
    """Both readings, signed and non-negative, next to the centre-only gap g(0) - g(1) and ||b||."""
    row: dict[str, object] = {"k": k, "centre-only gap": g(0) - g(1)}
    for reading in ("maxmin", "minmax"):
        for nonnegative in (False, True):
            name = f"{reading} {'w>=0' if nonnegative else 'signed'}"
            row[f"w {name}"], row[name] = solve(g, k, nonnegative, reading)
    row["Laplacian bound"] = laplacian_filter(g, k)[1]
    return row


# ---------------------------------------------------------------- Table 2, symbolically

G = sympy.Function("g")
PAPER_TABLE_2 = {  # as printed: the coefficients of w_-1, w_0, w_1 in Eq. 4.4
    -3: ("g(1) - g(4) > 0", "g(0) - g(3) > 0", "g(1) - g(2) > 0"),
    -2: ("g(1) - g(3) > 0", "g(0) - g(2) > 0", "g(1) - g(1) = 0"),
    -1: ("g(1) - g(2) > 0", "g(0) - g(1) > 0", "g(1) - g(0) < 0"),
    1: ("g(1) - g(0) < 0", "g(0) - g(1) > 0", "g(1) - g(2) > 0"),
    2: ("g(1) - g(1) = 0", "g(0) - g(2) > 0", "g(1) - g(3) > 0"),
    3: ("g(1) - g(2) > 0", "g(0) - g(3) > 0", "g(1) - g(4) > 0"),
}


def coefficient(x: int, j: int) -> sympy.Expr:
    """The coefficient g(j) - g(x + j) of w_j in Eq. 4.4, written with g(-y) = g(y)."""
    return G(abs(j)) - G(abs(x + j))


def implied_sign(expr: sympy.Expr) -> int | None:
    """The sign that a linear expression in g(0), g(1), ... has for EVERY g meeting the paper's
    assumptions, or None if they leave it open.

    On 0..N those g are exactly g(n) = g(0) - (d_0 + ... + d_{n-1}) with steps
    d_i = c + e_i + ... + e_{N-2} for arbitrary c, e > 0 (decreasing: d > 0; convex: d_i > d_{i+1}).
    The expression becomes a linear form in (g(0), c, e): it has one sign on that whole open
    orthant iff g(0) drops out and the other coefficients share a sign.
    """
    n_max = max((int(a.args[0]) for a in expr.atoms(sympy.core.function.AppliedUndef)), default=0)
    c, g0 = sympy.Symbol("c", positive=True), sympy.Symbol("g_0", real=True)
    e = sympy.symbols(f"e:{max(n_max - 1, 0)}", positive=True)
    d = [c + sum(e[i:]) for i in range(n_max)]
    value = sympy.expand(expr.subs({G(n): g0 - sum(d[:n]) for n in range(n_max + 1)}))
    if value == 0:
        return 0
    if value.is_positive:
        return 1
    return -1 if value.is_negative else None


def table_2(xs: Sequence[int] = (-3, -2, -1, 1, 2, 3), k: int = 1) -> pd.DataFrame:
    """Table 2 derived: each cell 'g(|j|) - g(|x+j|) op 0' with op the sign the assumptions imply."""
    ops = {1: ">", 0: "=", -1: "<", None: "?"}
    rows = {
        x: [f"g({abs(j)}) - g({abs(x + j)}) {ops[implied_sign(coefficient(x, j))]} 0" for j in range(-k, k + 1)]
        for x in xs
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"w_{j}" for j in range(-k, k + 1)])


# ---------------------------------------------------------------- the variance

S = sympy.Symbol("s", positive=True)


def weight_symbols(k: int) -> list[sympy.Symbol]:
    return [sympy.Symbol(f"w_{{{j}}}", real=True) for j in range(-k, k + 1)]


def noise_coefficients(x: int, k: int) -> dict[int, sympy.Expr]:
    """c_i with f(x, w) - f(0, w) = sum_j w_j (g(x+j) - g(j)) + sum_i c_i eps_i (zeros dropped)."""
    c: dict[int, sympy.Expr] = {}
    for j, w in zip(range(-k, k + 1), weight_symbols(k)):
        c[x + j] = c.get(x + j, 0) + w  # eps_{x+j} enters f(x, w) ...
        c[j] = c.get(j, 0) - w  # ... and eps_j enters f(0, w), which the paper's proof drops
    return {i: ci for i, ci in sorted(c.items()) if ci != 0}


def difference_variance(x: int, k: int) -> sympy.Expr:
    """Var(f(x, w) - f(0, w)) = s^2 sum_i c_i^2, the eps_i being independent with variance s^2."""
    return sympy.expand(S**2 * sum(ci**2 for ci in noise_coefficients(x, k).values()))


def paper_variance(k: int) -> sympy.Expr:
    """The paper's claim s^2 sum_j w_j^2 (= Var f(x, w) alone)."""
    return S**2 * sum(w**2 for w in weight_symbols(k))


def variance(weights: Sequence[float], x: int, s: float = 1.0) -> float:
    """Var(f(x, w) - f(0, w)) = 2 s^2 (sum_j w_j^2 - sum_j w_j w_{j+x}), w_j = 0 for |j| > k."""
    w = _filter(weights)
    lag = abs(int(x))
    overlap = w[lag:] @ w[: len(w) - lag] if lag < len(w) else 0.0
    return float(2 * s**2 * (w @ w - overlap))


# ---------------------------------------------------------------- Monte Carlo


def sample_gaps(
    g: Profile, weights: Sequence[float], x: int, s: float, n: int, seed: int = 0
) -> np.ndarray:
    """n draws of f(0, w) - f(x, w) with Gaussian noise of standard deviation s."""
    w = _filter(weights)
    k = len(w) // 2
    lo, hi = min(0, x) - k, max(0, x) + k
    m = np.array([g(i) for i in range(lo, hi + 1)]) + s * np.random.default_rng(seed).standard_normal(
        (n, hi - lo + 1)
    )
    j = np.arange(-k, k + 1) - lo
    return m[:, j] @ w - m[:, j + x] @ w


def localisation_rate(
    g: Profile,
    filters: Sequence[Sequence[float]],
    s_values: Sequence[float],
    n: int,
    half_width: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """P(argmax_{|x| <= half_width} f(x, w) = 0) per noise level (rows) and filter (columns).

    One Gaussian noise draw per sample is shared by all s and filters (common random numbers), so
    differences between filters are estimated far more precisely than the rates themselves.
    """
    W = np.array([_filter(w) for w in filters])
    k = W.shape[1] // 2
    xs = np.arange(-half_width - k, half_width + k + 1)
    noise = np.random.default_rng(seed).standard_normal((n, len(xs)))
    clean = np.array([g(int(x)) for x in xs])
    rates = np.empty((len(s_values), len(W)))
    for a, s in enumerate(s_values):
        windows = sliding_window_view(clean + s * noise, 2 * k + 1, axis=1)
        for b, w in enumerate(W):
            rates[a, b] = np.mean((windows @ w).argmax(axis=1) == half_width)
    return rates
