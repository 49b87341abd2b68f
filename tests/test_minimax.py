"""Theorem 2 (locating a feature under noise): Table 2, both readings of the minimax problem, the
corrected theorem, the variance and the Monte Carlo checks of the chapter."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy
from scipy.optimize import linprog, minimize, nnls

from locolib import minimax as mm

GRID = mm.profile_grid()
CASES = [(name, k) for name in GRID for k in (1, 2)]
G = mm.G


def gaps(g, k, x_max=16):
    """Independent a_x rows (plain loops) for 0 < |x| <= x_max."""
    xs = [x for x in range(-x_max, x_max + 1) if x]
    return np.array([[g(j) - g(x + j) for j in range(-k, k + 1)] for x in xs])


def admissible_profiles(n_profiles=200, length=12, seed=0):
    """Random g(0..length) with positive, strictly shrinking steps: the paper's assumptions."""
    rng = np.random.default_rng(seed)
    steps = -np.sort(-rng.uniform(0.01, 1, (n_profiles, length)), axis=1)
    top = rng.uniform(-10, 10, (n_profiles, 1))
    return np.c_[top, top - np.cumsum(steps, axis=1)]


# ---------------------------------------------------------------- Table 2 and Eq. 4.5/4.6


def test_table_2_matches_the_printed_table():
    derived = mm.table_2()
    assert list(derived.index) == list(mm.PAPER_TABLE_2)
    assert derived.values.tolist() == [list(row) for row in mm.PAPER_TABLE_2.values()]


def test_table_2_entries_are_the_coefficients_of_eq_4_4():
    for x, row in mm.PAPER_TABLE_2.items():
        for j, printed in zip((-1, 0, 1), row):
            lhs = sympy.sympify(printed.rsplit(" ", 2)[0], locals={"g": G})
            assert sympy.expand(lhs - mm.coefficient(x, j)) == 0


@pytest.mark.parametrize("expr, sign", [
    (G(0) - G(1), 1), (G(1) - G(1), 0), (G(1) - G(0), -1),
    (G(0) - 2 * G(1) + G(2), 1),            # convexity
    (G(0) - 3 * G(1) + 2 * G(2), None),     # d0 - 2 d1: either sign
    (G(0), None), (G(2) - G(5) - (G(3) - G(4)), 1),
])
def test_implied_sign_agrees_with_random_admissible_profiles(expr, sign):
    assert mm.implied_sign(expr) == sign
    profiles = admissible_profiles()
    f = sympy.lambdify([G(n) for n in range(12)], expr)
    values = np.array([f(*p[:12]) for p in profiles])
    if sign is None:
        assert (values > 0).any() and (values < 0).any()
    else:
        assert np.all(np.sign(np.round(values, 12)) == sign)


def test_eq_4_5_and_4_6_hold_for_every_admissible_g():
    for a, b, c, d in itertools.product(range(4), range(1, 5), range(1, 4), range(1, 4)):
        if b > a and c >= d:
            assert mm.implied_sign(G(a) - G(a + c) - (G(b) - G(b + d))) == 1
            # Eq. 4.6 at (-a, -b): g(-a) - g(-a-c) > g(-b) - g(-b-d), written with g(-y) = g(y)
            assert mm.implied_sign(G(a) - G(a + c) - (G(b) - G(b + d))) == mm.implied_sign(
                G(abs(-a)) - G(abs(-a - c)) - (G(abs(-b)) - G(abs(-b - d))))


def test_w0_coefficient_is_largest_for_x_beyond_one_but_only_ties_at_one():
    for x in [x for x in range(-12, 13) if abs(x) >= 2]:
        for j in (-1, 1):
            assert mm.implied_sign(mm.coefficient(x, 0) - mm.coefficient(x, j)) == 1
            assert mm.implied_sign(mm.coefficient(x, 0) + mm.coefficient(x, j)) == 1
    assert mm.implied_sign(mm.coefficient(1, 0) + mm.coefficient(1, -1)) == 0


def test_half_sum_of_the_x_pm1_rows_is_a_laplacian_centre_positive_rest_negative():
    for k in (1, 2, 3, 4):
        signs = [mm.implied_sign((mm.coefficient(1, j) + mm.coefficient(-1, j)) / 2) for j in range(-k, k + 1)]
        assert signs == [-1] * k + [1] + [-1] * k


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "1"])
def test_bad_k_is_rejected(k):
    with pytest.raises(ValueError, match="k must be an integer"):
        mm.solve(mm.laplace(1), k)


