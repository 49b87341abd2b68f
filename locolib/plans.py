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

The GPU profiles test Table 5 as the paper printed it: LOCO-REG with Table 6's layer-wise
parameters (c = 1.5) for every network, from parameter runs of that network on disjoint seeds.
``paper_cifar10``, ``paper_cifar100`` and ``paper_fashion_mnist`` (the group ``paper``) are the
paper's design itself (250 epochs, full width), with pairs sized from the spread its stars allow
(:func:`paper_paired_sd`); ``gpu*`` and ``colab`` are the same design at 15 epochs. Each states
its dose, pairs and paired SD in :attr:`Study.design`; :mod:`locolib.budget` prices it. The
``padding`` study (chapter 07) changes only the padding of the default study's L2 runs.
``feature_maps`` (chapter 04) and ``kernel5`` (chapter 07, the 5 x 5 VGG13) are those chapters'
own small runs, whose weights the chapters keep; each has a ``_smoke`` twin.

``python -m locolib.plans default`` trains a profile (run it in two shells at once to use two
cores: runs are claimed with lock files); ``--dry-run`` lists it, with cost and power for a GPU
profile. The chapters read the records.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import stats as st

from locolib import cluster
from locolib.config import LOCO_DEFAULT, RunConfig
from locolib.data import dataset_spec
from locolib.reg import table6_loco_params
from locolib.results import RECORD_COLUMNS, finished_records, history_frame, record_row
from locolib.stats import minimum_detectable_effect
from locolib.sweep import print_status, run_sweep
from locolib.train import check_device, dose_matched_lam, paper_dose, regularization_dose

__all__ = ["Arm", "Study", "STUDIES", "GROUPS", "PAPER_TABLE5", "paper_table5", "paper_difference", "paper_paired_sd",
           "pairs_to_detect", "study", "run_study",
           "arm_frame", "arm_history", "main", "Hypothesis", "Preregistration", "SeededSplitArm",
           "MECHANISM", "MECHANISM_SMOKE", "MECHANISM_EXTENSION", "MECHANISM_RETRAIN", "RETRAIN_DIR",
           "MECHANISM_STUDIES",
           "PREREGISTERED", "mechanism_frame"]

PAPER_LAM = 5e-4
#: The book's fixed LOCO-REG: centre regularized half, corners twice as strongly as the edges.
FIXED_LOCO = LOCO_DEFAULT
#: Positive controls: ten times more (or less) regularization at the centre than at the corners.
STRONG_LOCALITY = {"gamma": 0.1, "eta": 10.0}
STRONG_ANTI_LOCALITY = {"gamma": 10.0, "eta": 0.1}
TABLE6_CS = (0.5, 1.0, 1.5, 2.5)
#: The paper's Table 5: test error (%) with standard L2 and with LOCO-REG (Table 6's parameters,
#: c = 1.5), and the stars of their one-sided t test; 20 networks an arm (Section 7).
PAPER_TABLE5: dict[tuple[str, str], tuple[float, float, str]] = {
    ("cifar10", "vgg13"): (6.26, 6.13, "*"), ("cifar10", "resnet18"): (5.29, 5.18, "**"),
    ("cifar10", "mobilenet"): (11.01, 10.64, "*"),
    ("cifar100", "vgg13"): (27.13, 26.31, "***"), ("cifar100", "resnet18"): (25.61, 25.15, "***"),
    ("cifar100", "mobilenet"): (36.3, 35.49, "***"),
    ("fashion_mnist", "vgg13"): (5.0, 4.9, "***"), ("fashion_mnist", "resnet18"): (4.65, 4.54, "**"),
    ("fashion_mnist", "mobilenet"): (5.84, 5.73, "**"),
}
PAPER_RUNS = 20
_STAR_LEVELS = {"*": 0.1, "**": 0.01, "***": 0.001}
#: The modulation factor of the paper's Table 5 runs (Section 7).
PAPER_C = 1.5


@dataclass(frozen=True)
class Arm:
    """One arm: ``network`` trained with ``regularizer`` and ``fields`` over ``seeds``.
    (Chapters 04-07.)"""

    name: str
    network: str
    regularizer: str
    seeds: tuple[int, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)
    reference: str | None = None  # the arm it is compared with, pair by pair
    purpose: str = ""
    c: float | None = None  # Table 6's c, for an arm with its layer-wise parameters (chapter 06)

    def configs(self, dataset: str, protocol: Mapping[str, Any]) -> list[RunConfig]:
        return [RunConfig(dataset, self.network, self.regularizer, s, **{**protocol, **self.fields})
                for s in self.seeds]


