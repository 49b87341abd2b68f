"""Images per second: locolib's on-device input pipeline vs a plain torchvision DataLoader.

Both pipelines feed the same training step (:class:`locolib.train.TrainStep`: on CUDA autocast
in the device's precision, channels_last, cuDNN autotuning, fused SGD; L2 via LocoDecay) with
the same augmentation (random crop of the 4-pixel zero-padded image, random horizontal flip)
and normalization:

* locolib: the whole uint8 dataset on the device; per batch an index gather,
  :func:`locolib.data.augment_batch` and normalization there (what :func:`locolib.train.train`
  does);
* torchvision: PIL images, ``transforms.RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``, a ``DataLoader`` with as many
  worker processes as the machine has cores (persistent, pinned memory on CUDA), batches
  copied to the device.

Two numbers per pipeline: the input pipeline alone (batches produced and moved to the device)
and whole training steps. Each timed chunk is one pass of a fresh iterator over exactly its
batches, so no batch is prepared outside the timed window (a DataLoader's workers would
otherwise fill their prefetch queue while the other pipeline is being timed). The pipelines
alternate chunk by chunk (locolib.timing), and their speed ratio is paired by round.

    python benchmarks/bench_pipeline.py                        # CPU, offline digits
    python benchmarks/bench_pipeline.py --device cuda --dataset cifar10 --network resnet18 --width 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterator

import torch
from bench_reg import device_dtype

from locolib.data import ImageData, augment_batch, load_dataset
from locolib.models import build_model
from locolib.reg import LocoDecay
from locolib.timing import interleaved, median_ci, ratio
from locolib.train import TrainStep, choose_device, memory_format


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnDevice:
    """locolib's pipeline: uint8 data on the device, batched augmentation there."""

    def __init__(self, data: ImageData, device, batch, mean, std, layout, seed=0):
        self.x, self.y = data.x_train.to(device), data.y_train.to(device)
        self.mean, self.std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
        self.device, self.batch, self.layout = device, batch, layout
        self.shuffle = torch.Generator().manual_seed(seed)
        self.aug = torch.Generator(device=device)
        self.aug.manual_seed(seed)

    def batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` batches in a fresh random order (as training draws an epoch's)."""
        epochs = math.ceil(n * self.batch / len(self.y))
        perm = torch.cat([torch.randperm(len(self.y), generator=self.shuffle)
                          for _ in range(epochs)]).to(self.device)
        for i in range(n):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            xb = augment_batch(self.x[idx], self.aug)
            xb = (xb.float() / 255.0 - self.mean) / self.std
            yield xb.contiguous(memory_format=self.layout), self.y[idx]


class PilImages(torch.utils.data.Dataset):
    """The usual torchvision setting: a dataset of PIL images with per-image transforms."""

    def __init__(self, x, y, transform):
        from PIL import Image

        arr = x.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
        self.y = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.y[i]


class _Draw(torch.utils.data.Sampler):
    """``size`` random indices per pass (one timed chunk), from a seeded generator."""

    def __init__(self, n: int, seed: int):
        self.n, self.size = n, 0
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.size

    def __iter__(self):
        return iter(torch.randint(0, self.n, (self.size,), generator=self.g).tolist())


class TorchvisionLoader:
    def __init__(self, data: ImageData, device, batch, mean, std, layout, workers, seed=0):
        from torchvision import transforms

        tf = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ])
        self.sampler = _Draw(len(data.y_train), seed)
        self.loader = torch.utils.data.DataLoader(
            PilImages(data.x_train, data.y_train, tf), batch_size=batch, sampler=self.sampler,
            drop_last=True, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        self.device, self.batch, self.layout = device, batch, layout

    def batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of a fresh iterator over exactly ``n`` batches: the workers start
        preparing them only now, and nothing is left prepared afterwards."""
        self.sampler.size = n * self.batch
        for xb, yb in self.loader:
            xb = xb.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
            yield xb, yb.to(self.device, non_blocking=True)


def compare(data: ImageData, device: torch.device, network: str = "vgg13", width: float = 0.125,
            batch: int = 128, data_batches: int = 25, train_batches: int = 6, rounds: int = 16,
            workers: int | None = None, seed: int = 0) -> dict:
    """Images/s of both pipelines, data alone and with training steps (median over rounds),
    and their ratio (locolib / torchvision, paired by round, 95% interval), JSON-able."""
    workers = cores() if workers is None else workers
    dtype = device_dtype(device)
    mean, std = data.channel_stats()
    torch.manual_seed(seed)
    model = build_model(network, data.num_classes, data.in_channels, width=width)
    layout = memory_format(device, model)
    model = model.to(device=device, memory_format=layout)
    step = TrainStep(model, LocoDecay(model, lam=5e-4), device, 0.05, 0.9, dtype)
    pipes = {"locolib": OnDevice(data, device, batch, mean, std, layout, seed),
             "torchvision": TorchvisionLoader(data, device, batch, mean, std, layout, workers, seed)}

    def consume(pipe, n: int, train: bool) -> None:
        for xb, yb in pipe.batches(n):
            if train:
                step(xb, yb)

    out: dict = {"device": str(device), "workers": workers, "network": network, "width": width,
                 "batch": batch, "autocast": str(dtype), "rounds": rounds}
    for what, n, train in (("data", data_batches, False), ("training", train_batches, True)):
        times = interleaved({name: (lambda p=p, n=n, train=train: consume(p, n, train)) for name, p in pipes.items()},
                            device, rounds, warmup=1)
        out[what] = {name: n * batch / median_ci(t)[0] for name, t in times.items()}
        out[what]["batches_per_round"] = n
        # time(torchvision) / time(locolib): how many times faster locolib is
        out[what]["speedup"] = ratio(times, "torchvision", "locolib").as_dict()
    return out


def report(r: dict) -> str:
    lines = [f"device {r['device']}, {r['network']} width {r['width']}, batch {r['batch']}, "
             f"autocast {r['autocast']}, DataLoader with {r['workers']} workers, "
             f"{r['rounds']} alternating rounds"]
    for what in ("data", "training"):
        q = r[what]["speedup"]
        lines.append(f"{what:<9} images/s: locolib {r[what]['locolib']:,.0f}, torchvision "
                     f"{r[what]['torchvision']:,.0f}; locolib faster by {q['median']:.2f}x "
                     f"(95% CI {q['ci_low']:.2f}-{q['ci_high']:.2f}; "
                     f"{r[what]['batches_per_round']} batches per round)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    p.add_argument("--dataset", default="digits", help="digits (offline), cifar10, ...")
    p.add_argument("--data-root", default="data")
    p.add_argument("--network", default="vgg13", choices=["vgg13", "mobilenet", "resnet18"])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--data-batches", type=int, default=25, help="batches per round, data only")
    p.add_argument("--train-batches", type=int, default=6, help="training steps per round")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: one per core)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset, root=a.data_root, download=False)
    r = compare(data, choose_device(a.device), a.network, a.width, a.batch, a.data_batches,
                a.train_batches, a.rounds, a.workers)
    print(json.dumps(r, indent=2) if a.json else report(r))
    return r


if __name__ == "__main__":
    main()
