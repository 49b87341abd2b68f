"""Result files of training runs: where they live, who may write them, and reading them back.

A finished run is one JSON record ``<results_dir>/<key>.json`` (see :func:`locolib.train.train`).
This module holds everything about those files that is not training itself:

* :func:`default_results_dir` finds the repository's ``results/`` folder;
* :class:`RunLock` lets several processes (or machines sharing a folder) work through the same
  sweep without doing a run twice;
* :func:`provenance` collects library versions, the device and the git commit for a record;
* :func:`read_record` is the one reader of records: training, sweeps, their dry runs and the
  tables all use it, so they agree on what counts as done. A file that is not a record of this
  code (damaged, of another format or training version, of another run) is named in a warning
  and never counted; where a run is about to be trained again, :func:`set_aside` renames it
  (it is kept, never deleted);
* :func:`result_path` says where a run's record lives, :func:`finished_records` reads a plan's
  records without training anything;
* :func:`record_row` turns a record into a table row (every table of runs is built with it),
  :func:`load_results` reads all records into a table, :func:`history_frame` the learning curves.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy
import pandas as pd
import torch
import torchvision

import locolib
from locolib.config import TRAINING_VERSION, RunConfig, config_fields
from locolib.io import loads
from locolib.reg import realized_factor

__all__ = [
    "RESULTS_ENV",
    "default_results_dir",
    "RunFileWarning",
    "InvalidRecord",
    "read_record",
    "finished_record",
    "result_path",
    "finished_records",
    "set_aside",
    "RunLocked",
    "RunLock",
    "provenance",
    "git_commit",
    "iter_records",
    "load_results",
    "results_frame",
    "history_frame",
    "record_row",
    "RECORD_COLUMNS",
]

RESULTS_ENV = "LOCOLIB_RESULTS"
#: The shortest ``stale_after`` the sweep's command line accepts: a run holds its lock without a
#: heartbeat while it loads its data.
MIN_STALE_AFTER = 60.0
RECORD_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Where results live
# --------------------------------------------------------------------------------------------
def default_results_dir(start: str | Path | None = None) -> Path:
    """The folder for result records.

    ``$LOCOLIB_RESULTS`` if set; else ``<repo>/results`` where ``<repo>`` is the first folder at or
    above ``start`` (default: the working directory) holding both ``_config.yml`` and
    ``locolib/`` (so notebooks, which run in ``notebooks/``, find the repository's folder); else
    ``./results``. (Chapters 04-07)
    """
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser()
    return repository_root(start) / "results"


def repository_root(start: str | Path | None = None) -> Path:
    """The first folder at or above ``start`` (default: the working directory) holding both
    ``_config.yml`` and ``locolib/``; else ``start`` itself. (Chapters 04-07)"""
    here = Path(start or os.getcwd()).resolve()
    return next((d for d in (here, *here.parents)
                 if (d / "_config.yml").is_file() and (d / "locolib").is_dir()), here)


# --------------------------------------------------------------------------------------------
# Reading one record; files that are not records
# --------------------------------------------------------------------------------------------
class RunFileWarning(UserWarning):
    """A file of a run (record, checkpoint, lock) was not usable: it is named, never used. (Chapters 04-07)"""


class InvalidRecord(ValueError):
    """``path`` holds something other than a finished record of this code; ``reason`` says what. (Chapters 04-07)"""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_record(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """The record at ``path``, checked to be a finished run of this code (and of run ``key``).

    Raises FileNotFoundError when there is no file, :class:`InvalidRecord` when the file is
    damaged (not JSON, e.g. truncated), of another format or :data:`locolib.config.TRAINING_VERSION`,
    of another run than its name (or ``key``) says, or incomplete. (Chapters 04-07)
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRecord(path, f"unreadable ({err})") from None
    try:
        rec = loads(text)
    except ValueError as err:
        raise InvalidRecord(path, f"damaged, not valid JSON ({err})") from None
    if not isinstance(rec, dict) or "format" not in rec:
        raise InvalidRecord(path, "not a training record")
    if rec["format"] != RECORD_FORMAT:
        raise InvalidRecord(path, f"record format {rec['format']!r}, this locolib reads "
                                  f"{RECORD_FORMAT}")
    if rec.get("training_version") != TRAINING_VERSION:
        raise InvalidRecord(path, f"training version {rec.get('training_version')!r}, this code's is "
                                  f"{TRAINING_VERSION}")
    expected = key or path.stem
    if rec.get("key") != expected:
        raise InvalidRecord(path, f"holds run {rec.get('key')!r}, not {expected!r}")
    try:
        own_key = RunConfig.from_record(rec).key
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidRecord(path, f"its config is not one this code reads ({err})") from None
    if own_key != expected:
        raise InvalidRecord(path, f"its config is that of run {own_key!r}")
    final = rec.get("final")
    if not (isinstance(final, dict) and "test_error" in final and isinstance(rec.get("history"), list)):
        raise InvalidRecord(path, "incomplete: no final test error or no history")
    for name, high in _FINAL_RANGES.items():
        v = final.get(name)
        if v is None and name != "test_error":  # absent, or a float16 overflow (train_loss)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= high:
            raise InvalidRecord(path, f"its final {name} is {v!r}, not a number in [0, {high}]")
    return rec


#: What a record's final metrics may be (NaN and infinity are in no range).
_FINAL_RANGES = {"test_error": 1.0, "test_acc": 1.0, "train_acc": 1.0, "test_loss": 1e300,
                 "train_loss": 1e300, "val_error": 1.0, "val_acc": 1.0, "val_loss": 1e300}


def set_aside(path: str | Path, reason: str) -> Path | None:
    """Rename the unusable file ``path`` to ``<name>.invalid-<UTC time>`` (kept for its owner to
    inspect, never deleted) and warn, naming both. None if another process moved it first. (Chapters 04-07)"""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    new = path.with_name(f"{path.name}.invalid-{stamp}-{uuid.uuid4().hex[:4]}")
    try:
        os.rename(path, new)
    except FileNotFoundError:
        return None
    warnings.warn(f"{path}: {reason}; not used, kept as {new.name}", RunFileWarning, stacklevel=3)
    return new


def finished_record(path: str | Path, key: str, on_invalid: str = "warn") -> dict[str, Any] | None:
    """The record of run ``key`` at ``path``, or None when the run is not finished.

    A file there that is not a valid record (:func:`read_record`) means "not finished"; with
    ``on_invalid="warn"`` a warning names it, ``"set_aside"`` also moves it aside
    (:func:`set_aside`, for a caller about to train the run again), ``"skip"`` says nothing. (Chapters 04-07)
    """
    try:
        return read_record(path, key)
    except FileNotFoundError:
        return None
    except InvalidRecord as err:
        if on_invalid == "set_aside":
            set_aside(err.path, err.reason)
        elif on_invalid == "warn":
            warnings.warn(f"{err}; not counted as done (training the run sets it aside)",
                          RunFileWarning, stacklevel=2)
        return None


def result_path(config: RunConfig, results_dir: str | Path | None = None) -> Path:
    """Where the record of ``config`` lives: ``<results_dir>/<key>.json``. (Chapters 04-07)"""
    return Path(results_dir or default_results_dir()) / f"{config.key}.json"


def finished_records(configs: Iterable[RunConfig],
                     results_dir: str | Path | None = None) -> list[dict]:
    """The stored records of those ``configs`` that are finished, in order; trains nothing
    (files that are not valid records are named in a warning: :func:`read_record`). (Chapters 05-07)"""

    records = (finished_record(result_path(c, results_dir), c.key) for c in configs)
    return [r for r in records if r is not None]


# --------------------------------------------------------------------------------------------
# Claiming a run
# --------------------------------------------------------------------------------------------
class RunLocked(RuntimeError):
    """Another live process holds the run's lock (or took it over while we were running). (Chapters 04-07)"""


class RunLock:
    """An exclusive claim on one run: a lock file created with ``O_CREAT | O_EXCL``.

    The file holds JSON ``{host, pid, token, since}``; its modification time is a heartbeat the
    owner refreshes (:meth:`heartbeat`) while it trains, every ``heartbeat_s`` seconds or a
    quarter of ``stale_after``, whichever is less.

    Stale locks (the owner died: a crash, ``kill -9``, a closed Colab tab) are taken over when

    * the lock names this host and its pid is no longer running (detected at once; a lock of a
      live process on this host is never stale, however old its heartbeat), or
    * it names another host and its heartbeat is older than ``stale_after`` seconds (e.g. a
      shared Google Drive folder written from another machine; default 15 minutes).

    A lock file without an owner (empty or damaged: its creator died between creating and
    writing it, or the disk filled up) is taken over once it is ``creating_s`` seconds old.

    Taking over renames the stale file away (atomic) and creates a fresh one. Two processes that
    judge the same lock stale in the same instant could both end up running; the owner therefore
    checks at every heartbeat that the file still carries its token and stops with
    :class:`RunLocked` if not. Even then nothing is corrupted: runs are deterministic and every
    write is atomic, so both would write the same checkpoint. (Chapters 04-07)
    """

    def __init__(self, path: str | Path, stale_after: float = 900.0, heartbeat_s: float = 60.0,
                 creating_s: float = 5.0):
        self.path = Path(path)
        self.stale_after = float(stale_after)
        self.heartbeat_s = min(float(heartbeat_s), self.stale_after / 4)
        self.creating_s = float(creating_s)
        self.token = uuid.uuid4().hex
        self.held = False
        self._last_beat = 0.0

    # -- inspection -------------------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """The lock file's content (with ``age_s``), or None when there is no lock."""
        try:
            st = self.path.stat()
            info = loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written right now, or garbage: judge by age only
            try:
                st = self.path.stat()
            except FileNotFoundError:
                return None
            info = {}
        if not isinstance(info, dict):
            info = {}
        info["age_s"] = time.time() - st.st_mtime
        return info

    def is_stale(self, info: dict[str, Any]) -> bool:
        if not _has_owner(info):
            return info.get("age_s", 0.0) > self.creating_s
        if info["host"] == socket.gethostname():
            return not _pid_alive(info["pid"])
        return info.get("age_s", 0.0) > self.stale_after

    def describe(self, info: dict[str, Any]) -> str:
        """Who holds the lock, for messages."""
        if not _has_owner(info):
            return (f"{self.path} names no owner (empty or damaged, "
                    f"{info.get('age_s', 0.0):.0f} s old)")
        return (f"{self.path.name} is held by pid {info['pid']} on {info['host']!r} "
                f"(heartbeat {info.get('age_s', 0.0):.0f} s ago)")

    # -- acquire / release ------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLocked` naming the owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self.path.is_dir():  # not a lock anyone could hold: kept, out of the way
                    set_aside(self.path, "a folder where the run's lock file belongs")
                    continue
                info = self.owner()
                if info is None:
                    continue  # released between our attempts
                if not self.is_stale(info):
                    if not _has_owner(info):
                        raise RunLocked(f"{self.path.name} is being created by another process") from None
                    raise RunLocked(self.describe(info)) from None
                try:  # move the stale lock aside; only one of several contenders succeeds
                    os.replace(self.path, self.path.with_name(
                        f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}.tmp"))
                except FileNotFoundError:
                    continue
                if not _has_owner(info):
                    warnings.warn(f"{self.describe(info)}: taken over as stale", RunFileWarning,
                                  stacklevel=3)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "since": _now()}, f)
            self.held = True
            self._last_beat = time.monotonic()
            for old in self.path.parent.glob(f"{self.path.name}.stale-*.tmp"):
                old.unlink(missing_ok=True)
            return
        raise RunLocked(f"could not take {self.path} (contended)")

    def heartbeat(self, force: bool = False) -> None:
        """Refresh the heartbeat (at most every ``heartbeat_s`` unless ``force``); raise
        :class:`RunLocked` if another process has taken the lock over."""
        if not self.held or (not force and time.monotonic() - self._last_beat < self.heartbeat_s):
            return
        info = self.owner()
        if info is None or info.get("token") != self.token:
            self.held = False
            raise RunLocked(f"lost {self.path.name}: another process took it over")
        os.utime(self.path)
        self._last_beat = time.monotonic()

    def release(self) -> None:
        if self.held:
            info = self.owner()
            if info is not None and info.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _has_owner(info: dict[str, Any]) -> bool:
    """Whether the lock names a host and a pid that a process can have (a pid of 0 or below
    would name process groups, a huge one no process at all)."""
    pid = info.get("pid")
    return (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31
            and isinstance(info.get("host"), str))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------