@dataclass(frozen=True)
class Study:
    """A profile's study: the dataset, the protocol shared by every run, and the arms.

    Arms whose LOCO-REG parameters come from trained networks are built by
    :meth:`layerwise_arms` once the :attr:`parameter_arms` (standard L2 on seeds disjoint from
    every evaluated seed) have records: chapter 06's sweep over Table 6's c for
    :attr:`table6_network`, and, for every network of :attr:`layerwise`, the paper's Table 5
    LOCO-REG arm (Table 6's parameters at c = 1.5). ``design`` states what the study tests and
    how its pairs were sized.
    """

    profile: str
    dataset: str
    protocol: Mapping[str, Any]
    arms: tuple[Arm, ...]
    parameter_arms: tuple[Arm, ...] = ()
    table6_network: str | None = None
    table6_seeds: tuple[int, ...] = ()
    cs: tuple[float, ...] = TABLE6_CS
    layerwise: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    design: str = ""
    #: The spread of the paired differences of test error (pp) each network's pairs were sized
    #: with, and where it comes from (:mod:`locolib.budget` turns it into detectable effects).
    paired_sd: Mapping[str, float] = field(default_factory=dict)
    sd_source: str = ""

    @property
    def parameter_arm(self) -> Arm:
        """The parameter arm of :attr:`table6_network` (chapter 06)."""
        return next(a for a in self.parameter_arms if a.network == self.table6_network)

    def configs(self, arms: Iterable[Arm] | None = None) -> list[RunConfig]:
        """The runs of ``arms`` (default: every arm but the layer-wise ones), seed-major: a
        sweep stopped half-way has complete pairs."""
        arms = list(self.arms if arms is None else arms)
        per_arm = [a.configs(self.dataset, self.protocol) for a in arms]
        out, seen = [], set()
        for i in range(max((len(c) for c in per_arm), default=0)):
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

    def layerwise_arms(self, parameter_records: Sequence[Mapping[str, Any]]) -> list[Arm]:
        """LOCO-REG with Table 6's layer-wise parameters, from the records of
        :attr:`parameter_arms`, each compared with the L2 arm of its network: the paper's
        Table 5 arm (``loco_table6/NET``, c = :data:`PAPER_C`) for every network of
        :attr:`layerwise`, and ``table6_cC`` for every c of :attr:`cs` on
        :attr:`table6_network` (chapter 06)."""
        def arm(name: str, net: str, c: float, seeds: tuple[int, ...], purpose: str) -> Arm:
            p = table6_loco_params(parameter_records, c=c)[f"{self.dataset}/{net}"]
            extra = next(a.fields for a in self.parameter_arms if a.network == net)
            return Arm(name, net, "loco", seeds, {**extra, "gamma": p["gamma"], "eta": p["eta"]},
                       reference=f"l2/{net}", purpose=purpose, c=c)

        arms = [arm(f"loco_table6/{net}", net, PAPER_C, seeds, "Table 5")
                for net, seeds in self.layerwise.items()]
        if self.table6_network is not None:
            arms += [arm(f"table6_c{c:g}", self.table6_network, c, self.table6_seeds, "Table 6")
                     for c in self.cs]
        return arms


