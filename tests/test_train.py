"""The training engine: schedule, configs, exact resume, atomic checkpoints, locks, records."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import locolib.config as config
import locolib.io
import locolib.train as T
from locolib.config import RunConfig, config_field
from locolib.results import RunFileWarning, RunLock, RunLocked, default_results_dir, result_path
from locolib.train import checkpoint_path, lr_at, milestone_epochs, train

# Tiny runs: digits, 1/8-width VGG13, 192 training images in batches of 64 -> 3 steps per epoch,
# a checkpoint after every epoch.
TINY = dict(dataset="digits", network="vgg13", width=0.125, train_subset=192, batch_size=64,
            epochs=3, checkpoint_every=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dirs(tmp_path, scratch_results):
    return tmp_path / "results", tmp_path / "ck"


def _metrics(rec: dict) -> list[dict]:
    """History without timings (those differ between runs)."""
    timing = {"train_s", "eval_s", "epoch_s", "images_per_s"}
    return [{k: v for k, v in h.items() if k not in timing} for h in rec["history"]]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# --- learning-rate schedule --------------------------------------------------------------------


def test_schedule_paper_250_epochs():
    assert milestone_epochs(250) == (70, 140, 190, 230, 245)
    cfg = RunConfig("digits", "vgg13", "l2", 0)
    expect = {0: 0, 69: 0, 70: 1, 139: 1, 140: 2, 189: 2, 190: 3, 229: 3, 230: 4, 244: 4, 245: 5,
              249: 5}  # epoch (0-based) -> number of decays so far
    for epoch, k in expect.items():
        assert lr_at(cfg, epoch) == pytest.approx(0.1 * 0.316**k, rel=1e-12), epoch


def test_schedule_scaled_to_25_and_short_runs():
    # 70, 140, 190, 230, 245 scaled by 25/250: 7, 14, 19, 23, 24.5 -> 25 (half up) -> clipped to 24
    assert milestone_epochs(25) == (7, 14, 19, 23, 24)
    cfg = RunConfig("digits", "vgg13", "l2", 0, epochs=25)
    lrs = [lr_at(cfg, e) for e in range(25)]
    decays = [0] * 7 + [1] * 7 + [2] * 5 + [3] * 4 + [4] + [5]
    assert lrs == pytest.approx([0.1 * 0.316**k for k in decays])
    assert milestone_epochs(1) == (1, 1, 1, 1, 1)  # one epoch: never decayed
    assert lr_at(RunConfig("digits", "vgg13", "l2", 0, epochs=1), 0) == 0.1
    assert milestone_epochs(3) == (1, 2, 2, 2, 2)
    assert milestone_epochs(10, (0.5,)) == (5,)


# --- configs -----------------------------------------------------------------------------------


def test_config_validation_and_roundtrip():
    cfg = RunConfig("digits", "vgg13", "loco", 3, gamma=[0.5, 0.7], eta=2, epochs=25)
    assert cfg.gamma == (0.5, 0.7) and cfg.eta == 2.0
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.key == cfg.key
    with pytest.raises(ValueError, match="regularizer"):
        RunConfig("digits", "vgg13", "l1", 0)
    with pytest.raises(ValueError, match="gamma = eta = 1"):
        RunConfig("digits", "vgg13", "l2", 0, gamma=0.5)
    with pytest.raises(ValueError, match="positive"):
        RunConfig("digits", "vgg13", "loco", 0, eta=-1)
    with pytest.raises(ValueError, match="milestones"):
        RunConfig("digits", "vgg13", "l2", 0, milestones=(0.5, 0.2))
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        RunConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_a_newer_records_field_at_its_default_is_read_and_one_set_otherwise_is_refused():
    cfg = RunConfig("digits", "vgg13", "loco", 3, eta=2)
    newer = {"config": {**cfg.to_dict(), "colour": "red"}, "key": cfg.key}  # key: colour held its default
    assert RunConfig.from_record(newer) == cfg
    with pytest.raises(ValueError, match=r"unknown RunConfig fields \['colour'\] away from"):
        RunConfig.from_record({**newer, "key": cfg.replace(seed=4).key})  # colour entered the key


def test_key_is_stable_and_covers_what_changes_results():
    cfg = RunConfig("cifar10", "vgg13", "l2", 0)
    # Pinned: changing the key format would orphan every stored result.
    assert cfg.key == "cifar10-vgg13-l2-s0-732322c128"
    assert cfg.key == RunConfig("cifar10", "vgg13", "l2", 0, lam=0.0005, width=1).key
    assert cfg.key != cfg.replace(epochs=25).key
    assert cfg.key != cfg.replace(seed=1).key
    assert cfg.key != RunConfig("cifar10", "vgg13", "loco", 0, gamma=0.9).key
    assert cfg.key != RunConfig("cifar10", "vgg13", "loco", 0, gamma=0.9, eta=1.1).key
    # Where the data are read from, compiling and how often it evaluates do not make a
    # different run; the memory format changes CPU numbers, so it does.
    assert cfg.key == cfg.replace(data_root="/elsewhere", compile=True, eval_every=5).key
    assert cfg.key != cfg.replace(channels_last=False).key


def test_a_new_field_with_a_default_leaves_every_key_unchanged():
    extended = dataclasses.make_dataclass(
        "Extended", [("dropout", float, config_field(0.0, "dropout rate"))],
        bases=(RunConfig,), frozen=True)
    cfg = RunConfig("cifar10", "vgg13", "loco", 3, gamma=0.5, epochs=20)
    same = extended("cifar10", "vgg13", "loco", 3, gamma=0.5, epochs=20)
    assert same.key == cfg.key
    assert extended("cifar10", "vgg13", "loco", 3, gamma=0.5, epochs=20, dropout=0.1).key != cfg.key


def test_the_training_version_enters_every_key(monkeypatch):
    cfg = RunConfig("digits", "vgg13", "l2", 0)
    before = cfg.key
    monkeypatch.setattr(config, "TRAINING_VERSION", config.TRAINING_VERSION + 1)
    assert cfg.key != before


def test_default_results_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCOLIB_RESULTS", raising=False)
    repo = tmp_path / "repo"
    (repo / "locolib").mkdir(parents=True)
    (repo / "_config.yml").write_text("title: x\n")
    (repo / "notebooks").mkdir()
    monkeypatch.chdir(repo / "notebooks")
    assert default_results_dir() == repo / "results"
    monkeypatch.chdir(tmp_path)
    assert default_results_dir() == tmp_path / "results"
    monkeypatch.setenv("LOCOLIB_RESULTS", str(tmp_path / "elsewhere"))
    assert default_results_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("field, value, message", [
    ("width", float("inf"), r"width must lie in \(0, 16\], got inf"),
    ("width", 1e9, "width must lie in"),
    ("pad", 100_000, r"pad must lie in \[0, 32\]"),
    ("lam", float("inf"), "lam must lie in"),
    ("lam", 1000.0, r"lam must lie in \[0, 100\]"),
    ("lr", float("inf"), "lr must lie in"),
    ("lr", float("nan"), "lr must lie in"),
    ("momentum", 1.0, r"momentum must lie in \[0, 1\)"),
    ("momentum", float("inf"), "momentum must lie in"),
    ("lr_decay", float("inf"), "lr_decay must lie in"),
    ("checkpoint_every", float("nan"), "checkpoint_every must lie in"),
    ("epochs", 2.0, "epochs must be an int"),
    ("lr", True, "lr must be a number"),
])
def test_numbers_outside_their_bounds_are_refused(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RunConfig("digits", "vgg13", "l2", 0, **{field: value})


def test_per_layer_values_must_match_the_network():
    ok = RunConfig("digits", "vgg13", "loco", 0, gamma=(0.5,) * 10, eta=2.0)
    T.check_per_layer(ok)
    with pytest.raises(ValueError, match="gamma has 3 per-layer values but vgg13 .* has 10"):
        T.check_per_layer(ok.replace(gamma=(0.5,) * 3))


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"),
                                             ("cuda:9", "CUDA device"), ("meta", "unknown device")])
def test_a_device_this_machine_lacks_is_refused(device, message):
    if device == "cuda:9" and torch.cuda.device_count() > 9:
        pytest.skip("a machine with ten GPUs")
    with pytest.raises(ValueError, match=message):
        T.choose_device(device)


def test_records_are_standard_json(tmp_path):
    with pytest.raises(ValueError):
        locolib.io.write_json(tmp_path / "x.json", {"test_error": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_a_diverged_run_writes_no_record(dirs, monkeypatch):
    results, ck = dirs
    cfg = RunConfig(**{**TINY, "epochs": 1}, regularizer="l2", seed=5)
    real = T._Run.evaluate

    def diverged(self, *args, **kwargs):
        return {k: float("nan") if k.endswith("loss") else v
                for k, v in real(self, *args, **kwargs).items()}

    monkeypatch.setattr(T._Run, "evaluate", diverged)
    with pytest.raises(T.RunDiverged, match="diverged: its final test loss is not a finite number"):
        train(cfg, results_dir=results, checkpoint_dir=ck, progress=False)
    assert not result_path(cfg, results).exists()


def test_choose_device():
    assert T.choose_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            assert T.choose_device() == torch.device("cpu")


# --- training ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_learns_and_writes_a_complete_record(dirs, tmp_path):
    results, ck = dirs
    cfg = RunConfig("digits", "vgg13", "l2", 0, width=0.125, epochs=5, milestones=(0.6,))
    rec = train(cfg, results_dir=results, checkpoint_dir=ck, progress=False,
                model_dir=tmp_path / "models")
    h = rec["history"]
    assert [e["lr"] for e in h] == pytest.approx([0.1, 0.1, 0.1, 0.0316, 0.0316])
    assert h[-1]["train_loss"] < 0.6 * h[0]["train_loss"], "training loss did not fall"
    assert rec["final"]["test_acc"] > 0.5, f"digits test accuracy {rec['final']['test_acc']} (chance 0.1)"
    assert rec["final"]["test_error"] == pytest.approx(1 - rec["final"]["test_acc"])
    assert rec["n_train"] == 1297 and rec["n_test"] == 500
    # Result file = returned record; the checkpoint is gone once the record is written.
    assert json.loads(result_path(cfg, results).read_text()) == json.loads(json.dumps(rec))
    assert not checkpoint_path(cfg, ck).exists() and not list(ck.glob("*.lock"))
    assert not (tmp_path / "default_results").exists()
    for k in ("torch", "torchvision", "numpy", "python", "locolib"):
        assert rec["versions"][k]
    assert rec["device"]["type"] == "cpu" and rec["date"] and "git" in rec
    t = rec["timing"]
    assert t["total_s"] > 0 and t["images_per_s"] > 0 and t["segments"] == 1
    assert t["per_epoch_s"] == pytest.approx(t["total_s"] / 5)
    # The recorded penalty is lam * sum(w^2) over conv and dense weights (not biases/BN),
    # recomputed here from the saved final weights.
    w = _weights(tmp_path / "models" / f"{cfg.key}.pt")
    pen = sum(float((v.double() ** 2).sum()) for k, v in w.items()
              if k.endswith("weight") and v.ndim >= 2)
    assert h[-1]["penalty"] == pytest.approx(5e-4 * pen, rel=1e-4)
    # Weight statistics: the per-layer sums agree with the saved kernels.
    convs = [v for k, v in w.items() if k.endswith("weight") and v.ndim == 4 and v.shape[-1] > 1]
    assert len(rec["weight_stats"]) == len(convs)
    for st, v in zip(rec["weight_stats"], convs):
        flat = v.double().reshape(-1, 9)
        assert st["count"] == flat.shape[0] and st["k"] == 3
        assert torch.allclose(torch.tensor(st["tap_abs_sum"], dtype=torch.float64).reshape(-1),
                              flat.abs().sum(0))
        assert torch.allclose(torch.tensor(st["tap_sq_sum"], dtype=torch.float64).reshape(-1),
                              flat.square().sum(0))
        # s(w, I_c, I_n) and s(w, I_n, I_co) of Eq. 7.1, by hand: taps 4 | 1, 3, 5, 7 | 0, 2, 6, 8
        centre, edge, corner = flat[:, 4], flat[:, [1, 3, 5, 7]].mean(1), flat[:, [0, 2, 6, 8]].mean(1)
        s_cn, s_nco = centre - edge, edge - corner
        assert st["ring_diff_sum"] == pytest.approx([float(s_cn.sum()), float(s_nco.sum())])
        assert st["ring_diff_sq_sum"] == pytest.approx([float((s_cn**2).sum()), float((s_nco**2).sum())])


@pytest.mark.parametrize("network", ["vgg13", "mobilenet", "resnet18"])
def test_memory_format_avoids_the_cpu_channels_last_crash(network):
    """channels_last everywhere except ResNet18 (strided 1x1 shortcuts) on the CPU, whose
    backward crashes torch there (T.CPU_CHANNELS_LAST_CRASH)."""
    cfg = RunConfig(regularizer="l2", seed=0, **{**TINY, "network": network})
    run = T._Run(cfg, torch.device("cpu"), download=False)
    on_cpu = torch.contiguous_format if network == "resnet18" else torch.channels_last
    assert run.memory_format == on_cpu
    assert run.x_test.is_contiguous(memory_format=on_cpu)
    assert T.memory_format(torch.device("cuda"), run.model) == torch.channels_last
    assert T.memory_format(torch.device("cuda"), run.model, channels_last=False) == torch.contiguous_format


def _flushing_denormals() -> bool:
    return float(torch.tensor([1e-40]) * 1.0) == 0.0


@pytest.mark.parametrize("before", [False, True])
def test_training_restores_the_callers_denormal_mode(dirs, before):
    """The CPU run flushes denormals while it trains, then gives the process its mode back
    (left on, it silently turned numpy's tiny floats into zeros in unrelated code)."""
    results, ck = dirs
    seen = []
    torch.set_flush_denormal(before)
    try:
        train(RunConfig(regularizer="l2", seed=0, **{**TINY, "epochs": 1}), results_dir=results,
              checkpoint_dir=ck, progress=False, device="cpu",
              hook=lambda *_: seen.append(_flushing_denormals()))
        assert seen and all(seen), "denormals were not flushed during training"
        assert _flushing_denormals() is before
    finally:
        torch.set_flush_denormal(False)


def test_finished_run_is_not_redone(dirs, monkeypatch):
    results, ck = dirs
    cfg = RunConfig(**{**TINY, "epochs": 1}, regularizer="l2", seed=0)
    calls = []
    first = train(cfg, results_dir=results, checkpoint_dir=ck, progress=False,
                  hook=lambda *a: calls.append(a))
    assert len(calls) == 3 + 1 + 1  # 3 steps, 1 epoch, 1 checkpoint

    def boom(*a, **k):
        raise AssertionError("a finished run was set up for training again")

    monkeypatch.setattr(T, "_Run", boom)
    calls.clear()
    again = train(cfg, results_dir=results, checkpoint_dir=ck, progress=False,
                  hook=lambda *a: calls.append(a))
    assert calls == [] and again == first


def _run_interrupted(cfg, results, ck, at: tuple[str, int, int]):
    """Train until the hook sees event/epoch/step ``at``, then raise KeyboardInterrupt."""
    def hook(event, epoch, step):
        if (event, epoch, step) == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, results_dir=results, checkpoint_dir=ck, progress=False, hook=hook)