@pytest.mark.parametrize("g, name", [
    (lambda x: math.nan, "finite"), (lambda x: 1j, "finite"),
    (lambda x: math.exp(-abs(x) - 0.1 * (x > 0)), "symmetric"),
    (lambda x: 1.0, "decreasing"), (lambda x: -abs(x), "convex"),
    (mm.gaussian(1.0), "convex"),
])
def test_assumption_violations_are_named(g, name):
    assert mm.check_assumptions(g)[name] is not None
    with pytest.raises(ValueError, match="violates the assumptions") as error:
        mm.solve(g)
    assert mm.ASSUMPTIONS[name] in str(error.value)


def test_grid_profiles_satisfy_the_assumptions_and_wide_gaussians_do_not():
    for name, g in GRID.items():
        assert all(v is None for v in mm.check_assumptions(g).values()), name
    assert mm.check_assumptions(mm.gaussian(0.9))["convex"] is None
    assert mm.check_assumptions(mm.gaussian(0.91))["convex"] == 0  # g(0)-g(1) < g(1)-g(2)


def test_bad_reading_norm_and_weights_are_rejected():
    with pytest.raises(ValueError, match="reading"):
        mm.solve(mm.laplace(1), reading="max")
    with pytest.raises(ValueError, match="norm"):
        mm.solve(mm.laplace(1), norm="l3")
    with pytest.raises(ValueError, match="weights"):
        mm.worst_gap(mm.laplace(1), [1.0, 2.0])


# ---------------------------------------------------------------- the solver is exact


@pytest.mark.parametrize("name", ["Laplace tau=1", "Cauchy c=0.25", "power p=2"])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_brute_force_over_the_sphere_k1(name, nonnegative):
    g = GRID[name]
    A = gaps(g, 1)
    phi, theta = np.meshgrid(np.linspace(0, 2 * np.pi, 721), np.linspace(0, np.pi, 361))
    W = np.stack([np.sin(theta) * np.cos(phi), np.cos(theta), np.sin(theta) * np.sin(phi)], -1).reshape(-1, 3)
    if nonnegative:
        W = W[(W >= 0).all(1)]
    best = W[(W @ A.T).min(1).argmax()]
    for h in 10.0 ** -np.arange(2, 9):  # refine on ever finer tangent grids around the best point
        basis = np.linalg.svd(best[None])[2][1:]
        t = np.linspace(-h, h, 41)
        cand = best + np.stack(np.meshgrid(t, t), -1).reshape(-1, 2) @ basis
        cand = np.clip(cand, 0, None) if nonnegative else cand
        cand /= np.linalg.norm(cand, axis=1, keepdims=True)
        best = cand[(cand @ A.T).min(1).argmax()]
    w, value = mm.solve(g, 1, nonnegative)
    brute = (A @ best).min()
    assert brute <= value + 1e-12 and value - brute < 1e-7
    assert np.allclose(best, w, atol=1e-3)  # the value is flat to second order along the ridge


@pytest.mark.parametrize("name, k", CASES)
def test_solver_is_certified_optimal_and_agrees_with_slsqp(name, k):
    g = GRID[name]
    A, n = gaps(g, k), 2 * k + 1
    for nonnegative in (False, True):
        w, value = mm.solve(g, k, nonnegative)
        assert abs(np.linalg.norm(w) - 1) < 1e-12 and (not nonnegative or (w >= 0).all())
        assert abs((A @ w).min() - value) < 1e-10
        res = minimize(lambda z: -z[-1], np.r_[np.eye(n)[k], 0], method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda z: A @ z[:-1] - z[-1]},
                                    {"type": "ineq", "fun": lambda z: 1 - z[:-1] @ z[:-1]}],
                       bounds=[(0 if nonnegative else None, None)] * n + [(None, None)],
                       options={"ftol": 1e-14, "maxiter": 500})
        assert abs(-res.fun - value) < 1e-7
        # dual certificate: value * w = p + mu with p a convex combination of the binding a_x and
        # mu >= 0 only where w_j = 0 (w >= 0 only); then p_+ = value * w, and every admissible unit
        # w' has min_x a_x . w' <= p . w' <= ||p_+|| = value
        # the grid profiles decay to 0, so (g(j))_j is the limit of a_x: it may bind (x -> infinity)
        rows = np.vstack([A, [g(j) for j in range(-k, k + 1)]])
        columns = rows[rows @ w < value + 1e-9].T
        if nonnegative:
            columns = np.hstack([columns, np.eye(n)[:, w < 1e-12]])
        assert nnls(columns, value * w)[1] < 1e-9