def _arms(networks: Mapping[str, Mapping[str, Any]], pairs: Mapping[str, int], dose: Mapping[str, int],
          controls: int, protocol: Mapping[str, Any], dataset: str, fixed: bool = True) -> list[Arm]:
    """Table 5's L2 arms, and the fixed LOCO-REG against them where ``fixed`` (else the paper's
    LOCO-REG comes from :meth:`Study.layerwise_arms`); the dose arms and positive controls of
    the networks in ``dose``."""
    arms: list[Arm] = []
    n_train = dataset_spec(dataset).n_train
    for net, extra in networks.items():
        seeds = tuple(range(pairs[net]))
        arms.append(Arm(f"l2/{net}", net, "l2", seeds, dict(extra), purpose="Table 5"))
        if fixed:
            arms.append(Arm(f"loco/{net}", net, "loco", seeds, {**extra, **FIXED_LOCO},
                            reference=f"l2/{net}", purpose="Table 5"))
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
           dose: Mapping[str, int], controls: int, table6_pairs: int, parameter_runs: int,
           layerwise: bool = False, **sizing: Any) -> Study:
    """A study with Table 6's c sweep on VGG13. ``layerwise``: Table 5's LOCO-REG arm of every
    network uses Table 6's parameters (c = 1.5) from parameter runs of that network, as the
    paper's; else the fixed LOCO-REG, with parameter runs for VGG13 only. ``sizing``:
    ``paired_sd``, ``sd_source``, ``design`` of :class:`Study`."""
    protocol = {"flip": dataset_spec(dataset).flip, **protocol}  # no flips where they change labels
    with_params = networks if layerwise else {"vgg13": networks["vgg13"]}
    return Study(
        profile, dataset, dict(protocol),
        tuple(_arms(networks, pairs, dose, controls, protocol, dataset, fixed=not layerwise)),
        tuple(_parameter_arm(net, extra, parameter_runs) for net, extra in with_params.items()),
        "vgg13" if table6_pairs else None, tuple(range(table6_pairs)),
        layerwise={net: tuple(range(pairs[net])) for net in networks} if layerwise else {},
        **sizing)


def _parameter_arm(net: str, extra: Mapping[str, Any], runs: int) -> Arm:
    # Seeds from 1000 on: disjoint from every evaluated seed.
    return Arm(f"l2_parameters/{net}", net, "l2", tuple(range(1000, 1000 + runs)), dict(extra),
               purpose="Table 6 parameters")


def paper_difference(dataset: str, network: str) -> float:
    """The paper's Table 5 gain of LOCO-REG over standard L2 (pp of test error).
    (Chapter 05; Table 5.)"""
    l2, loco, _ = PAPER_TABLE5[(dataset, network)]
    return round(l2 - loco, 4)


def paper_table5() -> pd.DataFrame:
    """:data:`PAPER_TABLE5` as a DataFrame (dataset, network, paper_l2, paper_loco, paper_stars)
    with the absolute and relative differences of LOCO-REG from L2. (Chapter 05; Table 5.)"""
    df = pd.DataFrame([(d, n, *v) for (d, n), v in PAPER_TABLE5.items()],
                      columns=["dataset", "network", "paper_l2", "paper_loco", "paper_stars"])
    df["paper_difference"] = df.paper_loco - df.paper_l2
    df["paper_rel_difference"] = df.paper_difference / df.paper_l2
    return df


def paper_paired_sd(dataset: str, network: str) -> float:
    """The largest spread (pp) of paired differences that the paper's Table 5 stars allow.

    A one-sided two-sample t test over 20 + 20 runs reached the level of the cell's stars, so
    t = d / (s sqrt(2/20)) >= t_{1 - level, 38}: one run's spread is s <= d / (t sqrt(2/20)).
    Runs that share a seed are taken as uncorrelated after 250 epochs (conservative), so the
    paired difference spreads sqrt(2) s. (Chapter 05; Table 5.)"""
    _, _, stars = PAPER_TABLE5[(dataset, network)]
    t = float(st.t.ppf(1 - _STAR_LEVELS[stars], 2 * PAPER_RUNS - 2))
    return math.sqrt(2) * paper_difference(dataset, network) / (t * math.sqrt(2 / PAPER_RUNS))


def pairs_to_detect(effect: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8,
                    most: int = 1000) -> int:
    """The fewest pairs whose paired t test detects a true difference ``effect`` with ``power``
    at two-sided level ``alpha`` (:func:`locolib.stats.minimum_detectable_effect`).
    (Chapter 05; the study's design.)"""
    for n in range(2, most + 1):
        if minimum_detectable_effect(sd_diff, n, alpha, power) <= effect:
            return n
    raise ValueError(f"more than {most} pairs needed to detect {effect} pp at a spread of {sd_diff} pp")


