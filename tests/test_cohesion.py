"""Theorem 1 (cohesion): the gravity model, the paper's formulas and the epsilon bounds."""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
import sympy
from matplotlib.figure import Figure

from locolib import cohesion as co

CENTRE, NEIGHBOUR, CORNER, FAR_CORNER = (1, 1), (0, 1), (0, 0), (2, 0)
PAPER_PAIRS = {  # (a, b): the paper's bound for dF/dm_a > dF/dm_b, and its worst-case maxima
    (CENTRE, NEIGHBOUR): (sympy.Rational(27, 40), {(1, 1), (0, 0), (0, 2)}),
    (NEIGHBOUR, CORNER): (sympy.Rational(45, 62), {(0, 1), (1, 0), (2, 0)}),
    (NEIGHBOUR, FAR_CORNER): (sympy.Rational(3, 4), {(0, 1), (1, 0), (2, 1), (2, 2)}),
}


def same(x, y) -> bool:
    return sympy.expand(x - y) == 0


def brute_total(masses, q):
    """The paper's literal sum over all (i, j, k, l): ordered pairs, each pair counted twice."""
    m = sympy.Matrix(masses)
    k = m.rows
    total = 0
    for i, j, u, v in itertools.product(range(k), repeat=4):
        if (i, j) != (u, v):
            total += m[i, j] * m[u, v] / sympy.sqrt((i - u) ** 2 + (j - v) ** 2) ** q
    return total


def brute_gap(masses, a, b) -> Fraction:
    """dF/dm_a - dF/dm_b at q = 2 in plain fractions, by direct loops."""
    def grad(p):
        return sum(Fraction(m) / ((p[0] - i) ** 2 + (p[1] - j) ** 2)
                   for (i, j), m in np.ndenumerate(masses) if (i, j) != p)
    return grad(a) - grad(b)


def symmetries(k: int):
    """The 8 maps of the square grid onto itself, read off numpy's rotations and flips."""
    index = np.arange(k * k).reshape(k, k)
    for grid in (np.rot90(g, r) for g in (index, index.T) for r in range(4)):
        where = {int(v): (int(i), int(j)) for (i, j), v in np.ndenumerate(grid)}
        yield lambda p, where=where: where[p[0] * k + p[1]]


@cache
def table(k, q):
    return co.ring_pair_table(k, q)


def test_total_force_against_double_loop():
    ones = sympy.ones(2, 2)
    assert co.total_force(ones) == 5  # 4 unit edges + 2 diagonals at 1/2
    rng = np.random.default_rng(0)
    masses = rng.integers(0, 9, size=(4, 4)).tolist()
    symbolic = co.mass_matrix(3)
    for m, q in [(masses, 2), (masses, 1), (masses, 3), (symbolic, 2), (symbolic, co.Q)]:
        assert sympy.simplify(2 * co.total_force(m, q) - brute_total(m, q)) == 0
    pairs = co.pair_forces(masses)  # each unordered pair once, by direct loops
    for (a, b), force in pairs.items():
        d2 = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
        assert force == sympy.Integer(masses[a[0]][a[1]] * masses[b[0]][b[1]]) / d2
    assert sorted(itertools.chain(*pairs)) == sorted(co.positions(4) * 15)


@pytest.mark.parametrize("q", [1, 2, 3, sympy.Rational(5, 2), co.Q])
def test_gradient_and_contribution_are_derivatives(q):
    m = co.mass_matrix(4)
    total, grad = co.total_force(m, q), co.gradient(m, q)
    for p in co.positions(4):
        assert same(grad[p], sympy.diff(total, m[p]))
        assert same(sympy.diff(co.contribution(m, p, q), m[p]), grad[p])
        assert sympy.diff(total - co.contribution(m, p, q), m[p]) == 0


@pytest.mark.parametrize("q", [1, 2, 3, sympy.Rational(5, 2), co.Q])
def test_eq41_term_by_term(q):
    m = co.mass_matrix(3)
    for p, printed in co.paper_eq41(m, q).items():
        ours, theirs = sympy.expand(co.contribution(m, p, q)), sympy.expand(printed)
        for r in co.positions(3):
            assert sympy.simplify(ours.coeff(m[p] * m[r]) - theirs.coeff(m[p] * m[r])) == 0, (p, r)