@pytest.mark.parametrize("at, done_epochs", [(("batch", 1, 1), 1), (("checkpoint", 1, -1), 2)],
                         ids=["mid-epoch-2", "right-after-checkpoint-2"])
@pytest.mark.slow
def test_interrupted_run_resumes_exactly(tmp_path, at, done_epochs):
    cfg = RunConfig(**TINY, regularizer="loco", seed=5, gamma=0.6, eta=1.5)
    a = train(cfg, results_dir=tmp_path / "A", checkpoint_dir=tmp_path / "A" / "ck",
              progress=False, model_dir=tmp_path / "A" / "m")

    res, ck = tmp_path / "B", tmp_path / "B" / "ck"
    _run_interrupted(cfg, res, ck, at)
    assert not result_path(cfg, res).exists()
    state = torch.load(checkpoint_path(cfg, ck), weights_only=True)
    assert state["epoch"] == done_epochs
    assert not list(ck.glob("*.lock")), "the lock must be released on interrupt"
    assert not list(ck.glob("*.tmp")), "no partial files may be left"
    b = train(cfg, results_dir=res, checkpoint_dir=ck, progress=False, model_dir=res / "m")

    assert b["timing"]["segments"] == 2
    assert _metrics(a) == _metrics(b)
    _assert_bitwise(_weights(tmp_path / "A" / "m" / f"{cfg.key}.pt"),
                    _weights(res / "m" / f"{cfg.key}.pt"))


