"""The book's study (locolib.plans) and the regularization dose."""

import math

import numpy as np
import pandas as pd
import pytest

from locolib import plans, stats
from locolib.config import RunConfig
from locolib.notebook import REQUIRED_PROFILES
from locolib.train import dose_matched_lam, paper_dose, regularization_dose

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_paper_protocol_has_a_dose_of_38_5():
    assert paper_dose() == pytest.approx(38.529, abs=1e-3)
    short = RunConfig("mnist5k", "vgg13", "l2", 0, epochs=30, batch_size=64)
    assert regularization_dose(short, 1000) == pytest.approx(paper_dose() / 207.3, rel=1e-3)
    lam = dose_matched_lam(short, 1000, paper_dose())
    assert regularization_dose(short.replace(lam=lam), 1000) == pytest.approx(paper_dose())
    # train_subset, not the dataset's size, sets the steps per epoch
    assert regularization_dose(short.replace(train_subset=500), 1000) == pytest.approx(
        regularization_dose(short, 500))


@pytest.mark.parametrize("profile", REQUIRED_PROFILES)
def test_every_arm_is_paired_with_an_existing_reference(profile):
    s = plans.study(profile)
    names = {a.name for a in s.arms}
    for a in s.arms:
        if a.reference is not None:
            ref = s.arm(a.reference)
            assert ref.network == a.network and set(a.seeds) <= set(ref.seeds), a.name
            assert a.reference in names
    evaluated = {seed for a in s.arms for seed in a.seeds} | set(s.table6_seeds)
    assert not evaluated & set(s.parameter_arm.seeds), "Table 6 parameters from disjoint seeds"
    dosed = s.arm("l2_dose/vgg13").configs(s.dataset, s.protocol)[0]
    n_train = dosed.train_subset or {"digits": 1297, "mnist5k": 1000}[s.dataset]
    assert regularization_dose(dosed, n_train) == pytest.approx(paper_dose(), rel=1e-3)


def test_the_plan_is_seed_major_and_without_duplicates():
    s = plans.study("default")
    configs = s.configs()
    assert len({c.key for c in configs}) == len(configs) == sum(len(a.seeds) for a in s.arms)
    seeds = [c.seed for c in configs]
    assert seeds == sorted(seeds), "a sweep stopped half-way must leave complete pairs"


def test_unknown_profile_and_arm_are_named():
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke"):
        plans.study("huge")
    with pytest.raises(KeyError, match="no arm 'x'"):
        plans.study("smoke").arm("x")


@pytest.mark.slow
def test_smoke_study_trains_every_arm_and_reads_it_back(scratch_results):
    arms = plans.run_study("smoke", scratch_results, progress=False, log=None)
    s = plans.study("smoke")
    t6 = [a for a in arms if a.purpose == "Table 6"]
    assert [a.name for a in t6] == [f"table6_c{c:g}" for c in plans.TABLE6_CS]
    n_layers = 10  # VGG13's spatial convolutions
    assert all(len(a.fields["gamma"]) == len(a.fields["eta"]) == n_layers for a in t6)
    frame = plans.arm_frame(s, arms, scratch_results)
    assert len(frame) == sum(len(a.seeds) for a in arms)
    assert set(frame.arm) == {a.name for a in arms}
    assert frame.clean_train_acc.between(0, 1).all() and frame.test_error.between(0, 1).all()
    history = plans.arm_history(s, arms[:1], scratch_results)
    assert set(history.arm) == {arms[0].name} and len(history) == len(arms[0].seeds) * s.protocol["epochs"]
    # Everything is on disk: a second call trains nothing and returns the same arms.
    again = plans.run_study("smoke", scratch_results, progress=False, log=None)
    assert [a.fields for a in again] == [a.fields for a in arms]