def test_eq42_term_by_term():
    m = co.mass_matrix(3)
    total = co.total_force(m, 2)
    printed = co.paper_eq42(m)
    assert set(printed) == {CENTRE, NEIGHBOUR, CORNER, FAR_CORNER}
    for p, expr in printed.items():
        derivative = sympy.diff(total, m[p])
        for r in co.positions(3):
            assert expr.coeff(m[r]) == derivative.coeff(m[r]), (p, r)
    for p, f in co.paper_eq41(m, 2).items():
        assert same(sympy.diff(f, m[p]), printed[p])


def test_paper_numbers():
    for (a, b), (bound, _) in PAPER_PAIRS.items():
        assert co.epsilon_bound(a, b) == bound
    assert f"{float(PAPER_PAIRS[NEIGHBOUR, CORNER][0]):.4f}" == "0.7258"
    # centre vs corner is subsumed: its bound exceeds the centre-vs-neighbour one
    assert co.epsilon_bound(CENTRE, CORNER) == sympy.Rational(99, 20)
    assert co.epsilon_bound(CENTRE, CORNER) > co.epsilon_bound(CENTRE, NEIGHBOUR)
    assert co.ordering_bound(3, 2) == sympy.Rational(27, 40)


def test_worst_case_is_the_papers():
    cases = {pair: heavy for pair, (_, heavy) in PAPER_PAIRS.items()}
    cases[CENTRE, CORNER] = {CENTRE}  # the proof's "no masses closer to the corner" misses m_11
    for (a, b), heavy in cases.items():
        w = co.worst_case(a, b)
        assert {p for p in co.positions(3) if w[p] == 1 + co.EPSILON} == heavy
        assert {p for p in co.positions(3) if w[p] == 1} == set(co.positions(3)) - heavy


def test_paper_worst_case_lines():
    lines = co.paper_worst_case_lines()
    for i, line in enumerate(lines):
        ours = co.gradient(co.worst_case(line["a"], line["b"]))[line["at"]]
        assert same(ours, line["total"]), i
        # the second line prints (2 + eps) m' for the two heavy corners, 2 (1 + eps) m'
        typo = sympy.expand(line["printed"] - line["total"])
        assert typo == (-co.EPSILON if i == 1 else 0), i


@pytest.mark.parametrize(("a", "b"), list(PAPER_PAIRS))
def test_bounds_are_tight(a, b):
    bound = co.epsilon_bound(a, b)
    assert co.is_tight(a, b) and co.is_tight(a, b, q=1) and co.is_tight(a, b, q=3)
    worst = co.worst_case(a, b, epsilon=bound)
    assert brute_gap(np.array(worst.tolist()), a, b) == 0
    # just above: masses below (1 + bound + 1/1000) m' where the worst case is heavy reverse it
    above = co.worst_case(a, b, epsilon=bound + sympy.Rational(1, 2000))
    assert brute_gap(np.array(above.tolist()), a, b) < 0
    # up to the bound, with the theorem's strict m < (1 + eps) m', nothing violates it
    rng = np.random.default_rng(1)
    steps = 10**6
    for u in rng.integers(0, steps, size=(2000, 3, 3)):
        masses = 1 + (u * Fraction(1, steps)) * Fraction(str(bound))
        assert brute_gap(masses, a, b) > 0


def test_bounds_by_brute_force_over_vertices():
    m = co.mass_matrix(3)
    grad = [sympy.diff(co.total_force(m, 2), m[p]) for p in co.positions(3)]
    coeffs = [[Fraction(str(g.coeff(m[r]))) for r in co.positions(3)] for g in grad]
    for (ia, a), (ib, b) in itertools.permutations(enumerate(co.positions(3)), 2):
        c = [x - y for x, y in zip(coeffs[ia], coeffs[ib])]
        uniform = sum(c)  # the gap with all masses m' = 1; each vertex adds eps * its slope
        slopes = [sum(ci for ci, heavy in zip(c, v) if heavy)
                  for v in itertools.product((0, 1), repeat=9)]
        expected = min(uniform / -s for s in slopes if s < 0) if uniform > 0 else 0
        assert co.epsilon_bound(a, b) == sympy.Rational(expected), (a, b)


