"""The book's training study, defined once per profile: every run that chapters 04-07 use.

A study is a list of :class:`Arm` s. An arm is one network trained with one regularizer setting
over a list of seeds; most arms name a ``reference`` arm (same network, same seeds) that they
are compared with pair by pair: both arms of a pair share initialisation, batch order and
augmentation, so their difference is the regularizer's effect plus training noise.

The default profile (offline, 2 CPU cores, about an hour) trains on ``mnist5k`` (1,000
training and 4,000 test images of real MNIST):

* Table 5: standard L2 against LOCO-REG at the paper's ``lam`` for VGG13, MobileNet and
  ResNet18;
* the dose: the paper's 250 epochs on 50,000 images move the weights much further than a short
  run on 1,000 (:func:`locolib.train.regularization_dose`), so VGG13 is also trained at the
  ``lam`` that matches the paper's dose;
* positive controls (VGG13, at the dose-matched ``lam``): strong locality, strong
  anti-locality, and L2 at ten times the paper's ``lam``: effects the design must detect;
* Table 6: layer-wise parameters from L2 runs on seeds disjoint from the evaluated ones, and
  LOCO-REG trained with every modulation factor c of the paper.

``python -m locolib.plans default`` trains a profile (run it in two shells at once to use two
cores: runs are claimed with lock files); the chapters read the records.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from locolib.config import LOCO_DEFAULT, RunConfig
from locolib.data import dataset_spec
from locolib.experiments import finished_records, history_frame, table6_loco_params
from locolib.reg import realized_factor
from locolib.sweep import print_status, run_sweep
from locolib.train import dose_matched_lam, paper_dose, regularization_dose

__all__ = ["Arm", "Study", "STUDIES", "FEATURE_MAP_RUNS", "feature_map_configs", "study", "run_study",
           "arm_frame", "arm_history", "main", "Hypothesis", "Preregistration", "SeededSplitArm",
           "MECHANISM", "MECHANISM_SMOKE", "PREREGISTERED", "mechanism_frame"]

PAPER_LAM = 5e-4
#: The book's fixed LOCO-REG: centre regularized half, corners twice as strongly as the edges.
FIXED_LOCO = LOCO_DEFAULT
#: Positive controls: ten times more (or less) regularization at the centre than at the corners.
STRONG_LOCALITY = {"gamma": 0.1, "eta": 10.0}
STRONG_ANTI_LOCALITY = {"gamma": 10.0, "eta": 0.1}
TABLE6_CS = (0.5, 1.0, 1.5, 2.5)


@dataclass(frozen=True)
class Arm:
    """One arm: ``network`` trained with ``regularizer`` and ``fields`` over ``seeds``."""

    name: str
    network: str
    regularizer: str
    seeds: tuple[int, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)
    reference: str | None = None  # the arm it is compared with, pair by pair
    purpose: str = ""

    def configs(self, dataset: str, protocol: Mapping[str, Any]) -> list[RunConfig]:
        return [RunConfig(dataset, self.network, self.regularizer, s, **{**protocol, **self.fields})
                for s in self.seeds]


@dataclass(frozen=True)
class Study:
    """A profile's study: the dataset, the protocol shared by every run, and the arms."""

    profile: str
    dataset: str
    protocol: Mapping[str, Any]
    arms: tuple[Arm, ...]
    parameter_arm: Arm  # L2 runs on disjoint seeds, only to derive Table 6's parameters
    table6_network: str
    table6_seeds: tuple[int, ...]
    cs: tuple[float, ...] = TABLE6_CS

    def configs(self, arms: Iterable[Arm] | None = None) -> list[RunConfig]:
        """The runs of ``arms`` (default: every arm but Table 6's), seed-major: a sweep stopped
        half-way has complete pairs."""
        arms = list(self.arms if arms is None else arms)
        per_arm = [a.configs(self.dataset, self.protocol) for a in arms]
        out, seen = [], set()
        for i in range(max(len(c) for c in per_arm)):
            for runs in per_arm:
                if i < len(runs) and runs[i].key not in seen:
                    seen.add(runs[i].key)
                    out.append(runs[i])
        return out

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def table6_arms(self, parameter_records: Sequence[Mapping[str, Any]]) -> list[Arm]:
        """LOCO-REG with Table 6's layer-wise parameters for every c, from the records of
        :attr:`parameter_arm`, compared with the L2 arm of the same network."""
        cell = f"{self.dataset}/{self.table6_network}"
        arms = []
        for c in self.cs:
            p = table6_loco_params(parameter_records, c=c)[cell]
            arms.append(Arm(f"table6_c{c:g}", self.table6_network, "loco", self.table6_seeds,
                            {"gamma": p["gamma"], "eta": p["eta"]},
                            reference=f"l2/{self.table6_network}", purpose="Table 6"))
        return arms


