"""Sweeps on a Dask cluster: every training run is one Dask task (book/running.md).

``locolib-sweep --dask ADDRESS`` hands a sweep's runs to Dask instead of training them one
after the other:

* ``local``: a :class:`distributed.LocalCluster` on this machine, bound to 127.0.0.1, with one
  worker process per CPU core, or ``runs_per_gpu`` per GPU when the runs train on CUDA;
* ``tls://host:8786``: a scheduler that is already running, with workers started by hand
  (``dask scheduler``, ``dask worker``) and the TLS credentials they were started with;
* ``slurm``: workers submitted as SLURM jobs through dask-jobqueue (:func:`slurm_job_kwargs`).

Whoever can talk to a Dask scheduler can run any code on its workers, as the user who started
them. So every connection is TLS with credentials only this sweep's processes hold: ``local``
and ``slurm`` make temporary ones (:func:`security`), a scheduler started by hand is given its
own. A ``tcp://`` address still works, with a warning; dashboards start only when asked for.

A task trains one run with :func:`locolib.train.train` in the shared results and checkpoint
folders, so everything that makes a serial sweep safe holds here too: a finished run is never
redone, and a task whose worker dies is rescheduled by Dask (up to
``distributed.scheduler.allowed-failures`` times) and resumes from the run's last checkpoint.
The records are those a serial sweep writes (bitwise on the CPU). GPU runs declare a fraction
``1 / runs_per_gpu`` of a ``GPU`` resource, so workers started with ``--resources GPU=1`` run
that many at once. Each finished epoch is reported back to the submitting process.

Dask is an optional dependency (``pip install 'locolib[cluster]'``): it is imported where it is
used, so that the sweep's command line works without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from locolib.config import RunConfig
from locolib.results import RunLocked, default_results_dir
from locolib.train import default_checkpoint_dir, train

__all__ = ["ClusterOptions", "add_options", "options_from_args", "describe", "security", "connect",
           "slurm_job_kwargs", "job_script", "train_task", "submit", "collect", "run_on_dask"]

#: Topic of the per-epoch progress events that tasks send to the submitting client.
PROGRESS_TOPIC = "locolib-progress"
_INSTALL = "Dask is needed for --dask: pip install 'locolib[cluster]'"
OPEN_SCHEDULER = ("{address} is neither encrypted nor authenticated: anyone who can reach it "
                  "runs code as you on its workers; start it with TLS and use tls:// "
                  "(book/running.md)")


def _import(name: str):
    """The optional module ``name`` (dask's), or an ImportError that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{_INSTALL} ({err})") from None


@dataclass(frozen=True)
class ClusterOptions:
    """Where a sweep's tasks run (the ``--dask`` options of ``locolib-sweep``).
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """

    address: str  # "local", "slurm", "tls://host:port" or "tcp://host:port"
    workers: int | None = None  # local: worker processes; slurm: jobs
    runs_per_gpu: int = 1
    partition: str | None = None
    gpus: int = 1  # per SLURM job (0: CPU jobs)
    cores: int = 4  # per SLURM job
    memory: str = "32GB"  # per SLURM job
    walltime: str = "04:00:00"
    tls_ca: str | None = None  # tls://: the credentials the scheduler was started with
    tls_cert: str | None = None
    tls_key: str | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        if self.address not in ("local", "slurm") and not re.fullmatch(r"(tls|tcp)://[^:/]+:\d+",
                                                                       self.address):
            raise ValueError(f"--dask {self.address!r}: expected local, slurm, tls://host:port "
                             "or tcp://host:port")
        files = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(files) and not (all(files) and self.address.startswith("tls://")):
            raise ValueError("--dask-tls-ca, --dask-tls-cert and --dask-tls-key go together, "
                             "with a tls:// address")
        if (self.runs_per_gpu < 1 or self.gpus < 0 or self.cores < 1
                or (self.workers is not None and self.workers < 1)):
            raise ValueError("runs per GPU, cores and workers must be >= 1, GPUs >= 0")
        if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", self.walltime):
            raise ValueError(f"walltime {self.walltime!r}: expected HH:MM:SS or D-HH:MM:SS")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The ``--dask`` option group of ``locolib-sweep``.
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    g = parser.add_argument_group("Dask cluster (pip install 'locolib[cluster]')")
    g.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="run each training run as a Dask task: local (a cluster on this machine, "
                        "127.0.0.1), tls://host:8786 (a running scheduler, with --dask-tls-*), "
                        "slurm (workers as SLURM jobs); local and slurm encrypt with temporary TLS "
                        "credentials; tcp://host:8786 (unencrypted, open to anyone who reaches "
                        "it) works with a warning (default: none, train in this process)")
    g.add_argument("--dask-tls-ca", metavar="FILE", default=None,
                   help="tls://: the CA certificate the scheduler was started with "
                        "(--tls-ca-file) (default: distributed's configuration)")
    g.add_argument("--dask-tls-cert", metavar="FILE", default=None,
                   help="tls://: this client's certificate (default: distributed's configuration)")
    g.add_argument("--dask-tls-key", metavar="FILE", default=None,
                   help="tls://: this client's private key (default: distributed's configuration)")
    g.add_argument("--dask-dashboard", action="store_true",
                   help="local and slurm: start the scheduler's web dashboard (local: on "
                        "127.0.0.1; slurm: port 8787 of the submitting machine)")
    g.add_argument("--dask-workers", type=int, default=None,
                   help="local: worker processes (default: one per core, or runs-per-gpu per "
                        "GPU); slurm: jobs (default 1)")
    g.add_argument("--runs-per-gpu", type=int, default=1,
                   help="runs sharing one GPU: each declares 1/this of a GPU resource")
    g.add_argument("--slurm-partition", default=None,
                   help="SLURM partition of the worker jobs (default: the cluster's default)")
    g.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per SLURM job (0: CPU jobs)")
    g.add_argument("--slurm-cores", type=int, default=4, help="CPU cores per SLURM job")
    g.add_argument("--slurm-memory", default="32GB", help="memory per SLURM job")
    g.add_argument("--slurm-walltime", default="04:00:00", help="time limit per SLURM job")


