"""Section 7.1: Eq. 7.1's m(I, I'), its t-test, stars, halves and Table 4 rows."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from locolib import kernels as K
from locolib import locality as lo
from locolib.kernels import weight_stats

CENTRE, NEIGHBOURS, CORNERS = [(1, 1)], [(0, 1), (1, 0), (1, 2), (2, 1)], [(0, 0), (0, 2), (2, 0), (2, 2)]


def loop_m(layers, inner, outer, absolute=False):
    """Eq. 7.1 by plain loops over layers and matrices (population std, mean over all matrices)."""
    total, count = 0.0, 0
    for layer in layers:
        a = np.asarray(layer, dtype=float)
        k = a.shape[-1]
        mats = a.reshape(-1, k, k)
        s = []
        for w in mats:
            w = np.abs(w) if absolute else w
            s.append(sum(w[p] for p in inner) / len(inner) - sum(w[p] for p in outer) / len(outer))
        mean = sum(s) / len(s)
        sigma = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s))
        total += sum(x / sigma for x in s)
        count += len(s)
    return total / count


def random_layers(seed, sizes=((16, 3), (32, 16), (8, 32)), k=3, centre_boost=0.0):
    rng = np.random.default_rng(seed)
    layers = []
    for out, inp in sizes:
        w = rng.normal(size=(out, inp, k, k))
        w[..., k // 2, k // 2] += centre_boost
        layers.append(w)
    return layers


def rotationally_symmetric(seed, n=4000):
    """Kernels whose every ring is constant: values per ring i.i.d. with the same distribution."""
    rng = np.random.default_rng(seed)
    c, e, d = rng.normal(size=(3, n))
    w = np.empty((n, 3, 3))
    w[:, 1, 1] = c
    for p in NEIGHBOURS:
        w[(slice(None), *p)] = e
    for p in CORNERS:
        w[(slice(None), *p)] = d
    return w


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("absolute", [False, True])
def test_m_score_matches_loops(seed, absolute):
    layers = random_layers(seed, centre_boost=0.3)
    for inner, outer, i_set, o_set in [("c", "n", CENTRE, NEIGHBOURS), ("n", "co", NEIGHBOURS, CORNERS),
                                       ("c", "co", CENTRE, CORNERS)]:
        expected = loop_m(layers, i_set, o_set, absolute)
        assert lo.m_score(layers, inner, outer, absolute) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        # explicit index sets give the same
        assert lo.m_score(layers, i_set, o_set, absolute) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_m_score_5x5_rings_match_loops():
    layers = random_layers(3, k=5, centre_boost=0.5)
    r = K.rings(5)
    for inner, outer in [("c", "n"), ("n", "co"), ("co", "2"), ("2", "sqrt5"), ("sqrt5", "sqrt8")]:
        assert lo.m_score(layers, inner, outer) == pytest.approx(loop_m(layers, r[inner], r[outer]), rel=1e-12)


def test_literal_denominator_reading():
    layers = random_layers(4, centre_boost=0.5)
    z = lo.standardized_differences(layers, "c", "n")
    sizes = [a.size for a in z]
    assert sizes == [16 * 3, 32 * 16, 8 * 32]
    total = sum(a.sum() for a in z)
    assert lo.m_score(layers, "c", "n") == pytest.approx(total / sum(sizes))
    assert lo.m_score_literal(layers, "c", "n") == pytest.approx(total / sum(s * s for s in sizes))
    # with one layer the two readings differ by exactly |W_l|
    one = layers[1:2]
    assert lo.m_score(one, "c", "n") == pytest.approx(lo.m_score_literal(one, "c", "n") * 512)


def test_standardised_differences_have_unit_population_std_per_layer():
    for z in lo.standardized_differences(random_layers(5), "c", "n"):
        assert z.std(ddof=0) == pytest.approx(1.0)


def test_centre_heavy_template_gives_large_positive():
    rng = np.random.default_rng(6)
    template = np.array([[0.1, 0.5, 0.1], [0.5, 2.0, 0.5], [0.1, 0.5, 0.1]])
    layers = [template * rng.uniform(0.5, 2, size=(n, 1, 1)) + 0.1 * rng.normal(size=(n, 3, 3))
              for n in (200, 300)]
    # s(c, n) = 1.5 a + noise with a ~ U(0.5, 2): E/sd = 1.875 / sqrt(2.25 * 1.5^2 / 12 + 0.0125)
    expected_cn = 1.875 / math.sqrt(2.25 * 1.5**2 / 12 + 0.01 + 0.01 / 4)
    expected_nco = 0.5 / math.sqrt(0.16 * 1.5**2 / 12 + 0.01 / 4 + 0.01 / 4)
    assert lo.m_score(layers, "c", "n") == pytest.approx(expected_cn, abs=0.15)
    assert lo.m_score(layers, "n", "co") == pytest.approx(expected_nco, abs=0.15)
    res = lo.locality_test(layers, "c", "n")
    assert res.p < 1e-100 and res.stars == "***" and res.n == 500 and res.n_layers == 2


def test_rotationally_symmetric_random_is_near_zero():
    w = rotationally_symmetric(7)
    for inner, outer in [("c", "n"), ("n", "co")]:
        m = lo.m_score([w[:2000], w[2000:]], inner, outer)
        assert abs(m) < 4 / math.sqrt(4000), m  # s/sigma has unit variance: |mean| ~ 1/sqrt(n)
        assert lo.locality_test([w], inner, outer).p > 1e-3


def test_sign_flip_flips_sign_and_scale_invariance_per_layer():
    layers = random_layers(8, centre_boost=0.2)
    m = lo.m_score(layers, "c", "n")
    assert lo.m_score([-a for a in layers], "c", "n") == pytest.approx(-m)
    # swapping the index sets flips the sign too
    assert lo.m_score(layers, "n", "c") == pytest.approx(-m)
    scaled = [a * f for a, f in zip(layers, (1e-20, 7.0, 250.0))]
    assert lo.m_score(scaled, "c", "n") == pytest.approx(m, rel=1e-10)
    # adding a constant to every weight changes no difference of means
    assert lo.m_score([a + 3.0 for a in layers], "c", "n") == pytest.approx(m, rel=1e-10)


def test_absolute_versus_signed_with_negative_centres():
    rng = np.random.default_rng(9)
    w = 0.1 * rng.normal(size=(500, 3, 3))
    w[:, 1, 1] += rng.choice([-2.0, 2.0], size=500) * rng.uniform(0.8, 1.2, size=500)
    signed, absolute = lo.m_score([w], "c", "n"), lo.m_score([w], "c", "n", absolute=True)
    assert abs(signed) < 0.2 and absolute > 3
    assert absolute == pytest.approx(loop_m([w], CENTRE, NEIGHBOURS, absolute=True))


def test_numpy_and_torch_and_leading_dims_agree():
    layers = random_layers(10, centre_boost=0.4)
    m = lo.m_score(layers, "c", "n")
    torch_layers = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in layers]
    assert lo.m_score(torch_layers, "c", "n") == pytest.approx(m, rel=1e-12)
    assert lo.m_score([torch.tensor(a, dtype=torch.float32) for a in layers], "c", "n") == pytest.approx(m, rel=1e-5)
    flat = [a.reshape(-1, 3, 3) for a in layers]
    deep = [a.reshape(2, -1, 1, 3, 3) for a in layers]
    assert lo.m_score(flat, "c", "n") == pytest.approx(m, rel=1e-12)
    assert lo.m_score(deep, "c", "n") == pytest.approx(m, rel=1e-12)
    assert lo.m_score((a.tolist() for a in layers), "c", "n") == pytest.approx(m, rel=1e-12)


def test_spatial_kernels_of_a_torch_model_go_into_m_score():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 4, 5))
    kernels = K.spatial_kernels(model, 3)
    assert [tuple(t.shape) for t in kernels] == [(8, 3, 3, 3), (8, 1, 3, 3)]
    assert [tuple(t.shape) for t in K.spatial_kernels(model, k=5)] == [(4, 8, 5, 5)]
    assert np.isfinite(lo.m_score(kernels, "c", "n"))


@pytest.mark.parametrize("bad, match", [
    ([np.zeros((4, 3, 2))], "square"),
    ([np.zeros((4, 4, 4))], "odd"),
    ([np.ones((4, 3, 3))], "zero standard deviation"),
    ([np.ones((1, 3, 3))], "zero standard deviation"),
    ([], "no layers"),
    ([np.zeros((0, 3, 3))], "no matrices"),
    ([np.random.default_rng(0).normal(size=(5, 3, 3)), np.random.default_rng(0).normal(size=(5, 5, 5))], "share k"),
    ([np.array([[[np.nan, 0, 0], [0, 0, 0], [0, 0, 0]]] * 2)], "NaN"),
])
def test_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        lo.m_score(bad, "c", "n")


def test_clear_errors_for_names_and_single_arrays():
    w = np.random.default_rng(0).normal(size=(10, 3, 3))
    with pytest.raises(ValueError, match="no ring"):
        lo.m_score([w], "c", "2")
    with pytest.raises(ValueError, match="unknown index set"):
        lo.m_score([w], "centre-ish", "n")
    with pytest.raises(ValueError, match="not a .row, col. index"):
        lo.m_score([w], [(3, 0)], "n")
    with pytest.raises(TypeError, match="sequence of layers"):
        lo.m_score(w, "c", "n")
    with pytest.raises(ValueError, match="at least 2 layers"):
        lo.split_halves([w])


def test_t_test_against_scipy_and_by_hand():
    layers = random_layers(11, centre_boost=0.05)
    res = lo.locality_test(layers, "c", "n")
    z = np.concatenate(lo.standardized_differences(layers, "c", "n"))
    t = z.mean() / (z.std(ddof=1) / math.sqrt(z.size))
    assert res.t == pytest.approx(t)
    assert res.p == pytest.approx(stats.t.sf(t, z.size - 1))
    assert res.p_two_sided == pytest.approx(2 * stats.t.sf(abs(t), z.size - 1))
    assert res.m == pytest.approx(lo.m_score(layers, "c", "n")) and res.n == z.size


def test_one_sided_test_never_stars_a_negative_mean():
    layers = random_layers(12, centre_boost=-0.5)
    res = lo.locality_test(layers, "c", "n")
    assert res.m < -0.3 and res.p > 0.999 and res.stars == ""
    assert res.p_two_sided < 1e-10  # significant only two-sided, as Table 4's negative *** cells


@pytest.mark.parametrize("p, code", [(0.0, "***"), (0.00099, "***"), (0.001, "**"), (0.0099, "**"),
                                     (0.01, "*"), (0.05, "*"), (0.0999, "*"), (0.1, ""), (0.7, "")])
def test_stars_use_the_papers_levels(p, code):
    assert K.stars(p) == code


def test_split_halves():
    layers = list(range(7))
    assert lo.split_halves(layers) == ([0, 1, 2], [3, 4, 5, 6])
    assert lo.split_halves(layers, middle="lower") == ([0, 1, 2, 3], [4, 5, 6])
    assert lo.split_halves(list(range(6))) == ([0, 1, 2], [3, 4, 5])
    assert lo.split_halves(list(range(6)), middle="lower") == ([0, 1, 2], [3, 4, 5])


def test_table4_row_and_format():
    lower = [a for a in random_layers(13, centre_boost=1.0)]
    upper = [a for a in random_layers(14, centre_boost=0.0)]
    layers = lower + upper
    tidy = lo.table4_row(layers, model="toy")
    assert len(tidy) == 2 * 3 * 2
    cell = tidy.query("part == 'lower' and pair == 'm(c,n)' and not absolute").iloc[0]
    assert cell.m == pytest.approx(lo.m_score(lower, "c", "n")) and cell.stars == "***"
    assert tidy.query("part == 'upper' and pair == 'm(c,n)' and not absolute").m.abs().iloc[0] < 0.15
    allrow = tidy.query("part == 'all' and pair == 'm(n,co)' and absolute").iloc[0]
    assert allrow.m == pytest.approx(lo.m_score(layers, "n", "co", absolute=True))
    wide = lo.format_table4(tidy)
    assert list(wide.columns) == [(p, q) for p in ("all", "lower", "upper") for q in ("m(c,n)", "m(n,co)")]
    assert wide.shape == (2, 6)
    assert wide.loc[("toy", False), ("lower", "m(c,n)")] == f"{cell.m:.3f}***"


def test_paper_table4_transcription():
    t = lo.paper_table4()
    assert len(t) == 9 * 6
    vgg = t.query("model == 'VGG16'").set_index(["part", "pair"]).m
    assert vgg[("all", "m(c,n)")] == 0.118 and vgg[("upper", "m(n,co)")] == 0.042
    # the paper's magnitudes: the "mean over observations" reading, 0.005 .. 1.093
    assert t.m.abs().between(0.005, 1.1).all()
    # its starred negative values cannot come from the one-sided test it describes
    assert (t.query("m < 0").stars != "").sum() == 9


def test_docstrings():
    assert doctest.testmod(lo).failed == 0


# ----------------------------------------------------------------------------- one path: kernels and records

class Stack(nn.Module):
    """Plain conv stack whose kernels are set by hand (weight_stats only needs spatial convs)."""

    def __init__(self, kernels):
        super().__init__()
        self.convs = nn.ModuleList()
        for w in kernels:
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.as_tensor(w))
            self.convs.append(conv)


def random_kernels(seed, k=3, sizes=((8, 3), (16, 8), (16, 16), (4, 16), (12, 4)), boost=0.2):
    rng = np.random.default_rng(seed)
    out = []
    for o, i in sizes:
        w = rng.normal(size=(o, i, k, k))
        w[..., k // 2, k // 2] += boost * (1 + rng.random())
        out.append(w.astype(np.float32))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [3, 5])
def test_locality_test_of_records_equals_the_test_on_kernels(seed, k):
    kernels = random_kernels(seed, k)
    stats = weight_stats(Stack(kernels))
    layers = [torch.as_tensor(w).double() for w in kernels]
    names = list(K.rings(k))
    for inner, outer in zip(names, names[1:]):
        for absolute in (False, True):
            want = lo.locality_test(layers, inner, outer, absolute)
            got = lo.locality_test(stats, inner, outer, absolute)
            assert got.n == want.n and got.n_layers == want.n_layers
            assert got.m == pytest.approx(want.m, rel=1e-9, abs=1e-12)
            assert got.t == pytest.approx(want.t, rel=1e-8)
            assert got.p == pytest.approx(want.p, rel=1e-6, abs=1e-300)
            assert got.p_two_sided == pytest.approx(want.p_two_sided, rel=1e-6, abs=1e-300)


def test_table4_row_of_records_equals_table4_row_of_kernels():
    kernels = random_kernels(3)
    want = lo.table4_row([torch.as_tensor(w) for w in kernels], "net")
    got = lo.table4_row(weight_stats(Stack(kernels)), "net")
    assert list(got.columns) == list(want.columns)
    assert (got[["model", "absolute", "part", "pair", "stars", "n", "n_layers"]]
            .equals(want[["model", "absolute", "part", "pair", "stars", "n", "n_layers"]]))
    np.testing.assert_allclose(got["m"], want["m"], rtol=1e-9)
    np.testing.assert_allclose(got["p"], want["p"], rtol=1e-6, atol=1e-300)


def test_table4_row_of_records_selects_a_kernel_size_and_rejects_other_pairs():
    stats = weight_stats(Stack(random_kernels(0, 5)[:3] + random_kernels(0, 3)[:2]))
    with pytest.raises(ValueError, match="pass k"):
        lo.table4_row(stats)
    row5 = lo.table4_row(stats, k=5, pairs=[("co", "2"), ("sqrt5", "sqrt8")])
    assert set(row5["n_layers"][row5["part"] == "all"]) == {3}
    row3 = lo.table4_row(stats, k=3)
    assert set(row3["n_layers"][row3["part"] == "all"]) == {2}
    with pytest.raises(ValueError, match="consecutive"):
        lo.locality_test(stats[:3], "c", "co")
    with pytest.raises(ValueError, match="share k"):
        lo.locality_test(stats, "c", "n")
    assert lo.ring_pair_index("c", "n", 3) == 0 and lo.ring_pair_index("sqrt5", "sqrt8", 5) == 4


def test_stats_with_zero_spread_cannot_be_standardised():
    w = np.ones((4, 2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="zero spread"):
        lo.locality_test(weight_stats(Stack([w])), "c", "n")


def test_table4_runs_pools_the_halves_of_each_run():
    runs = [random_kernels(s) for s in (4, 5, 6)]
    stats = [weight_stats(Stack(r)) for r in runs]
    got = lo.table4_runs(stats, "net")
    # independent: pool each run's halves as separate layers and run the kernel-based test
    for part in ("all", "lower", "upper"):
        layers = []
        for r in runs:
            lower, upper = lo.split_halves([torch.as_tensor(w).double() for w in r])
            layers += {"all": lower + upper, "lower": lower, "upper": upper}[part]
        for inner, outer in lo.TABLE4_PAIRS:
            for absolute in (False, True):
                want = lo.locality_test(layers, inner, outer, absolute)
                row = got[(got.part == part) & (got.pair == f"m({inner},{outer})")
                          & (got.absolute == absolute)].iloc[0]
                assert row.m == pytest.approx(want.m, rel=1e-9)
                assert row.p == pytest.approx(want.p, rel=1e-6, abs=1e-300)
                assert row.n == want.n and row.n_layers == len(layers)
    one = lo.table4_runs(stats[:1], "net")
    pd_cols = ["m", "p", "n"]
    np.testing.assert_allclose(one[pd_cols].to_numpy(float),
                               lo.table4_row(stats[0], "net")[pd_cols].to_numpy(float))


def test_random_signs_hide_centre_heavy_magnitudes_from_the_signed_test():
    """The logic behind chapter 07's signed-vs-magnitude finding, on hand-made kernels: magnitudes
    fall from the centre outwards, signs are random (a filter and its negative are equally good).
    The signed test sees nothing, the magnitude test sees the ordering, from kernels and records."""
    rng = np.random.default_rng(7)
    profile = np.array([[0.6, 0.8, 0.6], [0.8, 1.0, 0.8], [0.6, 0.8, 0.6]])
    layers = []
    for o, i in ((32, 16), (32, 32)):
        magnitude = profile * rng.lognormal(0.0, 0.3, size=(o, i, 3, 3))
        layers.append((rng.choice([-1.0, 1.0], size=(o, i, 3, 3)) * magnitude).astype(np.float32))
    stats = weight_stats(Stack(layers))
    for inner, outer in lo.TABLE4_PAIRS:
        signed = lo.locality_test(stats, inner, outer, absolute=False)
        magn = lo.locality_test(stats, inner, outer, absolute=True)
        assert abs(signed.m) < 0.1 and signed.p_two_sided > 0.01
        assert magn.m > 0.3 and magn.p < 1e-10
        assert magn.m == pytest.approx(lo.m_score(layers, inner, outer, absolute=True), rel=1e-6)


def test_a_model_and_its_record_give_the_same_table4():
    """One path: a model's kernels and the weight_stats its training record keeps reduce to the
    same per-layer sums, so every cell (number, stars, test) comes out the same."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 24, 1),
                          nn.Conv2d(24, 24, 3), nn.Conv2d(24, 8, 3))
    from_model = lo.table4_row(K.spatial_kernels(model), "net")
    from_record = lo.table4_row(weight_stats(model), "net")
    assert lo.format_table4(from_model).equals(lo.format_table4(from_record))
    for col in ("m", "t", "p", "p_two_sided"):
        np.testing.assert_allclose(from_record[col], from_model[col], rtol=1e-9, atol=1e-300)
    # a layer may come either way within one call
    mixed = lo.locality_test([K.spatial_kernels(model)[0], *weight_stats(model)[1:]], "c", "n")
    assert mixed.m == pytest.approx(from_model.m.iloc[0], rel=1e-12)


