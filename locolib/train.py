"""Training one network with standard L2 or LOCO-REG, as in Section 7 of the paper.

The paper's protocol: SGD with momentum 0.9, batch 128, 250 epochs, learning rate 0.1 multiplied
by 0.316 after epochs 70, 140, 190, 230 and 245, lam = 5e-4; standard L2 on 1x1 convolutions and
dense layers in both arms, biases and BatchNorm unregularized (:class:`locolib.reg.LocoDecay`).

A run is a :class:`RunConfig`; :func:`train` runs it in three stages, each a function below it:
resume (:func:`_resume`: load a valid checkpoint or start fresh), the epoch loop
(:func:`_train_epochs`) and finish (:func:`_finish`: evaluate, write the JSON record, remove the
checkpoint). Where a run's files live is one :class:`RunFiles`. Design points:

* Fast path: the whole (uint8) dataset lives on the device; each batch is gathered, augmented
  (:func:`locolib.data.augment_batch`) and normalized there, in channels_last. On CUDA: autocast
  in the precision the device computes fast (:func:`autocast_dtype`; fp16 with a gradient
  scaler below compute capability 8.0), fused SGD, cuDNN autotuning; optional ``torch.compile``
  with static shapes (:func:`compile_model`). The CPU path is none of these, so CPU records stay
  bitwise comparable across versions of this module.
* Exact resume: a checkpoint is written atomically at the end of an epoch once
  ``config.checkpoint_every`` seconds have passed since the last one, and after the last epoch.
  All randomness of an epoch (shuffle order, augmentation, any use of torch's global RNG) comes
  from generators seeded by ``(seed, epoch)``, so no RNG state has to be saved: a run
  interrupted anywhere and restarted ends with the same weights and metrics as an
  uninterrupted one (bitwise on CPU).
* A finished run (its result file exists) is never redone; a lock file (:class:`RunLock`) keeps
  two processes from training the same run at once.

PyTorch's SGD applies momentum as ``v = 0.9 v + g; w -= lr v``, Keras as ``v = 0.9 v - lr g;
w += v``. The two agree while lr is constant and differ only briefly after each decay.
"""

from __future__ import annotations

import functools
import io
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from locolib.config import PAPER_MILESTONES, TRAINING_VERSION, RunConfig
from locolib.data import DATASETS, augment_batch, load_dataset, validation_split
from locolib.io import atomic_write_bytes, write_json
from locolib.kernels import spatial_convs, weight_stats
from locolib.models import build_model
from locolib.progress import progress_bar
from locolib.reg import Regularizer, build_regularizer
from locolib.results import (
    RECORD_FORMAT,
    RunFileWarning,
    RunLock,
    default_results_dir,
    finished_record,
    provenance,
    result_path,
    set_aside,
)

__all__ = [
    "milestone_epochs",
    "lr_at",
    "regularization_dose",
    "dose_matched_lam",
    "paper_dose",
    "choose_device",
    "check_device",
    "check_per_layer",
    "autocast_dtype",
    "training_dtype",
    "compile_model",
    "TrainStep",
    "memory_format",
    "synchronize",
    "derive_seed",
    "train",
    "checkpoint_path",
    "default_checkpoint_dir",
    "RunFiles",
    "run_status",
    "RunDiverged",
]

# torch 2.14.1 on the CPU: the backward pass of a strided 1x1 convolution (ResNet18's shortcuts)
# in channels_last corrupts the heap (segfault or "double free") with 2 or more threads, for
# almost every batch size above 2; 3x3 and unstrided convolutions are fine. A crash would kill a
# reader's kernel, so such networks train in the contiguous format on the CPU. Reproduction:
CPU_CHANNELS_LAST_CRASH = """\
import torch
torch.set_num_threads(2)
conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
for _ in range(5):
    x = torch.randn(17, 8, 32, 32).to(memory_format=torch.channels_last).requires_grad_()
    conv(x).sum().backward()
"""


# --------------------------------------------------------------------------------------------
# Schedule, device, seeds
# --------------------------------------------------------------------------------------------
def milestone_epochs(epochs: int, fractions: Sequence[float] = PAPER_MILESTONES) -> tuple[int, ...]:
    """0-based epochs from which the next decay applies, scaled to ``epochs`` (chapter 05;
    Section 7's schedule).

    ``m_i = floor(f_i * epochs + 0.5)`` (round half up), clipped to ``[1, epochs - 1]`` so that a
    short run keeps every decay (the last ones may coincide). 250 epochs give the paper's
    (70, 140, 190, 230, 245): lr 0.1 in epochs 0-69 (the paper's 1-70), 0.0316 from 70 on, ...
    25 epochs give (7, 14, 19, 23, 24). With epochs = 1 no decay happens.
    """
    return tuple(max(1, min(epochs - 1, math.floor(f * epochs + 0.5))) for f in fractions)


