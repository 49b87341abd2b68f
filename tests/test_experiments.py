"""The book's runs (plan), Table 5 statistics and Table 6 parameters from records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from locolib import experiments as E
from locolib.config import LOCO_DEFAULT
from locolib.models import build_model
from locolib.reg import layer_ratios, table6_parameters
from locolib.train import weight_stats

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


def test_paper_table5_is_complete():
    p = E.paper_table5()
    assert len(p) == 9 and set(p.dataset) == {"cifar10", "cifar100", "fashion_mnist"}
    assert set(p.network) == {"vgg13", "resnet18", "mobilenet"}
    assert (p.paper_difference < 0).all()  # the paper reports gains everywhere
    # "relatively about 2%, and from 0.1% up to 0.8% absolutely" (Section 7.2)
    assert p.paper_difference.abs().between(0.1 - 1e-9, 0.82 + 1e-9).all()
    assert p.paper_rel_difference.abs().mean() == pytest.approx(0.02, abs=0.005)


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