def test_enlarging_the_competitor_range_changes_nothing():
    for name in ("Laplace tau=0.5", "Cauchy c=0.25", "power p=0.5", "power p=4"):
        for k, nonnegative, reading in itertools.product((1, 2), (False, True), ("maxmin", "minmax")):
            w, v = mm.solve(GRID[name], k, nonnegative, reading)
            w2, v2 = mm.solve(GRID[name], k, nonnegative, reading, x_max=128)
            assert abs(v - v2) < 1e-10 and np.allclose(w, w2, atol=1e-8)
    # the narrow Laplace profile binds at infinity: a small range is enlarged until certified
    assert abs(mm.solve(mm.laplace(0.5), 2, x_max=5)[1] - mm.solve(mm.laplace(0.5), 2, x_max=64)[1]) < 1e-10


def test_worst_gap_of_simple_filters():
    g = mm.laplace(1)
    assert abs(mm.worst_gap(g, [0, 1, 0]) - (1 - math.exp(-1))) < 1e-12
    assert abs(mm.worst_gap(g, [1, 1, 1]) - (math.exp(-1) - math.exp(-2))) < 1e-12  # x = 1 binds


# ---------------------------------------------------------------- Theorem 2 and its correction


@pytest.mark.parametrize("name, k", CASES)
def test_nonnegative_weights_centre_only_is_optimal(name, k):
    g = GRID[name]
    w, value = mm.solve(g, k, nonnegative=True)
    assert np.allclose(w, np.eye(2 * k + 1)[k], atol=1e-9)
    assert abs(value - (g(0) - g(1))) < 1e-10


@pytest.mark.parametrize("name, k", CASES)
def test_signed_weights_sharpening_beats_centre_only(name, k):
    g = GRID[name]
    w, value = mm.solve(g, k)
    d0 = g(0) - g(1)
    assert value > d0 + 1e-5, "counterexample: signed weights beat the centre-only filter"
    assert abs(mm.worst_gap(g, w) - value) < 1e-10
    assert np.allclose(w, w[::-1], atol=1e-9) and w[k] > 0 and (np.delete(w, k) < 0).all()
    laplacian, bound = mm.laplacian_filter(g, k)
    assert value <= bound + 1e-10
    exact = mm.worst_gap(g, laplacian) >= bound - 1e-10
    assert exact == (abs(value - bound) < 1e-10)
    if exact:
        assert np.allclose(w, laplacian, atol=1e-8)


def test_some_k2_optima_weigh_the_outer_offsets_more_negatively():
    outer = [n for n in GRID if (lambda w: w[0] < w[1] < 0)(mm.solve(GRID[n], 2)[0])]
    assert outer == ["Gaussian sigma=0.7", "Gaussian sigma=0.85", "Cauchy c=1.9"]


def test_the_closed_form_regime_occurs_and_so_does_the_other():
    regimes = {abs(mm.solve(GRID[n], k)[1] - mm.laplacian_filter(GRID[n], k)[1]) < 1e-10 for n, k in CASES}
    assert regimes == {True, False}


def test_small_negative_neighbours_improve_on_centre_only_for_k1():
    g = mm.laplace(1)  # counterexample with round numbers: w = (-0.2, 1, -0.2) / norm
    w = np.array([-0.2, 1, -0.2]) / math.sqrt(1.08)
    assert mm.worst_gap(g, w) > g(0) - g(1) + 0.02


@pytest.mark.parametrize("name, k", CASES)
def test_minmax_reading(name, k):
    g = GRID[name]
    A = gaps(g, k, 40)
    for nonnegative in (False, True):
        w, value = mm.solve(g, k, nonnegative, "minmax")
        rows = np.clip(A, 0, None) if nonnegative else A
        assert abs(value - np.linalg.norm(rows, axis=1).min()) < 1e-12
        assert value > mm.solve(g, k, nonnegative)[1] + 1e-6  # weak duality, strict here
        assert max(abs(w[k - 1]), abs(w[k + 1])) > 0.05  # the theorem's w_{+-1} = 0 fails here too