@pytest.mark.parametrize("q", [1, 3])
def test_surd_bounds_and_worst_cases_by_brute_force_over_vertices(q):
    m = co.mass_matrix(3)
    total = co.total_force(m, q)
    vertices = list(itertools.product((False, True), repeat=9))
    for a, b in PAPER_PAIRS:
        gap = sympy.diff(total, m[a]) - sympy.diff(total, m[b])
        c = np.array([float(gap.coeff(m[r])) for r in co.positions(3)])
        slopes = [c[list(v)].sum() for v in vertices]
        assert c.sum() > 0 and min(slopes) < 0
        assert float(co.epsilon_bound(a, b, q=q)) == pytest.approx(c.sum() / -min(slopes), rel=1e-12)
        heaviest = vertices[int(np.argmin(slopes))]
        worst = co.worst_case(a, b, epsilon=1)
        assert [worst[p] == 2 for p in co.positions(3)] == list(heaviest)


@pytest.mark.slow
@pytest.mark.parametrize(("k", "q"), [(3, 2), (3, 1), (5, 2)])
def test_bounds_invariant_under_grid_symmetries(k, q):
    maps = list(symmetries(k))
    assert len({tuple(g(p) for p in co.positions(k)) for g in maps}) == 8
    pairs = list(itertools.permutations(co.positions(k), 2))
    for a, b in pairs if k == 3 else pairs[::7]:
        bound = co.epsilon_bound(a, b, k, q)
        assert all(co.epsilon_bound(g(a), g(b), k, q) == bound for g in maps), (a, b)


def test_vertex_minimum_and_tightness_by_exhaustion():
    for (a, b), (bound, heavy) in PAPER_PAIRS.items():
        gap, masses = co.vertex_minimum(a, b, epsilon=bound)
        assert gap == 0 and masses == co.worst_case(a, b, epsilon=bound)
        assert {p for p in co.positions(3) if masses[p] != 1} == heavy
        assert co.vertex_minimum(a, b, epsilon=bound + sympy.Rational(1, 1000))[0] < 0
        assert co.vertex_minimum(a, b, epsilon=bound - sympy.Rational(1, 1000))[0] > 0
    # a wrong bound is not tight: the exhaustive minimum at it is not 0
    assert co.vertex_minimum(CENTRE, NEIGHBOUR, epsilon=sympy.Rational(2, 3))[0] > 0
    assert co.vertex_minimum(CENTRE, NEIGHBOUR, epsilon=sympy.Rational(7, 10))[0] < 0
    # centre vs corner: the positions equidistant from both do not matter; the lightest minimiser
    gap, masses = co.vertex_minimum(CENTRE, CORNER, epsilon=co.epsilon_bound(CENTRE, CORNER))
    assert gap == 0 and {p for p in co.positions(3) if masses[p] != 1} == {CENTRE}
    with pytest.raises(ValueError, match="too many"):
        co.vertex_minimum(CENTRE, NEIGHBOUR, k=5, epsilon=1)


def test_pathological_heavy_corner():
    assert co.heavy_threshold(CENTRE, NEIGHBOUR, CORNER) == sympy.Rational(37, 10)
    m = sympy.ones(3, 3)
    for corner, sign in ((sympy.Rational(37, 10) - sympy.Rational(1, 100), 1), (sympy.Rational(37, 10), 0),
                         (sympy.Rational(37, 10) + sympy.Rational(1, 100), -1)):
        m[CORNER] = corner
        assert sympy.sign(brute_gap(np.array(m.tolist()), CENTRE, NEIGHBOUR)) == sign
    thresholds = [float(co.heavy_threshold(CENTRE, NEIGHBOUR, CORNER, q=q)) for q in (1, 2, 3)]
    assert [round(t, 4) for t in thresholds] == [4.4818, 3.7, 3.1707]
    # a heavy far corner (2, 2) does not favour the neighbour (0, 1): it is nearer the centre
    assert co.heavy_threshold(CENTRE, NEIGHBOUR, (2, 2)) == sympy.oo
    # the paper's Figure 3: in the most cohesive window (the 6 at its centre) the 3 beside the 6 beats the centre
    red = sympy.Matrix(co.FIGURE3_INPUT)[1:4, 5:8]
    assert brute_gap(np.array(red.tolist()), (1, 2), CENTRE) == sympy.Rational(2, 5)


