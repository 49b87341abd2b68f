"""Sections 4 and 5: Figure 3's placements, their robustness, 1-D localisation, Section 5's weights."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import sympy
from scipy import optimize, stats

from locolib import cohesion, minimax
from locolib import locate as L

# Figure 3 exactly as the paper's text prints it (tab separated), parsed independently.
FIGURE3_TEXT = """\
0	0	0	0	0	0	1	1	0	0	1	1	0	0	0	0
0	0	1	0	0	1	2	2	1	0	2	3	1	1	1	0
1	0	0	0	1	2	6	3	1	1	2	5	1	2	1	0
0	0	0	0	1	1	3	2	2	3	2	3	2	0	0	0
0	1	0	0	0	1	2	2	2	2	3	2	2	1	0	0
0	0	0	1	0	1	1	1	2	3	3	2	1	1	0	0"""
G = sympy.Rational
LAPLACE2 = minimax.laplace(2)
LEVELS = {"gaussian": (0.05, 0.25), "salt_pepper": (0.01,)}


# ----------------------------------------------------------------------------- Figure 3 map

def test_figure3_transcription():
    printed = np.array([[int(v) for v in line.split("\t")] for line in FIGURE3_TEXT.splitlines()])
    assert printed.shape == (6, 16)
    np.testing.assert_array_equal(L.FIGURE3_MAP, printed)
    np.testing.assert_array_equal(L.FIGURE3_MAP, np.array(cohesion.FIGURE3_INPUT))  # the other transcription
    assert L.FIGURE3_MAP[2, 6] == 6 and L.FIGURE3_MAP[2, 11] == 5
    assert L.FIGURE3_MAP.sum(axis=1).tolist() == [4, 15, 26, 19, 18, 16]  # counted by hand
    with pytest.raises(ValueError):
        L.FIGURE3_MAP[0, 0] = 1  # read-only constant


# ----------------------------------------------------------------------------- scores

def brute_window_sum(grid, k):
    h, w = grid.shape
    return np.array([[grid[i:i + k, j:j + k].sum() for j in range(w - k + 1)] for i in range(h - k + 1)])


def test_window_sum_against_loops():
    grid = np.random.default_rng(0).integers(0, 9, size=(7, 9))
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(L.window_sum(grid, k), brute_window_sum(grid, k))


def test_window_cohesion_equals_sympy_total_force_exactly_on_figure3():
    exact = L.window_cohesion(L.FIGURE3_MAP.astype(object))
    floats = L.window_cohesion(L.FIGURE3_MAP)
    for (i, j), value in np.ndenumerate(exact):
        expected = cohesion.total_force(L.FIGURE3_MAP[i:i + 3, j:j + 3].tolist(), 2)
        assert sympy.simplify(value - expected) == 0, (i, j)
        assert floats[i, j] == pytest.approx(float(expected), rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("k, q", [(2, 2), (3, 1), (3, 2), (3, 3), (4, 2), (3, G(1, 2))])
def test_window_cohesion_equals_sympy_total_force_on_random_maps(k, q):
    rng = np.random.default_rng(k * 10 + int(2 * q))
    grid = rng.integers(0, 7, size=(k + 2, k + 3))
    exact = L.window_cohesion(grid.astype(object), k, q)
    floats = L.window_cohesion(grid, k, float(q))
    for (i, j), value in np.ndenumerate(exact):
        expected = cohesion.total_force(grid[i:i + k, j:j + k].tolist(), q)
        assert sympy.simplify(value - expected) == 0
        assert floats[i, j] == pytest.approx(float(expected), rel=1e-12)
    # Fractions (no sympy in the values) are exact too for integer q
    if q == 2:
        frac = L.window_cohesion(np.vectorize(Fraction, otypes=[object])(grid), k, q)
        assert all(sympy.nsimplify(f) == sympy.nsimplify(e) for f, e in zip(frac.ravel(), exact.ravel()))


def test_cohesion_kernel_counts_each_pair_once():
    u = L.cohesion_kernel(3, 2)
    assert np.allclose(np.tril(u), 0) and u[0, 1] == 1 and u[0, 4] == 0.5 and u[0, 8] == 1 / 8
    ones = np.ones((3, 3))
    # 12 pairs at distance 1, 8 at sqrt2, 6 at 2, 8 at sqrt5, 2 at sqrt8
    assert L.window_cohesion(ones)[0, 0] == pytest.approx(12 + 8 / 2 + 6 / 4 + 8 / 5 + 2 / 8)
    with pytest.raises(ValueError):
        L.cohesion_kernel(3, 0)


# ----------------------------------------------------------------------------- placing pairs

def brute_best_pairs(grid, strategy, k=3):
    scores = L.window_scores(grid, strategy, k)
    pos = list(itertools.product(range(scores.shape[0]), range(scores.shape[1])))
    totals = {}
    for a, b in itertools.combinations(pos, 2):
        if abs(a[0] - b[0]) >= k or abs(a[1] - b[1]) >= k:  # no shared cell
            cells_a = {(a[0] + u, a[1] + v) for u in range(k) for v in range(k)}
            cells_b = {(b[0] + u, b[1] + v) for u in range(k) for v in range(k)}
            assert not cells_a & cells_b
            totals[(a, b)] = scores[a] + scores[b]
    best = max(totals.values())
    return best, {p for p, t in totals.items() if t >= best - 1e-9 * max(1, abs(best))}, len(totals)


def test_window_pairs_are_exactly_the_non_overlapping_ones():
    a, b = L.window_pairs((6, 16), 3)
    _, _, count = brute_best_pairs(L.FIGURE3_MAP, "sum")
    assert len(a) == count
    pos = L.window_positions((6, 16), 3)
    assert (np.abs(pos[a] - pos[b]) >= 3).any(axis=1).all() and (a < b).all()
    with pytest.raises(ValueError, match="no two non-overlapping"):
        L.window_pairs((3, 5), 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strategy", L.STRATEGIES)
def test_place_two_is_the_exhaustive_optimum(seed, strategy):
    grid = np.random.default_rng(seed).integers(0, 5, size=(6, 9))
    p = L.place_two(grid, strategy)
    best, ties, _ = brute_best_pairs(grid, strategy)
    assert p.score == pytest.approx(best) and set(p.ties) == ties and p.windows in ties


def test_figure3_placements():
    blue, red = L.figure3_placements()["sum"], L.figure3_placements()["cohesion"]
    # red (max cohesion): unique; one feature centred on the map's maximum 6 at (2, 6)
    assert red.unique and red.centres == ((2, 6), (4, 10))
    assert sympy.nsimplify(red.score) == G(10297, 40)
    assert red.score == pytest.approx(float(cohesion.total_force(L.FIGURE3_MAP[1:4, 5:8].tolist())
                                            + cohesion.total_force(L.FIGURE3_MAP[3:6, 9:12].tolist())))
    # blue (max sum): two tied optima with total 46
    assert blue.score == 46 and not blue.unique
    assert {tuple((r + 1, c + 1) for r, c in t) for t in blue.ties} == {((3, 7), (3, 10)), ((3, 7), (4, 10))}
    # the text: red features have large centres; blue puts the 6 at a window corner
    centre_value = lambda centres: sum(int(L.FIGURE3_MAP[c]) for c in centres)  # noqa: E731
    assert centre_value(red.centres) == 9
    assert all(centre_value(tuple((r + 1, c + 1) for r, c in t)) <= 5 for t in blue.ties)
    assert (2, 6) in {(r, c) for r, c in blue.windows}  # top-left corner of a blue window is the 6
    # the red pair through the second peak 5 at (2, 11) is only 4th
    ranked = L.ranked_pairs(L.FIGURE3_MAP, "cohesion", top=4)
    assert tuple(ranked.iloc[3][["centre 1", "centre 2"]]) == ((2, 6), (2, 11))
    assert ranked.total.iloc[3] == pytest.approx(249.25)


def test_greedy_agrees_for_cohesion_and_picks_a_tie_for_sum():
    assert L.place_two(L.FIGURE3_MAP, "cohesion", method="greedy").windows == \
        L.figure3_placements()["cohesion"].windows
    assert L.place_two(L.FIGURE3_MAP, "sum", method="greedy").windows in L.figure3_placements()["sum"].ties
    with pytest.raises(ValueError):
        L.place_two(L.FIGURE3_MAP, "sum", method="other")
    with pytest.raises(ValueError):
        L.place_two(L.FIGURE3_MAP, "max")  # type: ignore[arg-type]


def test_draw_placement_runs():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    L.draw_placement(ax, L.FIGURE3_MAP, L.figure3_placements()["cohesion"])
    assert len(ax.patches) == 2 and len(ax.texts) == 96
    plt.close(fig)


# ----------------------------------------------------------------------------- noise and robustness

def test_perturb():
    rng = np.random.default_rng(0)
    g = L.FIGURE3_MAP
    x = L.perturb(g, "gaussian", 0.5, 4000, rng)
    assert x.shape == (4000, 6, 16)
    assert abs((x - g).mean()) < 0.01 and (x - g).std() == pytest.approx(0.5, rel=0.01)
    assert (L.perturb(g, "gaussian", 3.0, 100, rng, nonnegative=True) >= 0).all()
    sp = L.perturb(g, "salt_pepper", 0.2, 4000, rng)
    changed = sp != g
    salt, pepper = (sp == 6) & (g != 6), (sp == 0) & (g != 0)
    # a replaced cell that already held 0 (or 6) looks unchanged: 0.1 * P(g == 0) etc.
    expected_changed = 0.1 * (g != 0).mean() + 0.1 * (g != 6).mean()
    assert changed.mean() == pytest.approx(expected_changed, rel=0.02)
    assert salt.mean() == pytest.approx(0.1 * (g != 6).mean(), rel=0.03)
    assert pepper.mean() == pytest.approx(0.1 * (g != 0).mean(), rel=0.03)
    for kind, level in [("gaussian", -1), ("salt_pepper", 1.5), ("speckle", 0.1)]:
        with pytest.raises(ValueError):
            L.perturb(g, kind, level, 1, rng)


def test_ties_are_broken_uniformly_at_random():
    rng = np.random.default_rng(0)
    values = np.tile([1.0, 3.0, 3.0, 2.0, 3.0], (30000, 1))
    picks = L._argmax_ties(values, rng, 1e-12)
    assert set(np.unique(picks)) == {1, 2, 4}
    assert np.bincount(picks, minlength=5)[[1, 2, 4]] / 30000 == pytest.approx([1 / 3] * 3, abs=0.015)
    assert (L._argmax_ties(values, None, 1e-12) == 1).all()


def test_shift_on_hand_made_cases():
    clean = np.array([[[2, 6], [4, 10]]], dtype=float)
    chosen = np.array([[[2, 6], [4, 10]], [[4, 10], [2, 6]], [[2, 7], [4, 10]], [[3, 6], [5, 10]]], dtype=float)
    np.testing.assert_allclose(L._shift(chosen, clean), [0, 0, 0.5, 1])
    two = np.array([[[0, 0], [0, 5]], [[0, 0], [1, 5]]], dtype=float)
    np.testing.assert_allclose(L._shift(np.array([[[1, 5], [0, 0]]], dtype=float), two), [0])


def test_without_noise_everything_is_kept():
    trials = L.robustness_trials(levels={"gaussian": (0.0,), "salt_pepper": (0.0,)}, n_trials=400)
    assert trials.kept.all() and (trials["shift"] == 0).all()
    agree = L.agreement_trials(trials).groupby("strategy").agree.mean()
    # the cohesion optimum is unique; the sum optimum is a tie, broken at random: agrees half the time
    assert agree["cohesion"] == 1 and 0.4 < agree["sum"] < 0.6


def test_proportion_ci_is_clopper_pearson():
    low, high = L.proportion_ci(7, 40, 0.95)
    assert low == pytest.approx(stats.beta.ppf(0.025, 7, 34)) and high == pytest.approx(stats.beta.ppf(0.975, 8, 33))
    assert L.proportion_ci(0, 10)[0] == 0 and L.proportion_ci(10, 10)[1] == 1


@pytest.fixture(scope="module")
def robustness():
    trials = L.robustness_trials(levels=LEVELS, n_trials=4000, seed=1)
    return trials, L.summarize_robustness(trials)


def test_summary_columns_and_cis(robustness):
    trials, summary = robustness
    assert len(summary) == 2 * 3 and (summary.n == 4000).all() and (summary.n_pairs == 2000).all()
    assert ((summary.ci_low <= summary.p_kept) & (summary.p_kept <= summary.ci_high)).all()
    assert ((summary.agree_low <= summary.p_agree) & (summary.p_agree <= summary.agree_high)).all()
    row = summary.query("noise == 'gaussian' and level == 0.25 and strategy == 'sum'").iloc[0]
    t = trials.query("noise == 'gaussian' and level == 0.25 and strategy == 'sum'")
    assert row.kept == t.kept.sum() and row.mean_shift == pytest.approx(t["shift"].mean())


def test_robustness_claims(robustness):
    """The chapter's claims: by 'kept' (either tied optimum counts) the sum placement is more
    robust; by agreement of independent noisy copies the cohesion placement is more stable at
    small Gaussian noise and under salt-and-pepper, the sum placement at moderate Gaussian noise."""
    trials, summary = robustness
    kept = L.paired_comparison(trials).set_index(["noise", "level"])
    assert kept.loc[("gaussian", 0.25), "p_sum_better"] < 1e-6
    assert (kept.p_cohesion_better > 0.05).all()
    agree = L.paired_comparison(L.agreement_trials(trials), metric="agree").set_index(["noise", "level"])
    assert agree.loc[("gaussian", 0.05), "p_cohesion_better"] < 1e-6
    assert agree.loc[("salt_pepper", 0.01), "p_cohesion_better"] < 1e-6
    assert agree.loc[("gaussian", 0.25), "p_sum_better"] < 0.01


def test_paired_comparison_counts_discordant_trials():
    import pandas as pd

    t = pd.DataFrame({"noise": "gaussian", "level": 1.0, "trial": [0, 1, 2, 3] * 2,
                      "strategy": ["cohesion"] * 4 + ["sum"] * 4,
                      "kept": [True, True, False, False, True, False, False, True]})
    row = L.paired_comparison(t).iloc[0]
    assert row.only_cohesion == 1 and row.only_sum == 1 and row.p_cohesion_better == pytest.approx(0.75)


# ----------------------------------------------------------------------------- Section 4.2 in 1-D

def test_table1_gaussian_is_the_outer_product_of_the_1d_filter():
    g1 = np.array(L.FILTERS_1D["Gaussian (Table 1)"])
    table1 = np.array([[.06, .12, .06], [.12, .25, .12], [.06, .12, .06]])
    assert np.abs(np.outer(g1, g1) - table1).max() <= 0.0051


def test_filter_bank_and_minimax_filters():
    bank = L.filter_bank(LAPLACE2)
    assert all(np.linalg.norm(w) == pytest.approx(1) for w in bank.values())
    # non-negative minimax-optimal = centre-only (Theorem 2's w_{+-1} = 0), for k = 1 and 2
    np.testing.assert_allclose(bank["minimax k=1 w>=0"], [0, 1, 0], atol=1e-9)
    np.testing.assert_allclose(bank["minimax k=2 w>=0"], [0, 0, 1, 0, 0], atol=1e-9)
    # signed minimax-optimal filters are sharpening filters: negative off-centre weights
    for k in (1, 2):
        w = bank[f"minimax k={k} signed"]
        assert w[k] > 0 and (np.delete(w, k) < -0.05).all()
    merged = L.merge_identical(bank)
    assert "centre-only = minimax k=1 w>=0 = minimax k=2 w>=0" in merged and len(merged) == len(bank) - 2
    with pytest.raises(ValueError):
        L.unit([1.0, 1.0])


def test_noiseless_line_is_located_exactly():
    bank = L.filter_bank(LAPLACE2)
    x = L.locate_1d(LAPLACE2, bank, [0.0], n_trials=3)
    assert (x == 0).all()


@pytest.mark.parametrize("s", [0.1, 0.3, 1.0])
def test_centre_only_simulation_matches_the_integral(s):
    n = 40000
    x = L.locate_1d(LAPLACE2, {"centre": [0, 1, 0]}, [s], n_trials=n, half_width=10, seed=3)
    p = (x[0, 0] == 0).mean()
    exact = L.centre_only_p_correct(LAPLACE2, s, half_width=10)
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / n) + 1e-4


def test_agrees_with_the_minimax_modules_independent_simulation():
    filters = {"gauss": (0.25, 0.5, 0.25), "uniform": (1, 1, 1), "sharp": (-1, 3, -1)}
    s_values = [0.2, 0.5]
    n = 20000
    mine = (L.locate_1d(LAPLACE2, filters, s_values, n, half_width=12, seed=5) == 0).mean(axis=-1)
    theirs = minimax.localisation_rate(LAPLACE2, list(filters.values()), s_values, n, half_width=12, seed=6)
    assert np.abs(mine - theirs).max() < 4 * np.sqrt(0.25 * 2 / n)


@pytest.fixture(scope="module")
def line():
    bank = L.merge_identical(L.filter_bank(LAPLACE2))
    levels = [0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
    x = L.locate_1d(LAPLACE2, bank, levels, n_trials=20000, seed=0)
    return bank, levels, x


def test_localisation_table(line):
    bank, levels, x = line
    table = L.localisation_table(x, list(bank), levels)
    assert len(table) == len(bank) * len(levels)
    assert ((table.ci_low <= table.p_wrong) & (table.p_wrong <= table.ci_high)).all()
    # more noise, more errors (each filter)
    for _, t in table.groupby("filter"):
        assert t.sort_values("s").p_wrong.is_monotonic_increasing


def test_localisation_claims(line):
    bank, levels, x = line
    names = list(bank)
    centre = next(n for n in names if n.startswith("centre-only"))
    table = L.localisation_table(x, names, levels).set_index(["s", "filter"])
    # low noise: equal weights are worst
    low = table.loc[0.1].p_wrong
    assert low.idxmax() == "uniform" and low["uniform"] > 3 * low.drop("uniform").max()
    # high noise: uniform beats centre-only in mean |error|
    for s in (0.5, 1.0, 2.0):
        c = L.compare_filters(x, names, levels, "uniform", centre).set_index("s").loc[s]
        assert c.abs_error_diff < 0 and c.p_a_smaller_abs_error < 1e-3, s
    # Table 1's Gaussian has the fewest errors at s in [0.2, 1]
    for s in (0.2, 0.3, 0.5, 1.0):
        assert table.loc[s].p_wrong.idxmin() == "Gaussian (Table 1)"
        for other in names:
            if other != "Gaussian (Table 1)":
                c = L.compare_filters(x, names, levels, "Gaussian (Table 1)", other).set_index("s").loc[s]
                assert c.p_a_fewer_errors < 1e-3, (s, other)
    # the signed minimax-optimal filters err more often than centre-only for s >= 0.2
    for k in (1, 2):
        c = L.compare_filters(x, names, levels, centre, f"minimax k={k} signed").set_index("s")
        assert (c.loc[0.2:, "p_a_fewer_errors"] < 1e-3).all()


# ----------------------------------------------------------------------------- Section 5

def test_strength_weights_are_the_minimiser():
    m = np.array([4.0, 1.0, 1.0, 1.0, 4.0])
    l = lambda j: 2.0 ** -abs(j)  # noqa: E731
    w = L.strength_weights(m, l)
    np.testing.assert_allclose(w, [1, 0.5, 1, 0.5, 1])
    np.testing.assert_allclose(L.strength_weights(np.ones(5), l), [0.25, 0.5, 1, 0.5, 0.25])
    for p in (1, 2, 3):  # the objective's minimiser, found without the formula w = m l
        rng = np.random.default_rng(p)
        res = optimize.minimize(L.alignment_loss, rng.normal(size=5), args=(m, l, p),
                                method="Powell", options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 20000})
        np.testing.assert_allclose(res.x, w, atol=1e-4)
    # equal sub-features: the weights fall off from the centre only if their strength is positive
    negative = L.strength_weights(-np.ones(5), l)
    assert negative.argmin() == 2 and (np.diff(negative[2:]) > 0).all() and (np.diff(negative[:3]) < 0).all()
    with pytest.raises(ValueError):
        L.strength_weights([1, 2], l)
    with pytest.raises(ValueError):
        L.alignment_loss(w, m, l, p=0.5)