# ---------------------------------------------------------------- other norms


def limit_rows(g, k, x_max=40):
    """The a_x rows for 0 < |x| <= x_max and their limit (g(j))_j: every grid profile decays to 0."""
    return np.vstack([gaps(g, k, x_max), [g(j) for j in range(-k, k + 1)]])


@pytest.mark.parametrize("name, k", CASES)
def test_centre_only_is_the_unique_optimum_for_w_nonnegative_in_every_norm_and_signed_l1(name, k):
    g = GRID[name]
    for norm, nonnegative in [("l1", False), ("l1", True), ("l2", True), ("linf", True)]:
        w, value = mm.solve(g, k, nonnegative, norm=norm)
        assert np.allclose(w, np.eye(2 * k + 1)[k], atol=1e-9), (norm, nonnegative)
        assert abs(value - (g(0) - g(1))) < 1e-10, (norm, nonnegative)
    # the proofs' bound: min(a_1 . w, a_-1 . w) <= b . w <= ||b||_inf ||w||_1 = b_0 = g(0) - g(1)
    b = mm.laplacian_filter(g, k)[0] * mm.laplacian_filter(g, k)[1]
    assert abs(b[k] - (g(0) - g(1))) < 1e-12 and (np.abs(np.delete(b, k)) < b[k] / 2).all()


@pytest.mark.parametrize("name, k", CASES)
def test_linf_signed_weights_beat_centre_only(name, k):
    g = GRID[name]
    w, value = mm.solve(g, k, norm="linf")
    d0 = g(0) - g(1)
    assert value > d0 + 1e-3
    assert abs(np.abs(w).max() - 1) < 1e-12 and abs(mm.worst_gap(g, w) - value) < 1e-10
    # Hoelder: min(a_1 . w, a_-1 . w) <= b . w <= ||b||_1 = 2 d0 - d_k, and the L2 optimum is worse
    b = mm.laplacian_filter(g, k)[0] * mm.laplacian_filter(g, k)[1]
    assert value <= np.abs(b).sum() + 1e-12 and abs(np.abs(b).sum() - (2 * d0 - (g(k) - g(k + 1)))) < 1e-12
    assert value > mm.solve(g, k)[1] + 1e-3
    # the book's perturbation e_0 - t (e_-1 + e_1) keeps unit L-infinity norm and gains on d0
    t = 0.1
    assert mm.worst_gap(g, np.eye(2 * k + 1)[k] - t * (np.eye(2 * k + 1)[k - 1] + np.eye(2 * k + 1)[k + 1])) > d0


@pytest.mark.parametrize("name", ["Laplace tau=1", "Cauchy c=1", "power p=0.5"])
@pytest.mark.parametrize("norm, nonnegative", [("l1", False), ("linf", False), ("linf", True)])
def test_lp_against_brute_force_over_the_ball_k1(name, norm, nonnegative):
    g = GRID[name]
    A = limit_rows(g, 1)
    t = np.linspace(0 if nonnegative else -1, 1, 41)
    best = np.stack(np.meshgrid(t, t, t), -1).reshape(-1, 3)
    for h in [None, *10.0 ** -np.arange(2, 9)]:  # a grid of the cube, then ever finer grids around the best
        cand = best if h is None else best + np.stack(np.meshgrid(*[np.linspace(-h, h, 21)] * 3), -1).reshape(-1, 3)
        cand = np.clip(cand, 0 if nonnegative else -1, 1)
        cand = cand[np.linalg.norm(cand, mm.NORMS[norm], axis=1) > 0]
        cand /= np.linalg.norm(cand, mm.NORMS[norm], axis=1, keepdims=True)
        best = cand[(cand @ A.T).min(1).argmax()]
    w, value = mm.solve(g, 1, nonnegative, norm=norm)
    brute = (A @ best).min()
    assert brute <= value + 1e-12 and value - brute < 1e-7


@pytest.mark.parametrize("name, k", [(n, k) for n in GRID for k in (2, 3)])
def test_linf_agrees_with_an_interior_point_solver(name, k):
    g = GRID[name]
    A = limit_rows(g, k, 60 if name.startswith("Gaussian") else 400)
    n = 2 * k + 1
    res = linprog(np.r_[np.zeros(n), -1], A_ub=np.c_[-A, np.ones(len(A))], b_ub=np.zeros(len(A)),
                  bounds=[(-1, 1)] * n + [(None, None)], method="highs-ipm")
    assert abs(-res.fun - mm.solve(g, k, norm="linf")[1]) < 1e-7


