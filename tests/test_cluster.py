"""Sweeps on Dask: a local cluster on 127.0.0.1 gives a serial sweep's records, a killed worker's
run resumes from its checkpoint elsewhere, and the SLURM job script says what it should."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from locolib import cluster
from locolib.sweep import main, plan, run_sweep
from locolib.train import checkpoint_path

distributed = pytest.importorskip("distributed")

TINY = dict(width=0.125, train_subset=96, batch_size=32, epochs=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


def _comparable(rec: dict) -> dict:
    """What a run computes: its metrics and weight statistics, without timings or provenance."""
    timing = {"train_s", "eval_s", "epoch_s", "images_per_s"}
    return {"key": rec["key"], "final": rec["final"], "weight_stats": rec["weight_stats"],
            "history": [{k: v for k, v in h.items() if k not in timing} for h in rec["history"]]}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as local:
        with distributed.Client(local) as c:
            yield c


@pytest.mark.slow
def test_two_runs_on_two_workers_give_the_serial_records(client, tmp_path):
    configs = plan(["digits"], ["vgg13"], ["l2", "loco"], [0], **TINY)
    serial = run_sweep(configs, results_dir=tmp_path / "serial", progress=False, log=None)
    lines: list[str] = []
    futures = cluster.submit(client, configs, tmp_path / "dask", gpu=False)
    records = cluster.collect(client, futures, log=lines.append)
    assert [_comparable(r) for r in records] == [_comparable(r) for r in serial]
    assert len({r["host"]["pid"] for r in records}) == 2, "both workers trained"
    assert {p.name for p in (tmp_path / "dask").glob("*.json")} == {f"{c.key}.json" for c in configs}
    # Progress streamed back: every epoch of every run, then one line per finished run.
    for cfg in configs:
        assert any(f"{cfg.key}: epoch 2/2" in line for line in lines), lines
    assert sum(line.startswith("[") for line in lines) == 2


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_resumes_on_another(client, tmp_path):
    (cfg,) = plan(["digits"], ["vgg13"], ["l2"], [3], **{**TINY, "epochs": 8, "checkpoint_every": 0})
    (serial,) = run_sweep([cfg], results_dir=tmp_path / "serial", progress=False, log=None)
    res = tmp_path / "dask"
    (future,) = cluster.submit(client, [cfg], res, gpu=False)
    ck = checkpoint_path(cfg, res / "checkpoints")
    deadline = time.monotonic() + 120
    while not (ck.is_file() and torch.load(ck, weights_only=True)["epoch"] >= 2):
        assert time.monotonic() < deadline and not future.done(), "no checkpoint to resume from"
        time.sleep(0.05)
    pids = client.run(os.getpid)
    (worker,) = [w for w, keys in client.processing().items() if future.key in keys]
    os.kill(pids[worker], signal.SIGKILL)
    (rec,) = cluster.collect(client, [future], log=None)
    assert rec["timing"]["segments"] == 2, "the rescheduled task started over"
    assert rec["host"]["pid"] != pids[worker]
    assert _comparable(rec) == _comparable(serial)


@pytest.mark.slow
def test_the_sweep_command_runs_on_a_local_cluster(tmp_path, capsys, monkeypatch):
    """``--dask local`` starts a cluster bound to 127.0.0.1 (here with two workers)."""
    started = []
    real = distributed.LocalCluster

    def local_cluster(**kwargs):
        started.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    res = tmp_path / "res"
    args = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2", "--seeds", "0-1",
            "--epochs", "1", "--width", "0.125", "--train-subset", "64", "--batch-size", "32",
            "--results", str(res), "--dask", "local", "--dask-workers", "2", "--device", "cpu"]
    assert main(args + ["--dry-run"]) == 0
    assert "local cluster on 127.0.0.1 with 2 worker processes" in capsys.readouterr().out
    assert main(args) == 0
    assert started[0]["host"] == "127.0.0.1" and started[0]["n_workers"] == 2
    assert started[0]["resources"] is None, "CPU runs declare no GPU"
    out = capsys.readouterr().out
    assert "finished: 2 of 2 runs have results" in out and "epoch 1/1" in out
    assert len(list(res.glob("*.json"))) == 2


@pytest.mark.parametrize("argv, message", [
    (["--dask", "http://host:8786"], "expected local, slurm or tcp://host:port"),
    (["--dask", "slurm", "--slurm-walltime", "4h"], "walltime '4h'"),
    (["--dask", "local", "--runs-per-gpu", "0"], "runs per GPU"),
])
def test_bad_dask_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--datasets", "digits", *argv, "--dry-run"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_slurm_job_script():
    options = cluster.ClusterOptions("slurm", workers=4, runs_per_gpu=4, partition="gpu", gpus=1,
                                     cores=8, memory="64GB", walltime="08:00:00")
    script = cluster.job_script(options, scheduler="tcp://10.0.0.1:8786")
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 08:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=60G"):
        assert line in script, script
    assert "tcp://10.0.0.1:8786" in script and "--nworkers 4" in script
    assert "--resources GPU=0.25" in script, "four runs share the job's GPU"
    cpu = cluster.job_script(cluster.ClusterOptions("slurm", gpus=0, cores=16))
    assert "--gres" not in cpu and "--nworkers 16" in cpu and "GPU=" not in cpu


@pytest.mark.slow
def test_gpu_runs_declare_a_share_of_a_gpu(client, tmp_path):
    """On a worker without a GPU resource such a task waits; here the scheduler shows the
    declared share."""
    (cfg,) = plan(["digits"], ["vgg13"], ["l2"], [9], **TINY)
    (future,) = cluster.submit(client, [cfg], tmp_path, runs_per_gpu=4, gpu=True)
    try:
        time.sleep(0.5)
        assert not future.done()
        wanted = client.run_on_scheduler(
            lambda dask_scheduler, key: dict(dask_scheduler.tasks[key].resource_restrictions),
            key=future.key)
        assert wanted == {"GPU": 0.25}
    finally:
        future.cancel()
