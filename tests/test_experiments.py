"""The book's runs (plan), Table 5 statistics and Table 6 parameters from records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from locolib import experiments as E
from locolib.models import build_model
from locolib.reg import layer_ratios, table6_parameters
from locolib.config import LOCO_DEFAULT
from locolib.train import RunConfig, weight_stats

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


# --- plan --------------------------------------------------------------------------------------


def test_book_plan_grid_and_arms():
    s = {"datasets": ["digits"], "networks": ["vgg13", "mobilenet"], "seeds": 3, "epochs": 2,
         "width": 0.125, "gamma": 0.8, "eta": 1.25}
    p = E.book_plan(s)
    assert len(p) == 1 * 2 * 2 * 3 == len({c.key for c in p})
    assert [c.seed for c in p] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(c.epochs == 2 and c.width == 0.125 for c in p)
    assert all((c.gamma, c.eta) == ((1.0, 1.0) if c.regularizer == "l2" else (0.8, 1.25)) for c in p)
    # seeds as a list; regularizers by keyword; the l2 runs do not depend on gamma/eta
    l2 = E.book_plan({**s, "seeds": [0, 1, 2], "gamma": 0.5}, regularizers=["l2"])
    assert [c.key for c in l2] == [c.key for c in p if c.regularizer == "l2"]
    lp = {"digits/vgg13": {"gamma": (0.5,) * 10, "eta": (2.0,) * 10},
          "digits/mobilenet": (0.9, 1.1)}
    loco = E.book_plan({k: v for k, v in s.items() if k not in ("gamma", "eta")},
                       regularizers=["loco"], loco_params=lp)
    assert {c.regularizer for c in loco} == {"loco"} and len(loco) == 6
    assert [c.gamma for c in loco if c.network == "vgg13"] == [(0.5,) * 10] * 3


def test_book_plan_rejects_bad_settings():
    ok = {"datasets": ["digits"], "networks": ["vgg13"], "seeds": 2, "gamma": 0.8}
    with pytest.raises(ValueError, match=r"unknown sweep settings \['epoch'\].*allowed keys"):
        E.book_plan({**ok, "epoch": 3})
    with pytest.raises(ValueError, match="need \\['seeds'\\]"):
        E.book_plan({k: v for k, v in ok.items() if k != "seeds"})
    # A LOCO-REG arm without parameters gets the documented default.
    loco = [c for c in E.book_plan({k: v for k, v in ok.items() if k != "gamma"})
            if c.regularizer == "loco"]
    assert {(c.gamma, c.eta) for c in loco} == {(LOCO_DEFAULT["gamma"], LOCO_DEFAULT["eta"])}
    with pytest.raises(ValueError, match="at least one seed"):
        E.book_plan({**ok, "seeds": 0})
    with pytest.raises(TypeError):
        E.book_plan({**ok, "datasets": "digits"})
    with pytest.raises(ValueError, match="unknown dataset"):
        E.book_plan({**ok, "datasets": ["imagenet"]})


# --- Table 6 from records ----------------------------------------------------------------------


def _models(n: int, name: str = "vgg13") -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = build_model(name, 10, in_channels=1, width=0.125)
        with torch.no_grad():  # make the weights fall off from the centre, with seed noise
            for conv in [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3)]:
                prof = torch.tensor([[0.6, 0.8, 0.6], [0.8, 1.3, 0.8], [0.6, 0.8, 0.6]])
                conv.weight.mul_(prof)
        out.append(m)
    return out


@pytest.mark.parametrize("absolute", [True, False])
def test_ratios_from_records_equal_ratios_from_models(absolute):
    models = _models(3)
    records = [{"weight_stats": weight_stats(m)} for m in models]
    for I, I2 in [("n", "c"), ("n", "co"), ("c", "co")]:
        a = E.stats_layer_ratios(records, I, I2, absolute)
        b = layer_ratios(models, I, I2, absolute)
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["printed", "consistent"])
def test_table6_parameters_from_records_equal_the_library(rule):
    models = _models(3, "mobilenet")
    records = [{"weight_stats": weight_stats(m)} for m in models]
    ours = E.stats_table6_parameters(records, 1.5, True, rule, decimals=None)
    ref = table6_parameters(models, 1.5, True, rule)
    assert np.allclose(ours, ref, rtol=1e-10)
    rounded = E.stats_table6_parameters(records, 1.5, True, rule)
    assert all(abs(a - round(a, 4)) < 1e-12 for pair in rounded for a in pair)
    assert np.allclose(rounded, ref, atol=5e-5)


def test_table6_directions_on_a_centre_heavy_profile():
    """Weights larger at the centre, edges larger than corners: gamma < 1 (centre regularized
    less) under both rules; the printed eta < 1 (corners regularized LESS, against Section 6),
    the consistent eta > 1."""
    records = [{"weight_stats": weight_stats(m)} for m in _models(2)]
    printed = E.stats_table6_parameters(records, 1.5, True, "printed")
    consistent = E.stats_table6_parameters(records, 1.5, True, "consistent")
    assert all(g < 1 and e < 1 for g, e in printed)
    assert all(g < 1 and e > 1 for g, e in consistent)
    assert [g for g, _ in printed] == [g for g, _ in consistent]
    # hand-made: r(I_n, I_co) = 0.8 / 0.6 in expectation for |w|, so a = 1 + 1.5 (r - 1) = 1.5
    r = E.stats_layer_ratios(records, "n", "co", True)
    assert np.allclose(r, 0.8 / 0.6, rtol=0.15)


def test_table6_frame_and_loco_params():
    models = _models(2)
    recs = [{"config": {"dataset": "digits", "network": "vgg13", "regularizer": "l2"},
             "weight_stats": weight_stats(m)} for m in models]
    fr = E.table6_frame(recs)
    n_layers = len(recs[0]["weight_stats"])
    assert len(fr) == 2 * 4 * n_layers
    absf = fr[(fr.reading == "absolute") & (fr.c == 1.5)]
    assert np.allclose(absf.gamma, 1 + 1.5 * (absf.r_n_c - 1))
    assert np.allclose(absf.eta_printed * absf.eta_consistent, 1.0)
    assert absf.valid.all()
    lp = E.table6_loco_params(recs + [{"config": {"dataset": "digits", "network": "vgg13",
                                                  "regularizer": "loco"}, "weight_stats": None}])
    assert list(lp) == ["digits/vgg13"] and len(lp["digits/vgg13"]["gamma"]) == n_layers
    assert list(zip(*lp["digits/vgg13"].values())) == E.stats_table6_parameters(recs)
    with pytest.raises(ValueError, match="no standard-L2 records"):
        E.table6_loco_params(recs[:0])


# --- Table 5 statistics ------------------------------------------------------------------------


def _fake_df(rng, n=8, shift=-0.01):
    rows = []
    for seed in range(n):
        for reg, base in (("l2", 0.05), ("loco", 0.05 + shift)):
            rows.append({"dataset": "cifar10", "network": "vgg13", "regularizer": reg,
                         "seed": seed, "epochs": 30, "width": 1.0, "train_subset": None,
                         "test_error": base + 0.004 * rng.standard_normal(),
                         "device": "GPU X", "git_commit": "abcdef1234567", "torch": "2",
                         "date": f"2024-01-0{1 + seed % 2}T00:00:00+00:00"})
    return pd.DataFrame(rows)


def test_table5_statistics_are_welch_and_joined_with_the_paper():
    df = _fake_df(np.random.default_rng(0))
    t = E.table5(df)
    assert len(t) == 1
    row = t.iloc[0]
    a = 100 * df[df.regularizer == "loco"].test_error.to_numpy()
    b = 100 * df[df.regularizer == "l2"].test_error.to_numpy()
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert row.p_two_sided == pytest.approx(ref.pvalue)
    assert row.p_one_sided == pytest.approx(stats.ttest_ind(a, b, equal_var=False,
                                                            alternative="less").pvalue)
    assert row.difference == pytest.approx(a.mean() - b.mean())
    assert row.ci_low < row.difference < row.ci_high
    assert (row.paper_l2, row.paper_loco, row.paper_stars) == (6.26, 6.13, "*")
    assert row.paper_rel_difference == pytest.approx((6.13 - 6.26) / 6.26)


def test_table5_problems_finds_corrupted_tables():
    df = _fake_df(np.random.default_rng(4))
    t = E.table5(df)
    assert E.table5_problems(t, 8, [("cifar10", "vgg13")]) == []
    assert "expected 9" in E.table5_problems(t, 9)[0]
    assert "cells missing" in E.table5_problems(t, 8, [("cifar10", "resnet18")])[0]
    for col, v, msg in [("p_one_sided", 0.5, "one-sided"), ("ci_low", 99.0, "CI"),
                        ("stars", "***", "stars"), ("difference", 3.0, "loco - l2"),
                        ("p_two_sided", np.nan, "no test")]:
        bad = t.copy()
        bad[col] = v
        assert any(msg in p for p in E.table5_problems(bad)), col
    # significant and not
    assert "significantly lower" in E.verdict(t.iloc[0])  # shift -1 pp with sd 0.4 pp
    same = E.table5(_fake_df(np.random.default_rng(5), shift=0.0))
    assert E.table5_problems(same) == []
    assert same.p_two_sided[0] > 0.05 and "no significant" in E.verdict(same.iloc[0])
    one = E.table5(df[df.seed == 0])
    assert E.table5_problems(one) == [] and "no test" in E.verdict(one.iloc[0])


def test_format_table5_keeps_lead_columns_and_paper():
    df = _fake_df(np.random.default_rng(3))
    t = E.table5(df)
    f = E.format_table5(t.assign(rule="printed")[["rule", *t.columns]])
    assert list(f.columns[:3]) == ["rule", "dataset", "network"]
    row = f.iloc[0]
    assert row["n (L2/LOCO)"] == "8/8" and row["paper LOCO %"] == "6.13*"
    assert row["L2 error %"] == f"{t.l2_mean[0]:.2f}"


def test_paper_table5_is_complete():
    p = E.paper_table5()
    assert len(p) == 9 and set(p.dataset) == {"cifar10", "cifar100", "fashion_mnist"}
    assert set(p.network) == {"vgg13", "resnet18", "mobilenet"}
    assert (p.paper_difference < 0).all()  # the paper reports gains everywhere
    # "relatively about 2%, and from 0.1% up to 0.8% absolutely" (Section 7.2)
    assert p.paper_difference.abs().between(0.1 - 1e-9, 0.82 + 1e-9).all()
    assert p.paper_rel_difference.abs().mean() == pytest.approx(0.02, abs=0.005)


def test_arm_summary_confidence_interval():
    df = _fake_df(np.random.default_rng(2), n=6)
    a = E.arm_summary(df)
    assert list(a.regularizer) == ["l2", "loco"] and (a.n == 6).all()
    x = 100 * df[df.regularizer == "l2"].test_error.to_numpy()
    lo, hi = stats.t.interval(0.95, 5, loc=x.mean(), scale=stats.sem(x))
    assert a.iloc[0]["mean"] == pytest.approx(x.mean())
    assert (a.iloc[0].ci_low, a.iloc[0].ci_high) == pytest.approx((lo, hi))
    one = E.arm_summary(df[df.seed == 0])
    assert (one.n == 1).all() and one.ci_low.isna().all()


def test_provenance_summary():
    df = _fake_df(np.random.default_rng(1), n=4)
    s = E.provenance_summary(df)
    assert s.iloc[0].runs == 8 and s.iloc[0].device == "GPU X"
    assert s.iloc[0].git_commit == "abcdef1234" and s.iloc[0].train_subset == "all"
    assert s.iloc[0].first_date.startswith("2024-01-01") and s.iloc[0].last_date.startswith("2024-01-02")


# --- L2 strength -------------------------------------------------------------------------------


def test_conv_input_sizes():
    assert E.conv_input_sizes("vgg13") == [32, 32, 16, 16, 8, 8, 4, 4, 2, 2]
    # MobileNet: stem, then depthwise convs with strides 2,1,2,1,1,2,1,1,2
    assert E.conv_input_sizes("mobilenet") == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4]


def test_tensorflow_l2_is_pytorch_weight_decay_twice_lam():
    r = E.l2_equivalence(lam=5e-3, steps=4)
    assert r["max_diff_weight_decay_2lam"] < 1e-12
    assert r["max_diff_weight_decay_lam"] > 1e-6
    assert r["max_change"] > 1e-3


# --- the chapters' shared runs -----------------------------------------------------------------

NB05 = ROOT / "notebooks" / "05_training.ipynb"
NB06 = ROOT / "notebooks" / "06_layerwise.ipynb"


def test_chapters_05_and_06_share_their_standard_l2_runs():
    """06 derives Table 6 from (and compares against) the standard-L2 runs of 05's sweep: for
    every profile its L2 runs must be runs of 05's plan, so that the book trains them once."""
    from locolib.notebook import read_parameters

    p5, p6 = read_parameters(NB05)["profiles"], read_parameters(NB06)["profiles"]
    assert set(p6) <= set(p5)
    for profile in p6:
        s5, s6 = p5[profile]["sweep"], p6[profile]["sweep"]
        # 06 may take a subset of the grid; every other shared setting is the same literal
        shared = (set(s5) & set(s6)) - {"datasets", "networks"}
        assert {k: s5[k] for k in shared} == {k: s6[k] for k in shared}, profile
        assert set(s6["datasets"]) <= set(s5["datasets"]) and set(s6["networks"]) <= set(s5["networks"])
        assert set(s6) - set(s5) == set(), f"{profile}: 06 has settings 05 does not"
        l2_5 = {c.key for c in E.book_plan(s5, regularizers=["l2"])}
        l2_6 = [c.key for c in E.book_plan(s6, regularizers=["l2"])]
        assert l2_6 and set(l2_6) <= l2_5, profile
        assert p5[profile]["threads"] == p6[profile]["threads"]