def test_linf_certificate_for_laplace_profiles():
    c = mm.laplace_linf_certificate()
    r, value = c["r"], c["value"]
    assert sympy.simplify(c["gap"] - value) == 0 and c["p"][0] == c["p"][2] == 0
    assert sympy.simplify(c["p"][1] - value) == 0
    for tau in (0.5, 1, 2, 5):
        g, rv = mm.laplace(tau), math.exp(-1 / tau)
        w = np.array([float(v.subs(r, rv)) for v in c["w"]])
        V, alpha = math.tanh(1 / tau), 2 * rv / (1 + rv**2)
        assert abs(float(value.subs(r, rv)) - V) < 1e-15
        A = limit_rows(g, 1, 60)  # rows x = -60..-1, 1..60 and the limit
        assert np.allclose(A @ w, V, atol=1e-12)  # every competitor ties
        p = alpha / 2 * (A[59] + A[60]) + (1 - alpha) * A[-1]  # x = -1, x = 1 and the limit
        assert np.allclose(p, [0, V, 0], atol=1e-12)
        w_solved, solved = mm.solve(g, 1, norm="linf")
        assert abs(solved - V) < 1e-10 and np.allclose(w_solved, w, atol=1e-9)


def test_l2_counterexample_in_closed_form():
    d0 = 1 - math.exp(-1)  # e^-|x|, k = 1: the optimum is b / ||b||, ||b|| = d0 sqrt(1 + (d0 - d1)^2 / (2 d0^2))
    assert abs(mm.solve(mm.laplace(1), 1)[1] - d0 * math.sqrt(1 + d0**2 / 2)) < 1e-12


def test_every_p_norm_above_one_admits_a_better_signed_filter():
    g = mm.laplace(1)
    d0, t = g(0) - g(1), 0.01
    w = np.array([-t, 1, -t])
    for p in (1.5, 2, 3, math.inf):
        assert mm.worst_gap(g, w / np.linalg.norm(w, p)) > d0  # the normalisation costs O(t^p)
    assert mm.worst_gap(g, w / np.linalg.norm(w, 1)) < d0  # under L1 it costs 2t


def test_negative_sum_filters_are_bounded_at_infinity():
    g = mm.cauchy(1)  # slow decay: the L-infinity optimum for k = 2 sums to < 0 and binds at infinity
    w, value = mm.solve(g, 2, norm="linf")
    assert w.sum() < 0 and abs(value - w @ [g(j) for j in range(-2, 3)]) < 1e-10
    assert abs(mm.solve(g, 2, norm="linf", x_max=64)[1] - value) < 1e-10
    assert mm._tail_bound(lambda x: 1 - abs(x) / 100, w, 200) == -math.inf  # g < 0 there: no bound


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_minmax_reading_in_other_norms(norm):
    dual = {"l1": math.inf, "linf": 1}[norm]
    for name, k in CASES[::3]:
        g = GRID[name]
        A = gaps(g, k, 40)
        for nonnegative in (False, True):
            w, value = mm.solve(g, k, nonnegative, "minmax", norm=norm)
            rows = np.clip(A, 0, None) if nonnegative else A
            assert abs(value - np.linalg.norm(rows, dual, axis=1).min()) < 1e-12
            assert abs(np.linalg.norm(w, mm.NORMS[norm]) - 1) < 1e-12
            binding = rows[np.linalg.norm(rows, dual, axis=1) < value + 1e-12]
            assert (np.abs(binding @ w - value) < 1e-12).any()  # w is best against a binding x
            assert value >= mm.solve(g, k, nonnegative, norm=norm)[1] - 1e-12  # weak duality


def test_by_norm_table():
    table = mm.by_norm({n: GRID[n] for n in ("Laplace tau=1", "power p=2")}, ks=(1,))
    assert len(table) == 3 * 2 * 2
    holds = (table.gain.abs() < 1e-9).groupby([table.norm, table.weights]).all()
    assert holds.to_dict() == {("l1", "signed"): True, ("l1", "w >= 0"): True, ("l2", "signed"): False,
                               ("l2", "w >= 0"): True, ("linf", "signed"): False, ("linf", "w >= 0"): True}
    assert (table["optimum is centre-only"] == (table.gain.abs() < 1e-9)).all()


