"""Sweeps on Dask: a local cluster on 127.0.0.1 gives a serial sweep's records, a killed worker's
run resumes from its checkpoint elsewhere, and the SLURM job script says what it should. Every
cluster the sweep starts or joins speaks TLS and refuses clients without its credentials."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import torch

from locolib import cluster
from locolib.results import read_record
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


def _self_signed(folder) -> dict[str, str]:
    """A self-signed certificate and its key, as ``Security.temporary()`` makes them (here by
    openssl: the cryptography package need not be installed)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=locolib-test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return {"ca": str(cert), "cert": str(cert), "key": str(key)}


def _security(files: dict[str, str]):
    """The credentials of a cluster's scheduler, workers and clients."""
    return distributed.Security(
        tls_ca_file=files["ca"], require_encryption=True,
        **{f"tls_{role}_{part}": files[part] for role in ("scheduler", "worker", "client")
           for part in ("cert", "key")})


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> dict[str, str]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


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


SWEEP = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2", "--seeds", "0-1",
         "--epochs", "1", "--width", "0.125", "--train-subset", "64", "--batch-size", "32",
         "--device", "cpu"]
TINY_1 = dict(epochs=1, width=0.125, train_subset=64, batch_size=32)


def _serial_records(tmp_path) -> list[dict]:
    configs = plan(["digits"], ["vgg13"], ["l2"], [0, 1], **TINY_1)
    return [_comparable(r) for r in run_sweep(configs, results_dir=tmp_path / "serial",
                                                progress=False, log=None)]


def _records(res) -> list[dict]:
    return [_comparable(read_record(p)) for p in sorted(res.glob("*.json"))]


@pytest.mark.slow
def test_the_sweep_command_runs_on_a_local_cluster_over_tls(tmp_path, capsys, monkeypatch,
                                                             credentials):
    """``--dask local`` starts a cluster bound to 127.0.0.1 (here with two workers), speaking
    TLS with temporary credentials, without a dashboard; its records are the serial ones."""
    started = []
    real = distributed.LocalCluster

    def local_cluster(**kwargs):
        started.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    temporary = _security(credentials)  # what Security.temporary() makes
    monkeypatch.setattr(cluster, "_temporary_security", lambda: temporary)
    res = tmp_path / "res"
    args = SWEEP + ["--results", str(res), "--dask", "local", "--dask-workers", "2"]
    assert main(args + ["--dry-run"]) == 0
    assert "local cluster on 127.0.0.1 with 2 worker processes, TLS" in capsys.readouterr().out
    assert main(args) == 0
    kwargs = started[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["n_workers"] == 2
    assert kwargs["protocol"] == "tls://" and kwargs["security"] is temporary
    assert kwargs["dashboard_address"] is None, "no dashboard unless asked for"
    assert kwargs["resources"] is None, "CPU runs declare no GPU"
    out = capsys.readouterr().out
    assert "finished: 2 of 2 runs have results" in out and "epoch 1/1" in out
    assert _records(res) == _serial_records(tmp_path)


async def _handshake(address: str, security=None) -> None:
    """Open a connection to ``address`` as a client (what distributed.Client does first)."""
    args = security.get_connection_args("client") if security is not None else {}
    comm = await distributed.comm.connect(address, timeout=10, **args)
    await comm.close()


@pytest.mark.slow
def test_a_local_cluster_refuses_clients_without_its_credentials(tmp_path, monkeypatch,
                                                                 credentials):
    monkeypatch.setattr(cluster, "_temporary_security", lambda: _security(credentials))
    intruder = _security(_self_signed(tmp_path / "intruder"))
    with cluster.connect(cluster.ClusterOptions("local", workers=1), device="cpu") as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert all(w.startswith("tls://127.0.0.1:") for w in client.scheduler_info()["workers"])
        assert client.submit(sum, [1, 2]).result() == 3
        with pytest.raises(TypeError, match="TLS"):  # no credentials
            asyncio.run(_handshake(address))
        with pytest.raises(OSError):  # plain TCP
            asyncio.run(_handshake(address.replace("tls://", "tcp://")))
        with pytest.raises(OSError):  # credentials of its own
            asyncio.run(_handshake(address, intruder))
        asyncio.run(_handshake(address, _security(credentials)))  # the sweep's own
        # No dashboard, nor the scheduler's other pages about the cluster.
        port = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.port)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/json/identity.json", timeout=10)


@pytest.mark.slow
def test_a_scheduler_started_by_hand_is_joined_over_tls(tmp_path, capsys, credentials):
    res = tmp_path / "res"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", protocol="tls://", dashboard_address=None,
                                  security=_security(credentials)) as by_hand:
        address = by_hand.scheduler_address
        assert main(SWEEP + ["--results", str(res), "--dask", address,
                             "--dask-tls-ca", credentials["ca"], "--dask-tls-cert",
                             credentials["cert"], "--dask-tls-key", credentials["key"]]) == 0
    assert "warning" not in capsys.readouterr().err
    assert _records(res) == _serial_records(tmp_path)


@pytest.mark.slow
def test_an_open_scheduler_works_with_a_warning(client, tmp_path, capsys):
    address = client.scheduler.address
    assert address.startswith("tcp://")
    assert main(SWEEP + ["--seeds", "0", "--results", str(tmp_path), "--dask", address]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert "neither encrypted nor authenticated: anyone who can reach it runs code as you" in line


def test_slurm_starts_its_scheduler_with_tls_and_without_a_dashboard(monkeypatch):
    jobqueue = pytest.importorskip("dask_jobqueue")
    seen = {}

    class Stop(Exception):
        pass

    def slurm_cluster(**kwargs):
        seen.update(kwargs)
        raise Stop

    temporary = object()
    monkeypatch.setattr(jobqueue, "SLURMCluster", slurm_cluster)
    monkeypatch.setattr(cluster, "_temporary_security", lambda: temporary)
    with pytest.raises(Stop), cluster.connect(cluster.ClusterOptions("slurm"), shared_dir="/shared"):
        pass
    assert seen["security"] is temporary and seen["protocol"] == "tls://"
    assert seen["scheduler_options"] == {"dashboard_address": None}
    assert seen["shared_temp_directory"] == "/shared"


def test_temporary_credentials_need_cryptography():
    try:
        import cryptography  # noqa: F401, PLC0415 -- only whether it is there
    except ImportError:
        with pytest.raises(ImportError, match="pip install cryptography"):
            cluster.security(cluster.ClusterOptions("local"))
    else:
        assert cluster.security(cluster.ClusterOptions("local")).require_encryption


@pytest.mark.parametrize("argv, message", [
    (["--dask", "http://host:8786"], "expected local, slurm, tls://host:port or tcp://host:port"),
    (["--dask", "tcp://host:8786", "--dask-tls-ca", "ca.pem"], "go together, with a tls:// address"),
    (["--dask", "tls://host:8786", "--dask-tls-ca", "ca.pem"], "go together"),
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
    script = cluster.job_script(options, scheduler="tls://10.0.0.1:8786")
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 08:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=60G"):
        assert line in script, script
    assert "tls://10.0.0.1:8786" in script and "--nworkers 4" in script
    assert "--protocol tls://" in script
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