@pytest.mark.slow
def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY, regularizer="l2", seed=2)
    ref = train(cfg, results_dir=tmp_path / "A", checkpoint_dir=tmp_path / "A" / "ck",
                progress=False, model_dir=tmp_path / "A" / "m")
    res, ck = tmp_path / "B", tmp_path / "B" / "ck"
    ckpt = checkpoint_path(cfg, ck)

    # Interrupt the second checkpoint write just before its rename.
    real_replace, n = os.replace, []

    def replace(src, dst):
        if str(dst) == str(ckpt):
            n.append(1)
            if len(n) == 2:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(locolib.io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, results_dir=res, checkpoint_dir=ck, progress=False)
    monkeypatch.setattr(locolib.io.os, "replace", real_replace)
    assert [p.name for p in ck.iterdir()] == [ckpt.name], "a partial file was left behind"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the previous checkpoint is intact

    # A stray partial temporary file (e.g. from a kill -9 mid-write) is ignored.
    (ck / f".{ckpt.name}.abc123.tmp").write_bytes(b"PK\x03\x04 truncated")
    b = train(cfg, results_dir=res, checkpoint_dir=ck, progress=False, model_dir=res / "m")
    assert _metrics(b) == _metrics(ref) and b["timing"]["segments"] == 2
    _assert_bitwise(_weights(tmp_path / "A" / "m" / f"{cfg.key}.pt"), _weights(res / "m" / f"{cfg.key}.pt"))