def _arms(networks: Mapping[str, Mapping[str, Any]], pairs: Mapping[str, int], dose: Mapping[str, int],
          controls: int, protocol: Mapping[str, Any], dataset: str) -> list[Arm]:
    arms: list[Arm] = []
    n_train = dataset_spec(dataset).n_train
    for net, extra in networks.items():
        seeds = tuple(range(pairs[net]))
        arms += [Arm(f"l2/{net}", net, "l2", seeds, dict(extra), purpose="Table 5"),
                 Arm(f"loco/{net}", net, "loco", seeds, {**extra, **FIXED_LOCO},
                     reference=f"l2/{net}", purpose="Table 5")]
        if net not in dose:
            continue
        lam = round(dose_matched_lam(RunConfig(dataset, net, "l2", 0, **{**protocol, **extra}),
                                     protocol.get("train_subset") or n_train, paper_dose()), 4)
        dosed = {**extra, "lam": lam}
        dseeds = seeds[:dose[net]]
        arms += [Arm(f"l2_dose/{net}", net, "l2", dseeds, dosed, purpose="dose"),
                 Arm(f"loco_dose/{net}", net, "loco", dseeds, {**dosed, **FIXED_LOCO},
                     reference=f"l2_dose/{net}", purpose="dose")]
        cseeds = seeds[:controls]
        arms += [Arm(f"strong_locality/{net}", net, "loco", cseeds, {**dosed, **STRONG_LOCALITY},
                     reference=f"l2_dose/{net}", purpose="positive control"),
                 Arm(f"strong_anti_locality/{net}", net, "loco", cseeds,
                     {**dosed, **STRONG_ANTI_LOCALITY}, reference=f"l2_dose/{net}",
                     purpose="positive control"),
                 Arm(f"l2_x10/{net}", net, "l2", cseeds, {**extra, "lam": 10 * PAPER_LAM},
                     reference=f"l2/{net}", purpose="positive control")]
    return arms


def _study(profile: str, dataset: str, protocol: Mapping[str, Any],
           networks: Mapping[str, Mapping[str, Any]], pairs: Mapping[str, int],
           dose: Mapping[str, int], controls: int, table6_pairs: int, parameter_runs: int) -> Study:
    net = "vgg13"
    extra = dict(networks[net])
    protocol = {"flip": dataset_spec(dataset).flip, **protocol}  # no flips where they change labels
    return Study(
        profile, dataset, dict(protocol),
        tuple(_arms(networks, pairs, dose, controls, protocol, dataset)),
        # Seeds from 1000 on: disjoint from every evaluated seed.
        Arm(f"l2_parameters/{net}", net, "l2", tuple(range(1000, 1000 + parameter_runs)), extra,
            purpose="Table 6 parameters"),
        net, tuple(range(table6_pairs)))


_OFFLINE = dict(epochs=30, batch_size=64, lr=0.1, width=0.125, pad=2, eval_every=10)
#: The GPU profiles keep the paper's batch, augmentation and schedule (scaled to fewer epochs).
_COLAB = dict(epochs=15, train_subset=15_000, eval_every=5)
_GPU = dict(epochs=15, eval_every=5)

