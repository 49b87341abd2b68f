"""The running page's commands run as written: every ``locolib-sweep`` command in its bash
blocks parses and plans (checked with ``--dry-run``), and its figures are the budget's."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from locolib import budget
from locolib.sweep import main

PAGE = Path(__file__).resolve().parents[1] / "book" / "running.md"


def _sweep_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("locolib-sweep")]


def _argv(command: str) -> list[str]:
    """The arguments bash passes to the command (variables and arithmetic expanded, as in the
    first task of a SLURM job array)."""
    words = command.removeprefix("locolib-sweep")
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True,
                         check=True, env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"})
    return out.stdout.decode().split("\0")[:-1]


def test_the_page_has_sweep_commands_for_every_way_to_run():
    text = " ".join(_sweep_commands())
    for option in ("--dask local", "--dask tls://", "--dask slurm", "--shard"):
        assert option in text


@pytest.mark.parametrize("command", _sweep_commands())
def test_sweep_command_runs_as_written(command, capsys, scratch_results):
    pytest.importorskip("dask_jobqueue")
    argv = _argv(command)
    assert main(argv if "--dry-run" in argv else [*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan:" in out and "status:" in out
    if "slurm" in argv:
        assert "#SBATCH --gres=gpu:1" in out and "#SBATCH -p gpu" in out


def test_the_pages_estimates_are_the_budgets():
    text = PAGE.read_text()
    colab = budget.profile_summary("colab")
    assert f"about {5 * round(colab['hours'] * 12)} minutes on a T4" in text
    assert f"| `colab` | 0.6 pp | {colab['detectable_effect_pp']['loco_table6/vgg13']:.2f} pp |" in text
    gpu = budget.profile_summary("gpu")
    assert f"about {gpu['hours']:.1f} hours on an H100" in text
    for name in ("paper_cifar10", "paper_cifar100", "paper_fashion_mnist"):
        hours = budget.profile_summary(name)["hours_per_device"]
        runs = budget.profile_summary(name)["runs"]
        assert (f"| `{name}` | {runs} | {hours['t4']:.0f} h | {hours['a100']:.0f} h | "
                f"{hours['h100']:.0f} h |") in text, name