def test_unreadable_checkpoint_means_start_over(tmp_path):
    cfg = RunConfig(**{**TINY, "epochs": 2}, regularizer="l2", seed=3)
    ref = train(cfg, results_dir=tmp_path / "A", checkpoint_dir=tmp_path / "A" / "ck", progress=False)
    ck = tmp_path / "B" / "ck"
    ck.mkdir(parents=True)
    checkpoint_path(cfg, ck).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        b = train(cfg, results_dir=tmp_path / "B", checkpoint_dir=ck, progress=False)
    assert _metrics(b) == _metrics(ref) and b["timing"]["segments"] == 1


# --- locks -------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_blocks_a_second_owner_and_takes_over_stale_locks(tmp_path):
    import socket

    path = tmp_path / "run.lock"
    with RunLock(path) as first:
        assert path.exists()
        with pytest.raises(RunLocked, match="held by pid"):
            RunLock(path).acquire()
    assert not path.exists()

    # The owner died on this host: taken over at once.
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "x"}))
    lock = RunLock(path)
    lock.acquire()
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()

    # Another host, recent heartbeat: respected; heartbeat older than stale_after: taken over.
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    with pytest.raises(RunLocked):
        RunLock(path, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = RunLock(path, stale_after=60)
    lock.acquire()
    assert not list(tmp_path.glob("*.stale-*")), "the stale lock is cleaned up"

    # If someone takes the lock over, the former owner notices at its next heartbeat.
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "z"}))
    with pytest.raises(RunLocked, match="lost"):
        lock.heartbeat(force=True)
    assert first.held is False


