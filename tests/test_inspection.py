"""Feature maps, weights by position, run models and padding (locolib.inspection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from locolib import inspection as ins
from locolib import locality as lo
from locolib.config import RunConfig
from locolib.kernels import weight_stats
from locolib.notebook import FIGURE_WIDTH
from locolib.train import train

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


def test_trained_model_recovers_weights_that_were_not_kept(tmp_path, capsys):
    cfg = tiny_config(seed=1)
    rec = train(cfg, results_dir=tmp_path, progress=False)          # weights not kept
    with pytest.raises(FileNotFoundError, match="weights"):
        ins.trained_model(cfg, results_dir=tmp_path, retrain_missing=False)
    model, rec2 = ins.trained_model(cfg, results_dir=tmp_path)
    assert f"run {cfg.key}: its weights are not committed, training it again" in capsys.readouterr().out
    assert rec2 == rec, "the stored record is returned, not replaced"
    assert (tmp_path / "models" / f"{cfg.key}.pt").is_file()
    assert weight_stats(model) == rec["weight_stats"], "recovered weights differ from the run's"
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{cfg.key}.json"]


def test_weights_recovered_on_another_machine_keep_their_own_record_on_every_call(tmp_path):
    import json

    cfg = tiny_config(seed=2)
    train(cfg, results_dir=tmp_path, progress=False)  # weights not kept
    stored = tmp_path / f"{cfg.key}.json"  # as if another CPU had made it: other final metrics
    rec = json.loads(stored.read_text())
    rec["final"]["test_error"] = rec["final"]["test_error"] / 2 + 0.25
    stored.write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="rounds differently"):
        model, first = ins.trained_model(cfg, results_dir=tmp_path)
    again_model, again = ins.trained_model(cfg, results_dir=tmp_path)  # the weights are there now
    assert again == first != rec and weight_stats(again_model) == again["weight_stats"]
    assert weight_stats(model) == first["weight_stats"]


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


# ----------------------------------------------------------------------------- chapter 07's helpers

def test_layer_locality_of_records():
    from locolib.models import build_model

    model = build_model("vgg13", 10, in_channels=1, width=0.0625)
    record = {"config": {"network": "vgg13", "width": 0.0625, "kernel_size": 3, "regularizer": "l2",
                         "seed": 0}, "weight_stats": weight_stats(model)}
    by_layer = ins.layer_locality([record, record])
    assert list(by_layer.index.names) == ["network", "layer", "map", "stride"]
    assert list(by_layer.index.get_level_values("map")) == [32, 32, 16, 16, 8, 8, 4, 4, 2, 2]
    assert by_layer["coverage n/co"].iloc[-1] == pytest.approx(2.0)
    large = ins.ring_means(ins.tap_coverage(32)[None])
    assert by_layer["coverage n/co"].iloc[0] == pytest.approx(large["n"] / large["co"])
    fig = ins.plot_layer_locality(by_layer, {"vgg13": "VGG13"})
    assert [ax.get_title() for ax in fig.axes] == [f"{c} |w| per layer, L2 runs" for c in ("m(c,n)", "m(n,co)")]
    # Legible at the column width: drawn at its width, one 9 pt label per map width (not per layer).
    assert fig.get_figwidth() == FIGURE_WIDTH
    labels = [t for t in fig.axes[0].texts]
    assert [t.get_text() for t in labels] == ["32", "16", "8", "4", "2"]
    assert min(t.get_fontsize() for t in labels) >= 9


def test_position_profiles_are_drawn_without_numbers_at_the_column_width():
    maps = {"L2": [np.eye(3)] * 4, "LOCO": [np.ones((3, 3))] * 4}
    fig = ins.plot_position_profiles(maps, ["1", "2", "3", "4"], "viridis", 0, 1, "mean |w|")
    assert fig.get_figwidth() == FIGURE_WIDTH
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 8 and not any(ax.texts for ax in panels)  # numbers at 60 px are unreadable
    assert [ax.get_ylabel() for ax in panels[::4]] == ["L2", "LOCO"]


def test_run_layers_knows_kinds_padding_and_ratios():
    from locolib.models import build_model

    model = build_model("mobilenet", 10, in_channels=1, width=0.0625)
    config = {"network": "mobilenet", "width": 0.0625, "kernel_size": 3, "regularizer": "l2",
              "seed": 3, "padding_mode": "reflect"}
    layers = ins.run_layers([{"config": config, "weight_stats": weight_stats(model)}])
    assert layers.kind.tolist() == ["dense"] + ["depthwise"] * 9, "the stem, then the depth-wise layers"
    assert set(layers.padding_mode) == {"reflect"} and set(layers.seed) == {3}
    assert np.allclose(layers["c/n"], lo.magnitude_ratios(weight_stats(model))["c/n"])


def test_kernels_versus_records_of_a_run(tmp_path):
    cfg = tiny_config(seed=2, kernel_size=5)
    rec = train(cfg, results_dir=tmp_path, progress=False, model_dir=tmp_path / "m")
    check = ins.kernels_versus_records([cfg], [rec], tmp_path, tmp_path / "m")
    assert check["same stars"] and check["largest difference in m"] < 1e-9


def test_conv_input_sizes():
    assert ins.conv_input_sizes("vgg13") == [32, 32, 16, 16, 8, 8, 4, 4, 2, 2]
    # MobileNet: stem, then depthwise convs with strides 2,1,2,1,1,2,1,1,2
    assert ins.conv_input_sizes("mobilenet") == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4]