def test_the_mechanism_study_is_the_preregistered_design():
    plan = plans.MECHANISM
    s = plans.study("mechanism")
    assert s is plan.study and s.dataset == "mnist5k"
    assert plan.lams[0] == plans.PAPER_LAM and len(plan.lams) >= 6
    ratios = [b / a for a, b in zip(plan.lams, plan.lams[1:])]
    assert ratios == pytest.approx([10 ** 0.5] * 5, rel=1e-3), "a log grid"
    dose = plans.STUDIES["default"].arm("l2_dose/vgg13").fields["lam"]
    assert plan.lams[-2] < dose < plan.lams[-1], "past the dose"
    assert len(plan.seeds) == 12
    # The same protocol as the default study's mnist5k VGG13 arms, plus a validation half.
    assert dict(s.protocol) == {**plans.STUDIES["default"].protocol, "validation": 2000}
    used = {seed for name in ("default", "smoke") for a in plans.STUDIES[name].arms for seed in a.seeds}
    used |= set(plans.STUDIES["default"].parameter_arm.seeds) | set(plans.STUDIES["default"].table6_seeds)
    assert not used & set(plan.seeds), "seeds disjoint from every seed that chose anything"
    configs = s.configs()
    assert len({c.key for c in configs}) == len(configs) == 6 * len(plan.lams) * 12
    assert [c.seed for c in configs] == sorted(c.seed for c in configs), "seed-major"
    assert all(c.data_seed == c.seed and c.validation == 2000 for c in configs)
    cells = {(a.purpose, a.fields["lam"]) for a in s.arms}
    assert cells == {(r, lam) for r in plan.regularizers for lam in plan.lams}
    by = {a.purpose: a for a in s.arms}
    assert (by["mirror"].fields["gamma"], by["mirror"].fields["eta"]) == (2.0, 0.5)
    assert by["permuted"].regularizer == "loco_permuted"
    assert by["strong_locality"].fields["gamma"] == plans.STRONG_LOCALITY["gamma"]
    assert by["strong_anti_locality"].fields["eta"] == plans.STRONG_ANTI_LOCALITY["eta"]


def test_the_hypotheses_name_arms_of_the_plan_and_one_primary_family():
    plan = plans.MECHANISM
    assert plan.alpha == 0.05 and plan.adjustment == "holm" and plan.select_on == "val_error"
    assert {h.name: h.family for h in plan.hypotheses if h.family == "primary"} == {
        "H1": "primary", "H2": "primary", "H3": "primary"}
    contrasts = {h.name: h.contrast for h in plan.hypotheses}
    assert contrasts["H1"] == ("loco", "l2") and contrasts["H2"] == ("loco", "mirror")
    assert contrasts["H3"] == ("loco", "permuted")
    assert contrasts["H4"] == ("strong_locality", "strong_anti_locality")
    assert all(set(h.contrast) <= set(plan.regularizers) and h.direction in ("less", "greater")
               for h in plan.hypotheses)


def test_the_amendment_continues_the_grid_and_the_retrain_repeats_committed_runs():
    plan, ext, retrain = plans.MECHANISM, plans.MECHANISM_EXTENSION, plans.MECHANISM_RETRAIN
    assert ext.lams[0] / plan.lams[-1] == pytest.approx(10 ** 0.5, rel=1e-3)
    assert ext.lams[1] / ext.lams[0] == pytest.approx(10 ** 0.5, rel=1e-3)
    assert set(ext.regularizers) == {"strong_locality", "strong_anti_locality"}
    assert [h.name for h in ext.hypotheses] == ["H4", "H5", "H6"] and ext.seeds == plan.seeds
    keys = {c.key for c in plan.study.configs()}
    assert not keys & {c.key for c in ext.study.configs()}
    assert dict(ext.study.protocol) == dict(retrain.study.protocol) == dict(plan.study.protocol)
    again = retrain.study.configs()
    assert {c.key for c in again} <= keys and len(again) == 2 * len(plan.lams) * len(plan.seeds)
    assert set(retrain.regularizers) == set(retrain.hypotheses[0].contrast) == {"l2", "loco"}


def test_the_mechanism_summary_gives_runs_time_and_families():
    assert plans.MECHANISM.summary() == (
        "6 regularizers x 6 lams x 12 seeds = 432 runs, about 4.8 CPU-hours on one thread "
        "(2.4 h wall time in two processes); families: primary: H1, H2, H3; secondary: H4, H5, H6")


