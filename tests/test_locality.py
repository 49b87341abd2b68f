"""Section 7.1: Eq. 7.1's m(I, I'), its t-test, stars, halves and Table 4 rows."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from scipy import stats

from locolib import locality as lo

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


def test_rings_3x3_and_5x5():
    assert lo.rings(3) == {"c": ((1, 1),), "n": tuple(sorted(NEIGHBOURS)), "co": tuple(sorted(CORNERS))}
    r5 = lo.rings(5)
    assert list(r5) == ["c", "n", "co", "2", "sqrt5", "sqrt8"]
    assert [len(v) for v in r5.values()] == [1, 4, 4, 4, 8, 4]
    assert sum(len(v) for v in lo.rings(7).values()) == 49
    for name, positions in r5.items():
        d2 = {(i - 2) ** 2 + (j - 2) ** 2 for i, j in positions}
        assert len(d2) == 1
    assert lo.index_set("sqrt4", 5) == r5["2"] and lo.index_set("sqrt2", 3) == lo.rings(3)["co"]
    assert lo.index_set("0", 3) == ((1, 1),) and lo.index_set("1", 3) == lo.rings(3)["n"]
    assert lo.index_set([(0, 0), (2, 2)], 3) == ((0, 0), (2, 2))


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
    r = lo.rings(5)
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


def test_conv_kernels_from_a_torch_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 4, 5))
    kernels = lo.conv_kernels(model)
    assert [tuple(t.shape) for t in kernels] == [(8, 3, 3, 3), (8, 1, 3, 3)]
    assert [tuple(t.shape) for t in lo.conv_kernels(model, k=5)] == [(4, 8, 5, 5)]
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
    assert lo.stars(p) == code


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