# ----------------------------------------------------------------------------- permutation test

def test_permutation_test_finds_centre_heavy_kernels_at_its_resolution():
    layers = random_layers(20, sizes=((32, 8), (16, 32)), centre_boost=1.0)
    r = lo.permutation_test(layers, "c", "n", n_permutations=199, seed=0)
    assert r.m == pytest.approx(lo.m_score(layers, "c", "n"))
    assert r.p == pytest.approx(1 / 200) and r.p_two_sided == pytest.approx(2 / 200)
    assert abs(r.null_mean) < 4 / math.sqrt(32 * 8 + 16 * 32) and r.null_sd < 0.1
    again = lo.permutation_test(layers, "c", "n", n_permutations=199, seed=0)
    assert again == r, "seeded: the same draws give the same answer"
    negative = lo.permutation_test([-a for a in layers], "c", "n", n_permutations=199, seed=1)
    assert negative.p == 1.0 and negative.p_two_sided == pytest.approx(2 / 200)


def test_permutation_test_is_calibrated_under_its_null():
    """Kernels with exchangeable taps (i.i.d., heavy-tailed): the p-values are about uniform."""
    rng = np.random.default_rng(21)
    ps = []
    for _ in range(60):
        layers = [rng.standard_t(2, size=(24, 3, 3)), rng.standard_t(2, size=(12, 3, 3))]
        ps.append(lo.permutation_test(layers, "n", "co", absolute=True, n_permutations=99,
                                      seed=int(rng.integers(1 << 30))).p)
    ps = np.array(ps)
    assert 0.01 < (ps <= 0.1).mean() < 0.25 and 0.35 < (ps <= 0.5).mean() < 0.65