def options_from_args(a: argparse.Namespace) -> ClusterOptions:
    """:class:`ClusterOptions` from parsed ``locolib-sweep`` arguments (ValueError if bad).
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    return ClusterOptions(a.dask, a.dask_workers, a.runs_per_gpu, a.slurm_partition, a.slurm_gpus,
                          a.slurm_cores, a.slurm_memory, a.slurm_walltime, a.dask_tls_ca,
                          a.dask_tls_cert, a.dask_tls_key, a.dask_dashboard)


def _uses_gpu(options: ClusterOptions, device: str | None) -> bool:
    """Whether the runs train on CUDA and so declare a GPU resource (for a running scheduler:
    when ``--device`` says cuda, or when its workers offer a GPU resource)."""
    if device is not None:
        return device.startswith("cuda")
    if options.address == "local":
        return torch.cuda.is_available()
    if options.address == "slurm":
        return options.gpus > 0
    return False  # decided from the workers in :func:`submit`


def _local_workers(options: ClusterOptions, gpu: bool) -> int:
    if options.workers is not None:
        return options.workers
    if gpu:
        return torch.cuda.device_count() * options.runs_per_gpu
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def slurm_job_kwargs(options: ClusterOptions) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster``: per job ``cores``, ``memory``,
    ``walltime`` and the partition; with GPUs, ``--gres=gpu:<gpus>`` and ``gpus *
    runs_per_gpu`` worker processes, each offering ``1 / runs_per_gpu`` of a GPU resource
    (:func:`_worker_device` spreads them over the job's GPUs); without, one single-threaded
    worker per core. (Chapters 05-07: their studies trained on Dask or SLURM, the running page)"""
    if options.gpus:
        processes = options.gpus * options.runs_per_gpu
        resources = ["--resources", f"GPU={1 / options.runs_per_gpu:g}"]
        directives = [f"--gres=gpu:{options.gpus}"]
    else:
        processes, resources, directives = options.cores, [], []
    return dict(queue=options.partition, cores=max(options.cores, processes), processes=processes,
                memory=options.memory, walltime=options.walltime,
                job_extra_directives=directives, worker_extra_args=resources,
                job_name="locolib-sweep", protocol="tls://")


def job_script(options: ClusterOptions, scheduler: str = "tls://scheduler:8786") -> str:
    """The batch script one SLURM worker job runs (what ``--dask slurm`` submits), rendered
    without starting anything. (Chapters 05-07: their studies trained on Dask or SLURM, the running page)"""
    jobqueue = _import("dask_jobqueue")
    return jobqueue.slurm.SLURMJob(scheduler=scheduler, name="locolib-worker",
                                   **slurm_job_kwargs(options)).job_script()