def test_book_sweep_end_to_end_reuses_runs_and_table6_matches_the_weights(tmp_path):
    from locolib.inspection import load_run_model
    from locolib.sweep import run_sweep

    s = {"datasets": ["digits"], "networks": ["vgg13"], "seeds": 2, "epochs": 1, "width": 0.125,
         "train_subset": 64, "batch_size": 32, "gamma": 0.5, "eta": 2.0}
    res, models = tmp_path / "res", tmp_path / "models"
    configs = E.book_plan(s)
    assert E.finished_records(configs, res) == []
    recs = run_sweep(configs, results_dir=res, progress=False, download=False, log=None,
                     model_dir=models)
    assert [r["key"] for r in recs] == [c.key for c in configs]
    mtimes = {p.name: p.stat().st_mtime_ns for p in res.glob("*.json")}
    again = run_sweep(configs, results_dir=res, progress=False, download=False, log=None)
    assert again == recs and mtimes == {p.name: p.stat().st_mtime_ns for p in res.glob("*.json")}
    assert [r["key"] for r in E.finished_records(configs, res)] == [c.key for c in configs]
    assert E.finished_records(E.book_plan({**s, "epochs": 2}), res) == []
    # Table 6 from the records' weight sums equals Table 6 from the trained weights
    l2 = [(c, r) for c, r in zip(configs, recs) if c.regularizer == "l2"]
    nets = [load_run_model(c, models / f"{c.key}.pt") for c, _ in l2]
    for rule in ("printed", "consistent"):
        ours = E.stats_table6_parameters([r for _, r in l2], 1.5, True, rule, decimals=None)
        assert np.allclose(ours, table6_parameters(nets, 1.5, True, rule), rtol=1e-9)
    lp = E.table6_loco_params(recs, eta_rule="consistent")
    loco = E.book_plan({k: v for k, v in s.items() if k not in ("gamma", "eta")},
                       regularizers=["loco"], loco_params=lp)
    assert [c.gamma for c in loco] == [lp["digits/vgg13"]["gamma"]] * 2
    h = E.history_frame(recs)
    assert len(h) == 4 and set(h.regularizer) == {"l2", "loco"} and (h.test_error <= 100).all()
