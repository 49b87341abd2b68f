"""Locating a feature under noise (paper Section 4.2, Theorem 2).

Model: a 1-d feature map m(x) = g(x) + eps_x with the feature at x* = 0 and i.i.d. noise of mean 0
and variance s^2; a filter w = (w_{-k}, ..., w_k) gives f(x, w) = sum_j w_j m(x + j). The expected
gap to a competitor x != 0 is E[f(0, w) - f(x, w)] = a_x . w with a_x = (g(j) - g(x + j))_j.

Two readings of the paper's objective, w of unit norm (L2 as in the paper, or L1 or L-infinity;
optionally w >= 0):

* ``"maxmin"``, weights chosen first (what the paper's prose describes): max_w inf_{x != 0} a_x . w.
  Under L2, by minimax duality, it is the distance from 0 to the convex hull of the a_x (for w >= 0:
  to that hull minus the non-negative orthant), solved exactly as a least-distance programme (NNLS).
  Under L1 and L-infinity it is a linear programme, solved by the simplex method and certified by a
  dual bound: for multipliers l >= 0 summing to 1 and p = sum_x l_x a_x, every admissible w has
  min_x a_x . w <= p . w <= ||p||_* (||max(p, 0)||_* for w >= 0), ||.||_* the dual norm.
* ``"minmax"``, the formula as printed: min_x max_w a_x . w = min_x ||a_x||_* (||max(a_x, 0)||_* for
  w >= 0); the maximising w depends on x, and the one returned is that of the binding x.

The inner range is infinite. Competitors 0 < |x| <= x_max are solved for exactly; every |x| > x_max
is covered by a lower bound that holds under the paper's assumptions on g (:func:`_tail_bound`;
for filters with sum(w) < 0, which only L-infinity optima have, it also needs g -> 0), and x_max
doubles until that bound cannot change the value by more than ``TOLERANCE``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import sympy
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import linprog, minimize_scalar, nnls

Profile = Callable[[int], float]
Reading = Literal["maxmin", "minmax"]
Norm = Literal["l2", "l1", "linf"]
NORMS = {"l2": 2, "l1": 1, "linf": math.inf}  # the weights' norm, as numpy's ``ord``
DUAL_NORMS = {"l2": 2, "l1": math.inf, "linf": 1}  # max of p . w over that unit ball is ||p||_dual

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
    """The profile g(x) = exp(-x^2 / (2 sigma^2)). (Chapter 02)"""
    return lambda x: math.exp(-x * x / (2 * sigma**2))


def laplace(tau: float) -> Profile:
    """The profile g(x) = exp(-|x| / tau). (Chapters 02, 03)"""
    return lambda x: math.exp(-abs(x) / tau)


def cauchy(c: float) -> Profile:
    """The profile g(x) = 1 / (1 + x^2 / c). (Chapter 02)"""
    return lambda x: 1 / (1 + x * x / c)


def power(p: float) -> Profile:
    """The profile g(x) = (1 + |x|)^-p. (Chapter 02)"""
    return lambda x: (1 + abs(x)) ** -float(p)


def profile_grid() -> dict[str, Profile]:
    """The profiles the chapter checks Theorem 2 on (Gaussians are convex enough only for sigma < 0.91). (Chapter 02)"""
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

    Each value is None where the assumption holds there, else the first x >= 0 where it fails. (Chapters 02, 03)
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
    """Rows a_x = (g(j) - g(x + j))_{j=-k..k}: E[f(0, w) - f(x, w)] = a_x . w. (Chapters 02, 03)"""
    xs, j = np.asarray(xs, dtype=int), np.arange(-k, k + 1)
    r = int(np.abs(xs).max()) + k
    values = np.array([_real(g, x) for x in range(-r, r + 1)])
    return values[j + r] - values[xs[:, None] + j + r]


def _competitors(x_max: int) -> np.ndarray:
    """1, -1, 2, -2, ...: on ties the smallest positive competitor comes first."""
    return np.arange(1, x_max + 1).repeat(2) * np.tile([1, -1], x_max)


def _tail_bound(g: Profile, w: np.ndarray, x_max: int) -> float:
    """A lower bound on a_x . w for all |x| > x_max >= 2k, valid under the assumptions.

    For x > x_max: a_x . w = sum_j w_j g(j) - g(x) sum_j w_j + sum_j w_j (g(x) - g(x + j)). When
    sum_j w_j >= 0 the middle term is >= -g(x_max + 1) sum_j w_j (g decreasing). When sum_j w_j < 0
    (L-infinity filters can have it) it is >= 0 provided g >= 0 beyond x_max, which holds when g
    decreases to 0 (see :func:`solve`). In the last sum,
    |g(x) - g(x + j)| <= |j| (g(x_max + 1 - k) - g(x_max + 2 - k)) because the steps of g shrink.
    The bound is symmetric in j, so it also covers x < -x_max.
    """
    k = len(w) // 2
    j = np.arange(-k, k + 1)
    floor = g(x_max + 1)
    if w.sum() < 0:
        if floor < 0:
            return -math.inf
        floor = 0.0
    step = g(x_max + 1 - k) - g(x_max + 2 - k)
    return float(w @ (np.array([g(i) for i in j]) - floor) - step * (np.abs(j) @ np.abs(w)))


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
            raise ValueError(f"competitors beyond |x| = {x_max} could not be bounded; is g < 0 there?")
        x_max *= 2


# ---------------------------------------------------------------- the minimax problem


def _max_min_l2(A: np.ndarray, nonnegative: bool) -> tuple[np.ndarray, float]:
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


def _max_min_lp(A: np.ndarray, nonnegative: bool, norm: Norm) -> tuple[np.ndarray, float, float]:
    """max over ||w|| <= 1 (L1 or L-infinity, w >= 0 optionally) of min_x a_x . w as a linear
    programme: the maximiser, its worst gap over all rows (a lower bound) and a dual bound (an
    upper bound).

    Row generation: the programme is solved on the first 32 rows (|x| <= 16) and the last (the
    limit row), and rows that the solution violates are added until none is; far competitors rarely
    bind, and the simplex's time grows with the number of rows.
    """
    rows = np.r_[np.arange(min(32, len(A) - 1)), len(A) - 1]
    while True:
        w, lower, upper = _linear_programme(A[rows], nonnegative, norm)
        violated = np.setdiff1d(np.flatnonzero(A @ w < lower - TOLERANCE / 10), rows)
        if violated.size == 0:
            return w, float((A @ w).min()), upper
        rows = np.union1d(rows, violated)


def _linear_programme(A: np.ndarray, nonnegative: bool, norm: Norm) -> tuple[np.ndarray, float, float]:
    """One programme on the rows A: variables (u, v), maximise v subject to A w >= v with w = D u;
    for L-infinity D = I and lo <= u <= 1, for L1 w = u+ - u- (u >= 0 only for w >= 0) and
    sum u <= 1. The dual simplex's vertex and multipliers are sharpened by :func:`_polish_linf`
    where it applies; returns w, min_x a_x . w and the dual bound."""
    m, n = A.shape
    lo = 0.0 if nonnegative else -1.0
    D = np.eye(n) if nonnegative or norm == "linf" else np.hstack([np.eye(n), -np.eye(n)])
    rows, rhs = np.c_[-A @ D, np.ones(m)], np.zeros(m)
    bounds = [(lo, 1)] * n
    if norm == "l1":  # sum u <= 1
        rows, rhs, bounds = np.vstack([rows, np.r_[np.ones(D.shape[1]), 0]]), np.r_[rhs, 1], [(0, None)] * D.shape[1]
    tight = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    res = linprog(np.r_[np.zeros(D.shape[1]), -1], A_ub=rows, b_ub=rhs, bounds=[*bounds, (None, None)],
                  method="highs-ds", options=tight)
    if res.status != 0:
        raise ValueError(f"the linear programme failed: {res.message}")
    w, multipliers = D @ res.x[:-1], np.clip(-res.ineqlin.marginals[:m], 0, None)
    candidates = [(w, multipliers @ A / multipliers.sum())]
    if norm == "linf":
        candidates.append(_polish_linf(A, w, res.x[-1], lo))
    w = max((_admissible(c, nonnegative, norm) for c, _ in candidates), key=lambda c: (A @ c).min())
    upper = min(np.linalg.norm(np.clip(p, 0, None) if nonnegative else p, DUAL_NORMS[norm])
                for _, p in candidates)
    return w, float((A @ w).min()), float(upper)


def _polish_linf(
    A: np.ndarray, w: np.ndarray, v: float, lo: float, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """An L-infinity vertex re-solved from its active rows and bounds (least squares), and a dual
    vector p = l A on those rows with l >= 0, sum l = 1, p_j = 0 where lo < w_j < 1, p_j >= 0 where
    w_j = 1 and p_j <= 0 where w_j = lo (NNLS with slacks): then p . w = ||p||_1 (||max(p, 0)||_1)."""
    top, bottom = w > 1 - tol, w < lo + tol
    free = ~top & ~bottom
    R = A[A @ w - v < tol]
    z = np.linalg.lstsq(np.c_[R[:, free], -np.ones(len(R))], -R[:, ~free] @ w[~free], rcond=None)[0]
    vertex = w.copy()
    vertex[free] = z[:-1]
    nt, nb = int(top.sum()), int(bottom.sum())
    E = np.block([[R[:, free].T, np.zeros((int(free.sum()), nt + nb))],
                  [R[:, top].T, -np.eye(nt), np.zeros((nt, nb))],
                  [R[:, bottom].T, np.zeros((nb, nt)), np.eye(nb)],
                  [np.ones(len(R)), np.zeros(nt + nb)]])
    l = nnls(E, np.eye(len(E))[-1])[0][: len(R)]
    return vertex, l @ R / l.sum()


def _admissible(w: np.ndarray, nonnegative: bool, norm: Norm) -> np.ndarray:
    """w moved into the unit ball (and the orthant): rounding leaves it outside by ~1e-16."""
    w = np.clip(w, 0, None) if nonnegative else w
    return w / max(1.0, float(np.linalg.norm(w, NORMS[norm])))


def _aligned(a: np.ndarray, norm: Norm) -> np.ndarray:
    """The unit-norm w with a . w = ||a||_dual, the best filter against one competitor."""
    if norm == "l2":
        return a / np.linalg.norm(a)
    if norm == "linf":
        return np.sign(a)
    return np.sign(a) * (np.arange(len(a)) == np.abs(a).argmax())


def solve(
    g: Profile, k: int = 1, nonnegative: bool = False, reading: Reading = "maxmin", x_max: int = 16,
    *, norm: Norm = "l2",
) -> tuple[np.ndarray, float]:
    """Optimal unit-norm weights for offsets -k..k and the optimal worst-case expected gap.

    ``reading="maxmin"``: max_{||w|| = 1} inf_{x != 0} E[f(0, w) - f(x, w)] (weights first);
    ``"minmax"``: min_{x != 0} max_w, with the weights that are best against the binding x.
    ``nonnegative`` restricts to w >= 0; ``norm`` is the weights' norm: "l2" (the paper's), "l1" or
    "linf" (the Noise chapter compares them). g must satisfy the paper's assumptions (checked for
    |x| <= x_max + k + 1, see :func:`check_assumptions`); values are exact to ``TOLERANCE``. The L1
    and L-infinity programmes also take g(x) -> 0 as |x| -> infinity, as every profile here does: a
    feature fades with distance, and subtracting a constant background from g changes no gap.
    Under L-infinity the optimal weights need not be unique (the value is). (Chapters 02, 03)
    """
    if reading not in ("maxmin", "minmax"):
        raise ValueError(f"reading must be 'maxmin' or 'minmax', got {reading!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")

    def step(A: np.ndarray, x_max: int) -> tuple[np.ndarray, float, float]:
        window = np.array([g(j) for j in range(-k, k + 1)])
        if reading == "maxmin" and norm == "l2":
            w, value = _max_min_l2(A, nonnegative)
            return w, value, _tail_bound(g, w, x_max)
        if reading == "maxmin":
            # with the limit of a_x as |x| -> infinity, (g(j))_j, as a row: an infimum that is not
            # attained at any finite x (L-infinity filters with sum(w) < 0) is then reached exactly
            w, value, upper = _max_min_lp(np.vstack([A, window]), nonnegative, norm)
            if upper - value > TOLERANCE:
                raise ValueError(f"the {norm} programme is certified only to {upper - value:.1e}")
            return w, value, _tail_bound(g, w, x_max)
        # max over unit w of a . w is ||a||_dual at the aligned w (positive part for w >= 0); for
        # |x| > x_max every a_x >= g(j) - g(x_max + 1 - k) >= 0 entrywise, which bounds ||a_x||_dual
        best = np.clip(A, 0, None) if nonnegative else A
        norms = np.linalg.norm(best, DUAL_NORMS[norm], axis=1)
        i = int(np.argmin(norms))
        floor = window - g(x_max + 1 - k)
        return _aligned(best[i], norm), norms[i], float(np.linalg.norm(floor, DUAL_NORMS[norm]))

    return _certified(g, k, x_max, step)


def worst_gap(g: Profile, weights: Sequence[float], x_max: int = 16) -> float:
    """inf_{x != 0} E[f(0, w) - f(x, w)] of the given filter (offsets -k..k, not normalised).

    For sum(w) < 0 the infimum may be approached only as |x| -> infinity; it then includes that
    limit, sum_j w_j g(j), which takes g(x) -> 0 (see :func:`solve`). (Chapters 02, 03)
    """
    w = _filter(weights)
    k = len(w) // 2
    limit = float(w @ [g(j) for j in range(-k, k + 1)]) if w.sum() < 0 else math.inf
    return _certified(g, k, x_max, lambda A, x: (w, min((A @ w).min(), limit), _tail_bound(g, w, x)))[1]


def worst_snr(g: Profile, weights: Sequence[float], x_max: int = 16) -> float:
    """inf_{x != 0} of E[f(0,w) - f(x,w)] / sd(f(0,w) - f(x,w)) at noise level s = 1.

    At noise level s every ratio is divided by s, so the filter maximising it is the same for all s.
    Beyond |x| > 2k the windows are disjoint and sd = sqrt(2) ||w||. (Chapters 02, 03)
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
    value, and b / ||b|| is the unique optimum exactly when it keeps every |x| >= 2 gap >= ||b||. (Chapter 02)
    """
    _require_int(k, "k", 1)
    b = np.array([g(j) - (g(j - 1) + g(j + 1)) / 2 for j in range(-k, k + 1)])
    return b / np.linalg.norm(b), float(np.linalg.norm(b))


def neighbour_filter(beta: float, k: int = 1) -> np.ndarray:
    """Unit-norm filter with w_0 proportional to 1 and every other w_j to beta: beta = 0 is
    centre-only, beta = 1 uniform, beta < 0 a sharpening (Laplacian-like) filter. (Chapter 02)"""
    w = np.full(2 * k + 1, float(beta))
    w[k] = 1.0
    return w / np.linalg.norm(w)


def summary(g: Profile, k: int) -> dict[str, object]:
    """Both readings, signed and non-negative, next to the centre-only gap g(0) - g(1) and ||b||. (Chapter 02)"""
    row: dict[str, object] = {"k": k, "centre-only gap": g(0) - g(1)}
    for reading in ("maxmin", "minmax"):
        for nonnegative in (False, True):
            name = f"{reading} {'w>=0' if nonnegative else 'signed'}"
            row[f"w {name}"], row[name] = solve(g, k, nonnegative, reading)
    row["Laplacian bound"] = laplacian_filter(g, k)[1]
    return row


def by_norm(profiles: Mapping[str, Profile], ks: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Theorem 2 under each weight norm and sign (Noise chapter), max-min reading.

    One row per norm, sign ("signed" or "w >= 0"), profile and k: the optimal value, the
    centre-only gap g(0) - g(1) (the centre-only filter has unit norm in every norm, so it attains
    that gap in each), the optimum's relative gain over it, the optimal weights, and whether they
    are the centre-only filter. (Chapter 02)
    """
    rows = []
    for norm, nonnegative, (name, g), k in itertools.product(NORMS, (False, True), profiles.items(), ks):
        w, value = solve(g, k, nonnegative, norm=norm)
        rows.append({"norm": norm, "weights": "w >= 0" if nonnegative else "signed", "profile": name, "k": k,
                     "value": value, "centre-only gap": g(0) - g(1), "gain": value / (g(0) - g(1)) - 1,
                     "w": w, "optimum is centre-only": bool(np.allclose(w, np.eye(2 * k + 1)[k], atol=1e-9))})
    return pd.DataFrame(rows)