def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: the
    locolib sources), or None when that is not a git checkout or git is missing. (Chapters 04-07)"""
    path = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        # Dirty: uncommitted changes (new files included) below ``path``, i.e. in the code.
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=path,
                               capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": dirty} if sha else None


def _device_name(device: Any) -> str:

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def provenance(device: Any) -> dict[str, Any]:
    """Library versions, device, host facts and git commit, for a result record. (Chapters 04-07)"""


    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "locolib": locolib.__version__}
    try:

        versions["torchvision"] = torchvision.__version__
    except ImportError:  # torchvision is only needed for the image datasets
        versions["torchvision"] = None
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    dev = torch.device(device)
    return {
        "versions": versions,
        "device": {"type": dev.type, "name": _device_name(dev),
                   "torch_threads": torch.get_num_threads(),
                   # the CPU kernels' instruction set (ATEN_CPU_CAPABILITY pins it): their bits differ
                   "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "host": {"pid": os.getpid(), "platform": platform.platform(),
                 "executable": sys.executable},
        "git": git_commit(),
        "date": _now(),
    }


# --------------------------------------------------------------------------------------------
# Reading results back
# --------------------------------------------------------------------------------------------
def iter_records(results_dir: str | Path | None = None) -> Iterator[tuple[Path, dict]]:
    """(path, record) of every valid record directly in ``results_dir`` (sorted by name).

    Other JSON files there (damaged, foreign or old records, anything else) are skipped, and
    named in one warning once the folder has been read. (Chapters 05-07)
    """
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    skipped: dict[str, list[str]] = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            rec = read_record(p)
        except FileNotFoundError:  # removed while we read the folder
            continue
        except InvalidRecord as err:
            skipped.setdefault(err.reason, []).append(p.name)
            continue
        yield p, rec
    if skipped:
        n = sum(map(len, skipped.values()))
        what = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in skipped.items())
        warnings.warn(f"{results_dir}: {n} file(s) skipped, not records of this code: {what}",
                      RunFileWarning, stacklevel=2)


_CONFIG_COLUMNS = config_fields("column")


def _cell(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


RECORD_COLUMNS = ("key", *_CONFIG_COLUMNS, "test_error", "test_acc", "val_error", "train_acc",
            "clean_train_acc", "train_loss", "realized_sq", "realized_abs", "n_train", "total_s",
            "images_per_s", "device", "git_commit", "torch", "date", "path")


def _realized(rec: dict, weighting: str) -> float:
    """:func:`locolib.reg.realized_factor` of a record; NaN where the record has no such weight
    statistics or its regularizer no masks."""
    if not rec.get("weight_stats"):
        return numpy.nan
    try:
        return realized_factor(RunConfig.from_record(rec), rec["weight_stats"], weighting)
    except ValueError:
        return numpy.nan


def record_row(rec: dict, path: Path | None = None) -> dict[str, Any]:
    """A record as one table row, the one converter every table of runs is built with
    (Chapters 05-07): the columns :data:`RECORD_COLUMNS`, described in :func:`load_results`. Errors and
    accuracies are fractions."""
    cfg, final = rec["config"], rec.get("final", {})
    row: dict[str, Any] = {"key": rec["key"]}
    row.update({c: _cell(cfg.get(c)) for c in _CONFIG_COLUMNS})
    row.update({m: final.get(m, numpy.nan) for m in ("test_error", "test_acc", "val_error",
                                                      "train_acc", "clean_train_acc", "train_loss")})
    row.update({
        "realized_sq": _realized(rec, "sq"),
        "realized_abs": _realized(rec, "abs"),
        "n_train": rec.get("n_train"),
        "total_s": rec.get("timing", {}).get("total_s"),
        "images_per_s": rec.get("timing", {}).get("images_per_s"),
        "device": rec.get("device", {}).get("name"),
        "git_commit": (rec.get("git") or {}).get("commit"),
        "torch": rec.get("versions", {}).get("torch"),
        "date": rec.get("date"),
        "path": None if path is None else str(path),
    })
    return row


def results_frame(records: Iterable[dict], **filters: Any):
    """Result records (as returned by :func:`locolib.sweep.run_sweep`) as a DataFrame with the
    columns of :func:`load_results`, filtered the same way. (Chapter 07)"""
    return _frame([record_row(r) for r in records], filters)


def load_results(results_dir: str | Path | None = None, **filters: Any):
    """All finished runs in ``results_dir`` as a pandas DataFrame, one row per run.

    Columns: ``key``, the main config fields (dataset, network, regularizer, seed, epochs, width,
    kernel_size, lam, gamma, eta, ...; per-layer gamma/eta as tuples), the final epoch's
    ``test_error``, ``test_acc``, ``val_error``, ``train_acc`` (on augmented batches) and
    ``clean_train_acc`` (fractions; NaN where a run did not measure it), ``train_loss``,
    ``realized_sq`` and ``realized_abs`` (:func:`locolib.reg.realized_factor`), ``n_train``,
    ``total_s``, ``images_per_s``, ``device``, ``git_commit``, ``torch``, ``date``, ``path``.

    ``filters``: ``column=value`` or ``column=[values]``, e.g.
    ``load_results(dataset="cifar10", epochs=250, regularizer=["l2", "loco"])``. (Chapters 05-07)
    """
    return _frame([record_row(rec, path) for path, rec in iter_records(results_dir)], filters)


def _frame(rows: list[dict], filters: dict[str, Any]):

    df = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    for col, want in filters.items():
        if col not in df.columns:
            raise ValueError(f"cannot filter on {col!r}; columns are {list(df.columns)}")
        if isinstance(want, (list, set, frozenset)) or (
                isinstance(want, tuple) and col not in ("gamma", "eta")):
            df = df[df[col].isin(list(want))]
        else:
            df = df[df[col].apply(lambda v, w=want: v == w)]
    return df.sort_values(["dataset", "network", "regularizer", "seed"]).reset_index(drop=True)


def history_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Learning curves (chapter 05): one row per (run, epoch) with dataset, network,
    regularizer, seed, epoch, lr, train_loss, train_acc, test_error (a fraction, NaN in epochs
    without a test) and penalty."""
    rows = []
    for rec in records:
        cfg = rec["config"]
        for h in rec["history"]:
            rows.append({"key": rec["key"], "dataset": cfg["dataset"], "network": cfg["network"],
                         "regularizer": cfg["regularizer"], "seed": cfg["seed"],
                         "epoch": h["epoch"], "lr": h["lr"], "train_loss": h["train_loss"],
                         "train_acc": h["train_acc"],
                         "test_error": h.get("test_error", numpy.nan),
                         "penalty": h.get("penalty")})
    return pd.DataFrame(rows, columns=["key", "dataset", "network", "regularizer", "seed", "epoch",
                                       "lr", "train_loss", "train_acc", "test_error", "penalty"])