#: The study of each profile (chapters 04-07 take theirs from here).
STUDIES: dict[str, Study] = {
    # Seconds on a CPU: the chapters' code paths, not evidence.
    "smoke": _study("smoke", "digits", {**_OFFLINE, "epochs": 2, "train_subset": 256,
                                        "eval_every": 1},
                    {"vgg13": {}, "mobilenet": {}, "resnet18": {"width": 0.0625}},
                    {"vgg13": 2, "mobilenet": 2, "resnet18": 2}, {"vgg13": 2}, 2, 2, 2),
    # About 90 minutes on 2 CPU cores (two processes), offline. Pairs per arm: 20 for the
    # Table 5 arms of VGG13, 16 for MobileNet, 10 for ResNet18, 12 at the paper's dose, 8 for
    # the positive controls and Table 6. Widths: the narrowest at which every L2 run converges
    # (MobileNet at 1/8 width stays below 99% training accuracy in 30 epochs).
    "default": _study("default", "mnist5k", _OFFLINE,
                      {"vgg13": {}, "mobilenet": {"width": 0.25}, "resnet18": {"width": 0.0625}},
                      {"vgg13": 20, "mobilenet": 16, "resnet18": 10}, {"vgg13": 12}, 8, 8, 10),
    # Under an hour on Colab's free T4, CIFAR-10 (estimated: locolib.budget.profile_summary).
    "colab": _study("colab", "cifar10", _COLAB,
                    {"vgg13": {"width": 0.5}, "mobilenet": {"width": 0.5},
                     "resnet18": {"width": 0.5}},
                    {"vgg13": 10, "mobilenet": 10, "resnet18": 10}, {"vgg13": 10}, 5, 6, 6),
    # A few GPU-hours on an H100-class GPU for the paper's three datasets and networks at full
    # width (about an hour each; locolib.budget.profile_summary).
    **{name: _study(name, dataset, _GPU, {"vgg13": {}, "mobilenet": {}, "resnet18": {}},
                    {"vgg13": 10, "mobilenet": 10, "resnet18": 10}, {"vgg13": 10}, 5, 10, 10)
       for name, dataset in (("gpu", "cifar10"), ("gpu_cifar100", "cifar100"),
                             ("gpu_fashion_mnist", "fashion_mnist"))},
}


#: Chapter 04's runs: VGG13 on the digits with standard L2 and the book's fixed LOCO-REG, their
#: weights kept for feature maps and filters.
FEATURE_MAP_RUNS: dict[str, dict[str, Any]] = {
    "smoke": {"width": 0.0625, "epochs": 2, "train_subset": 256, "seeds": (0,)},
    "default": {"width": 0.125, "epochs": 40, "train_subset": None, "seeds": (0, 1)},
}


def feature_map_configs(profile: str) -> dict[tuple[str, int], RunConfig]:
    """Chapter 04's runs of ``profile``, keyed by (regularizer, seed)."""
    if profile not in FEATURE_MAP_RUNS:
        raise ValueError(f"unknown profile {profile!r}; choose one of {list(FEATURE_MAP_RUNS)}")
    p = dict(FEATURE_MAP_RUNS[profile])
    seeds = p.pop("seeds")
    return {(reg, seed): RunConfig("digits", "vgg13", reg, seed, **p, **(FIXED_LOCO if reg == "loco" else {}))
            for seed in seeds for reg in ("l2", "loco")}


def study(profile: str) -> Study:
    """The study of ``profile`` (a key of :data:`STUDIES`)."""
    if profile not in STUDIES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {list(STUDIES)}")
    return STUDIES[profile]


def run_study(profile: str, results_dir: str | Path | None = None, **sweep: Any) -> list[Arm]:
    """Train every run of ``profile``'s study that has no record yet (Table 6's parameter runs
    first: its LOCO-REG arms depend on them) and return all arms, Table 6's included.
    ``sweep``: keyword arguments of :func:`locolib.sweep.run_sweep` (device, progress, ...)."""
    s = study(profile)
    params = run_sweep(s.configs([s.parameter_arm]), results_dir, wait=True, **sweep)
    arms = [*s.arms, *s.table6_arms(params)]
    run_sweep(s.configs(arms), results_dir, wait=True, **sweep)
    return arms