def laplace_linf_certificate() -> dict[str, object]:
    """Theorem 2 under L-infinity for g(x) = r^|x| (r = e^(-1/tau) < 1), k = 1, in closed form (Noise
    chapter). The filter w = (-t, 1, -t) with t = r / (1 + r^2); its gap a_x . w for a symbolic x >= 1
    (x = -1, -2, ... by symmetry); and p = sum_x l_x a_x for multipliers alpha / 2 on x = 1 and on
    x = -1 and 1 - alpha on the limit x -> infinity, (g(j))_j, with alpha = 2r / (1 + r^2). If every
    gap and p_0 equal V = (1 - r^2) / (1 + r^2) = tanh(1/tau) and p_{+-1} = 0, then V is the optimum:
    every admissible w' has min_x a_x . w' <= p . w' <= ||p||_1 = V, and w attains it. (Chapter 02)
    """
    r, x = sympy.symbols("r x", positive=True)
    t, alpha = r / (1 + r**2), 2 * r / (1 + r**2)
    w = [-t, sympy.Integer(1), -t]
    a_1, a_minus_1 = ([r ** abs(j) - r ** abs(y + j) for j in (-1, 0, 1)] for y in (1, -1))
    limit = [r, 1, r]
    gap = sum(wj * (r ** abs(j) - r ** (x + j)) for j, wj in zip((-1, 0, 1), w))
    return {
        "r": r,
        "w": w,
        "value": (1 - r**2) / (1 + r**2),
        "gap": sympy.simplify(gap),
        "p": [sympy.simplify(alpha * (u + v) / 2 + (1 - alpha) * l) for u, v, l in zip(a_1, a_minus_1, limit)],
    }


