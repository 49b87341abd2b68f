"""Cost of LOCO-REG in a training step, side by side with no regularization and uniform L2.

One step is :class:`locolib.train.TrainStep`, the step training takes: forward (on CUDA under
autocast in the device's precision, channels_last, cuDNN autotuning), cross-entropy, backward,
the regularizer, SGD with momentum (fused on CUDA). Modes:

  none       no regularization
  l2         uniform L2 as coupled decay: LocoDecay(gamma=1, eta=1).apply_()
  loco       LOCO-REG as coupled decay:   LocoDecay(gamma, eta).apply_()
  loco_loss  LOCO-REG as a loss term:     loss + LocoDecay(gamma, eta).penalty()

Two measurements, each in interleaved rounds (locolib.timing: the order of the modes rotates
every round, ratios are paired by round, medians come with a distribution-free 95% interval):

* whole steps: blocks of ``--block`` steps per mode and round; rounds go on until the interval
  of loco / l2 is at most +-``--resolution`` wide (enough to decide the 3% goal) or
  ``--max-seconds`` have passed;
* the regularization call alone (apply_, or the penalty's forward and backward), in blocks of
  ``--calls`` calls: its extra cost over L2's call, as a fraction of an L2 step. Far less noisy
  than whole steps, and what the whole-step ratio should show.

    python benchmarks/bench_reg.py                      # CPU, 1/4-width VGG13, about a minute
    python benchmarks/bench_reg.py --device cuda --model resnet18 --width 1 --batch 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from locolib.models import build_model
from locolib.reg import LocoDecay
from locolib.timing import interleaved, median_ci, ratio
from locolib.train import TrainStep, autocast_dtype, choose_device, memory_format

MODES = ("none", "l2", "loco", "loco_loss")


class LossTermStep(TrainStep):
    """The training step with LOCO-REG as a loss term instead of decay added to the gradients."""

    def __init__(self, term: LocoDecay, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.term = term

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().loss(logits, y) + self.term.penalty()


def device_dtype(device: torch.device) -> torch.dtype | None:
    """Training's settings on ``device``: on CUDA autocast in the device's precision and cuDNN
    autotuning; on the CPU float32 with denormals flushed (as :func:`locolib.train.train`)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return autocast_dtype(torch.cuda.get_device_capability(device))
    torch.set_flush_denormal(True)
    return None


def steps(model_name: str, width: float, device: torch.device, gamma: float, eta: float,
          lam: float, seed: int = 0, channels: int = 3) -> dict[str, TrainStep]:
    """One :class:`TrainStep` per mode, on copies of one seeded network."""
    dtype = device_dtype(device)
    out = {}
    for mode in MODES:
        torch.manual_seed(seed)
        model = build_model(model_name, 10, channels, width=width)
        model = model.to(device=device, memory_format=memory_format(device, model))
        decay = {"none": None, "l2": LocoDecay(model, 1.0, 1.0, lam),
                 "loco": LocoDecay(model, gamma, eta, lam), "loco_loss": None}[mode]
        if mode == "loco_loss":
            out[mode] = LossTermStep(LocoDecay(model, gamma, eta, lam), model, None, device,
                                     0.01, 0.9, dtype)
        else:
            out[mode] = TrainStep(model, decay, device, 0.01, 0.9, dtype)
    return out


def batch(size: int, device: torch.device, model: torch.nn.Module, seed: int = 0,
          channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, channels, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (size,), generator=g).to(device)
    return x.contiguous(memory_format=memory_format(device, model)), y


