"""Images per second: locolib's on-device input pipeline vs a plain torchvision DataLoader.

Both pipelines feed the same network, optimizer and training step (SGD + L2 via LocoDecay, bf16
autocast on CUDA, the memory format training uses) with the same augmentation (random crop of
the 4-pixel zero-padded image, random horizontal flip) and normalization:

* locolib: the whole uint8 dataset on the device; per batch an index gather,
  :func:`locolib.data.augment_batch` and normalization there (what :func:`locolib.train.train`
  does);
* torchvision: PIL images, ``transforms.RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``, a ``DataLoader`` with worker
  processes, batches copied to the device.

Two numbers per pipeline: the input pipeline alone (batches produced and moved to the device,
no model) and whole training steps. The pipelines are timed in alternating chunks so that a
change in machine load hits both alike. Default: offline (digits), < 1 minute on 2 CPU cores.

    python benchmarks/bench_pipeline.py                        # CPU, digits
    python benchmarks/bench_pipeline.py --device cuda --dataset cifar10 --width 1 --steps 400
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from locolib.data import augment_batch, load_dataset
from locolib.models import build_model
from locolib.reg import LocoDecay
from locolib.train import choose_device, memory_format, synchronize


class OnDevice:
    """locolib's pipeline: uint8 data on the device, batched augmentation there."""

    def __init__(self, data, device, batch, mean, std, layout, seed=0):
        self.x, self.y = data.x_train.to(device), data.y_train.to(device)
        self.mean, self.std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
        self.device, self.batch, self.layout = device, batch, layout
        self.shuffle = torch.Generator().manual_seed(seed)
        self.aug = torch.Generator(device=device)
        self.aug.manual_seed(seed)
        self.perm, self.pos = None, len(self.y)

    def __next__(self):
        n = len(self.y)
        if self.pos + self.batch > n:  # new epoch (drop_last, as the DataLoader below)
            self.perm = torch.randperm(n, generator=self.shuffle).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        xb = augment_batch(self.x[idx], self.aug)
        xb = (xb.float() / 255.0 - self.mean) / self.std
        xb = xb.contiguous(memory_format=self.layout)
        return xb, self.y[idx]


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


class TorchvisionLoader:
    def __init__(self, data, device, batch, mean, std, layout, workers, seed=0):
        from torchvision import transforms

        tf = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ])
        self.loader = torch.utils.data.DataLoader(
            PilImages(data.x_train, data.y_train, tf), batch_size=batch, shuffle=True,
            drop_last=True, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        self.device, self.layout = device, layout
        self.it = self._forever()

    def _forever(self):
        while True:
            yield from self.loader

    def __next__(self):
        xb, yb = next(self.it)
        xb = xb.to(self.device, non_blocking=True)
        xb = xb.contiguous(memory_format=self.layout)
        return xb, yb.to(self.device, non_blocking=True)


def make_step(model, device):
    decay = LocoDecay(model, lam=5e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step(xb, yb):
        if amp is not None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(xb)
        else:
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        decay.apply_()
        opt.step()
        return loss

    return step


def timed(pipe, n, device, step=None) -> float:
    """Seconds for n batches (and training steps if ``step``), synchronized at both ends."""
    synchronize(device)
    t = time.perf_counter()
    for _ in range(n):
        xb, yb = next(pipe)
        if step is not None:
            step(xb, yb)
    synchronize(device)
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    p.add_argument("--dataset", default="digits", help="digits (offline), cifar10, ...")
    p.add_argument("--data-root", default="data")
    p.add_argument("--network", default="vgg13", choices=["vgg13", "mobilenet", "resnet18"])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="batches timed per pipeline, data only")
    p.add_argument("--train-steps", type=int, default=None,
                   help="training steps timed per pipeline (default: steps; 32 on CPU, "
                        "where a step of even a small network takes ~0.1-0.4 s)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--chunks", type=int, default=8, help="alternate the pipelines this often")
    a = p.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    device = choose_device(a.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # decayed weights are denormal floats: slow CPU math
    train_steps = a.train_steps or (32 if device.type == "cpu" else a.steps)
    data = load_dataset(a.dataset, root=a.data_root, download=False)
    mean, std = data.channel_stats()
    torch.manual_seed(0)
    model = build_model(a.network, data.num_classes, data.in_channels, width=a.width)
    layout = memory_format(device, model)
    model = model.to(device=device, memory_format=layout)
    step = make_step(model, device)
    pipes = {
        "locolib (data on device)": OnDevice(data, device, a.batch, mean, std, layout),
        f"torchvision DataLoader ({a.workers} workers)":
            TorchvisionLoader(data, device, a.batch, mean, std, layout, a.workers),
    }
    t_all = time.perf_counter()
    for pipe in pipes.values():  # warm-up: worker start, allocator, cuDNN/oneDNN kernel choice
        timed(pipe, 3, device, step)
    data_s: dict[str, list[float]] = {name: [] for name in pipes}
    train_s: dict[str, list[float]] = {name: [] for name in pipes}
    n_data, n_train = a.steps // a.chunks, train_steps // a.chunks  # batches per chunk
    for c in range(a.chunks):
        names = list(pipes) if c % 2 == 0 else list(reversed(pipes))
        for name in names:
            data_s[name].append(timed(pipes[name], n_data, device))
        for name in names:
            train_s[name].append(timed(pipes[name], n_train, device, step))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device {dev_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{a.dataset} ({len(data.y_train)} training images), {a.network} width {a.width}, "
          f"batch {a.batch}; per pipeline {n_data * a.chunks} batches data only and "
          f"{n_train * a.chunks} training steps, in {a.chunks} alternating chunks")
    # "all": images over total time; "best chunk": the fastest chunk, less sensitive to other
    # load on a shared machine.
    print(f"{'images/s':<34}{'data only':>12}{'best chunk':>12}{'training':>12}{'best chunk':>12}")
    rate = {}
    for name in pipes:
        rate[name] = (n_data * a.batch * a.chunks / sum(data_s[name]),
                      n_data * a.batch / min(data_s[name]),
                      n_train * a.batch * a.chunks / sum(train_s[name]),
                      n_train * a.batch / min(train_s[name]))
        print(f"{name:<34}" + "".join(f"{r:>12,.0f}" for r in rate[name]))
    ours, theirs = rate.values()
    print(f"{'ratio locolib / torchvision':<34}" + "".join(f"{o / t:>11.2f}x" for o, t in zip(ours, theirs)))
    print(f"(total {time.perf_counter() - t_all:.1f} s)")


if __name__ == "__main__":
    main()