def test_a_live_process_on_this_host_is_never_judged_stale(tmp_path):
    import socket

    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t"}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    with pytest.raises(RunLocked, match="held by pid"):
        RunLock(path, stale_after=60).acquire()


def test_the_heartbeat_comes_four_times_per_stale_after(tmp_path):
    lock = RunLock(tmp_path / "x.lock", stale_after=0.4)
    with lock:
        old = time.time() - 10
        os.utime(lock.path, (old, old))
        time.sleep(0.15)  # more than a quarter of stale_after
        lock.heartbeat()
        assert time.time() - lock.path.stat().st_mtime < 1, "the heartbeat was not refreshed"


def test_train_refuses_a_run_that_is_locked(dirs):
    results, ck = dirs
    cfg = RunConfig(**{**TINY, "epochs": 1}, regularizer="l2", seed=4)
    with RunLock(ck / f"{cfg.key}.lock"):
        with pytest.raises(RunLocked):
            train(cfg, results_dir=results, checkpoint_dir=ck, progress=False)
        assert T.run_status(cfg, results, ck) == "running"
    assert T.run_status(cfg, results, ck) == "todo"


def test_a_registered_regularizer_is_one_entry(monkeypatch, tmp_path):
    from locolib import reg

    class NoDecay:
        def __init__(self, model, config):
            self.model = model

        def apply_(self):
            pass

        def penalty(self):
            return torch.zeros(())

    monkeypatch.setitem(reg.REGULARIZER_REGISTRY, "none", reg.RegularizerSpec(NoDecay, "no regularization"))
    cfg = RunConfig(**{**TINY, "epochs": 1}, regularizer="none", seed=0)
    rec = train(cfg, results_dir=tmp_path, progress=False)
    assert rec["config"]["regularizer"] == "none" and rec["history"][0]["penalty"] == 0.0
    l2 = train(cfg.replace(regularizer="l2"), results_dir=tmp_path, progress=False)
    assert l2["history"][0]["penalty"] > 0
    with pytest.raises(ValueError, match="unknown regularizer 'l1'.*register one"):
        RunConfig("digits", "vgg13", "l1", 0)


# --- the GPU path's settings, checked on the CPU ----------------------------------------------