def test_spread_and_the_theorems_reach():
    assert co.spread([[1, 2], [3, 2]]) == 2 and co.spread(sympy.ones(3, 3)) == 0
    assert co.spread([[0, 1], [1, 1]]) == sympy.oo and co.spread(sympy.zeros(2, 2)) == 0
    grid = np.array(co.FIGURE3_INPUT)
    spreads = [co.spread(grid[i:i + 3, j:j + 3].tolist()) for i in range(4) for j in range(14)]
    assert sum(s == sympy.oo for s in spreads) == 41
    assert sorted(s for s in spreads if s < sympy.Rational(27, 40)) == [sympy.Rational(1, 2)] * 2


def test_failing_and_tied_orderings():
    assert co.epsilon_bound(CORNER, CENTRE) == 0 and not co.is_tight(CORNER, CENTRE)
    assert co.epsilon_bound((0, 1), (1, 0)) == 0  # same ring: equal at uniform masses
    for a, b in itertools.permutations(co.positions(3), 2):  # the m_a term keeps it finite
        assert any(c.is_negative for c in co.gap_coefficients(a, b))


def test_rings_and_distances():
    r5 = co.rings(5)
    assert list(r5) == [0, 1, sympy.sqrt(2), 2, sympy.sqrt(5), sympy.sqrt(8)]
    assert [len(v) for v in r5.values()] == [1, 4, 4, 4, 8, 4]
    assert co.rings(3) == {0: [CENTRE], 1: [(0, 1), (1, 0), (1, 2), (2, 1)],
                           sympy.sqrt(2): [(0, 0), (0, 2), (2, 0), (2, 2)]}
    # the paper says "only 4 different distances" and lists 5: a 3 x 3 grid has five
    distances = {sympy.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)
                 for a, b in itertools.combinations(co.positions(3), 2)}
    assert distances == {1, sympy.sqrt(2), 2, sympy.sqrt(5), sympy.sqrt(8)}


def test_ring_pair_table_3x3():
    t = table(3, 2)
    assert list(zip(t.inner, t.outer, t.bound)) == [
        (0, 1, sympy.Rational(27, 40)), (0, sympy.sqrt(2), sympy.Rational(99, 20)),
        (1, sympy.sqrt(2), sympy.Rational(45, 62))]
    for row in t.itertuples():
        assert co.epsilon_bound(row.a, row.b) == row.bound
        assert row.bound_float == pytest.approx(float(row.bound))


def test_exponent_findings():
    b3 = {q: min(table(3, q).bound) for q in (1, 2, 3)}
    assert [round(float(b3[q]), 3) for q in b3] == [0.634, 0.675, 0.612]
    assert b3[1] < b3[2] > b3[3]  # q = 2 is best of 1, 2, 3 ...
    # ... but not the maximum, which lies between q = 1 and q = 2
    assert b3[1] < co.ordering_bound(3, sympy.Rational(3, 2)) > b3[2]
    # the pair that limits the 3 x 3 theorem: neighbour vs corner for q = 1, centre vs neighbour else
    for q, rings in [(1, (1, sympy.sqrt(2))), (2, (0, 1)), (3, (0, 1))]:
        weakest = table(3, q).loc[table(3, q).bound_float.idxmin()]
        assert weakest.bound == b3[q] and (weakest.inner, weakest.outer) == rings