def _paper_study(profile: str, dataset: str, parameter_runs: int = 5) -> Study:
    """The paper's design on ``dataset``: its protocol (250 epochs, batch 128, lr 0.1 decayed at
    its milestones, lam 5e-4, flips and shifts of 4 pixels), the three networks at full width,
    standard L2 against LOCO-REG with Table 6's parameters (c = 1.5) for every network, from
    ``parameter_runs`` L2 runs a network on disjoint seeds. Pairs: at least the paper's 20 a
    cell, more where the spread its stars allow needs more to detect its gain."""
    nets = ("vgg13", "mobilenet", "resnet18")
    sd = {n: round(paper_paired_sd(dataset, n), 3) for n in nets}
    pairs = {n: max(PAPER_RUNS, pairs_to_detect(paper_difference(dataset, n), sd[n])) for n in nets}
    lines = [f"{n}: {pairs[n]} pairs to detect the paper's gain of {paper_difference(dataset, n):g} pp "
             f"({PAPER_TABLE5[(dataset, n)][2]}) at a paired SD of {sd[n]:g} pp" for n in nets]
    design = (f"The paper's Table 5 on {dataset}, as printed: 250 epochs, full width, the paper's "
              f"lam (dose 100% of the paper's), LOCO-REG with Table 6's layer-wise parameters "
              f"(c = {PAPER_C:g}) from {parameter_runs} L2 runs a network on seeds 1000 on.\n"
              "Pairs, sized to detect the paper's own gain with 80% power at two-sided level 5% "
              "(at least the paper's 20 a cell):\n  " + "\n  ".join(lines))
    return _study(profile, dataset, {"eval_every": 10}, {n: {} for n in nets}, pairs, {}, 0, 0,
                  parameter_runs, layerwise=True, paired_sd=sd, design=design,
                  sd_source="the largest spread the paper's Table 5 stars allow (one-sided t test, "
                  "20 + 20 runs of 250 epochs), paired runs taken as uncorrelated "
                  "(locolib.plans.paper_paired_sd)")


def _scaled(profile: str, dataset: str, protocol: Mapping[str, Any], width: float, pairs: int,
            sd: float, sd_source: str) -> Study:
    """A GPU profile: the paper's design (LOCO-REG with Table 6's parameters, c = 1.5, for every
    network) at fewer epochs, plus chapter 05's dose arms and positive controls and chapter 06's
    sweep over c on VGG13; its design states the dose and what ``pairs`` can detect."""
    nets = {n: ({"width": width} if width != 1 else {}) for n in ("vgg13", "mobilenet", "resnet18")}
    full = {"flip": dataset_spec(dataset).flip, **protocol, **nets["vgg13"]}
    n_train = protocol.get("train_subset") or dataset_spec(dataset).n_train
    dose = regularization_dose(RunConfig(dataset, "vgg13", "l2", 0, **full), n_train) / paper_dose()
    mde = minimum_detectable_effect(sd, pairs)
    gains = ", ".join(f"{n} {paper_difference(dataset, n):g}" for n in nets)
    design = (f"Table 5 on {dataset} at {protocol['epochs']} epochs, width {width:g}: the paper's "
              f"lam gives {dose:.1%} of the paper's regularization dose. {pairs} pairs a cell at an "
              f"assumed paired SD of {sd:g} pp detect {mde:.2f} pp (80% power, two-sided 5%); the "
              f"paper's gains on {dataset} are {gains} pp (250 epochs): the smallest detectable "
              f"gain is {mde / max(paper_difference(dataset, n) for n in nets):.1f} times the "
              "paper's largest there.")
    return _study(profile, dataset, protocol, nets, dict.fromkeys(nets, pairs), {"vgg13": pairs}, 5,
                  6, 5, layerwise=True, paired_sd=dict.fromkeys(nets, sd), sd_source=sd_source,
                  design=design)


_OFFLINE = dict(epochs=30, batch_size=64, lr=0.1, width=0.125, pad=2, eval_every=10)
#: The GPU profiles keep the paper's batch, augmentation and schedule (scaled to fewer epochs).
_COLAB = dict(epochs=15, train_subset=15_000, eval_every=5)
_GPU = dict(epochs=15, eval_every=5)
_SHORT_SD = ("no paired runs of 15 epochs on these data exist yet: runs this short spread more "
             "than the paper's 250-epoch runs, whose stars allow a paired SD of 0.13-1.3 pp "
             "(locolib.plans.paper_paired_sd)")