# ---------------------------------------------------------------- decay and the centre weight


def test_snr_optimal_beta_against_a_grid():
    g = mm.laplace(2)
    betas = np.linspace(-0.5, 1, 1501)
    snr = [mm.worst_snr(g, mm.neighbour_filter(b)) for b in betas]
    assert abs(mm.snr_optimal_beta(g) - betas[int(np.argmax(snr))]) <= 1e-3


def test_trend():
    assert [mm.trend(v) for v in ([1, 2, 3], [3, 2, 1], [1, 1, 1], [1, 3, 2])] == [
        "rises", "falls", "constant", "not monotone"]


def test_faster_decay_and_the_centre_weight():
    table = mm.centre_weight_table(mm.decay_families())
    criteria = ["max-min, w >= 0", "max-min, signed, l2", "max-min, signed, linf", "worst-case SNR", "matched filter"]
    trends = table.groupby("family", sort=False)[["step ratio", *criteria]].agg(mm.trend)
    assert (trends["step ratio"] == "falls").all()  # each family is listed from slow to fast decay
    assert (trends["max-min, w >= 0"] == "constant").all() and (table["max-min, w >= 0"] == 1).all()
    assert (trends["max-min, signed, l2"] == "not monotone").all()
    assert (trends[["max-min, signed, linf", "worst-case SNR", "matched filter"]] == "rises").all(axis=None)
    # the L2 optimum's centre weight falls while b/|b| is optimal, 1/sqrt(1 + (1 - d1/d0)^2 / 2), then rises
    for _, rows in table.groupby("family", sort=False):
        closed = rows[rows["optimum b/|b|"]]
        assert rows["optimum b/|b|"].is_monotonic_decreasing and closed.size
        assert np.allclose(closed["max-min, signed, l2"], 1 / np.sqrt(1 + (1 - closed["step ratio"]) ** 2 / 2))
        assert len(closed) == 1 or mm.trend(closed["max-min, signed, l2"]) == "falls"
        assert mm.trend(rows.loc[~rows["optimum b/|b|"], "max-min, signed, l2"]) == "rises"


# ---------------------------------------------------------------- the variance


@pytest.mark.parametrize("k", [1, 2, 3])
def test_variance_closed_form_and_the_paper_formula(k):
    w = mm.weight_symbols(k)
    for x in [x for x in range(-3 * k, 3 * k + 1) if x]:
        var = mm.difference_variance(x, k)
        lagged = sum(w[i] * w[i + abs(x)] for i in range(len(w) - abs(x)))
        assert sympy.expand(var - 2 * mm.S**2 * (sum(v**2 for v in w) - lagged)) == 0
        if abs(x) > 2 * k:
            assert sympy.expand(var - 2 * mm.paper_variance(k)) == 0
        else:
            assert sympy.expand(var - mm.paper_variance(k)) != 0
        rng = np.random.default_rng(x + 10 * k)
        values = rng.normal(size=len(w))
        numeric = float(var.subs(dict(zip(w, values))).subs(mm.S, 0.7))
        assert abs(numeric - mm.variance(values, x, 0.7)) < 1e-12


def test_paper_variance_is_the_noise_of_the_competitor_window_alone():
    k, x = 2, 7  # disjoint windows: +w_j on eps_{x+j} (kept by the paper), -w_j on eps_j (dropped)
    c = mm.noise_coefficients(x, k)
    kept = [c[x + j] for j in range(-k, k + 1)]
    assert kept == [-c[j] for j in range(-k, k + 1)] == mm.weight_symbols(k) and len(c) == 2 * (2 * k + 1)
    assert sympy.expand(mm.S**2 * sum(v**2 for v in kept) - mm.paper_variance(k)) == 0


