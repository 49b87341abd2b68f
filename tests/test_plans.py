"""The book's study (locolib.plans) and the regularization dose."""

import pytest

from locolib import plans
from locolib.config import RunConfig
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


@pytest.mark.parametrize("profile", ["smoke", "default"])
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


def test_the_padding_study_reuses_the_committed_zero_padding_runs():
    pad, default = plans.study("padding"), plans.study("default")
    zeros, reflect = pad.arm("zeros/vgg13"), pad.arm("reflect/vgg13")
    assert reflect.reference == zeros.name and len(zeros.seeds) >= 10
    committed = {c.key for c in default.arm("l2/vgg13").configs(default.dataset, default.protocol)}
    assert {c.key for c in zeros.configs(pad.dataset, pad.protocol)} <= committed
    for z, r in zip(zeros.configs(pad.dataset, pad.protocol), reflect.configs(pad.dataset, pad.protocol)):
        assert z.replace(padding_mode="reflect") == r and z.padding_mode == "zeros"
    assert "Expected direction: zero > reflect" in pad.design, "pre-registered before training"