_GPU_SD = "assumed: " + _SHORT_SD
_COLAB_SD = "assumed, larger than the gpu profile's for 15,000 images at half width: " + _SHORT_SD

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
    # About an hour on Colab's free T4, CIFAR-10 (locolib.budget.profile_summary).
    "colab": _scaled("colab", "cifar10", _COLAB, 0.5, 10, 0.6, _COLAB_SD),
    # A few GPU-hours for each of the paper's datasets, full width, 15 epochs.
    **{name: _scaled(name, dataset, _GPU, 1.0, 10, 0.35, _GPU_SD)
       for name, dataset in (("gpu", "cifar10"), ("gpu_cifar100", "cifar100"),
                             ("gpu_fashion_mnist", "fashion_mnist"))},
    # The paper's design as printed (Table 5 with Table 6's parameters), one study a dataset.
    **{f"paper_{dataset}": _paper_study(f"paper_{dataset}", dataset)
       for dataset in ("cifar10", "cifar100", "fashion_mnist")},
}
#: Names that train several studies in turn (``python -m locolib.plans paper``).
GROUPS: dict[str, tuple[str, ...]] = {group: tuple(name for name in STUDIES if name.startswith(prefix))
                                      for group, prefix in (("paper", "paper_"), ("gpu_all", "gpu"))}

#: The padding study (chapter 07): does zero padding make the upper layers local?
PADDING_PAIRS = 20
PADDING_UPPER_LAYERS = (7, 8, 9, 10)  # VGG13's convolutions on 4 x 4 and 2 x 2 maps (1-based)
PADDING_PAIRS_RESNET18 = 10
PADDING_UPPER_LAYERS_RESNET18 = (15, 16, 17)  # ResNet18's spatial convolutions on 4 x 4 maps
PADDING_DESIGN = f"""\
Hypothesis: in VGG13's convolutions on 4x4 and 2x2 maps (layers {PADDING_UPPER_LAYERS}), zero
padding puts zeros under the outer taps at most output positions (on a 2x2 map a corner tap sees
an image value at one position of four, an edge tap at two, the centre at all four), so the outer
taps get less gradient and are shrunk by L2: the locality of those layers is partly an effect of
padding. Reflect padding puts image values under every tap at every position.
Arms: the default study's L2 arm of VGG13 on mnist5k (zero padding, its committed records) and
the same runs with reflect padding, paired by seed ({PADDING_PAIRS} seeds; the analysis uses
every complete pair, at least 10).
Primary contrast, per layer: the paired difference zero - reflect of the log of two magnitude
ratios of the layer's kernels, mean |w| of the centre over the edge neighbours and of the edge
neighbours over the corners; paired t test per layer, Holm-adjusted over the ten layers of each
ratio. Expected direction: zero > reflect in layers {PADDING_UPPER_LAYERS} for both ratios.
Reading: confirmed if every upper layer shows zero > reflect at adjusted p < .05 for at least
one ratio; corrected if no upper layer does; open otherwise.
Secondary (added after the VGG13 runs, before any ResNet18 run): ResNet18, the default study's L2
arm (zero padding, committed) against reflect padding, {PADDING_PAIRS_RESNET18} seeds; the same
contrast for its layers on 4x4 maps (layers {PADDING_UPPER_LAYERS_RESNET18}), expected zero >
reflect, read the same way."""


def _padding_study(base: Study, profile: str, pairs: Mapping[str, int]) -> Study:
    """Zero against reflect padding for ``base``'s L2 arms of ``pairs``' networks, seed by seed."""
    arms = []
    for net, n in pairs.items():
        l2, seeds = base.arm(f"l2/{net}"), tuple(range(n))
        arms += [Arm(f"zeros/{net}", net, "l2", seeds, l2.fields, purpose="padding"),
                 Arm(f"reflect/{net}", net, "l2", seeds, {**l2.fields, "padding_mode": "reflect"},
                     reference=f"zeros/{net}", purpose="padding")]
    return Study(profile, base.dataset, base.protocol, tuple(arms), design=PADDING_DESIGN)


STUDIES["padding"] = _padding_study(STUDIES["default"], "padding",
                                    {"vgg13": PADDING_PAIRS, "resnet18": PADDING_PAIRS_RESNET18})
#: Chapter 07's smoke profile: the same code path in seconds.
STUDIES["padding_smoke"] = _padding_study(STUDIES["smoke"], "padding_smoke", {"vgg13": 2, "resnet18": 2})