def lr_at(config: RunConfig, epoch: int) -> float:
    """Learning rate used throughout 0-based ``epoch``: ``lr * lr_decay ** #(milestones <= epoch)``
    (chapter 05; Section 7's schedule)."""
    k = sum(1 for m in milestone_epochs(config.epochs, config.milestones) if m <= epoch)
    return config.lr * config.lr_decay**k


def regularization_dose(config: RunConfig, n_train: int) -> float:
    """How far the regularizer moves the weights over a whole run: ``2 * lam * sum(lr over all
    steps) / (1 - momentum)``, the exponent of the total shrinkage that the L2 gradient alone
    would apply (momentum amplifies each step by 1 / (1 - momentum)). The paper's protocol on
    CIFAR's 50,000 training images gives about 38.5; short runs on small data give far less
    (chapter 05's dose table)."""
    steps = math.ceil((config.train_subset or n_train) / config.batch_size)
    lr_sum = steps * sum(lr_at(config, e) for e in range(config.epochs))
    return 2.0 * config.lam * lr_sum / (1.0 - config.momentum)


def paper_dose() -> float:
    """The dose of the paper's protocol (250 epochs on CIFAR's 50,000 training images): 38.5
    (chapter 05; Section 7)."""
    return regularization_dose(RunConfig("cifar10", "vgg13", "l2", 0), 50_000)