@pytest.mark.parametrize("capability, dtype", [
    ((7, 5), torch.float16),   # T4 (Colab)
    ((7, 0), torch.float16),   # V100
    ((6, 1), torch.float16),   # GTX 1080
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4, RTX 4090
    ((9, 0), torch.bfloat16),  # H100, H200
])
def test_autocast_dtype_follows_the_compute_capability(capability, dtype, monkeypatch):
    assert T.autocast_dtype(capability) == dtype
    monkeypatch.setattr(T.torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda", 0)
    cfg = RunConfig(regularizer="l2", seed=0, **TINY)
    assert T.training_dtype(cfg, cuda) == dtype
    assert T.training_dtype(cfg.replace(amp=False), cuda) is None
    assert T.training_dtype(cfg, torch.device("cpu")) is None
    assert T.training_dtype(cfg.replace(amp_cpu=True), torch.device("cpu")) == torch.bfloat16


def test_sgd_is_fused_on_cuda_and_the_cpu_step_is_the_plain_one():
    """On the CPU: no autocast, no scaler, torch's default (unfused) SGD, no compile."""
    cfg = RunConfig(regularizer="l2", seed=0, **TINY)
    run = T._Run(cfg, torch.device("cpu"), download=False)
    assert run.step.dtype is None and run.step.scaler is None
    assert run.opt.defaults["fused"] is None and run.step.forward is run.model
    on_cuda = T.TrainStep(run.model, run.decay, torch.device("cuda"), 0.1, 0.9)
    assert on_cuda.opt.defaults["fused"] is True


def _float16_on_the_cpu(monkeypatch):
    """Train as on a GPU below compute capability 8.0 (float16 with a gradient scaler), but
    compute in float32: the CPU's float16 convolutions are too slow for a test."""
    monkeypatch.setattr(T, "training_dtype", lambda config, device: torch.float16)
    monkeypatch.setattr(T.TrainStep, "autocast", lambda self: T.nullcontext())


@pytest.mark.slow
def test_the_gradient_scaler_path_trains_records_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY, regularizer="loco", seed=5, gamma=0.6, eta=1.5)
    plain = train(cfg, results_dir=tmp_path / "P", progress=False, model_dir=tmp_path / "P" / "m")
    _float16_on_the_cpu(monkeypatch)
    a = train(cfg, results_dir=tmp_path / "A", progress=False, model_dir=tmp_path / "A" / "m")
    assert a["precision"] == {"autocast": "float16", "grad_scaler": True, "fused_sgd": False,
                              "compute_capability": None}
    assert plain["precision"]["autocast"] is None and not plain["precision"]["grad_scaler"]
    # The decay is added to unscaled gradients: the scaled run trains like the plain one (not
    # bitwise: the scaled gradients round and flush denormals differently).
    wp, wa = _weights(tmp_path / "P" / "m" / f"{cfg.key}.pt"), _weights(tmp_path / "A" / "m" / f"{cfg.key}.pt")
    for k in wp:
        assert torch.allclose(wp[k].float(), wa[k].float(), rtol=1e-3, atol=1e-5), k

    res, ck = tmp_path / "B", tmp_path / "B" / "ck"
    _run_interrupted(cfg, res, ck, ("batch", 2, 0))
    assert "scaler" in torch.load(checkpoint_path(cfg, ck), weights_only=True)
    b = train(cfg, results_dir=res, checkpoint_dir=ck, progress=False, model_dir=res / "m")
    assert b["timing"]["segments"] == 2 and _metrics(a) == _metrics(b)
    _assert_bitwise(wa, _weights(res / "m" / f"{cfg.key}.pt"))


class _FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
def test_checkpoints_follow_elapsed_time_and_resume_exactly(tmp_path, monkeypatch):
    """checkpoint_every = 50 s with 30 s per epoch: checkpoints after epochs 2 and 4, and after
    the last (5); a run interrupted in epoch 4 resumes from epoch 2 and ends bitwise equal."""
    clock = _FakeClock()
    monkeypatch.setattr(T, "_clock", clock)
    cfg = RunConfig(**{**TINY, "epochs": 5, "checkpoint_every": 50}, regularizer="l2", seed=1)
    written = []

    def hook(event, epoch, step):
        if event == "batch":
            clock.now += 10.0  # three steps: 30 s per epoch
        elif event == "checkpoint":
            written.append(epoch + 1)

    a = train(cfg, results_dir=tmp_path / "A", progress=False, hook=hook,
              model_dir=tmp_path / "A" / "m")
    assert written == [2, 4, 5]
    t = a["timing"]
    assert t["train_s"] == t["wall_s"] == 150.0 and t["checkpoint_s"] == 0.0

    res, ck = tmp_path / "B", tmp_path / "B" / "ck"
    written.clear()

    def stop_in_epoch_4(event, epoch, step):
        hook(event, epoch, step)
        if (event, epoch, step) == ("batch", 3, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, results_dir=res, checkpoint_dir=ck, progress=False, hook=stop_in_epoch_4)
    assert written == [2] and torch.load(checkpoint_path(cfg, ck), weights_only=True)["epoch"] == 2
    b = train(cfg, results_dir=res, checkpoint_dir=ck, progress=False, hook=hook, model_dir=res / "m")
    assert b["timing"]["segments"] == 2 and _metrics(a) == _metrics(b)
    # The second segment's 90 s, on top of the first's 60 s up to its last checkpoint.
    assert b["timing"]["wall_s"] == 150.0
    _assert_bitwise(_weights(tmp_path / "A" / "m" / f"{cfg.key}.pt"), _weights(res / "m" / f"{cfg.key}.pt"))