def _kernel5_study(profile: str, dataset: str, seeds: int, **protocol: Any) -> Study:
    """Chapter 07's runs of Section 7.1's variant: VGG13 with 5 x 5 kernels, standard L2."""
    arm = Arm("l2_5x5/vgg13", "vgg13", "l2", tuple(range(seeds)), purpose="5x5 kernels")
    return Study(profile, dataset, {"kernel_size": 5, **protocol}, (arm,), cs=())


#: Chapter 07's 5 x 5 VGG13, trained by the chapter (its weights are kept: the chapter compares
#: Table 4 from the kernels with Table 4 from the records).
STUDIES["kernel5_smoke"] = _kernel5_study("kernel5_smoke", "digits", 2, epochs=1, width=0.0625, train_subset=256)
STUDIES["kernel5"] = _kernel5_study("kernel5", "digits", 6, epochs=15, width=0.125)
STUDIES["kernel5_gpu"] = _kernel5_study("kernel5_gpu", "cifar100", 5, epochs=30, width=1.0)


def _feature_map_study(profile: str, seeds: int, **protocol: Any) -> Study:
    """Chapter 04's runs: VGG13 on the digits with standard L2 and the book's fixed LOCO-REG,
    paired by seed, their weights kept for feature maps and filters."""
    arms = (Arm("l2/vgg13", "vgg13", "l2", tuple(range(seeds)), purpose="feature maps"),
            Arm("loco/vgg13", "vgg13", "loco", tuple(range(seeds)), dict(FIXED_LOCO), reference="l2/vgg13",
                purpose="feature maps"))
    return Study(profile, "digits", protocol, arms, cs=())


STUDIES["feature_maps_smoke"] = _feature_map_study("feature_maps_smoke", 1, width=0.0625, epochs=2, train_subset=256)
STUDIES["feature_maps"] = _feature_map_study("feature_maps", 2, width=0.125, epochs=40)


def study(profile: str) -> Study:
    """The study of ``profile`` (a key of :data:`STUDIES`). (Chapters 04-07.)"""
    if profile not in STUDIES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {list(STUDIES)}")
    return STUDIES[profile]


def run_study(profile: str, results_dir: str | Path | None = None,
              train_runs: Callable[[list[RunConfig]], list[dict]] | None = None,
              **sweep: Any) -> list[Arm]:
    """Train every run of ``profile``'s study that has no record yet (Table 6's parameter runs
    first: its LOCO-REG arms depend on them) and return all arms, Table 6's included.
    ``train_runs``: trains a list of runs and returns their records (default: this process,
    :func:`locolib.sweep.run_sweep`, waiting for runs other processes hold; ``--dask``:
    :func:`locolib.cluster.run_on_dask`). ``sweep``: keyword arguments of ``run_sweep``.
    (Chapters 04-07.)"""
    if train_runs is None:
        def train_runs(configs: list[RunConfig]) -> list[dict]:
            return run_sweep(configs, results_dir, wait=True, **sweep)
    s = study(profile)
    arms = list(s.arms)
    if s.parameter_arms:
        params = train_runs(s.configs(s.parameter_arms))
        arms += s.layerwise_arms(params)
    train_runs(s.configs(arms))
    return arms