def test_enumerated_and_shuffled_draws_agree(monkeypatch):
    """3 x 3 kernels use the table of the 630 ways to deal taps to (c, n, co); forcing the plain
    shuffle of all taps must give the same null distribution."""
    layers = random_layers(22, sizes=((40, 10),), centre_boost=0.05)
    table = lo.permutation_test(layers, "c", "n", n_permutations=400, seed=3)
    monkeypatch.setattr(lo, "_TABLE_LIMIT", 0)
    shuffled = lo.permutation_test(layers, "c", "n", n_permutations=400, seed=3)
    assert table.m == shuffled.m
    assert shuffled.null_mean == pytest.approx(table.null_mean, abs=3 * table.null_sd / 10)
    assert shuffled.null_sd == pytest.approx(table.null_sd, rel=0.15)
    assert abs(shuffled.p - table.p) < 0.1


def test_table4_row_with_permutations():
    layers = random_layers(23, sizes=((16, 8), (16, 16), (8, 16)), k=5, centre_boost=1.0)
    tidy = lo.table4_row(layers, "toy", pairs=[("c", "n"), ("sqrt5", "sqrt8")], permutations=99, seed=0)
    assert {"p_perm", "p_perm_two_sided", "stars_perm"} <= set(tidy.columns)
    centre = tidy[tidy.pair == "m(c,n)"]
    assert np.allclose(centre.p_perm, 0.01) and (centre.stars_perm == "*").all()
    assert (tidy[tidy.pair == "m(sqrt5,sqrt8)"].p_perm > 0.01).all()
    wide = lo.format_table4(tidy, stars_column="stars_perm")
    assert wide.loc[("toy", False), ("all", "m(c,n)")].endswith("*")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    with pytest.raises(TypeError, match="needs kernels"):
        lo.table4_row(weight_stats(model), permutations=9)
    with pytest.raises(ValueError, match="n_permutations"):
        lo.permutation_test(layers, "c", "n", n_permutations=0)


