"""Cost and decision power of the GPU profiles (locolib.budget, locolib.plans)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from locolib import budget
from locolib.data import dataset_spec
from locolib.plans import STUDIES, study
from locolib.stats import minimum_detectable_effect


@pytest.mark.parametrize("profile", list(budget.PROFILE_DEVICE))
def test_gpu_profiles_train_the_papers_cells_with_table6_for_every_network(profile):
    s = study(profile)
    assert s.dataset in ("cifar10", "cifar100", "fashion_mnist")
    nets = {"vgg13", "mobilenet", "resnet18"}
    assert {a.network for a in s.arms if a.purpose == "Table 5"} == nets
    assert set(s.layerwise) == nets == {a.network for a in s.parameter_arms}
    assert not any(a.regularizer == "loco" and a.purpose == "Table 5" for a in s.arms), \
        "Table 5's LOCO-REG is the paper's: Table 6's parameters"
    assert all(set(s.layerwise[n]) <= set(s.arm(f"l2/{n}").seeds) for n in nets)
    runs = budget.study_runs(s)
    assert len(runs) == len({c.key for c in runs})
    flip = dataset_spec(s.dataset).flip
    assert all(c.batch_size == 128 and c.pad == 4 and c.flip == flip for c in runs), "the paper's protocol"
    summary = budget.profile_summary(profile)
    assert set(summary["hours_per_device"]) == {"t4", "a100", "h100"}
    assert summary["design"] and summary["sd_source"]


@pytest.mark.slow
def test_colab_fits_an_hour_on_a_t4_and_gpu_a_few_gpu_hours():
    colab = budget.profile_summary("colab")
    assert colab["device"].startswith("NVIDIA T4") and 0.3 < colab["hours"] < 1.0
    gpu = [budget.profile_summary(p) for p in ("gpu", "gpu_cifar100", "gpu_fashion_mnist")]
    assert 2 < sum(g["hours"] for g in gpu) < 6
    assert colab["detectable_effect_pp"]["loco_table6/vgg13"] == pytest.approx(
        minimum_detectable_effect(study("colab").paired_sd["vgg13"], 10))
    assert gpu[0]["detectable_effect_pp"]["loco_table6/vgg13"] < colab["detectable_effect_pp"]["loco_table6/vgg13"]
    assert set(budget.PROFILE_DEVICE) <= set(STUDIES)
    with pytest.raises(ValueError, match="no paired SD"):
        budget.profile_summary("default")


def test_the_h100_speed_is_the_measured_resnet18_rate():
    h100 = budget.devices()["h100"]
    assert h100.source.startswith("measured 2026-12-06")
    assert h100.flops_per_s == pytest.approx(budget.flops_per_image("resnet18", 1.0, 3, 10)[0] * 10_222)
    cfg = study("paper_cifar10").arm("l2/resnet18").configs("cifar10", study("paper_cifar10").protocol)[0]
    train_s = budget.run_seconds(cfg.replace(eval_every=10**6), h100)
    evals = (10_000 + 50_000) * budget.flops_per_image("resnet18", 1.0, 3, 10)[1] / h100.flops_per_s
    assert (train_s - evals) == pytest.approx(250 * 50_000 / 10_222), "reproduces 10,222 images/s"
    assert all(d.source.startswith("assumed") for k, d in budget.devices().items() if k != "h100")


def test_run_seconds_counts_steps_evaluations_and_flops():
    cfg = study("gpu").arm("l2/resnet18").configs("cifar10", study("gpu").protocol)[0]
    train_f, eval_f = budget.flops_per_image("resnet18", 1.0, 3, 10)
    assert 3.0e9 < train_f < 3.6e9 and 2.5 < train_f / eval_f < 3.5  # backward: twice the forward
    fast = budget.Device("x", 1e15, 0.0, "")
    flops = 15 * 50_000 * train_f + (3 * 10_000 + 50_000) * eval_f  # 3 test evaluations
    assert budget.run_seconds(cfg, fast) == pytest.approx(flops / 1e15)
    steps = 15 * math.ceil(50_000 / 128) + 3 * 10 + 50
    assert budget.run_seconds(cfg, budget.Device("y", math.inf, 1.0, "")) == steps


def test_paired_sd_from_records():
    s = study("smoke")
    l2 = s.arm("l2/vgg13").configs(s.dataset, s.protocol)
    loco = s.arm("loco/vgg13").configs(s.dataset, s.protocol)
    records = [{"key": c.key, "config": c.to_dict(), "final": {"test_error": e}}
               for c, e in zip(l2 + loco, [0.10, 0.20, 0.13, 0.21])]
    sd, n = budget.paired_sd(s, "loco/vgg13", records)
    assert n == 2 and sd == pytest.approx(np.std([3.0, 1.0], ddof=1))
    assert budget.paired_sd(s, "loco/vgg13", records[:3])[1] == 1