def arm_frame(s: Study, arms: Sequence[Arm], results_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per finished run of ``arms``: arm, reference, purpose, network, seed, lam,
    regularization dose, test error, final training accuracy (running, on augmented batches,
    and on the clean training images), wall time, device, git commit and key. Trains nothing."""
    rows = []
    for a in arms:
        for rec in finished_records(a.configs(s.dataset, s.protocol), results_dir):
            cfg = RunConfig.from_dict(rec["config"])
            rows.append({"arm": a.name, "reference": a.reference, "purpose": a.purpose,
                         "network": a.network, "seed": cfg.seed, "lam": cfg.lam,
                         "dose": regularization_dose(cfg, rec["n_train"]),
                         "test_error": rec["final"]["test_error"],
                         "train_acc": rec["final"]["train_acc"],
                         "clean_train_acc": rec["final"]["clean_train_acc"],
                         "total_s": rec["timing"]["total_s"], "device": rec["device"]["name"],
                         "git_commit": (rec.get("git") or {}).get("commit"), "key": rec["key"]})
    return pd.DataFrame(rows, columns=["arm", "reference", "purpose", "network", "seed", "lam",
                                       "dose", "test_error", "train_acc", "clean_train_acc",
                                       "total_s", "device", "git_commit", "key"])


def arm_history(s: Study, arms: Sequence[Arm], results_dir: str | Path | None = None) -> pd.DataFrame:
    """Learning curves of the finished runs of ``arms``: :func:`locolib.experiments.history_frame`
    with an ``arm`` column."""
    frames = [history_frame(finished_records(a.configs(s.dataset, s.protocol), results_dir))
              .assign(arm=a.name) for a in arms]
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m locolib.plans",
                                description="Train the book's study of one profile.")
    p.add_argument("profile", choices=list(STUDIES))
    p.add_argument("--results", type=Path, default=None, help="results folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="list the study's runs and their status; train nothing")
    a = p.parse_args(argv)
    if a.dry_run:
        s = study(a.profile)
        configs = s.configs([s.parameter_arm, *s.arms])
        print(f"{a.profile}: {len(configs)} runs" + (", then Table 6's LOCO-REG runs, whose "
              "parameters come from the first arm's records" if s.cs else ""))
        print_status(configs, a.results)
        if a.profile in PREREGISTERED:
            print(PREREGISTERED[a.profile].summary())
        return 0

    torch.set_num_threads(a.threads)
    arms = run_study(a.profile, a.results, progress=not a.quiet,
                     log=None if a.quiet else print)
    print(f"{a.profile}: {sum(len(x.seeds) for x in arms)} runs in {len(arms)} arms have records")
    return 0


# ============================================================================================
# The pre-registered mechanism study: every regularizer at its own best lam
# ============================================================================================
# Written down before any of its runs was trained: the arms, the lam grid, the seeds, how lam is
# chosen (validation error only), the hypotheses with their expected directions, their
# multiplicity families, the test and the adjustment. Chapter 05 tests exactly these
# (locolib.stats.contrast_table on MECHANISM.hypotheses).

@dataclass(frozen=True)
class Hypothesis:
    """One pre-registered contrast: regularizer ``contrast[0]`` at its best lam against
    ``contrast[1]`` at its best, paired over the shared seeds on test error. ``direction``: the
    expected sign of a - b ("less": a has the lower test error). Holm's adjustment runs within
    ``family``."""

    name: str
    contrast: tuple[str, str]
    direction: str
    family: str
    claim: str


@dataclass(frozen=True)
class Preregistration:
    """A pre-registered lam sweep: the :class:`Study` to train, the regularizers (label ->
    registry name and fields), the lam grid, the seeds, how lam is chosen and what is tested.

    Analysis (:mod:`locolib.stats`): each regularizer's lam is the one of lowest mean
    ``select_on`` over the seeds (:func:`~locolib.stats.best_lams`); each hypothesis is a
    two-sided paired t-test on the test error at the two lams chosen
    (:func:`~locolib.stats.contrast_table`), Holm-adjusted within its family; a hypothesis is
    supported where the adjusted p is below ``alpha`` and the difference has the expected sign.
    Runs ending below ``converged_acc`` clean training accuracy are counted per arm and lam
    (:func:`~locolib.stats.convergence`) and reported, not dropped.
    """

    study: Study
    regularizers: Mapping[str, tuple[str, Mapping[str, Any]]]
    lams: tuple[float, ...]
    seeds: tuple[int, ...]
    hypotheses: tuple[Hypothesis, ...]
    seconds_per_run: float  # one CPU thread, measured (see MECHANISM)
    alpha: float = 0.05
    adjustment: str = "holm"
    test: str = "paired t-test, two-sided (scipy.stats.ttest_rel)"
    select_on: str = "val_error"
    converged_acc: float = 0.99

    def summary(self) -> str:
        n = len(self.study.configs())
        hours = n * self.seconds_per_run / 3600
        return (f"{len(self.regularizers)} regularizers x {len(self.lams)} lams x "
                f"{len(self.seeds)} seeds = {n} runs, about {hours:.1f} CPU-hours on one thread "
                f"({hours / 2:.1f} h wall time in two processes); families: "
                + "; ".join(f"{f}: {', '.join(h.name for h in self.hypotheses if h.family == f)}"
                            for f in dict.fromkeys(h.family for h in self.hypotheses)))


@dataclass(frozen=True)
class SeededSplitArm(Arm):
    """An arm whose runs draw their data split from their own seed (``data_seed = seed``):
    training images and the validation/test halves change with the seed, and the arms that
    share a seed share its split, so paired contrasts stay paired."""

    def configs(self, dataset: str, protocol: Mapping[str, Any]) -> list[RunConfig]:
        return [c.replace(data_seed=c.seed) for c in super().configs(dataset, protocol)]


#: The regularizers of the mechanism study: label -> (registry name, fields besides lam).
MECHANISM_REGULARIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "l2": ("l2", {}),
    "loco": ("loco", dict(FIXED_LOCO)),
    "mirror": ("loco", {"gamma": FIXED_LOCO["eta"], "eta": FIXED_LOCO["gamma"]}),
    "permuted": ("loco_permuted", dict(FIXED_LOCO)),
    "strong_locality": ("loco", dict(STRONG_LOCALITY)),
    "strong_anti_locality": ("loco", dict(STRONG_ANTI_LOCALITY)),
}
#: The paper's lam times 10 ** (i / 2), i = 0..5: 5e-4 to 0.158, past the dose-matched 0.1037.
MECHANISM_LAMS: tuple[float, ...] = tuple(float(f"{PAPER_LAM * 10 ** (i / 2):.4g}") for i in range(6))
#: Seeds 3000-3011: disjoint from every seed that chose anything (the default study's 0-19,
#: Table 6's parameter runs from 1000 on).
MECHANISM_SEEDS: tuple[int, ...] = tuple(range(3000, 3012))
MECHANISM_HYPOTHESES: tuple[Hypothesis, ...] = (
    Hypothesis("H1", ("loco", "l2"), "less", "primary",
               "LOCO-REG (0.5, 2) at its best lam has a lower test error than L2 at its best"),
    Hypothesis("H2", ("loco", "mirror"), "less", "primary",
               "direction, strength matched: LOCO-REG (0.5, 2) beats its mirror (2, 0.5)"),
    Hypothesis("H3", ("loco", "permuted"), "less", "primary",
               "radial order: LOCO-REG (0.5, 2) beats the same nine factors permuted"),
    Hypothesis("H4", ("strong_locality", "strong_anti_locality"), "less", "secondary",
               "direction at strength (0.1, 10) vs (10, 0.1): locality beats anti-locality"),
    Hypothesis("H5", ("strong_locality", "l2"), "less", "secondary",
               "strong locality at its best lam beats L2 at its best"),
    Hypothesis("H6", ("strong_anti_locality", "l2"), "greater", "secondary",
               "strong anti-locality at its best lam is worse than L2 at its best"),
)


def _mechanism(profile: str, dataset: str, protocol: Mapping[str, Any], lams: Sequence[float],
               seeds: Sequence[int], seconds_per_run: float) -> Preregistration:
    net = "vgg13"
    arms = tuple(
        SeededSplitArm(f"{label}/lam={lam:g}", net, reg, tuple(seeds), {**fields, "lam": lam},
                       reference=None if label == "l2" else f"l2/lam={lam:g}", purpose=label)
        for label, (reg, fields) in MECHANISM_REGULARIZERS.items() for lam in lams)
    study = Study(profile, dataset, dict(protocol), arms,
                  parameter_arm=Arm("no Table 6", net, "l2", ()),  # no Table 6 here
                  table6_network=net, table6_seeds=(), cs=())
    return Preregistration(study, MECHANISM_REGULARIZERS, tuple(lams), tuple(seeds),
                           MECHANISM_HYPOTHESES, seconds_per_run)


#: The default study's protocol for mnist5k VGG13 (30 epochs, batch 64, lr 0.1, width 1/8, pad
#: 2, no flips) with half of the 4,000 held-out images as validation set (200 per class).
#: seconds_per_run: median 34.8 s (setup and training) of the default study's 130 mnist5k VGG13
#: records, Intel Xeon, one thread; 40 s leaves room for the validation evaluations.
MECHANISM = _mechanism("mechanism", "mnist5k", {**STUDIES["default"].protocol, "validation": 2000},
                       MECHANISM_LAMS, MECHANISM_SEEDS, 40.0)
#: The same code paths in seconds: digits, 1 epoch on 128 images, two lams, two seeds.
MECHANISM_SMOKE = _mechanism("mechanism_smoke", "digits",
                             {**STUDIES["smoke"].protocol, "epochs": 1, "train_subset": 128,
                              "width": 0.0625, "validation": 250},
                             MECHANISM_LAMS[::5], MECHANISM_SEEDS[:2], 1.0)
#: The pre-registered studies by profile; ``python -m locolib.plans mechanism`` trains one.
PREREGISTERED: dict[str, Preregistration] = {p.study.profile: p for p in (MECHANISM, MECHANISM_SMOKE)}
STUDIES.update({name: p.study for name, p in PREREGISTERED.items()})


def mechanism_frame(plan: Preregistration, results_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per finished run of ``plan``: regularizer (the label), lam, seed, test_error,
    val_error, clean_train_acc, realized_sq and realized_abs (:func:`locolib.reg.realized_factor`)
    and key; the input of :mod:`locolib.stats`' best_lams, contrast_table, lam_curves and
    convergence. Trains nothing."""
    s = plan.study
    rows = []
    for a in s.arms:
        for rec in finished_records(a.configs(s.dataset, s.protocol), results_dir):
            cfg = RunConfig.from_dict(rec["config"])
            rows.append({"regularizer": a.purpose, "lam": cfg.lam, "seed": cfg.seed,
                         "test_error": rec["final"]["test_error"],
                         "val_error": rec["final"]["val_error"],
                         "clean_train_acc": rec["final"]["clean_train_acc"],
                         "realized_sq": realized_factor(cfg, rec["weight_stats"], "sq"),
                         "realized_abs": realized_factor(cfg, rec["weight_stats"], "abs"),
                         "key": rec["key"]})
    return pd.DataFrame(rows, columns=["regularizer", "lam", "seed", "test_error", "val_error",
                                       "clean_train_acc", "realized_sq", "realized_abs", "key"])


if __name__ == "__main__":
    sys.exit(main())