def dose_matched_lam(config: RunConfig, n_train: int, dose: float) -> float:
    """The ``lam`` that gives ``config`` (on ``n_train`` images) the regularization ``dose``
    (chapter 05's dose-matched arms, :mod:`locolib.plans`)."""
    return config.lam * dose / regularization_dose(config, n_train)


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (a ValueError if this machine has no such device), else CUDA if
    available, else Apple MPS if available, else CPU (every run of chapters 04-07,
    :func:`train`)."""
    if device is not None:
        device = check_device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" -> "cuda:<current>", so that
            device = torch.device("cuda", torch.cuda.current_device())  # device checks compare equal
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device: str | torch.device, here: bool = True) -> torch.device:
    """``device`` as a torch.device, or a ValueError saying what is wrong with it: not a device
    name torch trains on, or (``here``) not a device of this machine (``--device`` of
    ``locolib-sweep`` and ``python -m locolib.plans``; the running page, book/running.md).
    (Chapters 05-07: their studies' command lines.)"""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps")
    if here and dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise ValueError(f"device {str(device)!r}: this machine has {n} CUDA device(s)"
                             + ("" if n else "; use cpu"))
    mps = getattr(torch.backends, "mps", None)
    if here and dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError(f"device {str(device)!r}: this machine has no Apple MPS device; use cpu")
    return dev


def check_per_layer(config: RunConfig) -> None:
    """A ValueError unless ``config``'s per-layer ``gamma``/``eta`` give one value per spatial
    convolution of its network (checked when a plan is made, before anything trains; chapter
    06's layer-wise parameters, Table 6). (Chapter 06.)"""
    lengths = {name: len(v) for name in ("gamma", "eta")
               if isinstance(v := getattr(config, name), tuple)}
    if not lengths:
        return
    n = _spatial_conv_count(config.dataset, config.network, config.width, config.kernel_size)
    for name, length in lengths.items():
        if length != n:
            raise ValueError(f"{name} has {length} per-layer values but {config.network} "
                             f"(width {config.width:g}, {config.kernel_size}x{config.kernel_size}) "
                             f"has {n} spatial convolutions")


@functools.lru_cache(maxsize=64)
def _spatial_conv_count(dataset: str, network: str, width: float, kernel_size: int) -> int:
    spec = DATASETS[dataset]
    with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        model = build_model(network, spec.num_classes, in_channels=spec.channels, width=width,
                            kernel_size=kernel_size)
    return len(spatial_convs(model))


def autocast_dtype(capability: tuple[int, int]) -> torch.dtype:
    """The autocast dtype for a CUDA device of compute ``capability`` (major, minor): bfloat16
    from 8.0 on (Ampere and later), float16 below, where cuDNN has no bfloat16 convolutions
    (Colab's T4 is 7.5). float16's narrow exponent range needs a gradient scaler
    (:class:`TrainStep` adds one). Used by the GPU path of :func:`train` (the GPU profiles of
    chapters 05-07; the running page, book/running.md)."""
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16


def training_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run of ``config`` trains in on ``device``, or None (float32):
    :func:`autocast_dtype` of a CUDA device if ``config.amp``, bfloat16 on the CPU if
    ``config.amp_cpu`` (each record's ``precision``; the running page, book/running.md).
    (Chapters 05-07, on a GPU.)"""
    if config.amp and device.type == "cuda":
        return autocast_dtype(torch.cuda.get_device_capability(device))
    if config.amp_cpu and device.type == "cpu":
        return torch.bfloat16
    return None


def compile_model(model: torch.nn.Module,
                  backend: str | Callable = "inductor") -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` with static shapes: one graph per input shape (full batches, the
    partial last batch, each evaluation batch size), all built in the first epoch. With
    dynamic shapes torch would replace the full-batch graph by a slower shape-generic one as
    soon as the partial batch arrives. ``backend``: torch.compile's (tests count graphs).
    ``--compile true`` of the GPU runs (the running page, book/running.md).
    (Chapters 05-07, on a GPU.)"""
    return torch.compile(model, backend=backend, dynamic=False)


_STREAMS = {"init": 0, "shuffle": 1, "augment": 2, "torch": 3, "subset": 4}


def derive_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """A 63-bit seed for one random stream of one epoch, independent across (seed, stream,
    epoch): every run of chapters 04-07, and chapter 04's untrained networks
    (:mod:`locolib.inspection`)."""
    ss = np.random.SeedSequence([int(seed), _STREAMS[stream], int(epoch)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def memory_format(device: torch.device, model: torch.nn.Module,
                  channels_last: bool = True) -> torch.memory_format:
    """Layout of ``model``'s training tensors on ``device``: channels_last if asked (what cuDNN's
    fast kernels want; on one CPU thread it makes the book's networks' steps about 1.5x faster,
    see benchmarks/bench_layout.py), except for a network with a strided 1x1 convolution on the
    CPU (:data:`CPU_CHANNELS_LAST_CRASH`). Every run of chapters 04-07."""
    crashes = device.type == "cpu" and any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
        for m in model.modules())
    return torch.channels_last if channels_last and not crashes else torch.contiguous_format


@contextmanager
def _denormals_flushed(device: torch.device):
    """On the CPU, flush denormal floats to zero inside the block; restore the caller's mode after.

    Weights decaying towards zero (and their gradients) become denormal floats, which make CPU
    arithmetic 10-100x slower; flushing them costs no accuracy. The mode is per thread and global
    to it (numpy sees it too), so it must not outlive the run.
    """
    if device.type != "cpu":
        yield
        return
    was_flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0  # torch has no getter for the mode
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


#: Building a model draws its initial weights from torch's global RNG; concurrent runs in
#: threads of one process (Dask workers sharing a GPU) take turns with it, so that each gets
#: its seed's weights (see _seeded_global_rng).
_RNG_LOCK = threading.Lock()


@contextmanager
def _seeded_global_rng(device: torch.device, seed: int):
    """Inside the block torch's global RNG (CPU, and the CUDA device in use) is seeded by
    ``seed``; on exit the caller's state comes back. Saving, seeding and restoring take the
    lock that model initialisation holds, so that a run in another thread of the process never
    initialises its model from this run's RNG state."""
    fork = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    with _RNG_LOCK:
        fork.__enter__()
        torch.manual_seed(seed)
    try:
        yield
    finally:
        with _RNG_LOCK:
            fork.__exit__(None, None, None)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def checkpoint_path(config: RunConfig, checkpoint_dir: str | Path) -> Path:
    """Where the checkpoint of ``config`` lives, ``<checkpoint_dir>/<key>.pt``: an interrupted
    run resumes from it (chapters 05-07; the running page, book/running.md)."""
    return Path(checkpoint_dir) / f"{config.key}.pt"


def default_checkpoint_dir(results_dir: str | Path | None = None) -> Path:
    """The checkpoint and lock folder of a results folder, ``<results_dir>/checkpoints``
    (git-ignored; ``results_dir`` defaults to :func:`default_results_dir`): where :func:`train`,
    ``locolib-sweep`` and its Dask workers look unless told otherwise (chapters 05-07; the
    running page, book/running.md)."""
    return (Path(results_dir) if results_dir is not None else default_results_dir()) / "checkpoints"


@dataclass(frozen=True)
class RunFiles:
    """Where the files of one run live (chapters 04-07; the running page, book/running.md):
    its ``record`` ``<results_dir>/<key>.json``, its ``checkpoint`` ``<checkpoint_dir>/<key>.pt``
    and ``lock`` ``<checkpoint_dir>/<key>.lock``, and its final weights ``model``
    ``<model_dir>/<key>.pt`` (None: not kept). Build it with :meth:`of`."""

    record: Path
    checkpoint: Path
    lock: Path
    model: Path | None

    @classmethod
    def of(cls, config: RunConfig, results_dir: str | Path | None = None,
           checkpoint_dir: str | Path | None = None, model_dir: str | Path | None = None) -> RunFiles:
        """The files of run ``config``; ``results_dir`` defaults to :func:`default_results_dir`,
        ``checkpoint_dir`` to :func:`default_checkpoint_dir`."""
        results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
        checkpoint_dir = (Path(checkpoint_dir) if checkpoint_dir is not None
                          else default_checkpoint_dir(results_dir))
        return cls(record=result_path(config, results_dir),
                   checkpoint=checkpoint_path(config, checkpoint_dir),
                   lock=checkpoint_dir / f"{config.key}.lock",
                   model=None if model_dir is None else Path(model_dir) / f"{config.key}.pt")


#: What a checkpoint holds (:func:`_save_checkpoint`); ``spent``: seconds by kind, of the
#: segments up to it.
_CHECKPOINT_KEYS = {"key", "epoch", "model", "optimizer", "history", "spent", "segments"}
_SPENT_KEYS = ("wall_s", "checkpoint_s", "compile_s")


def _load_checkpoint(path: Path, config: RunConfig, move_invalid: bool = False) -> dict | None:
    """The checkpoint of ``config`` at ``path``, or None if there is none or it is not usable:
    unreadable (with atomic writes only after disk trouble), of other code or of another run.
    An unusable file is named in a warning and, with ``move_invalid`` (the run starts over), set
    aside."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file means "no usable checkpoint"
        # Only the error's type: torch's message for a file it refuses suggests loading it
        # with weights_only=False, which would run whatever code the file holds.
        problem = f"unreadable checkpoint (empty, truncated or not a checkpoint: {type(err).__name__})"
    else:
        problem = _checkpoint_problem(state, config)
        if problem is None:
            return state
    _reject_checkpoint(path, problem, move_invalid)
    return None


def _checkpoint_problem(state: Any, config: RunConfig) -> str | None:
    """What makes ``state`` unusable as a checkpoint of ``config``, or None."""
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
        return "not a checkpoint of this code (another file, or one of an earlier version)"
    if state["key"] != config.key:
        return "checkpoint of another run"
    epoch, segments, spent = state["epoch"], state["segments"], state["spent"]
    if not (type(epoch) is int and 0 < epoch <= config.epochs and type(segments) is int
            and segments > 0 and isinstance(state["model"], dict)
            and isinstance(state["optimizer"], dict) and isinstance(state["history"], list)
            and len(state["history"]) == epoch
            and all(isinstance(h, dict) for h in state["history"])
            and isinstance(spent, dict) and spent.keys() == set(_SPENT_KEYS)
            and all(isinstance(v, float) for v in spent.values())):
        return "damaged checkpoint (fields of the wrong type or out of range)"
    return None


def _reject_checkpoint(path: Path, problem: str, move: bool) -> None:
    if move:
        set_aside(path, f"{problem}; the run starts over")
    else:
        warnings.warn(f"{path}: {problem}; not used", RunFileWarning, stacklevel=3)


def run_status(config: RunConfig, results_dir: str | Path | None = None,
               checkpoint_dir: str | Path | None = None) -> str:
    """``"done"``, ``"running"`` (locked by a live process), ``"partial (k/E epochs)"`` or
    ``"todo"``: what ``locolib-sweep --dry-run`` and ``python -m locolib.plans PROFILE
    --dry-run`` print per run (chapters 05-07's studies; the running page, book/running.md).
    Reads only: a file that is not usable is named in a warning, never moved."""
    files = RunFiles.of(config, results_dir, checkpoint_dir)
    if finished_record(files.record, config.key) is not None:
        return "done"
    lock = RunLock(files.lock)
    info = lock.owner()
    if info is not None and not lock.is_stale(info):
        return "running"
    state = _load_checkpoint(files.checkpoint, config)
    if state is not None:
        return f"partial ({state['epoch']}/{config.epochs} epochs)"
    return "todo"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
Hook = Callable[[str, int, int], None]
#: Clock of every timing in a record; a test replaces it to schedule checkpoints.
_clock = time.perf_counter


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings; a no-op on the CPU): every record's
    ``timing`` (the running page, book/running.md) and the benchmarks.
    (Chapters 05-07: each record's timing.)"""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TrainStep:
    """One optimizer step as :func:`train` takes it (every run of chapters 04-07; Eq. 6.1's
    decay gradient); the benchmarks time the same object (benchmarks/bench_reg.py,
    benchmarks/gpu_check.py).

    Forward under autocast in ``dtype`` (None: float32), cross-entropy in float32, backward,
    the regularizer's decay gradient (:class:`locolib.reg.LocoDecay`; None: unregularized), SGD
    with momentum: fused on CUDA, torch's default on other devices (the CPU records were made
    with it). float16 scales the loss (:class:`torch.amp.GradScaler`) and unscales the gradients
    before the decay is added, so the decay sees true gradients and weights.
    """

    def __init__(self, model: torch.nn.Module, decay: Regularizer | None, device: torch.device, lr: float,
                 momentum: float, dtype: torch.dtype | None = None, compile: bool = False) -> None:
        self.model, self.decay, self.device, self.dtype = model, decay, device, dtype
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=0.0,
                                   fused=True if device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.forward = compile_model(model) if compile else model

    def autocast(self):
        """The autocast context of the forward pass (nothing in float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on batch ``(x, y)``; returns the loss and the logits (not detached)."""
        with self.autocast():
            logits = self.forward(x)
        loss = self.loss(logits, y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self._decay()  # L2 / LOCO-REG gradient, TensorFlow strength 2 * lam * mask * w
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            self._decay()
            self.scaler.step(self.opt)  # skipped when a gradient overflowed
            self.scaler.update()
        return loss, logits

    def _decay(self) -> None:
        if self.decay is not None:
            self.decay.apply_()


class _Run:
    """The state of one run on one device (model, optimizer, data), built once per process."""

    def __init__(self, config: RunConfig, device: torch.device, download: bool) -> None:
        self.config, self.device = config, device
        data = load_dataset(config.dataset, root=config.data_root, download=download,
                            seed=config.data_seed)
        x_train, y_train = data.x_train, data.y_train
        if config.train_subset is not None and config.train_subset < len(y_train):
            g = _generator(torch.device("cpu"), derive_seed(config.data_seed, "subset"))
            idx = torch.randperm(len(y_train), generator=g)[: config.train_subset].sort().values
            x_train, y_train = x_train[idx], y_train[idx]
        mean, std = data.channel_stats()  # of the full training set (a fixed property of the data)
        self.num_classes = data.num_classes
        # The data stay uint8 on the device (4x less memory and gather traffic than float).
        self.x_train = x_train.to(device)
        self.y_train = y_train.to(device)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        x_test, y_test = data.x_test, data.y_test
        x_val = y_val = None
        if config.validation:  # part of the held-out images is the validation set
            val, test = validation_split(y_test, config.validation, config.data_seed)
            x_val, y_val = x_test[val], y_test[val].to(device)
            x_test, y_test = x_test[test], y_test[test]
        self.y_test, self.y_val = y_test.to(device), y_val

        kwargs = {} if config.init == "torch" else {"init": config.init}
        # Seeded init without touching the caller's RNG.
        with _RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "init"))
            model = build_model(config.network, data.num_classes, in_channels=data.in_channels,
                                width=config.width, kernel_size=config.kernel_size,
                                padding_mode=config.padding_mode, **kwargs)
        self.memory_format = memory_format(device, model, config.channels_last)
        self.model = model.to(device=device, memory_format=self.memory_format)
        self.x_test = self._normalize(x_test.to(device))
        self.x_val = None if x_val is None else self._normalize(x_val.to(device))
        self.decay = build_regularizer(self.model, config)
        self.step = TrainStep(self.model, self.decay, device, config.lr, config.momentum,
                              training_dtype(config, device), config.compile)
        self.opt = self.step.opt
        self.compile_s = 0.0  # first calls per input shape, when compiling
        self._shapes: set[tuple] = set()

    def _call(self, kind: str, fn: Callable, x: torch.Tensor, *args):
        """``fn(x, *args)``; when compiling, the first call per (kind, batch size) builds a graph
        and is timed into :attr:`compile_s`."""
        if not self.config.compile or (kind, len(x)) in self._shapes:
            return fn(x, *args)
        self._shapes.add((kind, len(x)))
        synchronize(self.device)
        t = _clock()
        out = fn(x, *args)
        synchronize(self.device)
        self.compile_s += _clock() - t
        return out

    def _normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = (x_uint8.float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def train_epoch(self, epoch: int, hook: Hook | None, lock: RunLock | None, bar) -> dict:
        cfg, dev = self.config, self.device
        lr = lr_at(cfg, epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        n = len(self.y_train)
        perm = torch.randperm(n, generator=_generator(torch.device("cpu"),
                                                      derive_seed(cfg.seed, "shuffle", epoch)))
        perm = perm.to(dev)
        aug_gen = _generator(dev, derive_seed(cfg.seed, "augment", epoch))
        self.model.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        # Keeping the partial last batch, as Keras' fit does.
        for step, start in enumerate(range(0, n, cfg.batch_size)):
            idx = perm[start:start + cfg.batch_size]
            xb = _augment(self.x_train[idx], aug_gen, cfg.flip, cfg.pad)
            xb, yb = self._normalize(xb), self.y_train[idx]
            loss, logits = self._call("train", self.step, xb, yb)
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if bar is not None:
                bar.update(1)
            if lock is not None:
                lock.heartbeat()
            if hook is not None:
                hook("batch", epoch, step)
        return {"lr": lr, "train_loss": float(loss_sum) / n, "train_acc": int(correct) / n}

    @torch.no_grad()
    def evaluate(self, batch_size: int = 1000, split: str = "test") -> dict:
        """Loss, accuracy and error on the test set (``split="test"``), the validation set
        (``"val"``) or the (unaugmented) training set (``"train"``)."""
        self.model.eval()
        dev = self.device
        x_all, y_all = {"test": (self.x_test, self.y_test), "train": (self.x_train, self.y_train),
                        "val": (self.x_val, self.y_val)}[split]
        n = len(y_all)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        for start in range(0, n, batch_size):
            xb, yb = x_all[start:start + batch_size], y_all[start:start + batch_size]
            if xb.dtype == torch.uint8:
                xb = self._normalize(xb)
            with self.step.autocast():
                logits = self._call("eval", self.step.forward, xb).float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        acc = int(correct) / n
        return {f"{split}_loss": float(loss_sum) / n, f"{split}_acc": acc, f"{split}_error": 1.0 - acc}


def _augment(x: torch.Tensor, generator: torch.Generator, flip: bool, pad: int) -> torch.Tensor:
    """:func:`locolib.data.augment_batch`, skipped when there is nothing to do."""
    if not flip and pad == 0:
        return x
    return augment_batch(x, generator, flip=flip, pad=pad)


def train(
    config: RunConfig,
    results_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool | str = True,
    download: bool = True,
    hook: Hook | None = None,
    model_dir: str | Path | None = None,
    stale_after: float = 900.0,
) -> dict[str, Any]:
    """Run ``config`` (or resume it) and return its result record: every training run of the
    book (chapters 04-07; Section 7's protocol, Eq. 6.1's regularizer through
    :mod:`locolib.reg`).

    * ``results_dir``: where ``<key>.json`` goes (default :func:`default_results_dir`). If that
      file holds the run's record it is returned at once, without training; a file there that
      is not (:func:`locolib.results.read_record`) is set aside with a warning and the run
      trained.
    * ``checkpoint_dir``: checkpoints ``<key>.pt`` (every ``config.checkpoint_every`` seconds,
      at the end of an epoch, and after the last epoch) and lock files ``<key>.lock`` (default
      ``<results_dir>/checkpoints``, git-ignored). Processes sharing a results folder must share
      this folder too. The checkpoint is deleted once the record is written.
    * ``device``: default :func:`choose_device` (CUDA, else MPS, else CPU).
    * ``progress``: a tqdm bar over epochs; ``"batches"`` adds one over the batches of an epoch.
    * ``download``: let torchvision download a missing dataset.
    * ``hook(event, epoch, step)``: called after every optimizer step (``"batch"``), after
      every epoch (``"epoch"``, step = -1) and after every checkpoint (``"checkpoint"``,
      step = -1); for tests, progress reports and custom logging.
    * ``model_dir``: if given, the final weights are also saved there as ``<key>.pt``.
    * ``stale_after``: seconds without heartbeat after which another process's lock is taken
      over (see :class:`locolib.results.RunLock`).

    Raises :class:`RunLocked` if another live process is training this run.

    Resuming is exact on CPU (bitwise equal weights and metrics). On CUDA a resumed run sees the
    same batches and augmentations, but cuDNN's autotuned (and atomics-based) kernels make it
    equal to an uninterrupted run only up to floating-point rounding. A checkpoint that does not
    fit (damaged, of another run, of other code) is set aside with a warning and the run starts
    over.

    The record (JSON): ``format``, ``key``, ``config``, ``history`` (per epoch: epoch, lr,
    train_loss, train_acc, test_loss, test_acc, test_error, with ``config.validation`` also
    val_loss, val_acc, val_error (on the validation images), penalty (the regularization term
    lam * sum(mask * w**2) at the epoch's end), train_s, eval_s, epoch_s, images_per_s),
    ``final`` (the last epoch's metrics, val_error among them with a validation set),
    ``timing`` (total_s = train_s + eval_s, the epochs' training and evaluation; per_epoch_s;
    images_per_s of training alone; wall_s, the
    whole run's wall time with setup, final evaluation and checkpoint writes (an interrupted
    segment counts up to its last checkpoint), and images_per_wall_s; checkpoint_s, the
    checkpoint writes; compile_s, the calls that built compiled graphs (part of train_s and
    eval_s); segments = number of processes that worked on the run), ``precision`` (autocast
    dtype, gradient scaler, fused SGD, the CUDA compute capability), ``n_train``, ``n_test``,
    ``n_validation``,
    ``num_params``, ``milestones``, ``weight_stats`` (:func:`weight_stats`), plus provenance:
    ``versions``, ``device``, ``host``, ``git``, ``date`` (:func:`locolib.results.provenance`).
    """
    files = RunFiles.of(config, results_dir, checkpoint_dir, model_dir)
    record = finished_record(files.record, config.key, on_invalid="skip")
    if record is not None:
        return record
    with RunLock(files.lock, stale_after=stale_after) as lock:
        # Finished by another process while we waited for the lock? Else nothing may stay at
        # the record's place: it is set aside before the run writes its own.
        record = finished_record(files.record, config.key, on_invalid="set_aside")
        if record is not None:
            return record
        device = choose_device(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick fast kernels
        with _denormals_flushed(device):
            started = _clock()
            run = _Run(config, device, download)
            state = _resume(run, files.checkpoint, started)
            setup_s = _clock() - started
            _train_epochs(run, state, files.checkpoint, lock, hook, progress)
            return _finish(run, state, files, setup_s)


@dataclass
class _RunState:
    """How far a run has come: the finished epochs' metrics, the number of processes that have
    worked on it (this one included), and the seconds spent."""

    history: list[dict]
    segments: int
    spent: dict[str, float]  # by the earlier segments (wall_s: up to their last checkpoint)
    started: float  # _clock() when this segment began
    checkpoint_s: float = 0.0  # this segment's checkpoint writes

    def so_far(self, compile_s: float) -> dict[str, float]:
        """Seconds spent by every segment up to now; ``compile_s``: this segment's."""
        return {"wall_s": self.spent["wall_s"] + _clock() - self.started,
                "checkpoint_s": self.spent["checkpoint_s"] + self.checkpoint_s,
                "compile_s": self.spent["compile_s"] + compile_s}


def _resume(run: _Run, checkpoint: Path, started: float) -> _RunState:
    """Resume: load the checkpoint at ``checkpoint`` into ``run`` (weights, optimizer, gradient
    scaler) and return how far it had come; without a usable one (none, damaged, of another
    run, or of another model: set aside with a warning), start fresh."""
    fresh = _RunState(history=[], segments=1, spent=dict.fromkeys(_SPENT_KEYS, 0.0),
                      started=started)
    saved = _load_checkpoint(checkpoint, run.config, move_invalid=True)
    if saved is None:
        return fresh
    mismatch = _state_mismatch(run.model, saved["model"])
    if mismatch is None:
        try:  # checks the parameter groups before changing anything
            run.opt.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as err:
            mismatch = f"optimizer state does not fit ({err})"
    if mismatch is not None:  # written by other code (a changed model)
        _reject_checkpoint(checkpoint, f"checkpoint of another model: {mismatch}", move=True)
        return fresh
    run.model.load_state_dict(saved["model"])
    if run.step.scaler is not None and "scaler" in saved:  # none if written without float16
        run.step.scaler.load_state_dict(saved["scaler"])
    return _RunState(history=list(saved["history"]), segments=saved["segments"] + 1,
                     spent=dict(saved["spent"]), started=started)


def _state_mismatch(model: torch.nn.Module, state: dict) -> str | None:
    """How ``state`` fails to fit ``model`` (checked before loading: torch's load_state_dict
    copies what fits before it raises), or None."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    return f"shapes differ for {shapes[:3]}" if shapes else None


def _train_epochs(run: _Run, state: _RunState, checkpoint: Path, lock: RunLock,
                  hook: Hook | None, progress: bool | str) -> None:
    """The epoch loop: train the epochs ``state`` has not done yet, appending their metrics to
    its history; checkpoint at the end of an epoch once ``config.checkpoint_every`` seconds have
    passed since the last checkpoint, and after the last epoch."""
    config = run.config
    start = len(state.history)
    bar = progress_bar(config.epochs, config.key, bool(progress), initial=start, unit="epoch")
    if start:
        bar.write(f"{config.key}: resuming after epoch {start}")
    last_checkpoint = _clock()
    try:
        for epoch in range(start, config.epochs):
            metrics = _epoch(run, epoch, hook, lock, progress == "batches")
            state.history.append(metrics)
            if hook is not None:
                hook("epoch", epoch, -1)
            due = _clock() - last_checkpoint >= config.checkpoint_every
            if (epoch + 1 == config.epochs or due) and _save_checkpoint(checkpoint, run, state):
                last_checkpoint = _clock()
                if hook is not None:
                    hook("checkpoint", epoch, -1)
            lock.heartbeat(force=True)
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", train_acc=f"{metrics['train_acc']:.3f}",
                            lr=f"{metrics['lr']:.3g}")
            bar.update(1)
    finally:
        bar.close()


def _epoch(run: _Run, epoch: int, hook: Hook | None, lock: RunLock, batch_bar: bool) -> dict[str, Any]:
    """One epoch: train, evaluate (every ``config.eval_every`` epochs and after the last), the
    regularization penalty at its end, and its timings. ``batch_bar``: a bar over its batches."""
    config, device = run.config, run.device
    steps = math.ceil(len(run.y_train) / config.batch_size)
    inner = progress_bar(steps, f"epoch {epoch + 1}", leave=False) if batch_bar else None
    # Any use of torch's global RNG inside the epoch (e.g. dropout) is seeded by (seed, epoch)
    # too, and the caller's RNG state is left untouched.
    with _seeded_global_rng(device, derive_seed(config.seed, "torch", epoch)):
        synchronize(device)
        t0 = _clock()
        metrics = run.train_epoch(epoch, hook, lock, inner)
        synchronize(device)
        t1 = _clock()
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            metrics.update(run.evaluate())
            if config.validation:
                metrics.update(run.evaluate(split="val"))
        metrics["penalty"] = float(run.decay.penalty().detach())
        synchronize(device)
        t2 = _clock()
    if inner is not None:
        inner.close()
    metrics.update(epoch=epoch + 1, train_s=t1 - t0, eval_s=t2 - t1, epoch_s=t2 - t0,
                   images_per_s=len(run.y_train) / max(t1 - t0, 1e-9))
    return metrics


def _save_checkpoint(path: Path, run: _Run, state: _RunState) -> bool:
    """Write ``run``'s checkpoint after the epochs of ``state``, atomically; False, with a
    warning, if it could not be written (a full disk, say: the run goes on without it)."""
    t0 = _clock()
    saved = {
        "key": run.config.key,
        "config": run.config.to_dict(),
        "epoch": len(state.history),  # number of finished epochs
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "history": state.history,
        "spent": state.so_far(run.compile_s),  # without this write itself
        "segments": state.segments,
    }
    if run.step.scaler is not None:
        saved["scaler"] = run.step.scaler.state_dict()
    try:
        _write_torch(path, saved)
    except OSError as err:
        warnings.warn(f"{path}: checkpoint not written ({err.strerror or err}); the run goes on",
                      RunFileWarning, stacklevel=2)
        return False
    state.checkpoint_s += _clock() - t0
    return True


def _write_torch(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path``, atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _finish(run: _Run, state: _RunState, files: RunFiles, setup_s: float) -> dict[str, Any]:
    """Finish: evaluate the final network into the record (:func:`_record`), keep its weights
    at ``files.model`` if asked, write the record atomically and remove the checkpoint."""
    record = _record(run, state.history, setup_s, state.segments)
    timing = record["timing"]
    timing.update(state.so_far(run.compile_s))
    timing["images_per_wall_s"] = len(run.y_train) * len(state.history) / max(timing["wall_s"], 1e-9)
    if files.model is not None:
        _write_torch(files.model, {k: v.cpu() for k, v in run.model.state_dict().items()})
    write_json(files.record, record)
    files.checkpoint.unlink(missing_ok=True)
    return record


class RunDiverged(ArithmeticError):
    """The run's final losses are not finite numbers (its learning rate was too large, say): no
    record is written; a sweep trains its other runs and fails at the end (chapters 05-07's
    studies)."""


def _record(run: _Run, history: list[dict], setup_s: float, segments: int) -> dict[str, Any]:
    """The run's record (see :func:`train`) without its wall-time fields; evaluates the final
    network on the training images, :class:`RunDiverged` if its losses are not finite."""
    config, device = run.config, run.device
    train_s = sum(h["train_s"] for h in history)
    eval_s = sum(h["eval_s"] for h in history)
    elapsed = sum(h["epoch_s"] for h in history)
    # An epoch's running loss is not finite when a float16 batch overflowed (the scaler then
    # skips that step): null in the record, which is standard JSON.
    history = [{k: v if not isinstance(v, float) or math.isfinite(v) else None
                for k, v in h.items()} for h in history]
    final = {k: history[-1][k] for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                          "test_error")}
    if config.validation:
        final.update({k: history[-1][k] for k in ("val_loss", "val_acc", "val_error")})
    # The running train_acc above is measured on augmented batches while the weights change;
    # this is the final network's accuracy on the training images themselves.
    final.update({f"clean_{k}": v for k, v in run.evaluate(split="train").items()})
    for name in ("test_loss", "clean_train_loss"):
        if final[name] is None or not math.isfinite(final[name]):
            raise RunDiverged(f"{config.key} diverged: its final {name.replace('_', ' ')} is "
                              "not a finite number; no record written (a smaller lr may help)")
    dtype = run.step.dtype
    rec = {
        "format": RECORD_FORMAT,
        "training_version": TRAINING_VERSION,
        "key": config.key,
        "config": config.to_dict(),
        "history": history,
        "final": final,
        "timing": {
            "total_s": elapsed,
            "train_s": train_s,
            "eval_s": eval_s,
            "setup_s_last_segment": setup_s,
            "per_epoch_s": elapsed / len(history),
            "images_per_s": len(run.y_train) * len(history) / max(train_s, 1e-9),
            "segments": segments,
        },
        "n_train": len(run.y_train),
        "n_test": len(run.y_test),
        "n_validation": config.validation,
        "num_classes": run.num_classes,
        "num_params": sum(p.numel() for p in run.model.parameters()),
        "memory_format": str(run.memory_format).removeprefix("torch."),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": {
            "autocast": None if dtype is None else str(dtype).removeprefix("torch."),
            "grad_scaler": run.step.scaler is not None,
            "fused_sgd": bool(run.opt.defaults.get("fused")),
            "compute_capability": (list(torch.cuda.get_device_capability(device))
                                   if device.type == "cuda" else None),
        },
        "milestones": list(milestone_epochs(config.epochs, config.milestones)),
        "weight_stats": weight_stats(run.model),
    }
    rec.update(provenance(device))
    return rec
