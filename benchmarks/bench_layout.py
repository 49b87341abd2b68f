"""Training-step time in channels_last against the contiguous memory format, per network.

Why :func:`locolib.train.memory_format` keeps channels_last on the CPU for every network whose
backward pass does not crash there. Each network is built twice from the same seed; the two
copies take forward and backward steps on the same batch in alternating rounds, so that a change
in machine load hits both alike. Networks with a strided 1x1 convolution (ResNet18) are skipped
on the CPU with 2 or more threads, where channels_last crashes
(:data:`locolib.train.CPU_CHANNELS_LAST_CRASH`).

    python benchmarks/bench_layout.py                  # CPU, 1 thread, the book's 1/8 width
    python benchmarks/bench_layout.py --device cuda --width 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locolib.models import build_model
from locolib.train import choose_device, memory_format, synchronize

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def step_seconds(model, x, device, steps) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x).sum().backward()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    p.add_argument("--networks", nargs="+", default=["vgg13", "mobilenet", "resnet18"])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels", type=int, default=1, help="input channels (digits: 1, CIFAR: 3)")
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds (the first is warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    device = choose_device(a.device)
    print(f"device {device.type}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"width {a.width}, batch {a.batch}, median of {a.rounds - 1} rounds of {a.steps} steps")
    print(f"{'network':<12}{'channels_last ms':>18}{'contiguous ms':>15}{'ratio':>8}")
    x0 = torch.randn(a.batch, a.channels, 32, 32, generator=torch.Generator().manual_seed(0))
    for net in a.networks:
        models = {}
        for name, layout in LAYOUTS.items():
            torch.manual_seed(0)
            models[name] = build_model(net, 10, a.channels, width=a.width).to(device, memory_format=layout)
        if memory_format(device, models["contiguous"]) != torch.channels_last and a.threads > 1:
            print(f"{net:<12}skipped: channels_last crashes its CPU backward with {a.threads} threads")
            continue
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for r in range(a.rounds):
            for name in (LAYOUTS if r % 2 == 0 else reversed(LAYOUTS)):
                x = x0.to(device).contiguous(memory_format=LAYOUTS[name])
                seconds = step_seconds(models[name], x, device, a.steps)
                if r:
                    times[name].append(seconds)
        cl, co = (statistics.median(times[name]) for name in LAYOUTS)
        print(f"{net:<12}{1e3 * cl:>18.1f}{1e3 * co:>15.1f}{cl / co:>8.2f}")


if __name__ == "__main__":
    main()
