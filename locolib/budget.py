"""What a profile's study costs on a device and what it can decide (book/running.md; the
training chapters state their profile's smallest detectable effect).

Cost: every run of a study (:mod:`locolib.plans`) is counted in floating-point operations,
measured once per network and width with :class:`torch.utils.flop_counter.FlopCounterMode`
(forward and backward of a training step, forward of an evaluation), over its epochs, test-set
evaluations and the final evaluation on the training images; the seconds are
``flops / device.flops_per_s + (steps + evaluation batches) * device.step_overhead_s``, the
second term for what does not scale with the network (kernel launches, Python). A device's two
figures are stated with their source in :data:`DEVICES`; benchmarks/gpu_check.py measures the
images/s they should be replaced with.

Decision: both arms of a comparison share seeds (initialisation, batch order, augmentation),
so the test of a difference is a paired t test over ``n`` seeds. With ``sd_diff`` the standard
deviation of the per-seed differences, the smallest true difference it detects with power
``1 - beta`` at two-sided level ``alpha`` is
``(t_{1 - alpha/2, n-1} + t_{1 - beta, n-1}) * sd_diff / sqrt(n)`` (:func:`detectable_effect`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from scipy import stats
from torch.utils.flop_counter import FlopCounterMode

from locolib.config import RunConfig
from locolib.data import dataset_spec
from locolib.models import build_model
from locolib.plans import FIXED_LOCO, Arm, Study, study

__all__ = ["Device", "DEVICES", "Capacity", "CAPACITY", "flops_per_image", "run_seconds",
           "study_runs", "study_seconds", "detectable_effect", "paired_sd", "profile_summary"]


@dataclass(frozen=True)
class Device:
    """A device's speed on the book's networks: effective FLOP/s in its autocast precision and
    a fixed cost per step or evaluation batch."""

    name: str
    flops_per_s: float
    step_overhead_s: float
    source: str


#: Assumed figures (no GPU was at hand when they were set): to be replaced by measured ones.
DEVICES: dict[str, Device] = {
    "t4": Device("NVIDIA T4 (Colab's free GPU), float16", 8e12, 3e-3,
                 "assumed: 8 TFLOP/s is 12% of the T4's float16 tensor-core peak of 65 TFLOP/s, "
                 "about 2,400 ResNet18 training images/s (3.3 GFLOP each); 3 ms per step for "
                 "kernel launches"),
    "h100": Device("NVIDIA H100, bfloat16", 50e12, 2e-3,
                   "assumed: half of the device check's goal of 30,000 ResNet18 training "
                   "images/s (100 TFLOP/s); 2 ms per step"),
}


@dataclass(frozen=True)
class Capacity:
    """Where a profile runs and the spread of its paired differences (test error, pp)."""

    device: str  # a key of DEVICES
    sd_diff: float
    sd_source: str


_CIFAR_SD = ("the paper's Table 5 stars (one-sided t tests over 20 + 20 runs) bound the "
             "spread of a 250-epoch CIFAR run's test error by about 0.15-0.3 pp; ")
#: The profiles of :data:`locolib.plans.STUDIES` that train on a GPU.
CAPACITY: dict[str, Capacity] = {
    "colab": Capacity("t4", 0.6, "assumed: " + _CIFAR_SD + "runs of 10 epochs on 10,000 "
                      "images spread about twice as much, and a paired difference about "
                      "sqrt(2) times one run's spread"),
    **{name: Capacity("h100", 0.35, "assumed: " + _CIFAR_SD + "15-epoch runs on the full "
                      "training sets somewhat more; a paired difference about sqrt(2) times "
                      "one run's spread")
       for name in ("gpu", "gpu_cifar100", "gpu_fashion_mnist")},
}


@cache
def flops_per_image(network: str, width: float, in_channels: int, num_classes: int,
                    kernel_size: int = 3) -> tuple[float, float]:
    """FLOPs per image of a training step (forward and backward) and of an evaluation,
    counted on the meta device (shapes only: nothing is computed or drawn at random)."""
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
    """Estimated seconds of one run of ``config`` on ``device`` (see the module docstring)."""
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
    """Every run of a study: its arms, Table 6's parameter runs, and Table 6's LOCO-REG runs
    (counted with the fixed LOCO-REG: they cost what runs with layer-wise values cost)."""
    table6 = [Arm(f"table6_c{c:g}", s.table6_network, "loco", s.table6_seeds,
                  {**s.parameter_arm.fields, **FIXED_LOCO}) for c in s.cs]
    return [cfg for arm in (*s.arms, s.parameter_arm, *table6)
            for cfg in arm.configs(s.dataset, s.protocol)]


def study_seconds(s: Study, device: Device) -> float:
    """Estimated seconds of all :func:`study_runs` on ``device``, one after the other."""
    return sum(run_seconds(c, device) for c in study_runs(s))


def detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t test over ``n`` pairs detects with
    ``power`` at two-sided level ``alpha``, for differences of spread ``sd_diff``."""
    if n < 2:
        return math.inf
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / math.sqrt(n))


def paired_sd(s: Study, arm: str, records: Iterable[Mapping[str, Any]]) -> tuple[float, int]:
    """Standard deviation (pp) of the per-seed test-error differences between ``arm`` and its
    reference arm in ``records``, and the number of pairs found."""
    a = s.arm(arm)
    ref = s.arm(a.reference)
    by_key = {r["key"]: r for r in records}
    diffs = []
    for x, y in zip(a.configs(s.dataset, s.protocol), ref.configs(s.dataset, s.protocol)):
        if x.key in by_key and y.key in by_key:
            diffs.append(100 * (by_key[x.key]["final"]["test_error"]
                                - by_key[y.key]["final"]["test_error"]))
    return (statistics.stdev(diffs) if len(diffs) > 1 else math.nan), len(diffs)


def profile_summary(profile: str) -> dict[str, Any]:
    """A GPU profile's runs, estimated hours on its device, and the smallest effect (pp) each
    of its comparisons detects (:data:`CAPACITY`)."""
    s, cap = study(profile), CAPACITY[profile]
    device = DEVICES[cap.device]
    runs = study_runs(s)
    comparisons = {a.name: len(a.seeds) for a in s.arms if a.reference is not None}
    comparisons["table6"] = len(s.table6_seeds)
    return {
        "profile": profile, "dataset": s.dataset, "runs": len(runs),
        "device": device.name, "hours": study_seconds(s, device) / 3600,
        "device_source": device.source, "sd_diff_pp": cap.sd_diff, "sd_source": cap.sd_source,
        "detectable_effect_pp": {name: float(detectable_effect(cap.sd_diff, n))
                                 for name, n in comparisons.items()},
    }