def describe(options: ClusterOptions, device: str | None = None) -> str:
    """What ``--dask`` would start or join (for ``--dry-run``).
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    gpu = _uses_gpu(options, device)
    share = f", {options.runs_per_gpu} runs per GPU" if gpu else ""
    if options.address == "local":
        return (f"Dask: a local cluster on 127.0.0.1 with {_local_workers(options, gpu)} "
                f"worker processes{share}, TLS with temporary credentials")
    if options.address == "slurm":
        return (f"Dask: {options.workers or 1} SLURM job(s){share}, TLS with temporary "
                "credentials, each running:\n" + job_script(options))
    if options.address.startswith("tcp://"):
        return f"Dask: the scheduler at {options.address}{share}; " + OPEN_SCHEDULER.format(
            address=options.address)
    return f"Dask: the scheduler at {options.address}{share}, TLS"


def security(options: ClusterOptions) -> Any:
    """The ``distributed.Security`` of the cluster ``options`` names: for ``local`` and
    ``slurm`` temporary credentials, made here and held by this sweep's processes only; for a
    ``tls://`` scheduler the files of ``options`` (else distributed's configuration,
    ``distributed.comm.tls``); for ``tcp://`` None.
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    distributed = _import("distributed")
    if options.address.startswith("tcp://"):
        return None
    if options.address.startswith("tls://"):
        if options.tls_ca is None:
            return distributed.Security(require_encryption=True)
        for flag, path in (("ca", options.tls_ca), ("cert", options.tls_cert), ("key", options.tls_key)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"--dask-tls-{flag} {path}: no such file")
        return distributed.Security(tls_ca_file=options.tls_ca, tls_client_cert=options.tls_cert,
                                    tls_client_key=options.tls_key, require_encryption=True)
    return _temporary_security()


def _temporary_security() -> Any:
    try:
        importlib.import_module("cryptography")
    except ImportError:
        raise ImportError("--dask local and --dask slurm encrypt with temporary TLS credentials, "
                          "made by the cryptography package: pip install cryptography") from None
    return _import("distributed").security.Security.temporary()