def test_which_weights_minimise_which_variance():
    k, n = 1, 3
    uniform = np.ones(n) / n
    rng = np.random.default_rng(0)
    others = rng.dirichlet(np.ones(n), 2000)  # sum 1, non-negative
    # far competitors, sum(w) = 1: uniform is the unique minimiser, 2 s^2 / (2k+1)
    assert abs(mm.variance(uniform, 5) - 2 / n) < 1e-12
    assert all(mm.variance(w, 5) > 2 / n for w in others)
    # unit L2 norm: the far variance is the constant 2 s^2 (from the noise coefficients, not `variance`)
    far = sympy.lambdify([mm.weight_symbols(k)], mm.difference_variance(5, k).subs(mm.S, 1))
    assert all(abs(far(w / np.linalg.norm(w)) - 2) < 1e-12 for w in others[:50])
    # nearest competitor, sum(w) = 1: (3, 4, 3) / 10 beats uniform
    assert mm.variance([0.3, 0.4, 0.3], 1) < mm.variance(uniform, 1) - 0.02
    assert abs(mm.variance([0.3, 0.4, 0.3], 1) - 0.2) < 1e-12
    # nearest competitor, unit norm: the sine filter (1, sqrt 2, 1) / 2 beats every other, uniform too
    sine = mm.neighbour_filter(1 / math.sqrt(2))
    assert abs(mm.variance(sine, 1) - 2 * (1 - math.cos(math.pi / 4))) < 1e-12
    assert all(mm.variance(w / np.linalg.norm(w), 1) >= mm.variance(sine, 1) - 1e-12
               for w in rng.normal(size=(2000, 3)))
    assert mm.variance(mm.neighbour_filter(1), 1) > mm.variance(sine, 1) + 0.08
    # non-negative weights: the worst competitor is any far one
    for w in others[:50]:
        assert max(mm.variance(w, x) for x in range(1, 6)) == pytest.approx(mm.variance(w, 5))


def test_monte_carlo_matches_mean_and_variance_but_not_the_paper():
    g, s, n = mm.laplace(1), 0.3, 100_000
    for x in (1, 2, 5):
        w = mm.neighbour_filter(0.5)
        d = mm.sample_gaps(g, w, x, s, n, seed=x)
        var = mm.variance(w, x, s)
        row = np.array([g(j) - g(x + j) for j in (-1, 0, 1)])
        assert abs(d.mean() - row @ w) < 5 * math.sqrt(var / n)
        se = var * math.sqrt(2 / (n - 1))
        assert abs(d.var(ddof=1) - var) < 5 * se
        assert abs(d.var(ddof=1) - s**2) > 20 * se  # the paper's s^2 sum w^2 = s^2


# ---------------------------------------------------------------- localisation under noise


def test_trade_off_along_the_neighbour_filters():
    g, step = mm.laplace(2), 0.1
    betas = np.round(np.arange(-0.3, 1 + step / 2, step), 10)
    filters = [mm.neighbour_filter(b) for b in betas]
    beta_e = mm.solve(g, 1)[0][0] / mm.solve(g, 1)[0][1]
    gap = [mm.worst_gap(g, w) for w in filters]
    snr = [mm.worst_snr(g, w) for w in filters]
    beta_snr = mm.snr_optimal_beta(g)
    beta_matched = g(1) / g(0)
    assert beta_e < 0 < beta_snr < beta_matched < 1
    assert abs(betas[np.argmax(gap)] - beta_e) <= step and abs(betas[np.argmax(snr)] - beta_snr) <= step
    assert abs(betas[np.argmin([mm.variance(w, 1) for w in filters])] - 1 / math.sqrt(2)) <= step
    assert abs(betas[np.argmax([w @ [g(-1), g(0), g(1)] for w in filters])] - beta_matched) <= step
    n = 20_000
    rates = mm.localisation_rate(g, filters, [0.25, 0.5], n=n, half_width=10)
    se = math.sqrt(2 * 0.25 / n)
    others = [list(betas).index(0.0), len(betas) - 1, int(np.abs(betas - beta_e).argmin())]
    for row in rates:
        assert all(row.max() > row[i] + 3 * se for i in others)
        assert beta_snr - step <= betas[row.argmax()] <= beta_matched + step


def test_localisation_rate_hand_cases():
    g = mm.laplace(1)
    # no noise: every filter with positive gaps localises perfectly
    assert (mm.localisation_rate(g, [[0, 1, 0], [1, 1, 1]], [1e-9], n=10) == 1).all()
    # huge noise: chance level 1 / (2 * half_width + 1) for the centre-only filter
    rate = mm.localisation_rate(g, [[0, 1, 0]], [1e6], n=40_000, half_width=4)[0, 0]
    assert abs(rate - 1 / 9) < 5 * math.sqrt(1 / 9 * 8 / 9 / 40_000)