# ---------------------------------------------------------------- decay and the centre weight


def snr_optimal_beta(g: Profile, bounds: tuple[float, float] = (-0.5, 1.0)) -> float:
    """The neighbour weight beta of the k = 1 filter (beta, 1, beta) with the largest worst-case
    signal-to-noise ratio (:func:`worst_snr`), to 1e-8 (Noise chapter). (Chapter 02)"""
    best = minimize_scalar(lambda b: -worst_snr(g, neighbour_filter(b)), bounds=bounds, method="bounded",
                           options={"xatol": 1e-8})
    return float(best.x)


def decay_families() -> dict[str, list[tuple[float, Profile]]]:
    """Profile families, each member (parameter, g) listed from slow to fast decay (Noise chapter).

    Gaussians narrower than sigma = 0.5 underflow to 0 within the solver's range; wider than 0.9
    they break the convexity assumption. (Chapter 02)
    """
    return {
        "Laplace exp(-a|x|), a": [(a, laplace(1 / a)) for a in (0.25, 0.5, 1, 1.5, 2, 3)],
        "Gaussian, sigma": [(s, gaussian(s)) for s in (0.9, 0.8, 0.7, 0.6, 0.5)],
        "Cauchy 1/(1+x^2/c), c": [(c, cauchy(c)) for c in (1.9, 1, 0.5, 0.25, 0.1)],
        "power (1+|x|)^-p, p": [(p, power(p)) for p in (0.5, 1, 2, 3, 4)],
    }