def test_the_mechanism_dry_run_lists_runs_and_time(capsys, tmp_path):
    assert plans.main(["mechanism", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mechanism: 432 runs\n" in out and "432 todo" in out
    assert "= 432 runs, about 4.8 CPU-hours" in out


def _synthetic_frame(plan, rng):
    """Test errors and validation errors of every run of ``plan``, without training."""
    rows = []
    for r in plan.regularizers:
        for lam in plan.lams:
            for seed in plan.seeds:
                base = 0.05 + 0.01 * abs(math.log10(lam / plan.lams[2]))
                shift = {"loco": -0.004, "strong_locality": -0.002}.get(r, 0.0)
                rows.append({"regularizer": r, "lam": lam, "seed": seed,
                             "test_error": base + shift + rng.normal(0, 0.001),
                             "val_error": base + shift + rng.normal(0, 0.001),
                             "clean_train_acc": 1.0 if lam < 0.1 else 0.98})
    return pd.DataFrame(rows)


def test_the_analysis_tests_exactly_the_preregistered_hypotheses():
    plan = plans.MECHANISM
    frame = _synthetic_frame(plan, np.random.default_rng(0))
    best = stats.best_lams(frame, plan.select_on)
    assert set(best) == {plan.lams[2]}
    table = stats.contrast_table(frame, plan.hypotheses, best, plan.alpha)
    assert [(r.hypothesis, (r.a, r.b), r.family, r.direction) for r in table.itertuples()] == [
        (h.name, h.contrast, h.family, h.direction) for h in plan.hypotheses]
    primary = table[table.family == "primary"]
    assert primary.p_holm.to_numpy() == pytest.approx(stats.holm(primary.p.to_numpy()))
    verdict = dict(zip(table.hypothesis, table.verdict))
    assert verdict["H1"] == verdict["H2"] == verdict["H3"] == "supported"
    assert verdict["H6"] == "undetermined"
    conv = stats.convergence(frame)
    assert (conv[conv.lam > 0.1].fraction_below == 1).all() and (conv[conv.lam < 0.1].below == 0).all()


@pytest.mark.slow
def test_the_mechanism_smoke_study_trains_and_is_analysed(scratch_results):
    plan = plans.PREREGISTERED["mechanism_smoke"]
    assert plans.main(["mechanism_smoke", "--quiet", "--results", str(scratch_results)]) == 0
    frame = plans.mechanism_frame(plan, scratch_results)
    assert len(frame) == len(plan.study.configs())
    assert frame.val_error.between(0, 1).all() and frame.realized_sq.gt(0).all()
    l2 = frame[frame.regularizer == "l2"]
    assert l2.realized_sq.to_numpy() == pytest.approx(1.0)
    best = stats.best_lams(frame)
    table = stats.contrast_table(frame, plan.hypotheses, best)
    assert list(table.hypothesis) == [h.name for h in plan.hypotheses]
    assert len(stats.lam_curves(frame)) == len(plan.regularizers) * len(plan.lams)


def test_the_padding_study_reuses_the_committed_zero_padding_runs():
    pad, default = plans.study("padding"), plans.study("default")
    zeros, reflect = pad.arm("zeros/vgg13"), pad.arm("reflect/vgg13")
    assert reflect.reference == zeros.name and len(zeros.seeds) >= 10
    committed = {c.key for c in default.arm("l2/vgg13").configs(default.dataset, default.protocol)}
    assert {c.key for c in zeros.configs(pad.dataset, pad.protocol)} <= committed
    for z, r in zip(zeros.configs(pad.dataset, pad.protocol), reflect.configs(pad.dataset, pad.protocol)):
        assert z.replace(padding_mode="reflect") == r and z.padding_mode == "zeros"
    assert "Expected direction: zero > reflect" in pad.design, "pre-registered before training"


def test_the_paper_profile_is_the_papers_protocol():
    from locolib.config import PAPER_MILESTONES, RunConfig
    from locolib.reg import table6_loco_params

    assert set(plans.GROUPS["paper"]) == {"paper_cifar10", "paper_cifar100", "paper_fashion_mnist"}
    for name in plans.GROUPS["paper"]:
        s = plans.study(name)
        runs = s.configs([*s.parameter_arms, *s.arms])
        assert all(c.epochs == 250 and c.batch_size == 128 and c.lr == 0.1 and c.momentum == 0.9
                   and c.lr_decay == 0.316 and c.milestones == PAPER_MILESTONES and c.lam == 5e-4
                   and c.width == 1.0 and c.pad == 4 and c.kernel_size == 3 for c in runs), name
        assert {c.network for c in runs} == {"vgg13", "mobilenet", "resnet18"}
        assert all(n >= plans.PAPER_RUNS for n in map(len, s.layerwise.values())), "at least the paper's 20"
        evaluated = {seed for a in s.arms for seed in a.seeds}
        assert not evaluated & {seed for a in s.parameter_arms for seed in a.seeds}
        # Table 6 (c = 1.5) for every network, each from its own network's parameter runs
        params = []
        for a in s.parameter_arms:
            cfg = a.configs(s.dataset, s.protocol)[0]
            params.append({"config": cfg.to_dict(), "weight_stats": _fake_stats(cfg)})
        arms = s.layerwise_arms(params)
        assert {a.network for a in arms} == {"vgg13", "mobilenet", "resnet18"}
        expected = table6_loco_params(params, c=1.5)
        for a in arms:
            assert a.purpose == "Table 5" and a.reference == f"l2/{a.network}"
            assert a.fields["gamma"] == expected[f"{s.dataset}/{a.network}"]["gamma"]
            assert isinstance(RunConfig(s.dataset, a.network, "loco", 0, **a.fields).gamma, tuple)


def _fake_stats(cfg):
    """weight_stats of an untrained network of ``cfg`` (enough for Table 6's arithmetic)."""
    import torch

    from locolib.data import dataset_spec
    from locolib.kernels import weight_stats
    from locolib.models import build_model

    spec = dataset_spec(cfg.dataset)
    torch.manual_seed(0)
    return weight_stats(build_model(cfg.network, spec.num_classes, spec.channels, width=1 / 16))


def test_paper_pairs_are_sized_from_the_papers_stars():
    # *** at a gain d over 20 + 20 runs: one run's spread is at most d / (t_.999,38 sqrt(2/20))
    sd = plans.paper_paired_sd("cifar100", "vgg13")
    assert sd == pytest.approx(2 ** 0.5 * 0.82 / (3.319 * (2 / 20) ** 0.5), rel=1e-3)
    from locolib.stats import minimum_detectable_effect

    n = plans.pairs_to_detect(0.82, sd)
    assert minimum_detectable_effect(sd, n) <= 0.82 < minimum_detectable_effect(sd, n - 1)
    assert plans.paper_difference("fashion_mnist", "resnet18") == pytest.approx(0.11)


def test_a_study_refuses_a_device_this_machine_lacks(capsys):
    with pytest.raises(SystemExit) as exit_:
        plans.main(["smoke", "--device", "cuda:99", "--results", "/nonexistent"])
    assert exit_.value.code == 2 and "cuda:99" in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_runs_on_a_dask_cluster(tmp_path, monkeypatch, capsys):
    """``--dask`` hands the study's runs to locolib.cluster.run_on_dask, with the study's
    results folder and device; the records are those of the study."""
    from locolib import cluster
    from locolib.sweep import run_sweep

    calls = []

    def run_on_dask(configs, options, results_dir=None, device=None, threads=None, log=None):
        calls.append((options.address, [c.key for c in configs], device))
        return run_sweep(configs, results_dir, progress=False, log=None)

    monkeypatch.setattr(cluster, "run_on_dask", run_on_dask)
    assert plans.main(["padding_smoke", "--dask", "local", "--dask-workers", "2", "--dry-run"]) == 0
    assert "127.0.0.1" in capsys.readouterr().out and not calls
    assert plans.main(["padding_smoke", "--dask", "local", "--device", "cpu", "--quiet",
                       "--results", str(tmp_path)]) == 0
    s = plans.study("padding_smoke")
    assert calls == [("local", [c.key for c in s.configs()], "cpu")]
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(c.key for c in s.configs())


def test_paper_table5_is_complete():
    p = plans.paper_table5()
    assert len(p) == 9 and set(p.dataset) == {"cifar10", "cifar100", "fashion_mnist"}
    assert set(p.network) == {"vgg13", "resnet18", "mobilenet"}
    assert (p.paper_difference < 0).all()  # the paper reports gains everywhere
    # "relatively about 2%, and from 0.1% up to 0.8% absolutely" (Section 7.2)
    assert p.paper_difference.abs().between(0.1 - 1e-9, 0.82 + 1e-9).all()
    assert p.paper_rel_difference.abs().mean() == pytest.approx(0.02, abs=0.005)