@contextmanager
def connect(options: ClusterOptions, device: str | None = None,
            shared_dir: str | Path | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of the cluster ``options`` name, over TLS (:func:`security`),
    closed (and a cluster started here shut down) on exit. ``shared_dir``: for ``slurm``, a
    folder the jobs see, where their copy of the temporary credentials goes (readable by this
    user only; default: the working directory).
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    distributed = _import("distributed")
    gpu = _uses_gpu(options, device)
    sec = security(options)
    # Without a dashboard the scheduler still serves pages about the cluster over HTTP: none.
    quiet = {} if options.dashboard else {"distributed.scheduler.http.routes": []}
    with _import("dask").config.set(quiet):
        cluster = _start(options, gpu, sec, shared_dir)
    if cluster is None:
        if sec is None:
            warnings.warn(OPEN_SCHEDULER.format(address=options.address), stacklevel=3)
        with distributed.Client(options.address, security=sec) as client:
            yield client
        return
    with cluster, distributed.Client(cluster, security=sec) as client:
        yield client


def _start(options: ClusterOptions, gpu: bool, sec: Any, shared_dir: str | Path | None) -> Any:
    """The cluster :func:`connect` starts (None for a running scheduler)."""
    distributed = _import("distributed")
    if options.address == "local":
        resources = {"GPU": 1 / options.runs_per_gpu} if gpu else None
        cluster = distributed.LocalCluster(
            n_workers=_local_workers(options, gpu), threads_per_worker=1, processes=True,
            host="127.0.0.1", protocol="tls://", security=sec, resources=resources,
            dashboard_address="127.0.0.1:0" if options.dashboard else None)
    elif options.address == "slurm":
        cluster = _import("dask_jobqueue").SLURMCluster(
            **slurm_job_kwargs(options), security=sec,
            shared_temp_directory=str(shared_dir) if shared_dir is not None else None,
            scheduler_options={"dashboard_address": ":8787" if options.dashboard else None})
        cluster.scale(jobs=options.workers or 1)
    else:
        cluster = None
    return cluster


def _worker_device(device: str | None, runs_per_gpu: int) -> str | None:
    """The device a task trains on: ``device`` if given; on a worker numbered ``i`` (a local
    cluster's ``i``, a multi-process job's ``name-i``) with CUDA, GPU ``i // runs_per_gpu``
    among those it sees; else the default (:func:`locolib.train.choose_device`)."""
    if device is not None or not torch.cuda.is_available():
        return device
    name = str(_import("distributed").get_worker().name)
    index = re.search(r"(?:^|-)(\d+)$", name)  # not an address's port
    i = int(index.group(1)) if index else 0
    return f"cuda:{(i // runs_per_gpu) % torch.cuda.device_count()}"


def train_task(config: RunConfig, results_dir: str, checkpoint_dir: str | None,
               device: str | None, runs_per_gpu: int, threads: int, model_dir: str | None,
               stale_after: float, download: bool, poll_s: float) -> dict[str, Any]:
    """One run on a Dask worker: :func:`locolib.train.train`, reporting every epoch to
    :data:`PROGRESS_TOPIC`. If the run is locked (its former worker died on another machine and
    its lock is not yet stale, or another process is training it), poll until it can be
    trained or its record appears. (Chapters 05-07: their studies trained on Dask or SLURM, the running page)"""
    worker = _import("distributed").get_worker()
    torch.set_num_threads(threads)

    def hook(event: str, epoch: int, step: int) -> None:
        if event == "epoch":
            worker.log_event(PROGRESS_TOPIC, {"key": config.key, "epoch": epoch + 1,
                                              "epochs": config.epochs})

    while True:
        try:
            return train(config, results_dir=results_dir, checkpoint_dir=checkpoint_dir,
                         device=_worker_device(device, runs_per_gpu), progress=False,
                         download=download, hook=hook, model_dir=model_dir,
                         stale_after=stale_after)
        except RunLocked:
            time.sleep(poll_s)


def submit(client, configs: Sequence[RunConfig], results_dir: str | Path | None = None,
           checkpoint_dir: str | Path | None = None, device: str | None = None,
           runs_per_gpu: int = 1, gpu: bool | None = None, threads: int = 1,
           model_dir: str | Path | None = None, stale_after: float = 900.0,
           download: bool = True, poll_s: float = 10.0) -> list:
    """One future per run of ``configs``, in plan order (Dask runs earlier runs first). ``gpu``:
    declare ``1 / runs_per_gpu`` of a GPU resource per task (None: if the cluster's workers offer
    one). The task key is the run's key, so that a scheduler holds each run once.
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    if gpu is None:
        client.wait_for_workers(1)
        gpu = any("GPU" in w.get("resources", {})
                  for w in client.scheduler_info()["workers"].values())
    results_dir = str(results_dir if results_dir is not None else default_results_dir())
    as_str = lambda p: None if p is None else str(p)  # noqa: E731 (workers get plain paths)
    return [client.submit(train_task, cfg, results_dir, as_str(checkpoint_dir), device,
                          runs_per_gpu, threads, as_str(model_dir), stale_after, download, poll_s,
                          key=f"train-{cfg.key}", priority=-i, pure=False,
                          resources={"GPU": 1 / runs_per_gpu} if gpu else None)
            for i, cfg in enumerate(configs)]


def collect(client, futures: Sequence, log: Callable[[str], None] | None = print) -> list[dict]:
    """The records of ``futures`` in their order, once all are done; ``log`` gets a line per
    epoch (streamed from the workers) and per finished run.
    (Chapters 05-07: their studies trained on Dask or SLURM, the running page)
    """
    distributed = _import("distributed")
    if log is not None:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: log(
            f"  {event[1]['key']}: epoch {event[1]['epoch']}/{event[1]['epochs']}"))
    order = {f.key: i for i, f in enumerate(futures)}
    records: dict[int, dict] = {}
    try:
        for future, rec in distributed.as_completed(futures, with_results=True):
            records[order[future.key]] = rec
            if log is not None:
                log(f"[{len(records)}/{len(futures)}] {rec['key']}: test error "
                    f"{100 * rec['final']['test_error']:.2f}%")
    finally:
        if log is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    return [records[i] for i in range(len(futures))]


def run_on_dask(configs: Sequence[RunConfig], options: ClusterOptions,
                results_dir: str | Path | None = None, device: str | None = None,
                threads: int | None = None, log: Callable[[str], None] | None = print,
                **train_kwargs: Any) -> list[dict]:
    """Train every run of ``configs`` as Dask tasks on the cluster ``options`` names and return
    all their records in plan order (the ``--dask`` path of ``locolib-sweep``).
    ``train_kwargs``: ``checkpoint_dir``, ``model_dir``, ``stale_after``, ``download`` of
    :func:`submit`. (Chapters 05-07: their studies trained on Dask or SLURM, the running page)"""
    shared = train_kwargs.get("checkpoint_dir") or default_checkpoint_dir(results_dir)
    with connect(options, device, shared_dir=shared) as client:
        gpu = None if "://" in options.address else _uses_gpu(options, device)
        futures = submit(client, configs, results_dir, device=device,
                         runs_per_gpu=options.runs_per_gpu, gpu=gpu, threads=threads or 1,
                         **train_kwargs)
        return collect(client, futures, log)
