"""The command lines as a newcomer meets them: every documented command runs as written, --help
says choices and defaults, bad input and Ctrl-C end in one clear line, never a traceback."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import torch

import locolib.io
from locolib.config import REGULARIZERS, config_fields, field_default
from locolib.data import DATASETS
from locolib.models import NETWORKS
from locolib.results import read_record, result_path
from locolib.sweep import MAX_RUNS, main, plan
from locolib.train import checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md")), ROOT / "results" / "README.md"]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
#: The start of a locolib command: an installed script, or ``python -m locolib.<module>``.
COMMAND = re.compile(r"^(?:\S*/)?(?:(?P<script>" + "|".join(map(re.escape, SCRIPTS))
                     + r")|python3?\s+-m\s+(?P<module>locolib(?:\.\w+)*))(?=\s|$)")

pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) of every locolib command in a fenced shell block of the docs, with
    continuation lines joined and trailing comments dropped."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.finditer(r"^[ \t]*```(?:bash|sh|shell|console)\n(.*?)^[ \t]*```", text,
                                 re.S | re.M):
            line_no = text.count("\n", 0, block.start()) + 2
            for i, line in enumerate(block.group(1).replace("\\\n", " ").splitlines()):
                line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ "))
                if COMMAND.match(line):
                    found.append((f"{path.relative_to(ROOT)}:{line_no + i}", line))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_the_sweep_commands():
    assert len([c for _, c in COMMANDS if "locolib-sweep" in c]) >= 4, COMMANDS
    assert any("SLURM_ARRAY_TASK_ID" in c for _, c in COMMANDS), "the job-array example is checked"
    on_running_page = " ".join(c for where, c in COMMANDS if where.startswith("book/running.md"))
    for option in ("--dask local", "--dask tls://", "--dask slurm", "--shard"):
        assert option in on_running_page, f"the running page shows no command with {option}"


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_documented_command_runs_as_written(command, capsys):
    """Each command, expanded by bash as a user's shell would (a SLURM array task's variables
    set), runs with --dry-run appended: the plan it would train is valid."""
    m = COMMAND.match(command)
    argv = subprocess.run(
        ["bash", "-c", f"set -- {command[m.end():]}; printf '%s\\0' \"$@\""],
        env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"},
        capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    entry = SCRIPTS[m["script"]] if m["script"] else f"{m['module']}:main"
    module, _, function = entry.partition(":")
    try:
        status = getattr(importlib.import_module(module), function)([*argv, "--dry-run"])
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    assert status in (0, None), out.err
    if "slurm" in argv:  # the job script a SLURM cluster would get
        assert "#SBATCH --gres=gpu:1" in out.out and "#SBATCH -p gpu" in out.out


# --- --help ------------------------------------------------------------------------------------


def _help_blocks(capsys) -> dict[str, str]:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    blocks, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"^  (--[\w-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("      "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_help_shows_choices_and_defaults_of_every_option(capsys):
    blocks = _help_blocks(capsys)
    assert set(blocks) >= {f"--{n.replace('_', '-')}" for n in config_fields("cli")}
    for text in blocks.values():
        text = re.sub(r"\s+", " ", text)
        assert "default" in text and "(default: None)" not in text, text
    for option, names in (("--datasets", DATASETS), ("--networks", NETWORKS),
                          ("--regularizers", REGULARIZERS)):
        assert all(n in blocks[option] for n in names), blocks[option]
    for name in config_fields("cli"):
        if isinstance(field_default(name), bool):
            assert "{true,false}" in blocks[f"--{name.replace('_', '-')}"]
    assert "{3,5,7}" in blocks["--kernel-size"] and "{torch,keras}" in blocks["--init"]
    # What a loco run gets when no parameters are given, not the field's 1.0.
    assert "0.5" in blocks["--gamma"] and "2.0" in blocks["--eta"]


# --- bad input: one line, exit 2 ---------------------------------------------------------------

def tiny(regularizers: str = "l2,loco", epochs: int = 1) -> list[str]:
    return ["--datasets", "digits", "--networks", "vgg13", "--regularizers", regularizers,
            "--seeds", "0", "--epochs", str(epochs), "--width", "0.125", "--train-subset", "64",
            "--batch-size", "32"]


def _unwritable(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder / "results"
    if not Path("/sys/kernel").is_dir():  # root ignores permission bits ...
        pytest.skip("no folder that this user cannot write to")
    return Path("/sys/locolib-results")  # ... but sysfs refuses new entries even to root


BAD_INPUT = {  # case: (arguments, what the error line must name)
    "results-is-a-file": (lambda t: ["--results", str(t / "file")], "is a file"),
    "results-below-a-file": (lambda t: ["--results", str(t / "file" / "results")], "file/results"),
    "results-unwritable": (lambda t: ["--results", str(_unwritable(t))], "cannot write"),
    "loco-params-without-eta": (lambda t: ["--loco-params", str(t / "no-eta.json")], "eta"),
    "loco-params-not-json": (lambda t: ["--loco-params", str(t / "cut.json")], "cut.json"),
    "loco-params-not-a-mapping": (lambda t: ["--loco-params", str(t / "list.json")], "must map"),
    "loco-params-nested-too-deeply": (lambda t: ["--loco-params", str(t / "deep.json")],
                                      "nested too deeply"),
    "a-billion-seeds": (lambda t: ["--seeds", "0-1000000000"], str(MAX_RUNS)),
    "width-inf": (lambda t: ["--width", "inf"], "width must lie in (0, 16]"),
    "width-1e9": (lambda t: ["--width", "1e9"], "width must lie in"),
    "pad-100000": (lambda t: ["--pad", "100000"], "pad must lie in [0, 32]"),
    "lam-inf": (lambda t: ["--lam", "inf"], "lam must lie in"),
    "lr-inf": (lambda t: ["--lr", "inf"], "lr must lie in"),
    "momentum-inf": (lambda t: ["--momentum", "inf"], "momentum must lie in [0, 1)"),
    "momentum-1": (lambda t: ["--momentum", "1"], "momentum must lie in [0, 1)"),
    "lr-decay-inf": (lambda t: ["--lr-decay", "inf"], "lr_decay must lie in"),
    "gamma-inf": (lambda t: ["--gamma", "inf"], "positive number"),
    "gamma-of-the-wrong-length": (lambda t: ["--gamma", "0.5,0.5,0.5"], "3 per-layer values"),
    "stale-after-below-the-heartbeat": (lambda t: ["--stale-after", "5"], "at least 60"),
    "device-foo": (lambda t: ["--device", "foo"], "unknown device 'foo'"),
    "device-cuda-9": (lambda t: ["--device", "cuda:9"], "CUDA device"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_ends_in_one_clear_line(case, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "no-eta.json").write_text(json.dumps({"digits/vgg13": {"gamma": 0.5}}))
    (tmp_path / "cut.json").write_text('{"digits/vgg13": {"gamma": 0.5,')
    (tmp_path / "list.json").write_text("[0.5, 2.0]")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    make_args, wanted = BAD_INPUT[case]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main([*tiny(), *make_args(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert wanted in line, line
    assert time.perf_counter() - start < 10, "refused at once"


# --- Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_leaves_a_message_no_lock_and_a_resumable_run(tmp_path):
    res = tmp_path / "res"
    args = [*tiny("l2", epochs=30), "--results", str(res), "--quiet", "--threads", "1",
            "--checkpoint-every", "0"]  # a checkpoint after every epoch
    (cfg,) = plan(["digits"], ["vgg13"], ["l2"], [0], epochs=30, width=0.125, train_subset=64,
                  batch_size=32)
    ck = checkpoint_path(cfg, res / "checkpoints")
    proc = subprocess.Popen([sys.executable, "-m", "locolib.sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert "run the same command again" in err.lower()
    assert not list(ck.parent.glob("*.lock")), "the lock is released"
    done = torch.load(ck, weights_only=True)["epoch"]
    assert 1 <= done < 30
    assert main(args) == 0
    assert read_record(result_path(cfg, res))["timing"]["segments"] == 2, "resumed, not restarted"


# --- a full disk -------------------------------------------------------------------------------


def _full_disk_for(suffix: str, monkeypatch) -> None:
    """Every atomic write of a file ending in ``suffix`` fails as on a full disk."""
    real = locolib.io.os.replace

    def replace(src, dst):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(locolib.io.os, "replace", replace)


def test_a_full_disk_is_one_line_exit_2_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    res = tmp_path / "res"
    args = [*tiny("l2", epochs=2), "--results", str(res), "--quiet", "--checkpoint-every", "0"]
    (cfg,) = plan(["digits"], ["vgg13"], ["l2"], [0], epochs=2, width=0.125, train_subset=64,
                  batch_size=32)
    _full_disk_for(".json", monkeypatch)  # the record cannot be written
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and str(result_path(cfg, res)) in err
    assert "run the same command again" in err
    assert not list(res.glob(".*.tmp")) and not list((res / "checkpoints").glob("*.lock"))
    monkeypatch.undo()
    assert main(args) == 0
    rec = read_record(result_path(cfg, res))
    assert rec["timing"]["segments"] == 2, "resumed from the last checkpoint"


def test_a_failed_checkpoint_write_is_a_warning_and_the_run_goes_on(tmp_path, capsys,
                                                                  monkeypatch):
    res = tmp_path / "res"
    args = [*tiny("l2", epochs=2), "--results", str(res), "--quiet", "--checkpoint-every", "0"]
    _full_disk_for(".pt", monkeypatch)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "checkpoint not written (No space left on device); the run goes on" in err
    assert len(list(res.glob("*.json"))) == 1 and not list((res / "checkpoints").iterdir())