def arm_frame(s: Study, arms: Sequence[Arm], results_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per finished run of ``arms`` (chapters 05-06): arm, reference and purpose, the
    columns of :func:`locolib.results.record_row` and the regularization dose
    (:func:`locolib.train.regularization_dose`). Trains nothing."""
    rows = [{"arm": a.name, "reference": a.reference, "purpose": a.purpose, **record_row(rec),
             "dose": regularization_dose(RunConfig.from_record(rec), rec["n_train"])}
            for a in arms for rec in finished_records(a.configs(s.dataset, s.protocol), results_dir)]
    return pd.DataFrame(rows, columns=["arm", "reference", "purpose", *RECORD_COLUMNS, "dose"])


def arm_history(s: Study, arms: Sequence[Arm], results_dir: str | Path | None = None) -> pd.DataFrame:
    """Learning curves of the finished runs of ``arms``: :func:`locolib.results.history_frame`
    with an ``arm`` column. (Chapter 05; Figure 3.)"""
    frames = [history_frame(finished_records(a.configs(s.dataset, s.protocol), results_dir))
              .assign(arm=a.name) for a in arms]
    return pd.concat(frames, ignore_index=True)


def _dry_run(profile: str, results: Path | None) -> None:
    from locolib import budget  # noqa: PLC0415 -- budget imports this module

    s = study(profile)
    configs = s.configs([*s.parameter_arms, *s.arms])
    print(f"{profile}: {len(configs)} runs"
          + (", then the LOCO-REG runs with Table 6's parameters, which come from the "
             "parameter arms' records" if s.parameter_arms else ""))
    if s.design:
        print(s.design)
    if s.paired_sd:
        summary = budget.profile_summary(profile)
        print(f"all runs: {summary['runs']}; estimated GPU-hours: "
              + ", ".join(f"{d} {h:.1f}" for d, h in summary["hours_per_device"].items()))
        for name, source in summary["device_sources"].items():
            print(f"  {name}: {source}")
        print(f"paired SD (pp): {summary['sd_diff_pp']} ({summary['sd_source']})")
        print("smallest detectable effect (pp, power 0.8, two-sided 5%): "
              + ", ".join(f"{k} {v:.2f}" for k, v in summary["detectable_effect_pp"].items()))
    print_status(configs, results)
    if profile in PREREGISTERED:
        print(PREREGISTERED[profile].summary())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m locolib.plans PROFILE``: train a study's runs that have no record.
    (Chapters 05-07.)"""
    p = argparse.ArgumentParser(prog="python -m locolib.plans",
                                description="Train the book's study of one profile (or of a group "
                                f"of profiles: {', '.join(GROUPS)}).")
    p.add_argument("profile", choices=[*STUDIES, *GROUPS])
    p.add_argument("--results", type=Path, default=None, help="results folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps (default: the best this machine has)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="list the study's runs, cost and power, and their status; train nothing")
    cluster.add_options(p)
    a = p.parse_args(argv)
    options = None
    try:
        if a.dask is not None:
            options = cluster.options_from_args(a)
        if a.device is not None:  # a dry run or a cluster's workers: another machine's devices
            check_device(a.device, here=not a.dry_run and (options is None or options.address == "local"))
    except ValueError as err:
        p.error(str(err))
    profiles = GROUPS.get(a.profile, (a.profile,))
    if a.dry_run:
        for profile in profiles:
            _dry_run(profile, a.results)
        if options is not None:
            print(cluster.describe(options, a.device))
        return 0

    torch.set_num_threads(a.threads)
    log = None if a.quiet else print
    train_runs = None if options is None else partial(
        cluster.run_on_dask, options=options, results_dir=a.results, device=a.device,
        threads=a.threads, log=log)
    for profile in profiles:
        arms = run_study(profile, a.results, train_runs, device=a.device, progress=not a.quiet,
                         log=log)
        print(f"{profile}: {sum(len(x.seeds) for x in arms)} runs in {len(arms)} arms have records")
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
    ``family``. (Chapter 05.)"""

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
    (Chapter 05.)
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
    share a seed share its split, so paired contrasts stay paired. (Chapter 05.)"""

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
               seeds: Sequence[int], seconds_per_run: float, labels: Sequence[str] | None = None,
               hypotheses: Sequence[str] | None = None) -> Preregistration:
    """The sweep of ``labels`` (default: every mechanism regularizer) over ``lams`` x ``seeds``,
    testing ``hypotheses`` (names; default: all)."""
    net = "vgg13"
    regs = {k: v for k, v in MECHANISM_REGULARIZERS.items() if labels is None or k in labels}
    arms = tuple(
        SeededSplitArm(f"{label}/lam={lam:g}", net, reg, tuple(seeds), {**fields, "lam": lam},
                       reference=None if label == "l2" or "l2" not in regs else f"l2/lam={lam:g}",
                       purpose=label)
        for label, (reg, fields) in regs.items() for lam in lams)
    study = Study(profile, dataset, dict(protocol), arms, cs=())  # no Table 6 here
    tested = tuple(h for h in MECHANISM_HYPOTHESES if hypotheses is None or h.name in hypotheses)
    return Preregistration(study, regs, tuple(lams), tuple(seeds), tested, seconds_per_run)


def _mechanism_studies(profile: str, dataset: str, protocol: Mapping[str, Any],
                       lams: Sequence[float], extra_lams: Sequence[float], seeds: Sequence[int],
                       seconds_per_run: float) -> tuple[Preregistration, Preregistration,
                                                        Preregistration]:
    """The pre-registered sweep ``profile``, its amendment (``<profile>_extension``: the strong
    masks at ``extra_lams``, testing H4-H6 again) and its retrain (``<profile>_retrain``: H1's
    two regularizers along the whole grid again)."""
    return (_mechanism(profile, dataset, protocol, lams, seeds, seconds_per_run),
            _mechanism(f"{profile}_extension", dataset, protocol, extra_lams, seeds,
                       seconds_per_run, labels=("strong_locality", "strong_anti_locality"),
                       hypotheses=("H4", "H5", "H6")),
            _mechanism(f"{profile}_retrain", dataset, protocol, lams, seeds, seconds_per_run,
                       labels=("l2", "loco"), hypotheses=("H1",)))


#: MECHANISM: the default study's protocol for mnist5k VGG13 (30 epochs, batch 64, lr 0.1,
#: width 1/8, pad 2, no flips) with half of the 4,000 held-out images as validation set (200 per
#: class). seconds_per_run: median 34.8 s (setup and training) of the default study's 130
#: mnist5k VGG13 records, Intel Xeon, one thread; 40 s leaves room for the validation evaluations.
#:
#: MECHANISM_EXTENSION, an amendment declared after the first six seeds of MECHANISM had been
#: read: the validation error of strong locality and strong anti-locality still falls at the
#: grid's largest lam, so their best lam may lie beyond it. The same grid continued (x 10 ** 0.5:
#: 0.5 and 1.581) for those two, on the same seeds. MECHANISM alone stays the pre-registered
#: analysis; chapter 05 shows H4-H6 on the extended grid beside it, as a sensitivity analysis.
#:
#: MECHANISM_RETRAIN: H1's two regularizers along the whole grid, every seed, trained again on the
#: CPU kernels of another instruction set, as on another x86 CPU (``ATEN_CPU_CAPABILITY=avx2``,
#: see book/running.md), into ``results/<RETRAIN_DIR>``. Chapter 05 tests its hypotheses again
#: with these records in place of the committed ones and compares the two run by run.
MECHANISM, MECHANISM_EXTENSION, MECHANISM_RETRAIN = _mechanism_studies(
    "mechanism", "mnist5k", {**STUDIES["default"].protocol, "validation": 2000},
    MECHANISM_LAMS, (0.5, 1.581), MECHANISM_SEEDS, 40.0)
#: The same code paths in seconds: digits, 1 epoch on 128 images, two lams (and one more for the
#: amendment), two seeds.
MECHANISM_SMOKE, _SMOKE_EXTENSION, _SMOKE_RETRAIN = _mechanism_studies(
    "mechanism_smoke", "digits", {**STUDIES["smoke"].protocol, "epochs": 1, "train_subset": 128,
                                  "width": 0.0625, "validation": 250},
    MECHANISM_LAMS[::5], (0.5,), MECHANISM_SEEDS[:2], 1.0)
RETRAIN_DIR = "retrain-avx2"
#: Chapter 05's mechanism studies per chapter profile: (pre-registered, amendment, retrain).
MECHANISM_STUDIES: dict[str, tuple[Preregistration, Preregistration, Preregistration]] = {
    "default": (MECHANISM, MECHANISM_EXTENSION, MECHANISM_RETRAIN),
    "smoke": (MECHANISM_SMOKE, _SMOKE_EXTENSION, _SMOKE_RETRAIN)}
#: Every pre-registered study, amendment and retrain by profile;
#: ``python -m locolib.plans mechanism`` trains one.
PREREGISTERED: dict[str, Preregistration] = {
    p.study.profile: p for studies in MECHANISM_STUDIES.values() for p in studies}
STUDIES.update({name: p.study for name, p in PREREGISTERED.items()})


def mechanism_frame(plan: Preregistration, results_dir: str | Path | None = None) -> pd.DataFrame:
    """:func:`arm_frame` of every arm of ``plan`` (chapter 05), with ``regularizer`` the plan's
    label of the arm's regularizer setting (l2, loco, mirror, permuted, ...): the input of
    :mod:`locolib.stats`' best_lams, contrast_table, lam_curves and convergence."""
    frame = arm_frame(plan.study, plan.study.arms, results_dir)
    return frame.assign(regularizer=frame.purpose)


if __name__ == "__main__":
    sys.exit(main())
