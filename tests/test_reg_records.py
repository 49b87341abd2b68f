"""Table 6 parameters from result records (equal to those from the models), TensorFlow's L2
strength, and the chapters' shared runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locolib.kernels import weight_stats
from locolib.models import build_model
from locolib.reg import (
    l2_equivalence,
    layer_ratios,
    table6_frame,
    table6_loco_params,
    table6_parameters,
)
from locolib.results import finished_records, history_frame
from locolib.sweep import plan

pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


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
        a = layer_ratios(records, I, I2, absolute)
        b = layer_ratios(models, I, I2, absolute)
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["printed", "consistent"])
def test_table6_parameters_from_records_equal_the_library(rule):
    models = _models(3, "mobilenet")
    records = [{"weight_stats": weight_stats(m)} for m in models]
    ours = table6_parameters(records, 1.5, True, rule)
    ref = table6_parameters(models, 1.5, True, rule)
    assert np.allclose(ours, ref, rtol=1e-10)
    rounded = table6_parameters(records, 1.5, True, rule, decimals=4)
    assert all(abs(a - round(a, 4)) < 1e-12 for pair in rounded for a in pair)
    assert np.allclose(rounded, ref, atol=5e-5)


def test_table6_directions_on_a_centre_heavy_profile():
    """Weights larger at the centre, edges larger than corners: gamma < 1 (centre regularized
    less) under both rules; the printed eta < 1 (corners regularized LESS, against Section 6),
    the consistent eta > 1."""
    records = [{"weight_stats": weight_stats(m)} for m in _models(2)]
    printed = table6_parameters(records, 1.5, True, "printed", decimals=4)
    consistent = table6_parameters(records, 1.5, True, "consistent", decimals=4)
    assert all(g < 1 and e < 1 for g, e in printed)
    assert all(g < 1 and e > 1 for g, e in consistent)
    assert [g for g, _ in printed] == [g for g, _ in consistent]
    # hand-made: r(I_n, I_co) = 0.8 / 0.6 in expectation for |w|, so a = 1 + 1.5 (r - 1) = 1.5
    r = layer_ratios(records, "n", "co", True)
    assert np.allclose(r, 0.8 / 0.6, rtol=0.15)


def test_table6_ratio_is_the_reciprocal_of_the_ring_ratio_of_chapters_04_and_07():
    from locolib.locality import magnitude_ratios

    (model,) = _models(1)
    rings = magnitude_ratios(weight_stats(model))
    assert np.allclose(layer_ratios([model], "n", "c", True), 1 / rings["c/n"], rtol=1e-12)
    assert np.allclose(layer_ratios([model], "co", "n", True), 1 / rings["n/co"], rtol=1e-12)


def test_table6_frame_and_loco_params():
    models = _models(2)
    recs = [{"config": {"dataset": "digits", "network": "vgg13", "regularizer": "l2"},
             "weight_stats": weight_stats(m)} for m in models]
    fr = table6_frame(recs)
    n_layers = len(recs[0]["weight_stats"])
    assert len(fr) == 2 * 4 * n_layers
    absf = fr[(fr.reading == "absolute") & (fr.c == 1.5)]
    assert np.allclose(absf.gamma, 1 + 1.5 * (absf.r_n_c - 1))
    assert np.allclose(absf.eta_printed * absf.eta_consistent, 1.0)
    assert absf.valid.all()
    lp = table6_loco_params(recs + [{"config": {"dataset": "digits", "network": "vgg13",
                                                  "regularizer": "loco"}, "weight_stats": None}])
    assert list(lp) == ["digits/vgg13"] and len(lp["digits/vgg13"]["gamma"]) == n_layers
    assert list(zip(*lp["digits/vgg13"].values())) == table6_parameters(recs, decimals=4)
    with pytest.raises(ValueError, match="no standard-L2 records"):
        table6_loco_params(recs[:0])


# --- L2 strength -------------------------------------------------------------------------------


def test_tensorflow_l2_is_pytorch_weight_decay_twice_lam():
    r = l2_equivalence(lam=5e-3, steps=4)
    assert r["max_diff_weight_decay_2lam"] < 1e-12
    assert r["max_diff_weight_decay_lam"] > 1e-6
    assert r["max_change"] > 1e-3


# --- the chapters' shared runs -----------------------------------------------------------------

def test_book_sweep_end_to_end_reuses_runs_and_table6_matches_the_weights(tmp_path):
    from locolib.inspection import load_run_model
    from locolib.sweep import run_sweep

    s = {"epochs": 1, "width": 0.125, "train_subset": 64, "batch_size": 32}
    res, models = tmp_path / "res", tmp_path / "models"
    configs = plan(["digits"], ["vgg13"], ["l2", "loco"], [0, 1], gamma=0.5, eta=2.0, **s)
    assert finished_records(configs, res) == []
    recs = run_sweep(configs, results_dir=res, progress=False, download=False, log=None,
                     model_dir=models)
    assert [r["key"] for r in recs] == [c.key for c in configs]
    mtimes = {p.name: p.stat().st_mtime_ns for p in res.glob("*.json")}
    again = run_sweep(configs, results_dir=res, progress=False, download=False, log=None)
    assert again == recs and mtimes == {p.name: p.stat().st_mtime_ns for p in res.glob("*.json")}
    assert [r["key"] for r in finished_records(configs, res)] == [c.key for c in configs]
    assert finished_records([c.replace(epochs=2) for c in configs], res) == []
    # Table 6 from the records' weight sums equals Table 6 from the trained weights
    l2 = [(c, r) for c, r in zip(configs, recs) if c.regularizer == "l2"]
    nets = [load_run_model(c, models / f"{c.key}.pt") for c, _ in l2]
    for rule in ("printed", "consistent"):
        ours = table6_parameters([r for _, r in l2], 1.5, True, rule)
        assert np.allclose(ours, table6_parameters(nets, 1.5, True, rule), rtol=1e-9)
    lp = table6_loco_params(recs, eta_rule="consistent")
    loco = plan(["digits"], ["vgg13"], ["loco"], [0, 1], loco_params=lp, **s)
    assert [c.gamma for c in loco] == [lp["digits/vgg13"]["gamma"]] * 2
    h = history_frame(recs)
    assert len(h) == 4 and set(h.regularizer) == {"l2", "loco"} and h.test_error.between(0, 1).all()