def test_the_record_times_evaluation_and_checkpoints_apart(dirs):
    results, ck = dirs
    rec = train(RunConfig(regularizer="l2", seed=0, **TINY), results_dir=results,
                checkpoint_dir=ck, progress=False)
    t = rec["timing"]
    assert t["checkpoint_s"] > 0 and t["eval_s"] > 0 and t["compile_s"] == 0
    assert t["total_s"] == pytest.approx(t["train_s"] + t["eval_s"])
    assert t["wall_s"] > t["total_s"] + t["checkpoint_s"]
    assert t["images_per_wall_s"] == pytest.approx(192 * 3 / t["wall_s"])
    assert t["images_per_wall_s"] < t["images_per_s"]


@pytest.mark.slow
def test_compiled_training_builds_static_graphs_in_the_first_epoch_only(tmp_path, monkeypatch):
    """200 images in batches of 64: three full batches and a partial one of 8. The graphs of
    training (64 and 8) and of the test-set evaluation are built in epoch 1, none in epochs 2
    and 3 (after them, the evaluation on the 200 training images builds one for its batch
    size); none has a symbolic shape, and the metrics are those of the uncompiled run."""
    graphs: list[tuple[int, bool]] = []  # (epochs finished when built, has a symbolic size)
    done = [0]

    def backend(gm, example_inputs):
        graphs.append((done[0], any(isinstance(a, (int, torch.SymInt)) for a in example_inputs)))
        return gm.forward

    real = T.compile_model
    monkeypatch.setattr(T, "compile_model", lambda model: real(model, backend=backend))
    cfg = RunConfig(**{**TINY, "train_subset": 200, "epochs": 3}, regularizer="l2", seed=0)

    def hook(event, epoch, step):
        if event == "epoch":
            done[0] = epoch + 1

    torch._dynamo.reset()
    try:
        compiled = train(cfg.replace(compile=True), results_dir=tmp_path / "C", progress=False,
                         hook=hook)
    finally:
        torch._dynamo.reset()
    plain = train(cfg, results_dir=tmp_path / "P", progress=False)
    built = [epoch for epoch, _ in graphs]
    assert built.count(0) >= 3 and built[-1] == 3 and built.count(3) == 1, graphs
    assert not [e for e in built if 0 < e < 3], "a graph was built after the first epoch"
    assert not any(symbolic for _, symbolic in graphs), "a graph with dynamic shapes"
    assert compiled["timing"]["compile_s"] > 0
    for a, b in zip(_metrics(compiled), _metrics(plain), strict=True):
        assert a == pytest.approx(b)


#: The last commit before the GPU path: CPU training must still give its numbers (records of
#: running sweeps were made with it). Moves only when TRAINING_VERSION is raised on purpose.
CPU_BASELINE = ("356b10f", 2)
_BASELINE_RUNS = [
    # channels_last, a partial last batch (200 = 3 x 64 + 8), evaluation every other epoch
    dict(dataset="digits", network="vgg13", regularizer="loco", seed=3, gamma=0.6, eta=1.5,
         width=0.125, train_subset=200, batch_size=64, epochs=3, eval_every=2),
    # the contiguous format (ResNet18 on the CPU)
    dict(dataset="digits", network="resnet18", regularizer="l2", seed=1, width=0.0625,
         train_subset=200, batch_size=64, epochs=2),
]
_TRAIN_BEFORE = """
import json, sys
import torch
from locolib.train import RunConfig, train
torch.set_num_threads(1)
out, runs, stop = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:] == ["stop"]

def hook(event, epoch, step):
    if stop and event == "checkpoint":
        raise KeyboardInterrupt

for d in runs:
    try:
        train(RunConfig(**d), results_dir=out, progress=False, device="cpu", model_dir=out,
              hook=hook)
    except KeyboardInterrupt:
        pass
"""