@pytest.mark.slow
def test_five_by_five_findings():
    b5 = {q: min(table(5, q).bound) for q in (1, 2, 3)}
    assert all(table(5, q).bound.map(lambda x: x > 0).all() for q in b5)
    assert b5[1] > b5[2] > b5[3]
    assert [round(float(b5[q]), 3) for q in b5] == [0.111, 0.077, 0.046]
    assert all(b5[q] < min(table(3, q).bound) for q in b5)
    assert b5[2] == sympy.Rational(4966, 64875)
    for q in b5:  # weakest: ring 2 (edge middles) vs ring sqrt 5
        weakest = table(5, q).loc[table(5, q).bound_float.idxmin()]
        assert weakest.bound == b5[q] and (weakest.inner, weakest.outer) == (2, sympy.sqrt(5))
    # farther is not always easier: centre vs ring sqrt 5 has a lower bound than vs ring 2
    for q in (2, 3):
        by = {(r.inner, r.outer): r.bound for r in table(5, q).itertuples()}
        assert by[0, sympy.sqrt(5)] < by[0, 2]


@pytest.mark.parametrize(("k", "q"), [(3, 1), (3, 2), (3, 3), (5, 1), (5, 2), (5, 3)])
def test_each_ring_is_weakest_against_the_next_one(k, q):
    distances = list(co.rings(k))
    for inner, rows in table(k, q).groupby("inner"):
        weakest = rows.loc[rows.bound_float.idxmin()]
        assert weakest.bound == min(rows.bound)
        assert weakest.outer == distances[distances.index(inner) + 1]


def test_figure3_windows():
    scores = co.window_table(co.FIGURE3_INPUT)
    assert len(scores) == 4 * 14
    best = scores.loc[scores.total_force.astype(float).idxmax()]
    assert best.total_force == max(scores.total_force)
    assert (best.row, best.col, best.centre, best["sum"]) == (2, 6, 6, 22)
    assert best.total_force == sympy.Rational(2661, 20)
    top_sum = scores[scores["sum"] == scores["sum"].max()]
    assert scores["sum"].max() == 23 and len(top_sum) == 3 and (top_sum.centre < 6).all()
    blue = top_sum.iloc[0]
    patch = sympy.Matrix(co.FIGURE3_INPUT)[blue.row - 1:blue.row + 2, blue.col - 1:blue.col + 2]
    assert patch[0, 0] == 6 and blue.total_force < best.total_force
    grid = np.array(co.FIGURE3_INPUT)
    for r in top_sum.itertuples():
        window = grid[r.row - 1:r.row + 2, r.col - 1:r.col + 2]
        assert 6 not in window or 6 in window[::2, ::2]
    red = sympy.Matrix(co.FIGURE3_INPUT)[1:4, 5:8]
    forces = co.pair_forces(red)
    assert max(forces, key=forces.get) == (CENTRE, (1, 2)) and max(forces.values()) == 18
    small = co.window_table([[1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 3, 1]], k=3)
    assert list(small["sum"]) == [7, 7] and list(small.centre) == [1, 0]
    assert small.total_force[1] == co.total_force([[2, 0, 0], [1, 0, 0], [0, 3, 1]])


def test_input_validation():
    with pytest.raises(ValueError, match="square"):
        co.total_force([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="square"):
        co.total_force([1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        co.total_force(sympy.ones(3, 3), q=0)
    with pytest.raises(ValueError, match="positive"):
        co.epsilon_bound(CENTRE, CORNER, q=-1)
    with pytest.raises(ValueError, match="grid"):
        co.epsilon_bound((3, 0), CENTRE)
    with pytest.raises(ValueError, match="grid"):
        co.contribution(sympy.ones(3, 3), (1, -1))
    with pytest.raises(ValueError, match="grid"):
        co.epsilon_bound((0.5, 1), CENTRE)
    assert co.epsilon_bound(np.array([1, 1]), np.array([0, 1])) == sympy.Rational(27, 40)
    with pytest.raises(ValueError, match="different"):
        co.epsilon_bound(CENTRE, (1, 1))


def test_draw_particles():
    ax = Figure().subplots()
    window = sympy.Matrix([[1, 2, 2], [2, 6, 3], [1, 3, 2]])
    co.draw_particles(ax, window, scale=18, title="red")
    widths = sorted(p.get_linewidth() for p in ax.patches)
    assert len(ax.patches) == 36 and widths[-1] == pytest.approx(8)  # the strongest bond, 6 * 3 / 1
    assert len(ax.collections) == 9 and ax.get_title() == "red"
