"""Cost of LOCO-REG in a training step, side by side with no regularization and uniform L2.

One step = forward, backward, regularization, SGD(momentum 0.9) step. Modes:

  none       no regularization
  l2         uniform L2 as coupled decay: LocoDecay(gamma=1, eta=1).apply_()
  loco       LOCO-REG as coupled decay:   LocoDecay(gamma, eta).apply_()
  loco_loss  LOCO-REG as a loss term:     loss + LocoDecay(gamma, eta).penalty()
             (= loco_penalty + uniform L2 on 1x1-conv/dense weights)

Repetitions are interleaved (the order of the modes rotates every round) so that drifts of a
shared machine hit all modes alike; medians are reported. A second, isolated measurement times
only the regularization call itself (apply_ vs apply_, or penalty forward+backward), which is far
less noisy than whole steps (on a shared machine whole-step medians scatter by several percent
between runs; the min column and the isolated calls are the stable numbers).

    python benchmarks/bench_reg.py                      # CPU, small VGG13, < 1 min on 2 cores
    python benchmarks/bench_reg.py --device cuda --model resnet18 --width 1 --batch 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from locolib.models import build_model
from locolib.reg import LocoDecay
from locolib.train import synchronize

MODES = ("none", "l2", "loco", "loco_loss")


def _setup(args, device):
    torch.manual_seed(args.seed)
    base = build_model(args.model, 10, 3, width=args.width).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    runs = {}
    for mode in MODES:
        model = copy.deepcopy(base)
        if mode == "l2":
            decay = LocoDecay(model, 1.0, 1.0, args.lam)
        elif mode in ("loco", "loco_loss"):
            decay = LocoDecay(model, args.gamma, args.eta, args.lam)
        else:
            decay = None
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
        runs[mode] = (model, decay, opt)
    return runs


def _step(mode, model, decay, opt, x, y, loss_fn):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if mode == "loco_loss":
        loss = loss + decay.penalty()
    loss.backward()
    if mode in ("l2", "loco"):
        decay.apply_()
    opt.step()


def bench_steps(args, device) -> dict[str, float]:
    runs = _setup(args, device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(args.warmup + args.steps):
        order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
        for mode in order:
            model, decay, opt = runs[mode]
            synchronize(device)
            t0 = time.perf_counter()
            _step(mode, model, decay, opt, x, y, loss_fn)
            synchronize(device)
            if rep >= args.warmup:
                times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}, {m: min(v) for m, v in times.items()}


def bench_reg_only(args, device, reps: int = 200) -> dict[str, float]:
    """Median time of the regularization call alone, interleaved."""
    runs = _setup(args, device)
    for model, _, _ in runs.values():
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    calls = {
        "l2": runs["l2"][1].apply_,
        "loco": runs["loco"][1].apply_,
        "loco_loss": lambda: runs["loco_loss"][1].penalty().backward(),
    }
    times: dict[str, list[float]] = {m: [] for m in calls}
    names = list(calls)
    for rep in range(reps + 10):
        order = names[rep % 3:] + names[:rep % 3]
        for name in order:
            synchronize(device)
            t0 = time.perf_counter()
            calls[name]()
            synchronize(device)
            if rep >= 10:
                times[name].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="vgg13", choices=["vgg13", "mobilenet", "resnet18"])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=0.8)
    ap.add_argument("--eta", type=float, default=1.25)
    ap.add_argument("--lam", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    t_start = time.perf_counter()
    step, step_min = bench_steps(args, device)
    reg = bench_reg_only(args, device)
    n_params = sum(p.numel() for p in build_model(args.model, 10, 3, width=args.width).parameters())
    print(f"{args.model} width={args.width} ({n_params:,} params) batch={args.batch} "
          f"device={device} threads={torch.get_num_threads()} steps={args.steps}")
    print(f"{'mode':<10} {'median ms':>9} {'/ l2':>7} {'/ none':>7} {'min ms':>9} {'/ l2':>7}")
    for m in MODES:
        print(f"{m:<10} {1e3 * step[m]:9.2f} {step[m] / step['l2']:7.3f} {step[m] / step['none']:7.3f}"
              f" {1e3 * step_min[m]:9.2f} {step_min[m] / step_min['l2']:7.3f}")
    print("regularization call alone (median):")
    for m, t in reg.items():
        print(f"  {m:<10} {1e6 * t:9.1f} us = {100 * t / step['l2']:.2f}% of an l2 step")
    extra = (reg["loco"] - reg["l2"]) / step["l2"]
    print(f"LOCO-REG (decay) over L2, whole step: median {100 * (step['loco'] / step['l2'] - 1):+.2f}%, "
          f"min {100 * (step_min['loco'] / step_min['l2'] - 1):+.2f}%; "
          f"from the isolated calls: {100 * extra:+.3f}% (goal: <= +3%)")
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")
    return {"step_s": step, "step_min_s": step_min, "reg_only_s": reg}


if __name__ == "__main__":
    main()