@pytest.fixture
def train_before(tmp_path):
    """Train runs (dicts of RunConfig fields) with the code of :data:`CPU_BASELINE` in a
    subprocess, into a folder; with ``stop``, interrupt each after its first checkpoint."""
    commit, version = CPU_BASELINE
    if config.TRAINING_VERSION != version:
        pytest.skip(f"TRAINING_VERSION is {config.TRAINING_VERSION}, not {version}: training "
                    "changed on purpose; move CPU_BASELINE")
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit, "locolib"],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this checkout's history")
    old = tmp_path / "old"
    old.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old, filter="data")
    env = {**os.environ, "PYTHONPATH": str(old), "OMP_NUM_THREADS": "1"}

    def run(runs: list[dict], out: Path, stop: bool = False) -> None:
        subprocess.run([sys.executable, "-c", _TRAIN_BEFORE, str(out), json.dumps(runs),
                        *(["stop"] if stop else [])], env=env, check=True, cwd=tmp_path)
    return run


def _assert_same_run(cfg: RunConfig, now: dict, folder_now: Path, folder_before: Path) -> None:
    before = json.loads(result_path(cfg, folder_before).read_text())
    assert _metrics(now) == _metrics(before) and now["final"] == before["final"]
    # The code of CPU_BASELINE kept no tap_sq_sum; every statistic both keep is equal.
    common = [[{k: v for k, v in e.items() if k != "tap_sq_sum"} for e in r["weight_stats"]]
              for r in (now, before)]
    assert common[0] == common[1]
    _assert_bitwise(_weights(folder_now / f"{cfg.key}.pt"), _weights(folder_before / f"{cfg.key}.pt"))


@pytest.mark.slow
def test_cpu_training_equals_the_code_before_the_gpu_path(tmp_path, train_before):
    train_before(_BASELINE_RUNS, tmp_path / "before")
    for d in _BASELINE_RUNS:
        cfg = RunConfig(**d)
        now = train(cfg, results_dir=tmp_path / "now", progress=False, device="cpu",
                    model_dir=tmp_path / "now")
        _assert_same_run(cfg, now, tmp_path / "now", tmp_path / "before")


@pytest.mark.slow
def test_a_checkpoint_of_the_code_before_the_gpu_path_is_set_aside(tmp_path, train_before):
    """A run interrupted by the earlier code (its checkpoint of an earlier format) starts over
    in this one, with a warning naming the checkpoint, and ends as an uninterrupted run."""
    d = _BASELINE_RUNS[0]
    cfg = RunConfig(**d, checkpoint_every=0)  # the earlier code checkpoints every epoch
    train(cfg, results_dir=tmp_path / "ref", progress=False, device="cpu", model_dir=tmp_path / "ref")
    train_before([d], tmp_path / "old-to-new", stop=True)
    ck = checkpoint_path(cfg, tmp_path / "old-to-new" / "checkpoints")
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    with pytest.warns(RunFileWarning, match=re.escape(f"{ck}: not a checkpoint of this code")):
        again = train(cfg, results_dir=tmp_path / "old-to-new", progress=False, device="cpu",
                      model_dir=tmp_path / "old-to-new")
    assert again["timing"]["segments"] == 1
    _assert_same_run(cfg, again, tmp_path / "old-to-new", tmp_path / "ref")
    assert len(list(ck.parent.glob(f"{ck.name}.invalid-*"))) == 1


@pytest.mark.slow
def test_runs_in_threads_of_one_process_give_the_serial_records(tmp_path):
    """As on a Dask worker whose threads share a GPU: each run gets its own seed's weights."""
    configs = [RunConfig(**{**TINY, "epochs": 1}, regularizer="l2", seed=s) for s in (0, 1, 2)]
    serial = [train(c, results_dir=tmp_path / "serial", progress=False) for c in configs]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda c: train(c, results_dir=tmp_path / "threads",
                                                 progress=False), configs))
    assert [_metrics(r) for r in threaded] == [_metrics(r) for r in serial]
    assert [r["weight_stats"] for r in threaded] == [r["weight_stats"] for r in serial]


def test_a_validation_set_is_carved_from_the_held_out_images(tmp_path):
    cfg = RunConfig(**{**TINY, "epochs": 2}, regularizer="l2", seed=0, validation=250)
    assert cfg.key != cfg.replace(validation=0).key
    rec = train(cfg, results_dir=tmp_path, progress=False)
    assert rec["n_test"] == 250 and rec["n_validation"] == 250
    assert all(0 <= h["val_error"] <= 1 for h in rec["history"])
    assert rec["final"]["val_error"] == rec["history"][-1]["val_error"]
    assert rec["final"]["val_error"] == pytest.approx(1 - rec["final"]["val_acc"])
    plain = train(cfg.replace(validation=0), results_dir=tmp_path, progress=False)
    assert plain["n_test"] == 500 and "val_error" not in plain["final"]
    # The same network on test + validation images: their errors average to the full test error.
    assert (rec["final"]["test_error"] + rec["final"]["val_error"]) / 2 == pytest.approx(
        plain["final"]["test_error"])