def measure(model: str = "vgg13", width: float = 0.25, batch_size: int = 32,
            device: torch.device | str = "cpu", block: int = 2, rounds: int = 20,
            resolution: float = 0.01, max_seconds: float = 60.0, calls: int = 20,
            call_rounds: int = 100, gamma: float = 0.8, eta: float = 1.25, lam: float = 5e-4,
            seed: int = 0) -> dict:
    """Whole-step ratios and isolated-call costs (see the module docstring), JSON-able."""
    device = torch.device(device)
    modes = steps(model, width, device, gamma, eta, lam, seed)
    x, y = batch(batch_size, device, modes["l2"].model, seed)
    t0 = time.perf_counter()

    def resolved(times: dict[str, list[float]]) -> bool:
        r = ratio(times, "loco", "l2")
        return len(times["l2"]) >= 5 and (r.high - r.low) / 2 <= resolution

    step_times = interleaved({m: (lambda s=s: [s(x, y) for _ in range(block)])
                              for m, s in modes.items()}, device, rounds, warmup=1,
                             enough=resolved, max_rounds=100 * rounds, max_s=max_seconds)
    l2_step = median_ci(step_times["l2"])[0] / block

    for s in modes.values():  # gradients for the calls to act on
        for p in s.model.parameters():
            p.grad = torch.zeros_like(p)
    l2, loco, term = modes["l2"].decay, modes["loco"].decay, modes["loco_loss"].term
    call_times = interleaved({
        "l2": lambda: [l2.apply_() for _ in range(calls)],
        "loco": lambda: [loco.apply_() for _ in range(calls)],
        "loco_loss": lambda: [term.penalty().backward() for _ in range(calls)],
    }, device, call_rounds, warmup=2)
    extra = [(a - b) / calls / l2_step for a, b in zip(call_times["loco"], call_times["l2"])]
    med, lo, hi = median_ci(extra)
    n_params = sum(p.numel() for p in modes["l2"].model.parameters())
    step_ratio = ratio(step_times, "loco", "l2")
    return {
        "model": model, "width": width, "params": n_params, "batch": batch_size,
        "device": str(device), "threads": torch.get_num_threads(),
        "autocast": str(modes["l2"].dtype), "block": block,
        "step_ms": {m: 1e3 * median_ci(t)[0] / block for m, t in step_times.items()},
        "step_ratio": {m: ratio(step_times, m, "l2").as_dict() for m in MODES if m != "l2"},
        "resolved": (step_ratio.high - step_ratio.low) / 2 <= resolution,
        "call_us": {m: 1e6 * median_ci(t)[0] / calls for m, t in call_times.items()},
        "loco_call_extra_of_l2_step": {"median": med, "ci_low": lo, "ci_high": hi,
                                       "rounds": len(extra)},
        "loss_term_of_l2_step": median_ci(call_times["loco_loss"])[0] / calls / l2_step,
        "goal_loco_step_ratio_max": 1.03,
        "goal_met": step_ratio.high <= 1.03,
        "seconds": time.perf_counter() - t0,
    }


def report(r: dict) -> str:
    lines = [f"{r['model']} width={r['width']} ({r['params']:,} params) batch={r['batch']} "
             f"device={r['device']} threads={r['threads']} autocast={r['autocast']}",
             f"whole steps (blocks of {r['block']}), median ms and ratio to l2 (95% CI):"]
    for m, ms in r["step_ms"].items():
        q = r["step_ratio"].get(m)
        lines.append(f"  {m:<10} {ms:9.2f}" + ("" if q is None else
                     f"   {q['median']:.4f} ({q['ci_low']:.4f}-{q['ci_high']:.4f}, "
                     f"{q['rounds']} rounds)"))
    c = r["loco_call_extra_of_l2_step"]
    lines += ["regularization call alone, median us: "
              + ", ".join(f"{m} {us:.1f}" for m, us in r["call_us"].items()),
              f"LOCO-REG's decay over L2's, as a share of an l2 step: {100 * c['median']:+.3f}% "
              f"(95% CI {100 * c['ci_low']:+.3f}% to {100 * c['ci_high']:+.3f}%, "
              f"{c['rounds']} rounds); the loss-term form costs "
              f"{100 * r['loss_term_of_l2_step']:.2f}% of an l2 step",
              f"goal loco/l2 <= 1.03: {'met' if r['goal_met'] else 'not shown'} (whole-step "
              f"interval {'resolved' if r['resolved'] else 'NOT resolved'}); "
              f"{r['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    ap.add_argument("--model", default="vgg13", choices=["vgg13", "mobilenet", "resnet18"])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=2, help="steps per mode and round")
    ap.add_argument("--rounds", type=int, default=20, help="at least this many rounds")
    ap.add_argument("--resolution", type=float, default=0.01,
                    help="go on until the loco/l2 interval is at most +- this")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="...or this long")
    ap.add_argument("--calls", type=int, default=20, help="regularization calls per round")
    ap.add_argument("--call-rounds", type=int, default=100)
    ap.add_argument("--gamma", type=float, default=0.8)
    ap.add_argument("--eta", type=float, default=1.25)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    r = measure(a.model, a.width, a.batch, choose_device(a.device), a.block, a.rounds,
                a.resolution, a.max_seconds, a.calls, a.call_rounds, a.gamma, a.eta, seed=a.seed)
    print(json.dumps(r, indent=2) if a.json else report(r))
    return r


if __name__ == "__main__":
    main()
