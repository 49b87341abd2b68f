"""Damaged, foreign and old files of runs: named, never counted as done, kept, the run trained
again; one reader for the sweep, its dry run, the tables and train(); files with the user's umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch

import locolib.train as T
from locolib.results import (
    RunFileWarning,
    RunLock,
    RunLocked,
    finished_record,
    load_results,
    read_record,
    result_path,
)
from locolib.sweep import main, plan, run_sweep, sweep_status
from locolib.train import checkpoint_path, train

TINY = dict(width=0.125, train_subset=64, batch_size=32, epochs=2)
(CONFIG,) = plan(["digits"], ["vgg13"], ["l2"], [0], **TINY)
(OTHER,) = plan(["digits"], ["vgg13"], ["l2"], [1], **TINY)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, dict]:
    """Valid records of CONFIG and OTHER, trained once for the module (on one thread, as the
    tests' runs: their metrics are then equal bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = tmp_path_factory.mktemp("records")
        return {c.key: train(c, results_dir=res, progress=False) for c in (CONFIG, OTHER)}
    finally:
        torch.set_num_threads(threads)


def _damage(kind: str, good: dict, other: dict) -> str:
    text = json.dumps(good, indent=2)
    if kind == "truncated":
        return text[: len(text) // 2]
    if kind == "not-json":
        return "<html>502 Bad Gateway</html>"
    if kind == "another-run":
        return json.dumps(other)
    if kind == "another-format":
        return json.dumps({**good, "format": 0})
    if kind == "another-training-version":
        return json.dumps({**good, "training_version": good["training_version"] - 1})
    if kind.startswith("test-error-"):  # not a finite fraction: NaN, Infinity, -0.1, true
        value = {"nan": float("nan"), "infinity": float("inf"), "negative": -0.1,
                 "true": True, "a-string": "0.1"}[kind.removeprefix("test-error-")]
        return json.dumps({**good, "final": {**good["final"], "test_error": value}})
    if kind == "deeply-nested":
        return "[" * 100_000
    if kind == "incomplete":
        return json.dumps({k: v for k, v in good.items() if k != "final"})
    raise ValueError(kind)


KINDS = ["truncated", "not-json", "another-run", "another-format", "another-training-version",
         "incomplete", "test-error-nan", "test-error-infinity", "test-error-negative",
         "test-error-true", "test-error-a-string", "deeply-nested"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_agrees_on_a_bad_record_and_the_sweep_trains_again(kind, records, tmp_path,
                                                                       capsys):
    res = tmp_path / "res"
    res.mkdir()
    path = result_path(CONFIG, res)
    bad = _damage(kind, records[CONFIG.key], records[OTHER.key])
    path.write_text(bad)
    (res / f"{OTHER.key}.json").write_text(json.dumps(records[OTHER.key]))

    # The dry run: not done, the file named, nothing moved.
    args = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2", "--seeds", "0-1",
            "--width", "0.125", "--train-subset", "64", "--batch-size", "32", "--epochs", "2",
            "--results", str(res)]
    assert main(args + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"todo                     {CONFIG.key}" in out
    assert "status: 1 done, 0 running, 0 partial, 1 todo" in out
    assert str(path) in err and "\n" not in err.strip(), "one warning line naming the file"
    assert path.read_text() == bad

    # The tables: the same verdict, the same file named.
    with pytest.warns(RunFileWarning, match=path.name):
        df = load_results(res)
    assert list(df.key) == [OTHER.key]

    # The sweep: sets the file aside (kept, byte for byte), trains the run, writes its record.
    with pytest.warns(RunFileWarning, match="kept as") as caught:
        recs = run_sweep([CONFIG, OTHER], results_dir=res, progress=False, log=None)
    assert str(path) in str(caught[0].message)
    assert [r["key"] for r in recs] == [CONFIG.key, OTHER.key]
    (kept,) = res.glob(f"{path.name}.invalid-*")
    assert kept.read_text() == bad
    assert read_record(path, CONFIG.key)["final"] == records[CONFIG.key]["final"]


def test_train_sets_aside_a_bad_record_even_when_called_alone(records, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    result_path(CONFIG, res).write_text("{")
    with pytest.warns(RunFileWarning, match="not valid JSON"):
        rec = train(CONFIG, results_dir=res, progress=False)
    assert rec["final"] == records[CONFIG.key]["final"]
    assert finished_record(result_path(CONFIG, res), CONFIG.key) == rec
    assert len(list(res.glob("*.invalid-*"))) == 1


def _interrupted_checkpoint(cfg, res: Path) -> Path:
    def stop(event, epoch, step):
        if event == "checkpoint":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, results_dir=res, progress=False, hook=stop)
    return checkpoint_path(cfg, res / "checkpoints")


def test_a_checkpoint_of_a_changed_model_is_set_aside_and_the_run_restarts(records, tmp_path):
    res = tmp_path / "res"
    ck = _interrupted_checkpoint(CONFIG, res)
    state = torch.load(ck, weights_only=True)
    # Other code: the same run key, but a network whose first layer has another shape.
    name = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][name] = torch.zeros(7, *state["model"][name].shape[1:])
    torch.save(state, ck)
    foreign = ck.read_bytes()
    with pytest.warns(RunFileWarning, match=str(ck)):
        rec = train(CONFIG, results_dir=res, progress=False)
    assert rec["timing"]["segments"] == 1, "the run must start over"
    assert rec["final"] == records[CONFIG.key]["final"]
    (kept,) = ck.parent.glob(f"{ck.name}.invalid-*")
    assert kept.read_bytes() == foreign


def test_a_checkpoint_of_another_run_is_not_overwritten(tmp_path):
    res = tmp_path / "res"
    ck = _interrupted_checkpoint(OTHER, res)
    mine = checkpoint_path(CONFIG, ck.parent)
    shutil.copy(ck, mine)
    with pytest.warns(RunFileWarning, match="another run"):
        assert sweep_status([CONFIG], res) == ["todo"]
    with pytest.warns(RunFileWarning, match="another run"):
        train(CONFIG, results_dir=res, progress=False)
    assert len(list(ck.parent.glob(f"{mine.name}.invalid-*"))) == 1


def test_an_empty_lock_file_is_taken_over_with_a_message(tmp_path, capsys):
    res = tmp_path / "res"
    lock = res / "checkpoints" / f"{CONFIG.key}.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    # Just created: its owner may be writing it; said so, without a made-up owner.
    with pytest.raises(RunLocked) as err:
        RunLock(lock).acquire()
    assert "being created" in str(err.value) and "None" not in str(err.value)
    # A few seconds old: an empty lock has no owner to wait for (not 15 minutes).
    old = time.time() - 60
    os.utime(lock, (old, old))
    args = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2", "--seeds", "0",
            "--width", "0.125", "--train-subset", "64", "--batch-size", "32", "--epochs", "2",
            "--results", str(res), "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "names no owner" in err and str(lock) in err and "pid None" not in err
    assert result_path(CONFIG, res).is_file() and not lock.exists()


def test_files_are_created_with_the_users_umask(tmp_path):
    old = os.umask(0o002)  # a group sharing a results folder
    try:
        res = tmp_path / "res"
        ck = _interrupted_checkpoint(CONFIG, res)
        assert stat.S_IMODE(ck.stat().st_mode) == 0o664
        with RunLock(tmp_path / "x.lock") as lock:
            assert stat.S_IMODE(lock.path.stat().st_mode) == 0o664
        train(CONFIG, results_dir=res, progress=False, model_dir=res / "models")
        for path in (result_path(CONFIG, res), res / "models" / f"{CONFIG.key}.pt"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    finally:
        os.umask(old)


def test_an_invalid_record_is_never_deleted_by_a_dry_run_or_a_table(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    path = result_path(CONFIG, res)
    path.write_text("{")
    with pytest.warns(RunFileWarning):
        assert T.run_status(CONFIG, res) == "todo"
    with pytest.warns(RunFileWarning):
        load_results(res)
    assert path.read_text() == "{" and sorted(p.name for p in res.iterdir()) == [path.name]


# --- damaged checkpoints and locks: named, set aside, the run trained; never a traceback -------

def _damage_checkpoint(kind: str, ck: Path) -> None:
    if kind == "empty":
        ck.write_bytes(b"")
    elif kind == "truncated":
        ck.write_bytes(ck.read_bytes()[:100])
    elif kind == "garbage":
        ck.write_bytes(b"garbage\x80\x03 not a checkpoint")
    elif kind == "earlier-format":  # without the seconds spent by kind, as earlier code wrote
        state = torch.load(ck, weights_only=True)
        torch.save({k: v for k, v in state.items() if k != "spent"}, ck)
    else:  # a field of the wrong type
        field, value = {"epoch-a-string": ("epoch", "1"), "segments-a-string": ("segments", "x"),
                        "history-a-string": ("history", "x")}[kind]
        state = torch.load(ck, weights_only=True)
        torch.save({**state, field: value}, ck)


CHECKPOINT_KINDS = ["empty", "truncated", "garbage", "earlier-format", "epoch-a-string",
                    "segments-a-string", "history-a-string"]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_a_damaged_checkpoint_is_named_kept_and_the_run_trained(kind, records, tmp_path, capsys):
    res = tmp_path / "res"
    ck = _interrupted_checkpoint(CONFIG, res)
    _damage_checkpoint(kind, ck)
    damaged = ck.read_bytes()
    args = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2", "--seeds", "0",
            "--width", "0.125", "--train-subset", "64", "--batch-size", "32", "--epochs", "2",
            "--results", str(res), "--quiet"]
    assert main(args + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"todo                     {CONFIG.key}" in out
    assert str(ck) in err and "Traceback" not in err
    assert "weights_only" not in err, "never the advice to unpickle an untrusted file"
    assert ck.read_bytes() == damaged, "a dry run moves nothing"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert str(ck) in err and "kept as" in err and "weights_only" not in err
    rec = read_record(result_path(CONFIG, res))
    assert rec["final"] == records[CONFIG.key]["final"] and rec["timing"]["segments"] == 1
    (kept,) = ck.parent.glob(f"{ck.name}.invalid-*")
    assert kept.read_bytes() == damaged


DEEP = "[" * 100_000  # deeper than Python's JSON parser goes (RecursionError)


def test_deeply_nested_json_is_a_damaged_record(records, tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    path = result_path(CONFIG, res)
    path.write_text(DEEP)
    stray = res / "stray.json"
    stray.write_text(DEEP)
    (res / f"{OTHER.key}.json").write_text(json.dumps(records[OTHER.key]))
    with pytest.warns(RunFileWarning, match="nested too deeply"):
        assert list(load_results(res).key) == [OTHER.key]
    with pytest.warns(RunFileWarning, match="kept as"):
        rec = train(CONFIG, results_dir=res, progress=False)
    assert rec["final"] == records[CONFIG.key]["final"]
    assert stray.read_text() == DEEP


@pytest.mark.parametrize("content", [DEEP, json.dumps({"host": "HOST", "pid": 10**30, "token": "t"}),
                                     json.dumps({"host": "HOST", "pid": -1, "token": "t"})],
                         ids=["deeply-nested", "pid-10**30", "pid-negative"])
def test_a_lock_naming_no_possible_owner_is_taken_over(content, tmp_path):
    import socket

    lock = tmp_path / "x.lock"
    lock.write_text(content.replace("HOST", socket.gethostname()))
    old = time.time() - 60
    os.utime(lock, (old, old))
    with pytest.warns(RunFileWarning, match="names no owner"):
        with RunLock(lock) as held:
            assert json.loads(lock.read_text())["token"] == held.token


def test_a_folder_at_the_lock_path_is_set_aside(records, tmp_path):
    res = tmp_path / "res"
    lock = res / "checkpoints" / f"{CONFIG.key}.lock"
    lock.mkdir(parents=True)
    (lock / "inside").write_text("kept")
    with pytest.warns(RunFileWarning, match="a folder") as caught:
        rec = train(CONFIG, results_dir=res, progress=False)
    assert str(lock) in str(caught[0].message) and "kept as" in str(caught[0].message)
    assert rec["final"] == records[CONFIG.key]["final"] and not lock.exists()
    (kept,) = lock.parent.glob(f"{lock.name}.invalid-*")
    assert (kept / "inside").read_text() == "kept"


def test_a_validation_error_out_of_range_makes_no_record(records, tmp_path):
    good = records[CONFIG.key]
    path = tmp_path / f"{CONFIG.key}.json"
    path.write_text(json.dumps({**good, "final": {**good["final"], "val_error": 0.2}}))
    assert read_record(path, CONFIG.key)["final"]["val_error"] == 0.2
    path.write_text(json.dumps({**good, "final": {**good["final"], "val_error": 1.5}}))
    with pytest.raises(ValueError, match="final val_error is 1.5"):
        read_record(path, CONFIG.key)
