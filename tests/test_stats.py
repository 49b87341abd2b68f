"""Paired comparisons, power and equivalence (locolib.stats), checked against known answers."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from locolib.stats import (
    benjamini_hochberg,
    holm,
    minimum_detectable_effect,
    paired,
    paired_table,
    reader_table,
    verdict,
    welch,
)


def test_paired_difference_interval_and_tests_match_scipy():
    rng = np.random.default_rng(0)
    ref = rng.normal(5.0, 1.0, 20)
    arm = ref - 0.3 + rng.normal(0, 0.2, 20)  # a consistent gain of 0.3, small pair noise
    r = paired(arm, ref)
    d = arm - ref
    assert r["n"] == 20 and math.isclose(r["difference"], d.mean())
    assert math.isclose(r["p_paired"], st.ttest_rel(arm, ref).pvalue)
    assert math.isclose(r["p_wilcoxon"], st.wilcoxon(d).pvalue)
    half = st.t.ppf(0.975, 19) * d.std(ddof=1) / math.sqrt(20)
    assert math.isclose(r["ci_low"], d.mean() - half) and math.isclose(r["ci_high"], d.mean() + half)
    assert math.isclose(r["difference_rel"], d.mean() / ref.mean())
    # Pairing removes the shared seed-to-seed spread: the paired test sees the gain, Welch does not.
    assert r["p_paired"] < 1e-6 and r["p_welch"] > 0.05
    assert r["corr"] > 0.9


def test_minimum_detectable_effect_has_the_stated_power():
    sd, n = 0.5, 20
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(1)
    diffs = rng.normal(mde, sd, size=(4000, n))
    p = st.ttest_1samp(diffs, 0, axis=1).pvalue
    assert 0.76 < (p < 0.05).mean() < 0.84  # 80% power, up to simulation noise
    assert minimum_detectable_effect(sd, 4 * n) < mde / 1.9  # sqrt(n) scaling
    assert mde == pytest.approx((st.t.ppf(0.975, n - 1) + st.t.ppf(0.8, n - 1)) * sd / math.sqrt(n))
    assert math.isnan(minimum_detectable_effect(sd, 1))  # one pair has no spread


def test_equivalence_bound_is_what_tost_rejects():
    rng = np.random.default_rng(2)
    ref = rng.normal(3.0, 0.5, 25)
    arm = ref + rng.normal(0.0, 0.1, 25)
    r = paired(arm, ref)
    d = arm - ref
    margin = r["equivalence"]
    # At the bound both one-sided tests have p = alpha; a wider margin rejects, a narrower does not.
    for m, rejects in ((margin * 1.01, True), (margin * 0.99, False)):
        p_low = st.ttest_1samp(d, -m, alternative="greater").pvalue
        p_high = st.ttest_1samp(d, m, alternative="less").pvalue
        assert (max(p_low, p_high) < 0.05) == rejects
    assert math.isclose(r["equivalence_rel"], margin / ref.mean())


def test_welch_and_degenerate_inputs():
    w = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0])
    res = st.ttest_ind([1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0], equal_var=False)
    assert math.isclose(w["p_two_sided"], res.pvalue) and w["p_one_sided"] < w["p_two_sided"]
    assert math.isnan(welch([1.0], [2.0, 3.0])["t"])
    assert math.isnan(paired([1.0], [2.0])["p_paired"])
    with pytest.raises(ValueError, match="differ in length"):
        paired([1.0, 2.0], [1.0])


def test_paired_table_pairs_by_seed_and_names_a_missing_reference():
    rows = [{"arm": "l2", "reference": None, "purpose": "p", "network": "n", "seed": s, "test_error": 0.05 + 0.01 * s}
            for s in range(8)]
    rows += [{"arm": "loco", "reference": "l2", "purpose": "p", "network": "n", "seed": s,
              "test_error": 0.05 + 0.01 * s - 0.002 * (1 + s % 2)} for s in reversed(range(8))]
    t = paired_table(pd.DataFrame(rows))
    assert list(t.arm) == ["loco"] and t.n[0] == 8
    assert math.isclose(t.difference[0], -100 * 0.002 * 1.5)  # percent, paired by seed
    assert t.verdict[0] == "lower error"
    assert t.p_holm[0] == t.p_bh[0] == t.p_paired[0], "a family of one needs no adjustment"
    slim = reader_table(t)
    assert list(slim.columns) == ["n", "difference, pp [95% CI]", "relative", "p (Holm)", "verdict"]
    assert slim.index.tolist() == ["loco"] and slim.iloc[0]["difference, pp [95% CI]"].startswith("-0.30 [")
    bad = pd.DataFrame(rows[8:])
    with pytest.raises(ValueError, match="reference arm 'l2' has no runs"):
        paired_table(bad)


def test_holm_and_benjamini_hochberg_match_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * 4 / rank = 0.02, 0.02, 0.04, 0.04 -> running min from the largest
    assert np.allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    # A missing p (an arm without a test) is not part of the family.
    assert np.allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04], equal_nan=True)
    assert np.allclose(benjamini_hochberg([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04], equal_nan=True)
    # monotone: 3 * 0.3 = 0.9 > 2 * 0.4 = 0.8 -> 0.9
    assert holm([0.3, 0.4, 0.5]) == pytest.approx([0.9, 0.9, 0.9])
    assert len(holm([])) == 0
    with pytest.raises(ValueError, match="probabilities"):
        holm([0.1, 1.5])


def test_the_verdict_reads_the_adjusted_p():
    row = pd.DataFrame([{"n": 8, "p_paired": 0.01, "p_holm": 0.2, "difference": -1.0, "equivalence_rel": 0.1}])
    r = next(row.itertuples())
    assert verdict(r) == "no difference detected; |effect| < 10.0% relative"
    assert verdict(r._replace(p_holm=0.01)) == "lower error"


def test_lam_is_chosen_on_validation_never_on_test():
    from locolib.stats import best_lams, lam_curves

    rows = [{"regularizer": "l2", "lam": lam, "seed": s, "test_error": te, "val_error": ve}
            for s in range(3) for lam, te, ve in ((0.1, 0.01, 0.05), (0.2, 0.05, 0.02),
                                                  (0.3, 0.05, 0.02))]
    frame = pd.DataFrame(rows)
    assert best_lams(frame)["l2"] == 0.2  # lowest validation error, the smaller lam on a tie
    with pytest.raises(ValueError, match="never on the test set"):
        best_lams(frame, "test_error")
    curves = lam_curves(frame)
    assert list(curves.lam) == [0.1, 0.2, 0.3] and (curves.n == 3).all()
    assert curves.test_error_mean.tolist() == pytest.approx([0.01, 0.05, 0.05])


def test_contrasts_pair_seeds_at_each_arms_own_lam_and_adjust_within_families():
    from locolib.stats import contrast_table, holm

    class H:
        def __init__(self, name, contrast, direction, family):
            self.name, self.contrast, self.direction, self.family = name, contrast, direction, family

    rng = np.random.default_rng(1)
    seeds = range(10)
    noise = rng.normal(0, 0.01, 10)
    rows = []
    for r, lam, shift in (("a", 0.1, -0.02), ("b", 0.2, 0.0), ("c", 0.1, 0.0), ("a", 0.2, 0.5)):
        rows += [{"regularizer": r, "lam": lam, "seed": s, "test_error": 0.1 + shift + noise[s]
                  + rng.normal(0, 0.002), "val_error": 0.0} for s in seeds]
    frame = pd.DataFrame(rows)
    best = pd.Series({"a": 0.1, "b": 0.2, "c": 0.1})
    hs = [H("x", ("a", "b"), "less", "f1"), H("y", ("a", "c"), "greater", "f1"),
          H("z", ("b", "c"), "less", "f2")]
    t = contrast_table(frame, hs, best)
    a = 100 * frame[(frame.regularizer == "a") & (frame.lam == 0.1)].test_error.to_numpy()
    b = 100 * frame[(frame.regularizer == "b") & (frame.lam == 0.2)].test_error.to_numpy()
    res = st.ttest_rel(a, b)
    assert t.p[0] == pytest.approx(res.pvalue) and t.difference[0] == pytest.approx((a - b).mean())
    assert (t.ci_low[0], t.ci_high[0]) == pytest.approx(tuple(res.confidence_interval()))
    assert t.p_holm[:2].tolist() == pytest.approx(holm(t.p[:2]).tolist())
    assert t.p_holm[2] == pytest.approx(t.p[2])  # a family of one
    assert t.verdict.tolist()[:2] == ["supported", "contradicted"]


def test_realized_matching_picks_the_lam_of_nearest_effective_decay():
    from locolib.stats import realized_matched

    rows = []
    for s in range(4):
        rows.append({"regularizer": "l2", "lam": 0.01, "seed": s, "realized_sq": 1.0,
                     "test_error": 0.030 + 0.001 * s})
        for lam, realized in ((0.01, 0.2), (0.05, 0.25), (0.5, 0.2)):  # effective 0.002, 0.0125, 0.1
            rows.append({"regularizer": "m", "lam": lam, "seed": s, "realized_sq": realized,
                         "test_error": 0.020 + 0.002 * s + lam})
    t = realized_matched(pd.DataFrame(rows), pd.Series({"l2": 0.01, "m": 0.5}))
    assert len(t) == 1 and t.lam_a[0] == 0.05 and t.effective_lam_a[0] == pytest.approx(0.0125)
    a = np.array([0.070 + 0.002 * s for s in range(4)]) * 100
    b = np.array([0.030 + 0.001 * s for s in range(4)]) * 100
    assert t.difference[0] == pytest.approx((a - b).mean())
    assert t.p[0] == pytest.approx(st.ttest_rel(a, b).pvalue) and t.p_bh[0] == pytest.approx(t.p[0])


def test_retrain_differences_match_runs_by_key():
    from locolib.stats import retrain_differences

    committed = pd.DataFrame({"regularizer": ["l2", "l2", "loco"], "lam": [0.1, 0.1, 0.1],
                              "key": ["a", "b", "c"], "test_error": [0.02, 0.03, 0.04]})
    retrained = pd.DataFrame({"key": ["c", "b", "a", "z"], "test_error": [0.04, 0.035, 0.02, 0.5]})
    t = retrain_differences(committed, retrained)
    assert t.loc[("l2", 0.1)].tolist() == pytest.approx([2, 1, 0.25, math.sqrt(0.125), 0.5])
    assert t.loc[("loco", 0.1), "identical"] == 1
    overall = t.xs("all", level="regularizer").iloc[0]
    assert overall.n == 3 and overall.identical == 2 and overall.max_abs_diff == pytest.approx(0.5)


def test_best_lam_table_and_reader_contrasts_read_each_regularizer_at_its_lam():
    from locolib.stats import best_lam_table, contrast_table, reader_contrasts

    class H:
        name, contrast, direction, family = "H1", ("loco", "l2"), "less", "primary"

    rows = [{"regularizer": r, "lam": lam, "seed": s, "val_error": 0.02 + lam, "test_error": 0.03 + lam,
             "realized_sq": q, "clean_train_acc": 0.98 if s == 0 else 1.0}
            for r, q in (("l2", 1.0), ("loco", 0.5)) for lam in (0.01, 0.1) for s in range(3)]
    frame = pd.DataFrame(rows)
    frame.loc[(frame.regularizer == "loco") & (frame.seed == 1), "test_error"] += 0.001
    best = pd.Series({"l2": 0.01, "loco": 0.1})
    t = best_lam_table(frame, best)
    assert t.loc["loco"].tolist() == pytest.approx([0.1, 3, 12.0, 13.0 + 0.1 / 3, 0.5, 0.05, 1])
    shown = reader_contrasts(contrast_table(frame, [H()], best), frame, {"loco": "LOCO"})
    assert list(shown.index) == ["H1"] and shown.loc["H1", "realized a/b"] == "0.50/1.00"
    assert shown.loc["H1", "a - b"] == "LOCO - l2"
    assert shown.loc["H1", "lam a/b"] == "0.1/0.01" and shown.loc["H1", "verdict"] == "contradicted"
    assert shown.loc["H1", "pp [95% CI]"].startswith("+9.03")