def centre_share(weights: Sequence[float]) -> float:
    """|w_0| / ||w||_2: the centre weight of a filter scaled to unit L2 norm. (Chapter 02)"""
    w = _filter(weights)
    return float(abs(w[len(w) // 2]) / np.linalg.norm(w))


def centre_weights(g: Profile) -> dict[str, float]:
    """The centre share of the k = 1 filter that each criterion picks (Noise chapter): the max-min
    optimum (w >= 0, the same in every norm; signed under L2 and L-infinity), the filter with the
    best worst-case signal-to-noise ratio, and the matched filter w proportional to g. (Chapter 02)"""
    return {
        "max-min, w >= 0": centre_share(solve(g, 1, True)[0]),
        "max-min, signed, l2": centre_share(solve(g, 1)[0]),
        "max-min, signed, linf": centre_share(solve(g, 1, norm="linf")[0]),
        "worst-case SNR": centre_share(neighbour_filter(snr_optimal_beta(g))),
        "matched filter": centre_share([g(-1), g(0), g(1)]),
    }


def centre_weight_table(families: Mapping[str, Sequence[tuple[float, Profile]]]) -> pd.DataFrame:
    """:func:`centre_weights` for every member of each family, with the step ratio
    d_1 / d_0 = (g(1) - g(2)) / (g(0) - g(1)) and whether the signed L2 optimum is the Laplacian
    filter b / ||b|| (Theorem 2' (b)); rows in the families' order (Noise chapter). (Chapter 02)"""
    rows = []
    for family, members in families.items():
        for parameter, g in members:
            closed = abs(solve(g, 1)[1] - laplacian_filter(g, 1)[1]) < TOLERANCE
            rows.append({"family": family, "parameter": parameter, "step ratio": (g(1) - g(2)) / (g(0) - g(1)),
                         "optimum b/|b|": closed, **centre_weights(g)})
    return pd.DataFrame(rows)


def trend(values: Sequence[float], tol: float = 1e-9) -> str:
    """How a sequence moves: "rises", "falls", "constant" (every step within tol) or "not monotone". (Chapter 02)"""
    steps = np.diff(np.asarray(values, dtype=float))
    if (np.abs(steps) <= tol).all():
        return "constant"
    if (steps > tol).all():
        return "rises"
    return "falls" if (steps < -tol).all() else "not monotone"


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
    """The coefficient g(j) - g(x + j) of w_j in Eq. 4.4, written with g(-y) = g(y). (Chapter 02)"""
    return G(abs(j)) - G(abs(x + j))


def implied_sign(expr: sympy.Expr) -> int | None:
    """The sign that a linear expression in g(0), g(1), ... has for EVERY g meeting the paper's
    assumptions, or None if they leave it open.

    On 0..N those g are exactly g(n) = g(0) - (d_0 + ... + d_{n-1}) with steps
    d_i = c + e_i + ... + e_{N-2} for arbitrary c, e > 0 (decreasing: d > 0; convex: d_i > d_{i+1}).
    The expression becomes a linear form in (g(0), c, e): it has one sign on that whole open
    orthant iff g(0) drops out and the other coefficients share a sign. (Chapter 02)
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
    """Table 2 derived: each cell 'g(|j|) - g(|x+j|) op 0' with op the sign the assumptions imply. (Chapter 02)"""
    ops = {1: ">", 0: "=", -1: "<", None: "?"}
    rows = {
        x: [f"g({abs(j)}) - g({abs(x + j)}) {ops[implied_sign(coefficient(x, j))]} 0" for j in range(-k, k + 1)]
        for x in xs
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"w_{j}" for j in range(-k, k + 1)])


# ---------------------------------------------------------------- the variance

S = sympy.Symbol("s", positive=True)


def weight_symbols(k: int) -> list[sympy.Symbol]:
    """The real symbols w_{-k}, ..., w_{k} of a filter of length 2k + 1. (Chapter 02)"""
    return [sympy.Symbol(f"w_{{{j}}}", real=True) for j in range(-k, k + 1)]


def noise_coefficients(x: int, k: int) -> dict[int, sympy.Expr]:
    """c_i with f(x, w) - f(0, w) = sum_j w_j (g(x+j) - g(j)) + sum_i c_i eps_i (zeros dropped). (Chapter 02)"""
    c: dict[int, sympy.Expr] = {}
    for j, w in zip(range(-k, k + 1), weight_symbols(k)):
        c[x + j] = c.get(x + j, 0) + w  # eps_{x+j} enters f(x, w) ...
        c[j] = c.get(j, 0) - w  # ... and eps_j enters f(0, w), which the paper's proof drops
    return {i: ci for i, ci in sorted(c.items()) if ci != 0}


def difference_variance(x: int, k: int) -> sympy.Expr:
    """Var(f(x, w) - f(0, w)) = s^2 sum_i c_i^2, the eps_i being independent with variance s^2. (Chapter 02)"""
    return sympy.expand(S**2 * sum(ci**2 for ci in noise_coefficients(x, k).values()))


def paper_variance(k: int) -> sympy.Expr:
    """The paper's claim s^2 sum_j w_j^2 (= Var f(x, w) alone). (Chapter 02)"""
    return S**2 * sum(w**2 for w in weight_symbols(k))


def variance(weights: Sequence[float], x: int, s: float = 1.0) -> float:
    """Var(f(x, w) - f(0, w)) = 2 s^2 (sum_j w_j^2 - sum_j w_j w_{j+x}), w_j = 0 for |j| > k. (Chapters 02, 03)"""
    w = _filter(weights)
    lag = abs(int(x))
    overlap = w[lag:] @ w[: len(w) - lag] if lag < len(w) else 0.0
    return float(2 * s**2 * (w @ w - overlap))


# ---------------------------------------------------------------- Monte Carlo


def sample_gaps(
    g: Profile, weights: Sequence[float], x: int, s: float, n: int, seed: int = 0
) -> np.ndarray:
    """n draws of f(0, w) - f(x, w) with Gaussian noise of standard deviation s. (Chapter 02)"""
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
    differences between filters are estimated far more precisely than the rates themselves. (Chapter 02)
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
