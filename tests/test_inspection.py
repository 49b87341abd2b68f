"""Feature maps, weights by position, run models and Table 4 from records (locolib.inspection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from locolib import inspection as ins
from locolib import locality as lo
from locolib.train import RunConfig, train, weight_stats

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- feature maps

def tiny_net() -> nn.Sequential:
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0      # identity
        conv.weight[1, 0, 1, 1] = -1.0     # negation
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.Conv2d(2, 1, 1, bias=False), nn.ReLU())


def test_feature_maps_are_the_layer_outputs_and_hooks_are_removed():
    net = tiny_net().train()
    x = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    assert ins.relu_names(net) == ["1", "3"]
    maps = ins.feature_maps(net, x, ["0", "1"])
    torch.testing.assert_close(maps["0"], torch.cat([x, -x], 1))
    torch.testing.assert_close(maps["1"], torch.cat([x.clamp_min(0), (-x).clamp_min(0)], 1))
    # the in-place ReLU did not overwrite the recorded conv output
    assert (maps["0"] < 0).any()
    assert net.training, "train/eval mode must be restored"
    assert all(not m._forward_hooks for m in net.modules()), "hooks must be removed"
    with pytest.raises(ValueError, match="no modules named"):
        ins.feature_maps(net, x, ["nope"])


def test_neighbour_correlation_known_cases():
    # i + j: every right or lower neighbour is the pixel plus 1, a perfect linear relation
    smooth = torch.add(*torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"))
    assert ins.neighbour_correlation(smooth) == pytest.approx(1.0)
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(6)] for i in range(6)])
    assert ins.neighbour_correlation(checker) == pytest.approx(-1.0)
    noise = torch.randn(200, 16, 16, generator=torch.Generator().manual_seed(1))
    assert abs(ins.neighbour_correlation(noise)) < 0.02
    # constant maps are skipped, not counted as 0 or NaN
    both = torch.stack([checker, torch.zeros(6, 6)])
    assert ins.neighbour_correlation(both) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        ins.neighbour_correlation(torch.ones(2, 4, 4))


def test_neighbour_correlation_matches_numpy_per_map():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(5, 7, 6)).cumsum(axis=2)
    expected = []
    for m in maps:
        u = np.r_[m[:, :-1].ravel(), m[:-1, :].ravel()]
        v = np.r_[m[:, 1:].ravel(), m[1:, :].ravel()]
        expected.append(np.corrcoef(u, v)[0, 1])
    assert ins.neighbour_correlation(maps) == pytest.approx(np.mean(expected), rel=1e-10)


# ----------------------------------------------------------------------------- positions

def test_position_and_ring_means_by_hand():
    a = np.zeros((2, 3, 3))
    a[0] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    a[1] = -a[0]
    np.testing.assert_allclose(ins.position_means(a), np.zeros((3, 3)))
    np.testing.assert_allclose(ins.position_means(a, absolute=True), a[0])
    r = ins.ring_means(a, absolute=True)
    assert r == {"c": 5.0, "n": (2 + 4 + 6 + 8) / 4, "co": (1 + 3 + 7 + 9) / 4}
    r5 = ins.ring_means(np.ones((4, 5, 5)))
    assert list(r5) == ["c", "n", "co", "2", "sqrt5", "sqrt8"] and set(r5.values()) == {1.0}


# ----------------------------------------------------------------------------- Table 4 from stats

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
def test_stats_locality_test_equals_the_test_on_kernels(seed, k):
    kernels = random_kernels(seed, k)
    stats = weight_stats(Stack(kernels))
    layers = [torch.as_tensor(w).double() for w in kernels]
    names = list(lo.rings(k))
    for inner, outer in zip(names, names[1:]):
        for absolute in (False, True):
            want = lo.locality_test(layers, inner, outer, absolute)
            got = ins.stats_locality_test(stats, inner, outer, absolute)
            assert got.n == want.n and got.n_layers == want.n_layers
            assert got.m == pytest.approx(want.m, rel=1e-9, abs=1e-12)
            assert got.t == pytest.approx(want.t, rel=1e-8)
            assert got.p == pytest.approx(want.p, rel=1e-6, abs=1e-300)
            assert got.p_two_sided == pytest.approx(want.p_two_sided, rel=1e-6, abs=1e-300)


def test_table4_row_from_stats_equals_table4_row():
    kernels = random_kernels(3)
    want = lo.table4_row([torch.as_tensor(w) for w in kernels], "net")
    got = ins.table4_row_from_stats(weight_stats(Stack(kernels)), "net")
    assert list(got.columns) == list(want.columns)
    assert (got[["model", "absolute", "part", "pair", "stars", "n", "n_layers"]]
            .equals(want[["model", "absolute", "part", "pair", "stars", "n", "n_layers"]]))
    np.testing.assert_allclose(got["m"], want["m"], rtol=1e-9)
    np.testing.assert_allclose(got["p"], want["p"], rtol=1e-6, atol=1e-300)


def test_table4_row_from_stats_selects_a_kernel_size_and_rejects_other_pairs():
    stats = weight_stats(Stack(random_kernels(0, 5)[:3] + random_kernels(0, 3)[:2]))
    with pytest.raises(ValueError, match="pass k"):
        ins.table4_row_from_stats(stats)
    row5 = ins.table4_row_from_stats(stats, k=5, pairs=[("co", "2"), ("sqrt5", "sqrt8")])
    assert set(row5["n_layers"][row5["part"] == "all"]) == {3}
    row3 = ins.table4_row_from_stats(stats, k=3)
    assert set(row3["n_layers"][row3["part"] == "all"]) == {2}
    with pytest.raises(ValueError, match="consecutive"):
        ins.stats_locality_test(stats[:3], "c", "co")
    with pytest.raises(ValueError, match="share k"):
        ins.stats_locality_test(stats, "c", "n")
    assert ins.ring_pair_index("c", "n", 3) == 0 and ins.ring_pair_index("sqrt5", "sqrt8", 5) == 4


def test_stats_with_zero_spread_cannot_be_standardised():
    w = np.ones((4, 2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="zero spread"):
        ins.stats_locality_test(weight_stats(Stack([w])), "c", "n")


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize("size,k,stride", [(2, 3, 1), (4, 3, 1), (8, 5, 1), (7, 3, 2), (32, 3, 1)])
def test_tap_coverage_counts_outputs_that_read_the_input(size, k, stride):
    got = ins.tap_coverage(size, k, stride)
    # brute force: a one-hot kernel on an all-ones map outputs 1 exactly where its tap is inside
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    want = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            w = torch.zeros(1, 1, k, k, dtype=torch.float64)
            w[0, 0, i, j] = 1
            want[i, j] = F.conv2d(ones, w, stride=stride, padding=k // 2).mean().item()
    np.testing.assert_allclose(got, want)


def test_tap_coverage_on_a_2x2_map():
    np.testing.assert_allclose(ins.tap_coverage(2), [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])


# ----------------------------------------------------------------------------- models of runs

def tiny_config(**kw):
    base = dict(dataset="digits", network="vgg13", regularizer="l2", seed=0, epochs=1, width=0.0625,
                train_subset=64, batch_size=32)
    base.update(kw)
    return RunConfig(**base)


def test_load_run_model_gives_the_trained_weights(tmp_path):
    cfg = tiny_config()
    rec = train(cfg, results_dir=tmp_path, progress=False, model_dir=tmp_path / "m")
    model = ins.load_run_model(cfg, tmp_path / "m" / f"{cfg.key}.pt")
    assert weight_stats(model) == rec["weight_stats"]
    model2, rec2 = ins.trained_model(cfg, results_dir=tmp_path, model_dir=tmp_path / "m")
    assert rec2 == rec
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_trained_model_recovers_weights_that_were_not_kept(tmp_path):
    cfg = tiny_config(seed=1)
    rec = train(cfg, results_dir=tmp_path, progress=False)          # weights not kept
    with pytest.raises(FileNotFoundError, match="weights"):
        ins.trained_model(cfg, results_dir=tmp_path, retrain_missing=False)
    model, rec2 = ins.trained_model(cfg, results_dir=tmp_path)
    assert rec2 == rec, "the stored record is returned, not replaced"
    assert (tmp_path / "models" / f"{cfg.key}.pt").is_file()
    assert weight_stats(model) == rec["weight_stats"], "recovered weights differ from the run's"
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{cfg.key}.json"]


def test_table4_row_from_runs_pools_the_halves_of_each_run():
    runs = [random_kernels(s) for s in (4, 5, 6)]
    stats = [weight_stats(Stack(r)) for r in runs]
    got = ins.table4_row_from_runs(stats, "net")
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
    one = ins.table4_row_from_runs(stats[:1], "net")
    pd_cols = ["m", "p", "n"]
    np.testing.assert_allclose(one[pd_cols].to_numpy(float),
                               ins.table4_row_from_stats(stats[0], "net")[pd_cols].to_numpy(float))


def test_spatial_input_sizes_of_vgg13():
    from locolib.models import build_model

    model = build_model("vgg13", 10, in_channels=1, width=0.0625).train()
    sizes = ins.spatial_input_sizes(model, torch.zeros(1, 1, 32, 32))
    assert sizes == [(s, s) for s in (32, 32, 16, 16, 8, 8, 4, 4, 2, 2)]
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())
    mobile = build_model("mobilenet", 10, width=0.0625)
    # stem at 32; depth-wise strides 2,1,2,1,1,2,1,1,2 -> inputs 32,16,16,8,8,8,4,4,4,2
    assert [h for h, _ in ins.spatial_input_sizes(mobile, torch.zeros(1, 3, 32, 32))] == \
        [32, 32, 16, 16, 8, 8, 8, 4, 4, 4]


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
        signed = ins.stats_locality_test(stats, inner, outer, absolute=False)
        magn = ins.stats_locality_test(stats, inner, outer, absolute=True)
        assert abs(signed.m) < 0.1 and signed.p_two_sided > 0.01
        assert magn.m > 0.3 and magn.p < 1e-10
        assert magn.m == pytest.approx(lo.m_score(layers, inner, outer, absolute=True), rel=1e-6)
