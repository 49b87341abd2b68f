"""What a profile's study costs on a device and what it can decide (book/running.md; the
training chapters state their profile's smallest detectable effect).

Cost: every run of a study (:mod:`locolib.plans`) is counted in floating-point operations,
measured once per network and width with :class:`torch.utils.flop_counter.FlopCounterMode`
(forward and backward of a training step, forward of an evaluation), over its epochs, test-set
evaluations and the final evaluation on the training images; the seconds are
``flops / device.flops_per_s + (steps + evaluation batches) * device.step_overhead_s``, the
second term for what does not scale with the network (kernel launches, Python). A device's two
figures are stated with their source in :func:`devices`: the H100's measured by
benchmarks/gpu_check.py, the others assumed until it is run on them.

Decision: both arms of a comparison share seeds (initialisation, batch order, augmentation),
so the test of a difference is a paired t test over ``n`` seeds. With ``sd_diff`` the standard
deviation of the per-seed differences, the smallest true difference it detects with power
``1 - beta`` at two-sided level ``alpha`` is
``(t_{1 - alpha/2, n-1} + t_{1 - beta, n-1}) * sd_diff / sqrt(n)``
(:func:`locolib.stats.minimum_detectable_effect`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from locolib.config import RunConfig
from locolib.data import dataset_spec
from locolib.models import build_model
from locolib.plans import FIXED_LOCO, GROUPS, Arm, Study, study
from locolib.results import results_frame
from locolib.stats import minimum_detectable_effect

__all__ = ["Device", "devices", "PROFILE_DEVICE", "H100_RESNET18_IMAGES_PER_S", "flops_per_image",
           "run_seconds", "study_runs", "study_seconds", "paired_sd",
           "profile_summary", "comparisons"]


@dataclass(frozen=True)
class Device:
    """A device's speed on the book's networks: effective FLOP/s in its autocast precision and
    a fixed cost per step or evaluation batch.
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """

    name: str
    flops_per_s: float
    step_overhead_s: float
    source: str


#: The H100's ResNet18 training rate measured by benchmarks/gpu_check.py (part A) on 2026-12-06.
H100_RESNET18_IMAGES_PER_S = 10_222


def _measured_h100() -> Device:
    """The H100 from its measured ResNet18 rate: FLOPs per training image times images/s. The
    rate is whole training steps, so per-step costs are inside it (no separate overhead)."""
    flops = flops_per_image("resnet18", 1.0, 3, 10)[0] * H100_RESNET18_IMAGES_PER_S
    return Device("NVIDIA H100 80GB HBM3, bfloat16", flops, 0.0,
                  f"measured 2026-12-06, benchmarks/gpu_check.py part A "
                  f"(benchmarks/results/gpu_check-2026-12-06-h100.json): ResNet18 at full width, "
                  f"batch 128, bfloat16 autocast, channels_last, no torch.compile, "
                  f"{H100_RESNET18_IMAGES_PER_S:,} training images/s (steady state, synthetic "
                  f"CIFAR-shaped data) = {flops / 1e12:.1f} TFLOP/s at "
                  f"{flops_per_image('resnet18', 1.0, 3, 10)[0] / 1e9:.2f} GFLOP per training "
                  "image; per-step costs are inside that rate, so networks with less work per "
                  "step (MobileNet) are likely underestimated")


@cache
def devices() -> dict[str, Device]:
    """The devices a profile's cost is estimated for: the H100 measured, the T4 and A100
    assumed (no measurement yet: replace them with gpu_check.py's figures).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)"""
    h100 = _measured_h100()
    return {
        "t4": Device("NVIDIA T4 (Colab's free GPU), float16", 8e12, 3e-3,
                     "assumed: 8 TFLOP/s is 12% of the T4's float16 tensor-core peak of "
                     "65 TFLOP/s, about 2,400 ResNet18 training images/s (3.3 GFLOP each); 3 ms "
                     "per step for kernel launches"),
        "a100": Device("NVIDIA A100, bfloat16", h100.flops_per_s / 2, 0.0,
                       "assumed: half the measured H100 rate (the H100 trains convolutional "
                       f"networks 1.5-2.5 times as fast), {h100.flops_per_s / 2e12:.1f} TFLOP/s, "
                       "per-step costs inside it as for the H100"),
        "h100": h100,
    }


#: Where each GPU profile is meant to run.
PROFILE_DEVICE: dict[str, str] = {"colab": "t4", **dict.fromkeys((*GROUPS["gpu_all"], *GROUPS["paper"]), "h100")}


@cache
def flops_per_image(network: str, width: float, in_channels: int, num_classes: int,
                    kernel_size: int = 3) -> tuple[float, float]:
    """FLOPs per image of a training step (forward and backward) and of an evaluation,
    counted on the meta device (shapes only: nothing is computed or drawn at random).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)"""
    with torch.device("meta"):
        model = build_model(network, num_classes, in_channels, width=width,
                            kernel_size=kernel_size)
        x = torch.zeros(2, in_channels, 32, 32)
    with FlopCounterMode(display=False) as train:
        model(x).sum().backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluate:
        model(x)
    return train.get_total_flops() / 2, evaluate.get_total_flops() / 2


def run_seconds(config: RunConfig, device: Device, eval_batch: int = 1000) -> float:
    """Estimated seconds of one run of ``config`` on ``device`` (see the module docstring).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """
    spec = dataset_spec(config.dataset)
    n_train = min(config.train_subset or spec.n_train, spec.n_train)
    train_f, eval_f = flops_per_image(config.network, config.width, spec.channels,
                                      spec.num_classes, config.kernel_size)
    evals = sum(1 for e in range(config.epochs)
                if (e + 1) % config.eval_every == 0 or e + 1 == config.epochs)
    flops = (config.epochs * n_train * train_f
             + (evals * spec.n_test + n_train) * eval_f)
    steps = (config.epochs * math.ceil(n_train / config.batch_size)
             + evals * math.ceil(spec.n_test / eval_batch) + math.ceil(n_train / eval_batch))
    return flops / device.flops_per_s + steps * device.step_overhead_s


def study_runs(s: Study) -> list[RunConfig]:
    """Every run of a study: its arms, its parameter runs, and the LOCO-REG runs with Table 6's
    parameters (counted with the fixed LOCO-REG: they cost what runs with layer-wise values
    cost; a run that two arms share is counted once).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """
    fixed = {a.network: {**a.fields, **FIXED_LOCO} for a in s.parameter_arms}
    layerwise = [Arm(f"loco_table6/{net}", net, "loco", seeds, fixed[net])
                 for net, seeds in s.layerwise.items()]
    if s.table6_network is not None:
        layerwise += [Arm(f"table6_c{c:g}", s.table6_network, "loco", s.table6_seeds,
                          fixed[s.table6_network]) for c in s.cs]
    return s.configs([*s.arms, *s.parameter_arms, *layerwise])


def study_seconds(s: Study, device: Device) -> float:
    """Estimated seconds of all :func:`study_runs` on ``device``, one after the other.
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """
    return sum(run_seconds(c, device) for c in study_runs(s))


def paired_sd(s: Study, arm: str, records: Iterable[Mapping[str, Any]]) -> tuple[float, int]:
    """Standard deviation (pp) of the per-seed test-error differences between ``arm`` and its
    reference arm in ``records``, and the number of pairs found. (Chapter 05; the running page)"""
    a = s.arm(arm)
    error = results_frame(records).set_index("key").test_error
    diffs = [100 * (error[x.key] - error[y.key])
             for x, y in zip(a.configs(s.dataset, s.protocol), s.arm(a.reference).configs(s.dataset, s.protocol))
             if x.key in error.index and y.key in error.index]
    return (statistics.stdev(diffs) if len(diffs) > 1 else math.nan), len(diffs)


def comparisons(s: Study) -> dict[str, tuple[str, int]]:
    """Every paired comparison of a study: name -> (network, pairs).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """
    out = {a.name: (a.network, len(a.seeds)) for a in s.arms if a.reference is not None}
    out.update({f"loco_table6/{net}": (net, len(seeds)) for net, seeds in s.layerwise.items()})
    if s.table6_network is not None:
        out["table6"] = (s.table6_network, len(s.table6_seeds))
    return out


def profile_summary(profile: str) -> dict[str, Any]:
    """A GPU profile's runs, estimated hours on each device of :func:`devices` (``hours``: on
    the profile's own device, :data:`PROFILE_DEVICE`), the paired SD its pairs were sized with
    and the smallest effect (pp) each comparison detects (power 0.8, two-sided 5%).
    (Chapters 05-07: what their GPU profiles cost and can detect, the running page)
    """
    s = study(profile)
    if not s.paired_sd:
        raise ValueError(f"profile {profile!r} states no paired SD (a GPU profile does)")
    runs = study_runs(s)
    hours = {name: study_seconds(s, d) / 3600 for name, d in devices().items()}
    device = PROFILE_DEVICE[profile]
    return {
        "profile": profile, "dataset": s.dataset, "runs": len(runs),
        "device": devices()[device].name, "hours": hours[device], "hours_per_device": hours,
        "device_sources": {name: d.source for name, d in devices().items()},
        "sd_diff_pp": dict(s.paired_sd), "sd_source": s.sd_source, "design": s.design,
        "detectable_effect_pp": {name: minimum_detectable_effect(s.paired_sd[net], n)
                                 for name, (net, n) in comparisons(s).items()},
    }
