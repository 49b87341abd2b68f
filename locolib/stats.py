"""Statistics of comparisons between training arms (chapters 05 and 06).

Two arms that share seeds share initialisation, batch order and augmentation, so they are
compared pair by pair (:func:`paired`): the paired t-test and the Wilcoxon signed-rank test, the
confidence interval of the mean paired difference (in percentage points and relative to the
reference arm's error), Welch's unpaired test beside it (what the paper's Table 5 reports), the
smallest effect the design detects (:func:`minimum_detectable_effect`), and the equivalence
bound: the smallest symmetric relative margin that two one-sided tests (TOST) reject at level
alpha, i.e. how large an effect the data rule out.

A table tests several arms at once, so its p-values are adjusted for multiplicity over a declared
family (:func:`paired_table`: every row of the table): :func:`holm` controls the family-wise
error rate, :func:`benjamini_hochberg` the false discovery rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from locolib.config import config_fields
from locolib.kernels import stars

__all__ = ["paired", "welch", "minimum_detectable_effect", "holm", "benjamini_hochberg", "paired_table",
           "reader_table", "verdict", "compare", "best_lams", "lam_curves", "contrast_table",
           "convergence", "realized_matched", "retrain_differences", "best_lam_table",
           "reader_contrasts"]


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true mean paired difference that a two-sided paired t-test at level
    ``alpha`` detects with probability ``power``, given the standard deviation of the paired
    differences (normal approximation with the t quantiles of n - 1 degrees of freedom).
    (Chapters 05-06.)"""
    if n < 2:
        return math.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / math.sqrt(n))


def welch(arm: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> dict:
    """Welch's unpaired t-test of ``mean(arm) - mean(reference)``: t, dof, two- and one-sided p
    (alternative: arm lower) and the ``confidence`` interval of the difference.
    (Chapter 05; Table 5.)"""
    a, b = np.asarray(arm, float), np.asarray(reference, float)
    if len(a) < 2 or len(b) < 2 or a.var(ddof=1) + b.var(ddof=1) == 0:
        return dict(t=math.nan, dof=math.nan, p_two_sided=math.nan, p_one_sided=math.nan,
                    ci_low=math.nan, ci_high=math.nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    one = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    ci = res.confidence_interval(confidence)
    return dict(t=float(res.statistic), dof=float(res.df), p_two_sided=float(res.pvalue),
                p_one_sided=float(one.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))


def paired(arm: Sequence[float], reference: Sequence[float], confidence: float = 0.95,
           alpha: float = 0.05, power: float = 0.8) -> dict:
    """Compare ``arm`` with ``reference``, element i of each from the same seed (errors in any
    unit; differences come out in that unit, relative ones as fractions of the reference mean).

    Returns n, the two means, ``difference`` (arm - reference) with its sd and ``confidence``
    interval, the same relative to the reference mean, ``corr`` (of the pairs), ``p_paired``
    (paired t), ``p_wilcoxon``, ``p_welch``, ``mde`` and ``mde_rel`` (at ``alpha``, ``power``),
    and ``equivalence_rel``: the smallest margin m such that TOST at level alpha shows
    |difference| < m * reference mean (the largest end of the 1 - 2 alpha interval).
    (Chapters 05-06.)
    """
    a, b = np.asarray(arm, float), np.asarray(reference, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    n = len(a)
    d = a - b
    ref = float(b.mean()) if n else math.nan
    out = dict(n=n, reference_mean=ref, arm_mean=float(a.mean()) if n else math.nan,
               difference=float(d.mean()) if n else math.nan,
               sd_difference=float(d.std(ddof=1)) if n > 1 else math.nan)
    if n < 2 or out["sd_difference"] == 0:
        out.update(ci_low=math.nan, ci_high=math.nan, p_paired=math.nan, p_wilcoxon=math.nan,
                   corr=math.nan, mde=math.nan, equivalence=math.nan)
    else:
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(confidence)
        tost = res.confidence_interval(1 - 2 * alpha)
        nonzero = d[d != 0]
        out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_paired=float(res.pvalue),
                   p_wilcoxon=float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0,
                   corr=float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan,
                   mde=minimum_detectable_effect(out["sd_difference"], n, alpha, power),
                   equivalence=float(max(abs(tost.low), abs(tost.high))))
    for k in ("difference", "ci_low", "ci_high", "mde", "equivalence"):
        out[f"{k}_rel"] = out[k] / ref if ref else math.nan
    out["p_welch"] = welch(a, b, confidence)["p_two_sided"]
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of ``pvalues`` (one family; NaN stays NaN and is not counted).

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)): a family
    rejected where the adjusted p < alpha has family-wise error rate at most alpha.
    (Chapters 05-06.)
    """
    p = np.asarray(pvalues, float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)):
        raise ValueError(f"pvalues must be a sequence of probabilities in [0, 1], got {pvalues!r}")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjustment of ``pvalues`` (false discovery rate; NaN stays NaN).
    (Chapters 05-06.)"""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def verdict(row, alpha: float = 0.05) -> str:
    """What a row of :func:`paired_table` supports, in words: the paired t-test, its p adjusted
    over the table (``p_holm``), decides; the Wilcoxon test is reported beside it.
    (Chapters 05-06.)"""
    if not row.n or math.isnan(row.p_holm):
        return "no test"
    if row.p_holm < alpha:
        return "lower error" if row.difference < 0 else "higher error"
    return f"no difference detected; |effect| < {100 * row.equivalence_rel:.1f}% relative"


