"""Cohesion of a feature as gravity between its parts (paper Section 4.1, Theorem 1).

A k x k feature is a grid of point masses ``m[i, j]``; two parts at index positions a and b
attract with F(m_a, m_b) = m_a m_b / d(a, b)^q (the paper's c0 set to 1), d the Euclidean
distance of the indices, and a part does not attract itself.

Convention: ``total_force`` counts each unordered pair once, as the paper's Eq. 4.1-4.2 do. The
paper's literal definition sums over all (i, j, k, l), i.e. ordered pairs, which is exactly twice
that. Everything this module concludes compares derivatives of F_tot with each other, which a
constant factor does not change.

All arithmetic is exact sympy (rationals and surds). The exponent q may be a positive number
(int or Rational keep it exact) or a positive symbol.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import sympy
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from locolib.kernels import rings as kernel_rings
from locolib.kernels import squared_distances
from locolib.notebook import FIGURE_WIDTH

Position = tuple[int, int]
EPSILON = sympy.Symbol("epsilon", nonnegative=True)
Q = sympy.Symbol("q", positive=True)


def mass_matrix(k: int = 3, name: str = "m") -> sympy.Matrix:
    """k x k positive symbols ``m_{i,j}``. (Chapter 01)"""
    return sympy.Matrix(k, k, lambda i, j: sympy.Symbol(f"{name}_{{{i},{j}}}", positive=True))


def positions(k: int) -> list[Position]:
    """All index positions of a k x k grid, row by row. (Chapters 01, 03)"""
    return list(itertools.product(range(k), repeat=2))


def _masses(masses: Any) -> sympy.Matrix:
    m = sympy.Matrix(masses)
    if m.rows == 0 or m.rows != m.cols:
        raise ValueError(f"masses must be a non-empty square k x k array, got shape {m.shape}")
    return m


def _exponent(q: Any) -> sympy.Expr:
    q = sympy.sympify(q)
    if q.is_positive is not True:
        raise ValueError(f"the distance exponent q must be positive, got {q}")
    return q


def _position(p: Sequence[int], k: int) -> Position:
    if len(p) != 2 or not all(isinstance(x, numbers.Integral) and 0 <= x < k for x in p):
        raise ValueError(f"position {p!r} is not a (row, col) index pair of a {k} x {k} grid")
    return (int(p[0]), int(p[1]))


def _pair(a: Sequence[int], b: Sequence[int], k: int) -> tuple[Position, Position]:
    a, b = _position(a, k), _position(b, k)
    if a == b:
        raise ValueError(f"compare two different positions, got {a} twice")
    return a, b


def _d2(a: Position, r: Position) -> int | float:
    """Squared distance, infinite from a part to itself: it does not attract itself."""
    return (a[0] - r[0]) ** 2 + (a[1] - r[1]) ** 2 or math.inf


def _weight(a: Position, r: Position, q: sympy.Expr) -> sympy.Expr:
    """1 / d(a, r)^q, and 0 for a == r."""
    return sympy.Integer(0) if a == r else sympy.Integer(_d2(a, r)) ** (-q / 2)


def pair_forces(masses: Any, q: Any = 2) -> dict[tuple[Position, Position], sympy.Expr]:
    """F(m_a, m_b) for every unordered pair of distinct positions (a before b, row by row). (Chapters 01, 03)"""
    m, q = _masses(masses), _exponent(q)
    pairs = itertools.combinations(positions(m.rows), 2)
    return {(a, b): m[a] * m[b] * _weight(a, b, q) for a, b in pairs}


def total_force(masses: Any, q: Any = 2) -> sympy.Expr:
    """Cohesion F_tot: the sum of F over each unordered pair once (the paper's sum is twice this). (Chapters 01, 03)"""
    return sympy.Add(*pair_forces(masses, q).values())


def contribution(masses: Any, a: Sequence[int], q: Any = 2) -> sympy.Expr:
    """All interactions involving the mass at ``a``: the paper's F_c, F_n, F_co (Eq. 4.1).

    F_tot minus this does not depend on m_a, so its derivative in m_a is that of F_tot. (Chapter 01)
    """
    m, q = _masses(masses), _exponent(q)
    a = _position(a, m.rows)
    return sympy.Add(*(m[a] * m[r] * _weight(a, r, q) for r in positions(m.rows)))


def gradient(masses: Any, q: Any = 2) -> sympy.Matrix:
    """dF_tot/dm_a at every position a: sum over r != a of m_r / d(a, r)^q (F_tot is bilinear). (Chapter 01)"""
    m, q = _masses(masses), _exponent(q)
    grid = positions(m.rows)
    return sympy.Matrix(
        m.rows, m.cols, lambda i, j: sympy.Add(*(m[r] * _weight((i, j), r, q) for r in grid))
    )


def derivative_gap(masses: Any, a: Sequence[int], b: Sequence[int], q: Any = 2) -> sympy.Expr:
    """dF_tot/dm_a - dF_tot/dm_b; positive means growing m_a adds more cohesion than m_b. (Chapter 01)"""
    g = gradient(masses, q)
    a, b = _pair(a, b, g.rows)
    return g[a] - g[b]


def gap_coefficients(a: Sequence[int], b: Sequence[int], k: int = 3, q: Any = 2) -> sympy.Matrix:
    """C with dF_tot/dm_a - dF_tot/dm_b = sum_r C[r] m_r, i.e. C[r] = 1/d(a,r)^q - 1/d(b,r)^q. (Chapter 01)"""
    q = _exponent(q)
    a, b = _pair(a, b, k)
    return sympy.Matrix(k, k, lambda i, j: _weight(a, (i, j), q) - _weight(b, (i, j), q))


def nearer(a: Sequence[int], b: Sequence[int], k: int = 3) -> list[Position]:
    """Positions r nearer to a than to b, i.e. with C[r] > 0 in ``gap_coefficients``.

    1/d^q falls with d for every q > 0, so the sign of C[r] is exact integer arithmetic. (Chapter 01)
    """
    a, b = _pair(a, b, k)
    return [r for r in positions(k) if _d2(a, r) < _d2(b, r)]


def epsilon_bound(a: Sequence[int], b: Sequence[int], k: int = 3, q: Any = 2) -> sympy.Expr:
    """The largest epsilon for which dF_tot/dm_a > dF_tot/dm_b whatever the masses in the box
    (a, b: (row, col) positions of a k x k feature; q a positive number).

    The gap sum_r C[r] m_r is linear, so over m' <= m_r <= (1 + eps) m' it is smallest with
    (1 + eps) m' where C[r] < 0 and m' elsewhere (``worst_case``): m' (P - (1 + eps) N), P and N
    the summed positive and negative coefficients. The ordering therefore holds for every
    distribution iff eps < P/N - 1, which is returned. With the theorem's strict upper bound
    m < (1 + eps) m' it holds for eps <= P/N - 1 as well, and for any larger eps some
    distribution violates it: the bound is tight (see ``is_tight``).

    N > 0 always (m_a itself has coefficient -1/d(a, b)^q: a heavier m_a raises only
    dF_tot/dm_b), so the bound is finite. It is 0 when the ordering already fails (or ties) for
    equal masses, P <= N; no epsilon works then. (Chapter 01)
    """
    c = gap_coefficients(a, b, k, q)
    positive = sympy.Add(*(c[r] for r in nearer(a, b, k)))
    negative = -sympy.Add(*(c[r] for r in nearer(b, a, k)))
    return positive / negative - 1 if positive > negative else sympy.Integer(0)


def worst_case(
    a: Sequence[int], b: Sequence[int], k: int = 3, *, epsilon: Any = EPSILON
) -> sympy.Matrix:
    """Masses in units of m' minimising dF_tot/dm_a - dF_tot/dm_b over [m', (1 + epsilon) m'].

    Heavy, (1 + epsilon), exactly where a part is nearer to b than to a (b included): the same
    distribution for every exponent q. (Chapter 01)
    """
    heavy = nearer(b, a, k)
    return sympy.Matrix(k, k, lambda i, j: 1 + epsilon if (i, j) in heavy else sympy.Integer(1))


def vertex_minimum(
    a: Sequence[int], b: Sequence[int], k: int = 3, q: Any = 2, *, epsilon: Any
) -> tuple[sympy.Expr, sympy.Matrix]:
    """The smallest dF_tot/dm_a - dF_tot/dm_b over all 2^(k*k) distributions with every mass m'
    or (1 + epsilon) m', by exhaustion, and a minimiser with the fewest heavy parts (units of m').

    The gap is linear in the masses, so this is its minimum over the whole box: a check of
    ``epsilon_bound`` and ``worst_case`` that does not use their formula. The search runs in floats,
    the returned gap is exact (Cohesion chapter; k <= 4). (Chapter 01)
    """
    a, b = _pair(a, b, k)
    if k > 4:
        raise ValueError(f"2^(k*k) distributions are too many for k = {k}; use k <= 4")
    c = np.array([float(v) for v in gap_coefficients(a, b, k, q)])
    heavy = np.array(list(itertools.product((0, 1), repeat=k * k)))
    gaps = c.sum() + float(epsilon) * (heavy @ c)
    best = heavy[min(range(len(heavy)), key=lambda i: (round(gaps[i], 12), heavy[i].sum()))]
    masses = sympy.Matrix(k, k, lambda i, j: 1 + sympy.sympify(epsilon) if best[i * k + j] else sympy.Integer(1))
    return sympy.radsimp(derivative_gap(masses, a, b, q)), masses


def _is_zero(expr: sympy.Expr) -> bool:
    return sympy.expand(sympy.fraction(sympy.together(expr))[0]) == 0


def is_tight(a: Sequence[int], b: Sequence[int], k: int = 3, q: Any = 2) -> bool:
    """Whether ``epsilon_bound`` is attained, checked by exhaustion (``vertex_minimum``): at
    epsilon = bound the smallest gap over the box is exactly 0, so the ordering holds up to the
    bound and no further.

    Any larger epsilon then admits a violation: the minimiser's gap is linear in epsilon, 0 at the
    bound and positive at epsilon = 0 (equal masses, checked too), so it falls beyond the bound. (Chapter 01)
    """
    bound = epsilon_bound(a, b, k, q)
    equal = derivative_gap(sympy.ones(k, k), a, b, q)
    return bool(bound > 0) and bool(equal > 0) and _is_zero(vertex_minimum(a, b, k, q, epsilon=bound)[0])


def heavy_threshold(a: Sequence[int], b: Sequence[int], heavy: Sequence[int], k: int = 3, q: Any = 2) -> sympy.Expr:
    """The mass M of the part at ``heavy``, in units of the others (all equal), above which growing
    m_b adds more cohesion than growing m_a; sympy.oo if a heavier part never makes it so.

    The gap dF_tot/dm_a - dF_tot/dm_b is linear in M, so the threshold is exact (Cohesion chapter:
    the paper's "pathological" large-corner case). (Chapter 01)
    """
    a, b = _pair(a, b, k)
    heavy = _position(heavy, k)
    M = sympy.Symbol("M", positive=True)
    gap = sympy.expand(derivative_gap(sympy.Matrix(k, k, lambda i, j: M if (i, j) == heavy else 1), a, b, q))
    slope = gap.coeff(M)
    return sympy.radsimp((gap - slope * M) / -slope) if slope < 0 else sympy.oo


def spread(masses: Any) -> sympy.Expr:
    """max / min - 1: the masses lie in [m', (1 + eps) m'] exactly for eps >= this (m' = min), so
    Theorem 1 covers them iff it is below the theorem's bound; sympy.oo if a mass is <= 0 while
    another is larger (no box with m' > 0 holds them; Cohesion chapter). (Chapter 01)"""
    m = _masses(masses)
    low, high = min(m), max(m)
    return high / low - 1 if low > 0 else (sympy.Integer(0) if low == high else sympy.oo)


def rings(k: int) -> dict[sympy.Expr, list[Position]]:
    """Positions of a k x k grid (k odd) grouped by their exact distance from its centre, nearest
    first: the rings of :func:`locolib.kernels.rings`, keyed by distance instead of name. (Chapter 01)"""
    return {sympy.sqrt(d2): list(group)
            for d2, group in zip(squared_distances(k), kernel_rings(k).values())}


def ring_pair_table(k: int = 3, q: Any = 2) -> pd.DataFrame:
    """For each inner ring R1 and farther ring R2: min over a in R1, b in R2 of epsilon_bound.

    Up to that epsilon, growing any mass of R1 adds more cohesion than growing any mass of R2.
    Columns: k, q, inner, outer (distances from the centre), bound (exact), bound_float,
    a, b (a pair attaining the minimum). (Chapter 01)
    """
    groups = list(rings(k).items())
    rows = []
    for (d1, ring1), (d2, ring2) in itertools.combinations(groups, 2):
        bound, a, b = min(((epsilon_bound(a, b, k, q), a, b) for a in ring1 for b in ring2),
                          key=lambda t: t[0])
        rows.append({"k": k, "q": sympy.sympify(q), "inner": d1, "outer": d2, "bound": bound,
                     "bound_float": float(bound), "a": a, "b": b})
    return pd.DataFrame(rows)


def ordering_bound(k: int = 3, q: Any = 2) -> sympy.Expr:
    """Largest epsilon up to which every closer ring beats every farther one (Theorem 1 for k=3). (Chapter 01)"""
    return min(ring_pair_table(k, q)["bound"])


# The paper's printed formulas (c0 = 1), transcribed for a term-by-term check.

def paper_eq41(masses: Any = None, q: Any = Q) -> dict[Position, sympy.Expr]:
    """Eq. 4.1 as printed: F_c (centre (1,1)), F_n (neighbour (0,1)), F_co (corner (0,0)). (Chapter 01)"""
    m = mass_matrix(3) if masses is None else _masses(masses)
    s2, s5, s8 = (sympy.sqrt(n**q) for n in (2, 5, 8))
    neighbours = m[1, 0] + m[0, 1] + m[2, 1] + m[1, 2]
    corners = m[0, 0] + m[2, 0] + m[2, 2] + m[0, 2]
    return {
        (1, 1): m[1, 1] * (neighbours + corners / s2),
        (0, 1): m[0, 1] * (m[1, 1] + ((m[1, 0] + m[1, 2]) / s2 + m[2, 1] / 2**q)
                           + (m[0, 0] + m[0, 2] + (m[2, 0] + m[2, 2]) / s5)),
        (0, 0): m[0, 0] * (m[1, 1] / s2 + (m[0, 1] + m[1, 0] + (m[2, 1] + m[1, 2]) / s5)
                           + ((m[2, 0] + m[0, 2]) / 2**q + m[2, 2] / s8)),
    }


def paper_eq42(masses: Any = None) -> dict[Position, sympy.Expr]:
    """Eq. 4.2 as printed (q = 2): dF_c/dm_{1,1}, dF_n/dm_{0,1}, dF_co/dm_{0,0}, and the proof's
    later dF_co/dm_{2,0}; keyed by the position differentiated. (Chapter 01)"""
    m = mass_matrix(3) if masses is None else _masses(masses)
    half, quarter, fifth, eighth = (sympy.Rational(1, n) for n in (2, 4, 5, 8))
    neighbours = m[1, 0] + m[0, 1] + m[2, 1] + m[1, 2]
    corners = m[0, 0] + m[2, 0] + m[2, 2] + m[0, 2]
    return {
        (1, 1): neighbours + corners * half,
        (0, 1): m[1, 1] + ((m[1, 0] + m[1, 2]) * half + m[2, 1] * quarter)
                + (m[0, 0] + m[0, 2] + (m[2, 0] + m[2, 2]) * fifth),
        (0, 0): m[1, 1] * half + (m[0, 1] + m[1, 0] + (m[2, 1] + m[1, 2]) * fifth)
                + ((m[2, 0] + m[0, 2]) * quarter + m[2, 2] * eighth),
        (2, 0): m[1, 1] * half + (m[2, 1] + m[1, 0] + (m[0, 1] + m[1, 2]) * fifth)
                + ((m[2, 2] + m[0, 0]) * quarter + m[0, 2] * eighth),
    }


def paper_worst_case_lines() -> list[dict[str, Any]]:
    """The proof's worst-case substitutions (units of c0 m'), each as printed and its printed total.

    ``at`` is the position differentiated while comparing ``a`` (left side) against ``b``. (Chapter 01)
    """
    e, r = EPSILON, sympy.Rational
    lines = [
        ((1, 1), (0, 1), (1, 1), 4 + (2 + 2 * (1 + e)) / 2, 6 + e),
        ((1, 1), (0, 1), (0, 1), (1 + e) + r("1.25") + ((2 + e) + r("0.4")), r("4.65") + 3 * e),
        ((0, 1), (0, 0), (0, 1), (1 + r("0.5") + r("0.5") * (1 + e) + r("0.25")) + 2
         + r("0.2") * (1 + e) + r("0.2"), r("4.65") + r("0.7") * e),
        ((0, 1), (0, 0), (0, 0), r("0.5") + 2 * (1 + e) + r("0.4") + r("0.25") * (1 + e)
         + r("0.25") + r("0.125"), r("3.525") + r("2.25") * e),
        ((0, 1), (2, 0), (0, 1), 1 + (r("0.5") + r("0.75") * (1 + e)) + 2 + r("0.2") * (1 + e)
         + r("0.2"), r("4.65") + r("0.95") * e),
        ((0, 1), (2, 0), (2, 0), r("0.5") + 2 * (1 + e) + r("0.2") * (1 + e) + r("0.2")
         + r("0.25") * (1 + e) + r("0.25") + r("0.125"), r("3.525") + r("2.45") * e),
    ]
    return [dict(zip(("a", "b", "at", "printed", "total"), line)) for line in lines]


# The input of the paper's Figure 3 (6 x 16), from which Figure 4's masses are extracted.
FIGURE3_INPUT = (
    (0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0),
    (0, 0, 1, 0, 0, 1, 2, 2, 1, 0, 2, 3, 1, 1, 1, 0),
    (1, 0, 0, 0, 1, 2, 6, 3, 1, 1, 2, 5, 1, 2, 1, 0),
    (0, 0, 0, 0, 1, 1, 3, 2, 2, 3, 2, 3, 2, 0, 0, 0),
    (0, 1, 0, 0, 0, 1, 2, 2, 2, 2, 3, 2, 2, 1, 0, 0),
    (0, 0, 0, 1, 0, 1, 1, 1, 2, 3, 3, 2, 1, 1, 0, 0),
)


def window_table(grid: Any, k: int = 3, q: Any = 2) -> pd.DataFrame:
    """Every k x k window of ``grid``: its centre (row, col), centre value, sum and F_tot (exact). (Chapter 01)"""
    g = sympy.Matrix(grid)
    rows = []
    for i, j in itertools.product(range(g.rows - k + 1), range(g.cols - k + 1)):
        w = g[i:i + k, j:j + k]
        rows.append({"row": i + k // 2, "col": j + k // 2, "centre": w[k // 2, k // 2],
                     "sum": sum(w), "total_force": total_force(w, q)})
    return pd.DataFrame(rows)


def draw_particles(ax: Any, window: Any, scale: float, title: str) -> None:
    """A window as interacting particles, after the paper's Figure 4 (Cohesion chapter): masses as
    circles (area ~ mass), forces as arcs (width ~ force / scale); arcs keep collinear pairs apart. (Chapter 01)"""
    m = _masses(window)
    for (a, b), f in pair_forces(m).items():
        ax.add_patch(FancyArrowPatch(a[::-1], b[::-1], arrowstyle="-", connectionstyle="arc3,rad=0.25",
                                     lw=8 * float(f) / scale, color="tab:gray", alpha=0.6, zorder=1))
    for p in positions(m.rows):
        ax.scatter(p[1], p[0], s=220 * float(m[p]), color="tab:red", zorder=2)
        ax.text(p[1], p[0], m[p], ha="center", va="center", color="white", zorder=3)
    ax.set(xlim=(-0.7, m.rows - 0.3), ylim=(m.rows - 0.3, -0.7), aspect="equal", title=title)
    ax.axis("off")


def draw_ring_bounds(table: pd.DataFrame, ks: Sequence[int], qs: Sequence[Any]) -> Figure:
    """The bounds of :func:`ring_pair_table` (``table``: its rows for every grid size of ``ks`` and
    exponent of ``qs``) as one panel per grid size (row, sized by it) and exponent (column): closer
    ring R_1 down, farther ring R_2 across, one log colour scale, each entry with two significant
    digits at 9 pt. (Chapter 01; Figure 1)"""
    fig, axes = plt.subplots(len(ks), len(qs), figsize=(FIGURE_WIDTH, 5.0), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": list(ks)})
    for row, k in zip(axes, ks):
        distances = list(rings(k))
        names = [f"${sympy.latex(d)}$" for d in distances]
        for ax, q in zip(row, qs):
            grid = np.full((len(names), len(names)), np.nan)
            for r in table[(table.k == k) & (table.q == q)].itertuples():
                grid[distances.index(r.inner), distances.index(r.outer)] = r.bound_float
            image = ax.imshow(grid, cmap="viridis", norm="log", vmin=table.bound_float.min(),
                              vmax=table.bound_float.max())
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2g}".removeprefix("0"), ha="center", va="center", fontsize=9,
                            color="white" if v < 0.5 else "black")
            ax.set_xticks(range(len(names)), names)
            ax.set_yticks(range(len(names)), names)
            ax.set_title(f"{k} x {k}, q = {q}")
        row[0].set_ylabel("closer ring $R_1$")
    for ax in axes[-1]:
        ax.set_xlabel("farther ring $R_2$")
    fig.colorbar(image, ax=axes, location="bottom", shrink=0.5, label=r"bound on $\epsilon$ (log scale)")
    return fig