# ----------------------------------------------------------------------------- chapter 07's helpers

def fake_record(seed, network="vgg13", regularizer="l2", k=3, boost=0.5, error=0.1):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, k), nn.Conv2d(8, 8, k), nn.Conv2d(8, 16, k), nn.Conv2d(16, 16, k)]
    with torch.no_grad():
        for conv in layers:
            conv.weight[..., k // 2, k // 2] += boost * conv.weight.abs().mean()
    return {"config": {"dataset": "digits", "network": network, "regularizer": regularizer, "seed": seed},
            "final": {"test_error": error}, "weight_stats": weight_stats(nn.Sequential(*layers))}


def test_table4_of_records_pools_each_arm_and_tests_each_run():
    records = [fake_record(s, regularizer=reg)
               for s in range(3) for reg in ("l2", "loco")]
    pooled, per_run = lo.table4_of_records(records)
    assert set(pooled.model) == {"digits VGG13 (Table 3) L2", "digits VGG13 (Table 3) LOCO"}
    assert (pooled.runs == 3).all() and len(per_run) == 6 * 12
    l2 = [r["weight_stats"] for r in records if r["config"]["regularizer"] == "l2"]
    want = lo.table4_runs(l2, "x")
    got = pooled[pooled.regularizer == "l2"].reset_index(drop=True)
    np.testing.assert_allclose(got.m, want.m)
    counts = lo.significant_runs(per_run)
    assert counts.loc[("vgg13", "l2", False), ("all", "m(c,n)")] == "3/3"
    assert counts.shape == (4, 6)


def test_ring_pairs_per_run_and_their_counts():
    records = [fake_record(s, k=5, error=0.25) for s in range(2)]
    rows = lo.ring_pairs_per_run(records, k=5)
    assert len(rows) == 2 * 2 * 5 and set(rows["test error %"]) == {25.0}
    first = rows[(rows.seed == 0) & rows.absolute & (rows.pair == "m(c,n)")].iloc[0]
    assert first.m == pytest.approx(lo.locality_test(records[0]["weight_stats"], "c", "n", True).m)
    count = lo.count_ring_pairs(rows)
    assert count.loc[(False, "m(c,n)"), "positive_p_01"] == 2 and count.loc[(False, "m(c,n)"), "runs"] == 2
    assert count.loc[(True, "m(co,2)"), "paper (CIFAR-100, 20 runs)"] == "14/20 > 0 (p < .01)"


def test_side_by_side_and_upper_exceeds_lower():
    tidy = lo.table4_row(random_layers(30, centre_boost=0.5), "toy")
    side = lo.side_by_side([("ours: ", tidy[tidy.absolute]), ("ours: ", tidy[~tidy.absolute])])
    assert list(side.index[-2:]) == ["ours: toy (|w|)", "ours: toy (signed)"]
    assert side.shape == (9 + 2, 6) and side.loc["paper: ImageNet VGG16", ("all", "m(c,n)")] == "0.118***"
    assert side.loc["ours: toy (signed)", ("all", "m(c,n)")] == lo.format_table4(tidy).iloc[0, 0]
    paper = lo.paper_table4()
    assert lo.upper_exceeds_lower(paper[paper.dataset == "CIFAR-100"], by="model") == {
        "VGG13 (Table 3)": True, "ResNet18": True, "MobileNet (Table 3)": False}


def _centre_heavy(rng, n, centre=2.0, edge=1.0, corner=1.0):
    taps = np.array([[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]])
    return taps * rng.choice([-1.0, 1.0], size=(n, 3, 3)) * rng.uniform(0.9, 1.1, size=(n, 3, 3))


def test_magnitude_ratios_from_kernels_and_from_records_agree():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(4, 6, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(_centre_heavy(rng, 24, 2.0, 1.5, 1.0).reshape(6, 4, 3, 3)))
    model = nn.Sequential(conv)
    from_kernels = lo.magnitude_ratios([conv.weight])
    from_record = lo.magnitude_ratios(weight_stats(model))
    assert np.allclose(from_kernels[["c/n", "n/co"]], from_record[["c/n", "n/co"]])
    assert from_record.matrices.tolist() == [24]
    # signs do not matter, sizes do: about 2 / 1.5 and 1.5 / 1
    assert from_kernels["c/n"].item() == pytest.approx(2 / 1.5, rel=0.05)
    assert from_kernels["n/co"].item() == pytest.approx(1.5, rel=0.05)


def test_network_effects_are_geometric_means_with_a_seeded_interval_over_layers():
    rng = np.random.default_rng(1)
    layers = [_centre_heavy(rng, 50, c) for c in (1.2, 1.5, 1.8, 2.0, 1.4)]
    ratios = lo.magnitude_ratios(layers).assign(network="toy")
    eff = lo.network_effects(ratios, ["network"], n_resamples=999)
    row = eff.loc["toy"]
    assert row["n_layers"] == 5
    assert row["c/n"] == pytest.approx(math.exp(np.log(ratios["c/n"]).mean()))
    assert 1 < row["c/n low"] < row["c/n"] < row["c/n high"]
    assert eff.equals(lo.network_effects(ratios, ["network"], n_resamples=999)), "seeded"
    few = lo.network_effects(ratios.head(2), ["network"])
    assert math.isnan(few.loc["toy", "c/n low"]), "no interval from fewer than three layers"


def test_compare_groups_uses_networks_as_replicates():
    values = pd.Series([2.0, 1.8, 2.2, 1.2, 1.3, 1.1])
    groups = pd.Series(["depthwise"] * 3 + ["dense"] * 3)
    out = lo.compare_groups(values, groups, "depthwise", "dense")
    assert out["n depthwise"] == out["n dense"] == 3
    assert out["ratio"] == pytest.approx(math.exp(np.log([2.0, 1.8, 2.2]).mean() - np.log([1.2, 1.3, 1.1]).mean()))
    # three networks a side: 20 relabellings, so even complete separation gives p = 2/20
    assert out["p_floor"] == pytest.approx(0.1) and out["p_permutation"] == pytest.approx(0.1)
    assert out["ratio low"] < out["ratio"] < out["ratio high"]
    with pytest.raises(ValueError, match="at least two networks"):
        lo.compare_groups(values, groups, "depthwise", "other")


def test_layer_tests_describe_every_layer():
    rng = np.random.default_rng(2)
    layers = [_centre_heavy(rng, 200), rng.normal(size=(200, 3, 3))]
    out = lo.layer_tests(layers, permutations=199, seed=0)
    assert out.layer.tolist() == [1, 1, 2, 2] and out.pair.tolist() == ["m(c,n)", "m(n,co)"] * 2
    first = out[(out.layer == 1) & (out.pair == "m(c,n)")].iloc[0]
    assert first.m > 0 and first.p < 1e-3 and first.p_perm == pytest.approx(1 / 200)
    assert first.m == pytest.approx(lo.locality_test([layers[0]], "c", "n", True).m)


def test_paired_layer_contrast_pairs_by_seed_and_holm_adjusts_over_layers():
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(8):
        for layer, effect in ((1, 1.0), (2, 1.3)):
            base = rng.uniform(1.0, 1.2)
            for arm, factor in (("zeros", effect), ("reflect", 1.0)):
                rows.append({"network": "toy", "seed": seed, "layer": layer, "map": 4, "padding_mode": arm,
                             "c/n": base * factor * rng.uniform(0.99, 1.01), "n/co": base})
    out = lo.paired_layer_contrast(pd.DataFrame(rows), "padding_mode", "zeros", "reflect")
    cn = out[out.ratio == "c/n"].set_index("layer")
    assert cn.loc[2, "change"] == pytest.approx(1.3, rel=0.02) and cn.loc[2, "p_holm"] < 1e-6
    assert cn.loc[1, "change low"] < 1 < cn.loc[1, "change high"]
    assert (cn.p_holm >= cn.p).all() and cn.pairs.tolist() == [8, 8]
    # a second network is a family of its own: its layers do not enter the first one's Holm
    two = pd.concat([pd.DataFrame(rows), pd.DataFrame(rows).assign(network="other")])
    both = lo.paired_layer_contrast(two, "padding_mode", "zeros", "reflect")
    assert both[both.network == "toy"].p_holm.tolist() == pytest.approx(out.p_holm.tolist(), nan_ok=True)
    with pytest.raises(ValueError, match="complete pair"):
        lo.paired_layer_contrast(pd.DataFrame(rows[:3]), "padding_mode", "zeros", "reflect")