def paired_table(frame: pd.DataFrame, value: str = "test_error", scale: float = 100.0,
                 confidence: float = 0.95) -> pd.DataFrame:
    """One row per arm that has a reference arm: :func:`paired` on ``value`` (times ``scale``,
    percent by default) over the seeds both arms have, plus ``p_holm`` and ``p_bh``: the paired
    t-test's p adjusted over the family of all the table's rows (:func:`holm`,
    :func:`benjamini_hochberg`), and ``verdict``.

    ``frame``: one row per run with columns ``arm``, ``reference`` (None for reference arms),
    ``purpose``, ``network``, ``seed`` and ``value`` (as :func:`locolib.plans.arm_frame`
    returns). Raises ValueError if an arm's reference arm has no runs.
    (Chapters 05-06.)
    """
    rows = []
    arms = frame.drop_duplicates("arm")
    for r in arms[arms.reference.notna()].itertuples():
        a = frame[frame.arm == r.arm].set_index("seed")[value]
        b = frame[frame.arm == r.reference].set_index("seed")[value]
        if b.empty:
            raise ValueError(f"arm {r.arm!r}: its reference arm {r.reference!r} has no runs")
        seeds = sorted(set(a.index) & set(b.index))
        res = paired(scale * a.loc[seeds].to_numpy(), scale * b.loc[seeds].to_numpy(), confidence)
        rows.append({"arm": r.arm, "reference": r.reference, "purpose": r.purpose,
                     "network": r.network, **res})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"], out["p_bh"] = holm(out.p_paired), benjamini_hochberg(out.p_paired)
        out["verdict"] = [verdict(r) for r in out.itertuples()]
    return out


def reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of a :func:`paired_table` that a reader needs, formatted to fit a page
    (chapters 05 and 06): per arm, n, the difference in percentage points with its 95% interval,
    the same relative to the reference, the Holm-adjusted p and the verdict."""
    return pd.DataFrame({
        "n": table.n.to_numpy(),
        "difference, pp [95% CI]": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                                    for d, lo, hi in zip(table.difference, table.ci_low, table.ci_high)],
        "relative": [f"{100 * r:+.1f}%" for r in table.difference_rel],
        "p (Holm)": [f"{p:.2g}" for p in table.p_holm],
        "verdict": table.verdict.to_numpy(),
    }, index=pd.Index(table.arm, name="arm"))


def compare(df: pd.DataFrame, percent: bool = True, confidence: float = 0.95) -> pd.DataFrame:
    """The paper's Table 5 statistics, unpaired: LOCO-REG against standard L2 per (dataset,
    network) of a :func:`locolib.results.load_results` frame.

    One row per cell: ``n_l2``, ``n_loco``, the means and sample standard deviations,
    ``difference`` (loco - l2; negative: LOCO-REG is better) and ``rel_difference``, and Welch's
    test (:func:`welch`: ``t``, ``dof``, ``p_two_sided``, ``p_one_sided``, ``ci_low``,
    ``ci_high``) with the paper's ``stars`` from the one-sided p. Percent if ``percent``. Raises
    ValueError if a protocol setting (:func:`locolib.config.config_fields` ``"protocol"``) varies
    within a cell: filter first. For arms that share seeds, :func:`paired_table` is the test.
    (Chapter 05; Table 5.)
    """
    scale = 100.0 if percent else 1.0
    out = []
    for (dataset, network), g in df.groupby(["dataset", "network"], sort=True):
        for col in config_fields("protocol"):
            if col in g.columns and g[col].astype(str).nunique() > 1:
                raise ValueError(
                    f"{dataset}/{network}: runs differ in {col!r} ({sorted(g[col].astype(str).unique())}); "
                    "compare only runs of one protocol (filter the DataFrame first)")
        a = g.loc[g.regularizer == "loco", "test_error"].to_numpy(float) * scale
        b = g.loc[g.regularizer == "l2", "test_error"].to_numpy(float) * scale
        row = {"dataset": dataset, "network": network, "n_l2": len(b), "n_loco": len(a),
               "l2_mean": b.mean() if len(b) else np.nan, "loco_mean": a.mean() if len(a) else np.nan,
               "l2_std": b.std(ddof=1) if len(b) > 1 else np.nan,
               "loco_std": a.std(ddof=1) if len(a) > 1 else np.nan}
        row["difference"] = row["loco_mean"] - row["l2_mean"]
        row["rel_difference"] = row["difference"] / row["l2_mean"] if row["l2_mean"] else np.nan
        row.update(welch(a, b, confidence))
        row["stars"] = stars(row["p_one_sided"])
        out.append(row)
    cols = ["dataset", "network", "n_l2", "n_loco", "l2_mean", "loco_mean", "l2_std", "loco_std", "difference",
            "rel_difference", "t", "dof", "p_two_sided", "p_one_sided", "stars", "ci_low", "ci_high"]
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------------------------
# A pre-registered lambda sweep (chapter 05's mechanism study, locolib.plans.MECHANISM)
# --------------------------------------------------------------------------------------------
def best_lams(frame: pd.DataFrame, select: str = "val_error") -> pd.Series:
    """Each regularizer's best ``lam``: the one of lowest mean ``select`` over seeds (the
    validation error; never the test error), the smaller lam on a tie. ``frame``: one row per
    run with columns ``regularizer``, ``lam``, ``seed`` and ``select``. (Chapter 05.)"""
    if select.startswith("test"):
        raise ValueError("lam is chosen on the validation split, never on the test set")
    means = frame.groupby(["regularizer", "lam"])[select].mean().reset_index()
    means = means.sort_values(["regularizer", select, "lam"], kind="stable")
    return means.drop_duplicates("regularizer").set_index("regularizer")["lam"]


def lam_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The whole curve: per regularizer and ``lam``, the number of runs and the mean and
    standard error over seeds of every metric ``frame`` has of test_error, val_error,
    clean_train_acc, realized_sq, realized_abs. (Chapter 05; Figure 4.)"""
    metrics = [c for c in ("test_error", "val_error", "clean_train_acc", "realized_sq",
                           "realized_abs") if c in frame.columns]
    g = frame.groupby(["regularizer", "lam"])
    out = g[metrics].agg(["mean", "sem"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    return out.assign(n=g.size()).reset_index()


def _paired_contrast(frame: pd.DataFrame, a: str, lam_a: float, b: str, lam_b: float,
                     value: str, scale: float, confidence: float) -> dict:
    """Regularizer ``a`` at ``lam_a`` against ``b`` at ``lam_b``, paired over their shared seeds:
    n, difference (a - b, times ``scale``), its t interval and the two-sided paired t-test's p."""
    runs = [frame[(frame.regularizer == r) & (frame.lam == lam)].set_index("seed")[value]
            for r, lam in ((a, lam_a), (b, lam_b))]
    seeds = sorted(set(runs[0].index) & set(runs[1].index))
    if len(seeds) < 2:
        raise ValueError(f"{a} at lam {lam_a:g} and {b} at lam {lam_b:g} share {len(seeds)} seed(s)")
    x, y = (scale * r.loc[seeds].to_numpy(float) for r in runs)
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(confidence)
    return {"a": a, "b": b, "lam_a": lam_a, "lam_b": lam_b, "n": len(seeds),
            "difference": float((x - y).mean()), "ci_low": float(ci.low),
            "ci_high": float(ci.high), "p": float(res.pvalue)}


def contrast_table(frame: pd.DataFrame, hypotheses: Sequence, best: pd.Series,
                   alpha: float = 0.05, value: str = "test_error", scale: float = 100.0,
                   confidence: float = 0.95) -> pd.DataFrame:
    """The pre-registered contrasts (chapter 05): for each hypothesis (``name``,
    ``contrast = (a, b)``, ``direction`` "less" or "greater" for the expected sign of a - b,
    ``family``), arm a at its best lam against arm b at its (``best``, :func:`best_lams`), paired
    over their shared seeds on ``value`` times ``scale`` (percentage points). Columns:
    hypothesis, family, a, b, lam_a, lam_b, n, direction, difference (a - b) with its t interval
    (ci_low, ci_high), p (two-sided paired t, scipy.stats.ttest_rel), p_holm (:func:`holm` within
    the family) and verdict: "supported" (p_holm < alpha, expected sign), "contradicted"
    (p_holm < alpha, the other sign) or "undetermined"."""
    rows = []
    for h in hypotheses:
        a, b = h.contrast
        rows.append({"hypothesis": h.name, "family": h.family, "direction": h.direction,
                     **_paired_contrast(frame, a, best[a], b, best[b], value, scale, confidence)})
    out = pd.DataFrame(rows)[["hypothesis", "family", "a", "b", "lam_a", "lam_b", "n", "direction",
                              "difference", "ci_low", "ci_high", "p"]]
    out["p_holm"] = out.groupby("family")["p"].transform(lambda p: holm(p.to_numpy()))
    expected = np.where(out.direction == "less", out.difference < 0, out.difference > 0)
    out["verdict"] = np.where(out.p_holm >= alpha, "undetermined",
                              np.where(expected, "supported", "contradicted"))
    return out


def best_lam_table(frame: pd.DataFrame, best: pd.Series, threshold: float = 0.99) -> pd.DataFrame:
    """Each regularizer at its best lam (chapter 05): the lam, the runs, mean validation and test
    error (%), the mean realized factor and effective lam (lam times it: the L2 lam with the
    same penalty on the same weights), and the runs ending below ``threshold`` clean training
    accuracy."""
    at = frame[frame.lam == frame.regularizer.map(best)]
    g = at.groupby("regularizer", sort=False)
    out = pd.DataFrame({"lam": g.lam.first(), "n": g.size(),
                        "val_error_pct": 100 * g.val_error.mean(),
                        "test_error_pct": 100 * g.test_error.mean(),
                        "realized": g.realized_sq.mean(),
                        "below_threshold": g.clean_train_acc.apply(lambda a: int((a < threshold).sum()))})
    out.insert(5, "effective_lam", out.lam * out.realized)
    return out


def reader_contrasts(table: pd.DataFrame, frame: pd.DataFrame,
                     names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A :func:`contrast_table` (or :func:`realized_matched`) formatted to fit a page: per
    contrast a - b (``names``: short names of the regularizers), both lams, both mean realized
    factors (from ``frame``), the difference in percentage points with its 95% interval, raw p
    and, where the table has them, the Holm-adjusted p (or Benjamini-Hochberg's) and the
    verdict. The pairs (``table.n``) are left to the text. (Chapter 05.)"""
    names = names or {}
    realized = frame.groupby(["regularizer", "lam"]).realized_sq.mean()
    out = pd.DataFrame({
        "a - b": [f"{names.get(a, a)} - {names.get(b, b)}" for a, b in zip(table.a, table.b)],
        "lam a/b": [f"{x:.2g}/{y:.2g}" for x, y in zip(table.lam_a, table.lam_b)],
        "realized a/b": [f"{realized[a, x]:.2f}/{realized[b, y]:.2f}"
                         for a, b, x, y in zip(table.a, table.b, table.lam_a, table.lam_b)],
        "pp [95% CI]": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi
                        in zip(table.difference, table.ci_low, table.ci_high)],
        "p": [f"{p:.2g}" for p in table.p]})
    for column, name in (("p_holm", "Holm p"), ("p_bh", "BH p"), ("verdict", "verdict")):
        if column in table:
            out[name] = [v if isinstance(v, str) else f"{v:.2g}" for v in table[column]]
    return out.set_index(table.hypothesis.to_numpy()) if "hypothesis" in table else out


def realized_matched(frame: pd.DataFrame, best: pd.Series, reference: str = "l2",
                     value: str = "test_error", scale: float = 100.0,
                     confidence: float = 0.95) -> pd.DataFrame:
    """Contrasts matched on realized decay (chapter 05, exploratory): each regularizer at the
    lam of its grid whose *effective* lam (lam times the mean realized factor ``realized_sq``,
    the L2 lam with the same penalty on the same weights) lies nearest, on a log scale, to
    ``reference``'s best lam, against ``reference`` at its best, paired over shared seeds.
    Columns as :func:`contrast_table`'s, plus effective_lam_a, and p_bh: Benjamini-Hochberg
    over the table's rows (one exploratory family)."""
    mean = frame.groupby(["regularizer", "lam"]).realized_sq.mean().reset_index()
    mean["effective_lam"] = mean.lam * mean.realized_sq
    target = best[reference]
    rows = []
    for r, grid in mean[mean.regularizer != reference].groupby("regularizer", sort=False):
        near = grid.loc[(np.log(grid.effective_lam) - math.log(target)).abs().idxmin()]
        rows.append({**_paired_contrast(frame, r, near.lam, reference, target, value, scale,
                                        confidence), "effective_lam_a": near.effective_lam})
    out = pd.DataFrame(rows)
    out["p_bh"] = benjamini_hochberg(out.p.to_numpy())
    return out


def retrain_differences(committed: pd.DataFrame, retrained: pd.DataFrame,
                        value: str = "test_error", scale: float = 100.0) -> pd.DataFrame:
    """Run by run, a retrain against the committed records (chapter 05): per regularizer and
    lam, and over all (``lam`` NaN), the runs both have (matched on ``key``), how many are
    identical in ``value``, and the differences retrained - committed (times ``scale``): mean,
    standard deviation and largest absolute."""
    both = committed.merge(retrained[["key", value]], on="key", suffixes=("", "_retrained"))
    both["diff"] = scale * (both[f"{value}_retrained"] - both[value])

    def summary(g: pd.DataFrame) -> pd.Series:
        return pd.Series({"n": len(g), "identical": int((g["diff"] == 0).sum()),
                          "mean_diff": g["diff"].mean(), "sd_diff": g["diff"].std(ddof=1),
                          "max_abs_diff": g["diff"].abs().max()})

    groups = [summary(g).rename((r, lam)) for (r, lam), g in both.groupby(["regularizer", "lam"])]
    table = pd.DataFrame([*groups, summary(both).rename(("all", np.nan))])
    table.index = pd.MultiIndex.from_tuples(table.index, names=["regularizer", "lam"])
    return table.astype({"n": int, "identical": int})


def convergence(frame: pd.DataFrame, by: Sequence[str] = ("regularizer", "lam"),
                threshold: float = 0.99) -> pd.DataFrame:
    """Per group of ``by``: runs, runs that end below ``threshold`` clean training accuracy
    (the final network on the unaugmented training images) and their fraction. (Chapter 05.)"""
    g = frame.assign(below=frame.clean_train_acc < threshold).groupby(list(by))["below"]
    return pd.DataFrame({"n": g.size(), "below": g.sum(), "fraction_below": g.mean()}).reset_index()
