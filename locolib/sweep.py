"""Sweeps: many independent runs keyed by (dataset, network, regularizer, seed), and their CLI.

Table 5 of the paper is 3 datasets x 3 networks x {standard L2, LOCO-REG} x 20 seeds = 360 runs
of 250 epochs. A sweep is just the list of their :class:`~locolib.config.RunConfig`;
:func:`run_sweep` trains the ones without a result file. Several processes (or machines sharing
the results folder) can work on the same sweep at once: each run is claimed with a lock file
(:class:`locolib.results.RunLock`), so every run is trained once; :func:`shard` splits a plan into
disjoint parts up front instead. Then :func:`locolib.results.load_results` and
:func:`locolib.stats.compare` make Table 5.

Command line (``locolib-sweep`` or ``python -m locolib.sweep``)::

    locolib-sweep --datasets cifar10 --networks vgg13 resnet18 --regularizers l2 loco \\
        --seeds 0-19 --gamma 0.8 --eta 1.25 --shard 1/4 --dry-run
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from locolib import cluster
from locolib.config import (
    LOCO_DEFAULT,
    REGULARIZERS,
    RunConfig,
    check_value,
    config_fields,
    field_default,
    field_info,
)
from locolib.data import DATASETS
from locolib.io import read_json
from locolib.models import NETWORKS
from locolib.progress import progress_bar, tqdm
from locolib.reg import REGULARIZER_REGISTRY
from locolib.results import (
    MIN_STALE_AFTER,
    RunLocked,
    default_results_dir,
    finished_record,
    result_path,
)
from locolib.train import (
    RunDiverged,
    check_device,
    check_per_layer,
    default_checkpoint_dir,
    run_status,
    train,
)

__all__ = [
    "plan",
    "shard",
    "parse_shard",
    "parse_seeds",
    "run_sweep",
    "sweep_status",
    "print_status",
    "MAX_RUNS",
    "main",
]


#: The most runs one plan may have: a guard against typos such as ``--seeds 0-1000000000``.
MAX_RUNS = 100_000


def _names(kind: str) -> tuple[str, ...]:
    return tuple(DATASETS) if kind == "dataset" else tuple(NETWORKS)


def _check(kind: str, values: Iterable[str], allowed: Sequence[str]) -> list[str]:
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"unknown {kind} {bad or '(none given)'}; choose from {list(allowed)}")
    return values


def _loco_for(loco_params: Mapping | None, dataset: str, network: str) -> dict[str, Any]:
    if loco_params is None:
        return {}
    if not isinstance(loco_params, Mapping):
        raise ValueError('loco_params (--loco-params) must map "dataset/network" to '
                         '{"gamma": ..., "eta": ...}')
    for k in ((dataset, network), f"{dataset}/{network}"):
        if k in loco_params:
            v = loco_params[k]
            if isinstance(v, Mapping) and {"gamma", "eta"} <= set(v):
                return {"gamma": v["gamma"], "eta": v["eta"]}
            if isinstance(v, (list, tuple)) and len(v) == 2:
                return {"gamma": v[0], "eta": v[1]}
            raise ValueError(f"loco_params (--loco-params) for {dataset}/{network} must give "
                             f'both gamma and eta, as {{"gamma": ..., "eta": ...}} or '
                             f"[gamma, eta]; got {v!r}")
    raise ValueError(f"loco_params has no entry for {dataset}/{network}")


def plan(
    datasets: Iterable[str],
    networks: Iterable[str],
    regularizers: Iterable[str] = REGULARIZERS,
    seeds: Iterable[int] = range(20),
    loco_params: Mapping | None = None,
    **common: Any,
) -> list[RunConfig]:
    """All runs of a sweep, in a fixed order: seed-major (every (dataset, network, regularizer)
    cell of seed 0, then of seed 1, ...), so a sweep stopped half-way has complete, paired
    replicates of every cell.

    ``common``: further :class:`RunConfig` fields for every run (``epochs=25``, ``width=0.5``,
    ...). ``gamma``/``eta`` in ``common`` apply to the LOCO-REG runs only (the L2 runs are
    gamma = eta = 1 by definition); without them and without ``loco_params`` the LOCO-REG runs
    get :data:`locolib.config.LOCO_DEFAULT`. ``loco_params``: per-(dataset, network) LOCO-REG parameters
    (e.g. Table 6's per-layer values), keys ``(dataset, network)`` or ``"dataset/network"``,
    values ``{"gamma": g, "eta": e}`` or ``(g, e)``; it overrides ``gamma``/``eta``.
    Duplicates are dropped. More than :data:`MAX_RUNS` runs are refused (ValueError).
    (Chapters 05-07: the locolib-sweep command, the running page)
    """
    datasets = _check("dataset", datasets, _names("dataset"))
    networks = _check("network", networks, _names("network"))
    regularizers = _check("regularizer", regularizers, tuple(REGULARIZER_REGISTRY))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    size = len(datasets) * len(networks) * len(regularizers) * len(seeds)
    if size > MAX_RUNS:
        raise ValueError(f"the plan has {size} runs, more than the {MAX_RUNS} one sweep may have; "
                         "split it into several sweeps")
    loco_common = {k: common.pop(k) for k in ("gamma", "eta") if k in common}
    if loco_params is None and all(loco_common.get(k, 1.0) == 1.0 for k in ("gamma", "eta")):
        loco_common = dict(LOCO_DEFAULT)
    out, seen = [], set()
    for seed, dataset, network, reg in itertools.product(seeds, datasets, networks, regularizers):
        extra = {}
        if reg == "loco":
            extra = {**loco_common, **_loco_for(loco_params, dataset, network)}
        cfg = RunConfig(dataset=dataset, network=network, regularizer=reg, seed=seed,
                        **common, **extra)
        check_per_layer(cfg)
        if cfg.key not in seen:
            seen.add(cfg.key)
            out.append(cfg)
    return out


def shard(configs: Sequence[RunConfig], index: int, count: int) -> list[RunConfig]:
    """Part ``index`` of ``count`` (1-based: ``shard(c, 1, 4)`` ... ``shard(c, 4, 4)``).

    Round robin over the plan's order: the parts are disjoint, together cover the plan, differ
    in size by at most one, and each gets a mix of all cells. Stable for a given plan; if the
    plan changes, runs may move between parts, which is harmless (finished runs are skipped,
    runs in progress are locked). (Chapters 05-07: the locolib-sweep command, the running page)
    """
    if isinstance(index, bool) or isinstance(count, bool) or count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: need 1 <= i <= n (shards are numbered from 1)")
    return list(configs)[index - 1::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 1-based; ValueError for anything else.
    (Chapters 05-07: the locolib-sweep command, the running page)
    """
    try:
        i, n = (int(p) for p in text.strip().split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected i/n with integers, e.g. 1/4") from None
    shard([], i, n)  # validates the range
    return i, n


def parse_seeds(text: str) -> list[int]:
    """``"0-19"``, ``"3"``, ``"0,2,5-7"`` -> sorted unique seeds; ValueError otherwise (also for
    more than :data:`MAX_RUNS` seeds). (Chapters 05-07: the locolib-sweep command, the running page)"""
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            a, b = (int(x) for x in part.split("-")) if "-" in part else (int(part), int(part))
            if a > b:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad seeds {part!r}: use e.g. 0-19, 5 or 0,2,5-7 (non-negative)") from None
        if b - a + 1 + len(seeds) > MAX_RUNS:
            raise ValueError(f"seeds {text!r}: more than {MAX_RUNS} seeds, the most one sweep "
                             "may have")
        seeds.update(range(a, b + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return sorted(seeds)


def sweep_status(configs: Sequence[RunConfig], results_dir=None, checkpoint_dir=None) -> list[str]:
    """:func:`locolib.train.run_status` of every run: done / running / partial (k/E) / todo.
    (Chapters 05-07: the locolib-sweep command, the running page)
    """
    return [run_status(c, results_dir, checkpoint_dir) for c in configs]


def print_status(configs: Sequence[RunConfig], results_dir=None,
                 checkpoint_dir=None) -> dict[str, int]:
    """Print every run's status and key, then a summary line; return the count of each status.
    Reads only: files that are not records are named in warnings, never moved.
    (Chapters 05-07: the locolib-sweep command, the running page)
    """
    status = sweep_status(configs, results_dir, checkpoint_dir)
    counts = dict.fromkeys(("done", "running", "partial", "todo"), 0)
    for cfg, st in zip(configs, status):
        print(f"  {st:<24} {cfg.key}")
        counts[st.split(" ")[0]] += 1
    print("status: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return counts


def _finished(configs: Sequence[RunConfig], results_dir: Path) -> int:
    return sum(finished_record(result_path(c, results_dir), c.key, on_invalid="skip") is not None
               for c in configs)


def run_sweep(
    configs: Sequence[RunConfig],
    results_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool | str = True,
    download: bool = True,
    model_dir: str | Path | None = None,
    stale_after: float = 900.0,
    wait: bool = False,
    poll_s: float = 30.0,
    log=print,
) -> list[dict]:
    """Train every run of ``configs`` that has no result yet; return the records of all finished
    runs (trained now or before), in plan order.

    Runs another process is training (locked) are skipped and not returned, unless ``wait``:
    then, after the pass, they are polled every ``poll_s`` seconds until their result appears
    (or their lock goes stale, and this process takes them over). ``progress``: a bar over the
    sweep's runs and one per run trained (:func:`locolib.train.train`), in every front end
    (:mod:`locolib.progress`). ``log``: called with one line per run (None: silent). A
    KeyboardInterrupt stops the sweep; the interrupted run resumes from its last checkpoint
    next time. (Chapters 05-07)
    """

    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    records: dict[int, dict] = {}
    pending = list(range(len(configs)))
    first = True
    bar = progress_bar(len(configs), "sweep", bool(progress), unit="run")

    def say(line: str) -> None:
        if log:
            with tqdm.external_write_mode():
                log(line)

    diverged: list[str] = []
    try:
        while pending:
            if not first:
                time.sleep(poll_s)
            locked = []
            for i in pending:
                cfg = configs[i]
                done = finished_record(result_path(cfg, results_dir), cfg.key, on_invalid="skip")
                try:
                    rec = train(cfg, results_dir=results_dir, checkpoint_dir=checkpoint_dir,
                                device=device, progress=progress, download=download,
                                model_dir=model_dir, stale_after=stale_after)
                except RunLocked as err:
                    locked.append(i)
                    if first:
                        say(f"[{i + 1}/{len(configs)}] {cfg.key}: skipped, {err}")
                    continue
                except RunDiverged as err:  # the other runs go on; the sweep fails at the end
                    diverged.append(cfg.key)
                    say(f"[{i + 1}/{len(configs)}] {err}")
                    continue
                say(f"[{i + 1}/{len(configs)}] {cfg.key}: " + ("already done" if done else (
                    f"trained, test error {100 * rec['final']['test_error']:.2f}%")))
                records[i] = rec
                bar.update(1)
            pending, first = (locked if wait else []), False
    finally:
        bar.close()
    if diverged:
        raise RunDiverged(f"{len(diverged)} of {len(configs)} runs diverged and have no record: "
                          f"{', '.join(diverged)}; every other run finished")
    return [records[i] for i in sorted(records)]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _arg(fn, what: str):
    """Wrap a parser so that argparse reports its ValueError as a usage error."""
    def parse(text: str):
        try:
            return fn(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = what
    return parse


def _stale_after(text: str) -> float:
    v = float(text)
    if not MIN_STALE_AFTER <= v < math.inf:
        raise ValueError(f"{text!r}: at least {MIN_STALE_AFTER:g} seconds (a run loading its data "
                         "sends no heartbeat)")
    return v


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r}: expected true or false")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise ValueError(f"{text!r} is not >= 1")
    return v


def _split(values: list[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


def _option_type(name: str):
    """The argparse type of RunConfig field ``name``: its ``parse`` metadata or the type of its
    default; a number with ``bounds`` is checked by :func:`locolib.config.check_value`, as
    RunConfig checks it."""
    default, info = field_default(name), field_info(name)
    if isinstance(default, bool):
        return _arg(_bool, name)
    parse = info["parse"] or (type(default) if isinstance(default, (int, float)) else None)
    if parse is None:
        return str
    if info["bounds"] is None:
        return _arg(parse, name)
    return _arg(lambda text: check_value(name, parse(text)), name)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless its text states it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        d = action.default
        shown = "off" if action.nargs == 0 else " ".join(map(str, d)) if isinstance(d, list) else d
        return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``locolib-sweep``, one per field of :class:`RunConfig`.
    (Chapters 05-07: the locolib-sweep command, the running page)"""
    p = argparse.ArgumentParser(
        prog="locolib-sweep",
        description="Train (or list) a sweep of standard-L2 / LOCO-REG runs; finished runs are "
                    "skipped, interrupted ones resume. Several processes may share a results folder. "
                    "Exit status 0: every run of the plan has a result; 3: some are still being "
                    "trained by other processes; 2: bad arguments, an unusable folder (a full "
                    "disk, say) or a diverged run; 130: "
                    "interrupted (run the same command again to resume).",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("what to run (lists: space- or comma-separated)")
    g.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100", "fashion_mnist"],
                   metavar="NAME", help=f"choices: {', '.join(DATASETS)}")
    g.add_argument("--networks", nargs="+", default=["vgg13", "resnet18", "mobilenet"],
                   metavar="NAME", help=f"choices: {', '.join(NETWORKS)}")
    g.add_argument("--regularizers", nargs="+", default=list(REGULARIZERS), metavar="NAME",
                   help=f"choices: {', '.join(REGULARIZER_REGISTRY)}")
    g.add_argument("--seeds", type=_arg(parse_seeds, "seeds"), default="0-19",
                   help=f"e.g. 0-19, 7, or 0,2,5-7; at most {MAX_RUNS} runs in all")
    g.add_argument("--loco-params", type=Path, default=None, metavar="JSON",
                   help='file {"dataset/network": {"gamma": ..., "eta": ...}} (e.g. Table 6 values) '
                        "(default: none, every loco run gets --gamma and --eta)")
    g.add_argument("--shard", type=_arg(parse_shard, "shard"), default=None, metavar="I/N",
                   help="run only part I of N (1-based) of the plan (default: the whole plan)")
    g = p.add_argument_group("protocol: RunConfig fields (defaults: the paper's)")
    for name in config_fields("cli"):
        info = field_info(name)
        default = field_default(name)
        if name == "data_root":
            continue  # in "where and how"
        choices, metavar, text = info["choices"], name.upper(), info["help"]
        if isinstance(default, bool):
            choices, metavar = (True, False), "{true,false}"
        elif choices:
            metavar = None
        if name in LOCO_DEFAULT:
            text += (f" (default for the loco arm: {LOCO_DEFAULT[name]}, locolib.config.LOCO_DEFAULT, "
                     "unless --gamma, --eta or --loco-params is given; l2 is 1 by definition)")
        elif default is None:
            text += " (default: all)"
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_option_type(name),
                       default=default, choices=choices, help=text, metavar=metavar)
    g = p.add_argument_group("where and how")
    g.add_argument("--results", type=Path, default=None, metavar="DIR",
                   help="results folder (default: $LOCOLIB_RESULTS, else the repository's results/)")
    g.add_argument("--checkpoints", type=Path, default=None, metavar="DIR",
                   help="default: <results>/checkpoints")
    g.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="also save final weights here (default: not saved)")
    g.add_argument("--data-root", default=field_default("data_root"), metavar="DIR",
                   help=field_info("data_root")["help"])
    g.add_argument("--no-download", action="store_true", help="never download datasets")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps, cpu (default: the best available)")
    g.add_argument("--threads", type=_arg(_positive_int, "threads"), default=None,
                   help="torch CPU threads (default: torch's choice)")
    g.add_argument("--stale-after", type=_arg(_stale_after, "seconds"), default=900.0,
                   metavar="SECONDS",
                   help="seconds without heartbeat after which a lock of a process on another "
                        f"host is taken over (at least {MIN_STALE_AFTER:g})")
    g.add_argument("--wait", action="store_true",
                   help="after the pass, wait for runs other processes are training")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan and each run's status; change nothing")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    cluster.add_options(p)
    return p


def check_folder(path: Path, create: bool) -> None:
    """Raise OSError with a one-line message unless ``path`` is (or, with ``create``, can be
    made) a folder this process can write new files into.
    (Chapters 05-07: the locolib-sweep command, the running page)"""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    if not create:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write into {path}: {err.strerror or err}") from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"locolib-sweep: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``locolib-sweep`` command; its exit status. (Chapters 05-07: the running page)"""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each, without source locations
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    # Fields left at their defaults stay out, so that gamma/eta reach only the LOCO-REG arm.
    common: dict[str, Any] = {name: getattr(a, name) for name in (*config_fields("cli"),)
                              if getattr(a, name) != field_default(name)}
    loco_params = None
    if a.loco_params is not None:
        try:
            loco_params = read_json(a.loco_params)
        except (OSError, ValueError) as err:
            parser.error(f"--loco-params {a.loco_params}: {err}")
    try:
        configs = plan(_split(a.datasets), _split(a.networks), _split(a.regularizers), a.seeds,
                       loco_params=loco_params, **common)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    options = None
    if a.dask is not None:
        try:
            options = cluster.options_from_args(a)
        except ValueError as err:
            parser.error(str(err))
    if a.device is not None:
        try:  # a cluster's workers may have devices this machine has not
            check_device(a.device, here=options is None or options.address == "local")
        except ValueError as err:
            parser.error(f"--device: {err}")
    total = len(configs)
    if a.shard is not None:
        configs = shard(configs, *a.shard)
    results = a.results if a.results is not None else default_results_dir()
    checkpoints = a.checkpoints if a.checkpoints is not None else default_checkpoint_dir(results)
    try:
        for folder in (results, checkpoints, a.models):
            if folder is not None:
                check_folder(folder, create=not a.dry_run)
    except OSError as err:
        parser.error(str(err))
    where = f" (shard {a.shard[0]}/{a.shard[1]} of {total} runs)" if a.shard else ""
    print(f"plan: {len(configs)} runs{where}; results in {results}")
    if a.dry_run:
        print_status(configs, results, checkpoints)
        if options is not None:
            print(cluster.describe(options, a.device))
        return 0
    try:
        if options is not None:
            cluster.run_on_dask(configs, options, results_dir=results, device=a.device,
                                threads=a.threads, log=None if a.quiet else print,
                                checkpoint_dir=checkpoints, model_dir=a.models,
                                stale_after=a.stale_after, download=not a.no_download)
        else:
            if a.threads:
                torch.set_num_threads(a.threads)
            run_sweep(configs, results_dir=results, checkpoint_dir=checkpoints, device=a.device,
                      progress=not a.quiet, download=not a.no_download, model_dir=a.models,
                      stale_after=a.stale_after, wait=a.wait)
    except (RunDiverged, ImportError) as err:  # ImportError: --dask without what it needs
        print(f"locolib-sweep: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, say
        print(f"locolib-sweep: error: {err.strerror or err}"
              + (f": {err.filename}" if err.filename else "")
              + f"; {_finished(configs, results)} of {len(configs)} runs have results. Fix it and "
              "run the same command again (an interrupted run continues from its last "
              "checkpoint).", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlocolib-sweep: interrupted; {_finished(configs, results)} of {len(configs)} runs "
              "have results, locks are released. Run the same command again to resume (an "
              "interrupted run continues from its last finished epoch).", file=sys.stderr)
        return 130
    n_done = _finished(configs, results)
    print(f"finished: {n_done} of {len(configs)} runs have results"
          + ("" if n_done == len(configs) else "; the others are being trained elsewhere"))
    return 0 if n_done == len(configs) else 3


if __name__ == "__main__":
    sys.exit(main())
