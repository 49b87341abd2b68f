"""Sweeps: plans, shards, the command line, concurrent workers, results tables, Table 5 statistics."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import locolib.train as T
from locolib.config import RunConfig
from locolib.kernels import stars as significance_stars
from locolib.results import RunFileWarning, RunLock, load_results, result_path, results_frame
from locolib.stats import compare
from locolib.sweep import (
    main,
    parse_seeds,
    parse_shard,
    plan,
    run_sweep,
    shard,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(width=0.125, train_subset=64, batch_size=32, epochs=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "scratch_results")


# --- plans and shards --------------------------------------------------------------------------


def test_plan_order_and_arms():
    p = plan(["digits", "cifar10"], ["vgg13", "resnet18"], ["l2", "loco"], range(3),
             gamma=0.8, eta=1.25, epochs=25)
    assert len(p) == 2 * 2 * 2 * 3 == len({c.key for c in p})
    # seed-major: all 8 cells of seed 0 first
    assert [c.seed for c in p] == [0] * 8 + [1] * 8 + [2] * 8
    assert [(c.dataset, c.network, c.regularizer) for c in p[:4]] == [
        ("digits", "vgg13", "l2"), ("digits", "vgg13", "loco"),
        ("digits", "resnet18", "l2"), ("digits", "resnet18", "loco")]
    # gamma/eta go to the LOCO-REG arm only; everything else to both
    assert all((c.gamma, c.eta) == ((1.0, 1.0) if c.regularizer == "l2" else (0.8, 1.25)) for c in p)
    assert all(c.epochs == 25 for c in p)
    assert plan(["digits"], ["vgg13"], ["l2", "l2"], [1, 1]) == [RunConfig("digits", "vgg13", "l2", 1)]
    lp = {"digits/vgg13": {"gamma": [0.5] * 10, "eta": 2.0}}
    (loco,) = plan(["digits"], ["vgg13"], ["loco"], [0], loco_params=lp)
    assert loco.gamma == (0.5,) * 10 and loco.eta == 2.0
    with pytest.raises(ValueError, match="no entry for digits/resnet18"):
        plan(["digits"], ["resnet18"], ["loco"], [0], loco_params=lp)
    with pytest.raises(ValueError, match="unknown dataset"):
        plan(["imagenet"], ["vgg13"], ["l2"], [0])
    with pytest.raises(ValueError, match="unknown network"):
        plan(["digits"], ["vgg16"], ["l2"], [0])


@pytest.mark.parametrize("size", [0, 1, 5, 36])
def test_shards_are_disjoint_covering_and_balanced(size):
    configs = plan(["digits", "cifar10", "cifar100"], ["vgg13", "resnet18", "mobilenet"],
                   ["l2", "loco"], range(2), gamma=0.9)[:size]
    for n in range(1, 8):
        parts = [shard(configs, i, n) for i in range(1, n + 1)]
        keys = [c.key for part in parts for c in part]
        assert sorted(keys) == sorted(c.key for c in configs), f"n={n}: not disjoint and covering"
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [shard(configs, i, n) for i in range(1, n + 1)], "not stable"


def test_shard_and_seed_parsing_errors():
    assert parse_shard("2/3") == (2, 3) and parse_shard("1/1") == (1, 1)
    for bad in ["3/2", "0/2", "1/0", "a/b", "1", "1/2/3", "-1/2"]:
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert parse_seeds("0-19") == list(range(20))
    assert parse_seeds("0,2,5-7,2") == [0, 2, 5, 6, 7]
    for bad in ["5-2", "x", "", "1-", "-3"]:
        with pytest.raises(ValueError):
            parse_seeds(bad)


@pytest.mark.parametrize("argv, message", [
    (["--shard", "3/2"], "shard 3/2"),
    (["--shard", "x"], "--shard"),
    (["--seeds", "5-2"], "bad seeds"),
    (["--datasets", "imagenet", "--regularizers", "l2"], "unknown dataset"),
    (["--networks", "vgg16", "--regularizers", "l2"], "unknown network"),
    (["--regularizers", "l1"], "unknown regularizer"),
    (["--epochs", "0"], "--epochs"),
    (["--gamma", "-1"], "--gamma"),
    (["--datasets", "imagenet"], "unknown dataset"),
])
def test_cli_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: locolib-sweep" in err


# --- running -----------------------------------------------------------------------------------


def test_dry_run_lists_plan_and_status(tmp_path, capsys):
    res, ck = tmp_path / "res", tmp_path / "res" / "checkpoints"
    args = ["--datasets", "digits", "--networks", "vgg13", "--regularizers", "l2,loco",
            "--seeds", "0-1", "--gamma", "0.8", "--eta", "1.25", "--epochs", "2",
            "--width", "0.125", "--train-subset", "64", "--batch-size", "32", "--results", str(res)]
    configs = plan(["digits"], ["vgg13"], ["l2", "loco"], [0, 1], gamma=0.8, eta=1.25, epochs=2,
                   width=0.125, train_subset=64, batch_size=32, checkpoint_every=0)
    T.train(configs[0], results_dir=res, progress=False)  # done

    def stop(event, epoch, step):
        if event == "checkpoint":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # partial: 1 of 2 epochs
        T.train(configs[1], results_dir=res, progress=False, hook=stop)
    capsys.readouterr()
    with RunLock(ck / f"{configs[2].key}.lock"):  # running
        assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[-1]: line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert lines == {configs[0].key: "done", configs[1].key: "partial", configs[2].key: "running",
                     configs[3].key: "todo"}
    assert "(1/2 epochs)" in out and "plan: 4 runs" in out
    assert "status: 1 done, 1 running, 1 partial, 1 todo" in out
    assert main(args + ["--dry-run", "--shard", "2/2"]) == 0
    out = capsys.readouterr().out
    assert "plan: 2 runs (shard 2/2 of 4 runs);" in out
    assert configs[1].key in out and configs[3].key in out and configs[0].key not in out
    assert len(list(res.glob("*.json"))) == 1, "a dry run must not train"


def test_run_sweep_skips_finished_and_locked_runs(tmp_path, monkeypatch):
    res = tmp_path / "res"
    configs = plan(["digits"], ["vgg13", "mobilenet"], ["l2"], [0], **TINY)
    first = run_sweep(configs[:1], results_dir=res, progress=False, log=None)
    assert len(first) == 1 and result_path(configs[0], res).exists()

    built = []
    real = T._Run
    monkeypatch.setattr(T, "_Run", lambda cfg, *a: built.append(cfg.key) or real(cfg, *a))
    lines: list[str] = []
    with RunLock(res / "checkpoints" / f"{configs[1].key}.lock"):
        recs = run_sweep(configs, results_dir=res, progress=False, log=lines.append)
    assert built == [] and [r["key"] for r in recs] == [configs[0].key]
    assert "already done" in lines[0] and "skipped" in lines[1] and "held by pid" in lines[1]
    recs = run_sweep(configs, results_dir=res, progress=False, log=lines.append)
    assert built == [configs[1].key] and [r["key"] for r in recs] == [c.key for c in configs]
    assert recs[0] == first[0]


def test_run_sweep_waits_for_runs_of_dead_workers(tmp_path):
    """wait=True: a run locked by a worker that stopped sending heartbeats is taken over."""
    import json

    res = tmp_path / "res"
    (cfg,) = plan(["digits"], ["vgg13"], ["l2"], [7], **TINY)
    lock = res / "checkpoints" / f"{cfg.key}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-machine", "pid": 1, "token": "t"}))
    lines: list[str] = []
    assert run_sweep([cfg], results_dir=res, progress=False, stale_after=0.5, log=lines.append) == []
    recs = run_sweep([cfg], results_dir=res, progress=False, stale_after=0.5, wait=True,
                     poll_s=0.2, log=lines.append)
    assert [r["key"] for r in recs] == [cfg.key] and "skipped" in lines[0] and "trained" in lines[-1]


@pytest.mark.slow
def test_two_processes_share_one_sweep(tmp_path):
    """Two workers started together on the same plan and folder train every run exactly once."""
    res = tmp_path / "res"
    args = [sys.executable, "-m", "locolib.sweep", "--datasets", "digits", "--networks", "vgg13",
            "--regularizers", "l2", "--seeds", "0-5", "--epochs", "1", "--width", "0.125",
            "--train-subset", "64", "--batch-size", "32", "--results", str(res), "--quiet",
            "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode in (0, 3), err
    trained = Counter(line.split()[1].rstrip(":") for out, _ in outs for line in out.splitlines()
                      if ": trained" in line)
    keys = {c.key for c in plan(["digits"], ["vgg13"], ["l2"], range(6), **TINY)}
    assert set(trained) == keys and set(trained.values()) == {1}, trained
    assert {p.stem for p in res.glob("*.json")} == keys
    assert not list((res / "checkpoints").iterdir()), "locks and checkpoints are cleaned up"
    df = load_results(res)
    assert len(df) == 6 and df.test_error.between(0, 1).all()


# --- results and statistics --------------------------------------------------------------------


def test_load_results_table_and_filters(tmp_path):
    res = tmp_path / "res"
    configs = plan(["digits"], ["vgg13"], ["l2", "loco"], [0, 1], gamma=0.7, **TINY)
    recs = run_sweep(configs, results_dir=res, progress=False, log=None)
    (res / "notes.json").write_text('{"not": "a record"}')
    with pytest.warns(RunFileWarning, match="notes.json"):
        df = load_results(res)
    assert len(df) == 4 and set(df.key) == {c.key for c in configs}  # notes.json is skipped
    (res / "notes.json").unlink()
    byk = {r["key"]: r for r in recs}
    for row in df.itertuples():
        assert row.test_error == byk[row.key]["final"]["test_error"]
        assert row.torch == torch.__version__ and row.device
    assert set(load_results(res, regularizer="loco").gamma) == {0.7}
    assert len(load_results(res, seed=[1], regularizer="l2")) == 1
    assert len(load_results(res, epochs=250)) == 0
    with pytest.raises(ValueError, match="cannot filter"):
        load_results(res, colour="red")
    # The records run_sweep returns give the same table (without file paths).
    pd.testing.assert_frame_equal(results_frame(recs).drop(columns="path"), df.drop(columns="path"))


def _synthetic(rng, cells):
    rows = []
    for (ds, net, n_l2, n_loco, m_l2, m_loco) in cells:
        for reg, n, m in (("l2", n_l2, m_l2), ("loco", n_loco, m_loco)):
            for s in range(n):
                rows.append({"dataset": ds, "network": net, "regularizer": reg, "seed": s,
                             "epochs": 250, "width": 1.0, "test_error": m + 0.004 * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_compare_matches_a_hand_computed_welch_test():
    rng = np.random.default_rng(0)
    df = _synthetic(rng, [("cifar10", "vgg13", 20, 20, 0.0626, 0.0613),
                          ("cifar100", "resnet18", 12, 9, 0.2561, 0.2515)])
    out = compare(df).set_index(["dataset", "network"])
    for (ds, net), row in out.iterrows():
        g = df[(df.dataset == ds) & (df.network == net)]
        a = 100 * g[g.regularizer == "loco"].test_error.to_numpy()
        b = 100 * g[g.regularizer == "l2"].test_error.to_numpy()
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = np.sqrt(va + vb)
        t = (a.mean() - b.mean()) / se
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
        q = stats.t.ppf(0.975, dof)
        assert (row.n_loco, row.n_l2) == (len(a), len(b))
        assert row.difference == pytest.approx(a.mean() - b.mean())
        assert row.l2_mean == pytest.approx(b.mean()) and row.loco_mean == pytest.approx(a.mean())
        assert row.t == pytest.approx(t) and row.dof == pytest.approx(dof)
        assert row.p_two_sided == pytest.approx(2 * stats.t.sf(abs(t), dof))
        assert row.p_one_sided == pytest.approx(stats.t.cdf(t, dof))
        assert (row.ci_low, row.ci_high) == pytest.approx((row.difference - q * se, row.difference + q * se))
        assert row.stars == significance_stars(row.p_one_sided)
    # fractions instead of percent
    frac = compare(df, percent=False).set_index(["dataset", "network"])
    assert frac.difference.to_numpy() == pytest.approx(out.difference.to_numpy() / 100)
    assert frac.p_two_sided.to_numpy() == pytest.approx(out.p_two_sided.to_numpy())


def test_compare_edge_cases():
    rng = np.random.default_rng(1)
    df = _synthetic(rng, [("digits", "vgg13", 1, 3, 0.1, 0.1)])
    row = compare(df).iloc[0]
    assert row.n_l2 == 1 and np.isnan(row.p_two_sided) and row.stars == ""
    mixed = _synthetic(rng, [("digits", "vgg13", 3, 3, 0.1, 0.1)])
    mixed.loc[0, "epochs"] = 25
    with pytest.raises(ValueError, match="differ in 'epochs'"):
        compare(mixed)
    assert [significance_stars(p) for p in (0.0005, 0.005, 0.05, 0.2, float("nan"))] == \
        ["***", "**", "*", "", ""]


def test_a_diverged_run_does_not_stop_the_others(tmp_path, monkeypatch):
    """A run whose losses are not finite writes no record; the sweep trains the other runs and
    then names the diverged one."""
    configs = plan(["digits"], ["vgg13"], ["l2"], [0, 1], **TINY)
    real = T._Run.evaluate

    def diverges_for_seed_0(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.config.seed == 0:
            out = {k: float("nan") if k.endswith("loss") else v for k, v in out.items()}
        return out

    monkeypatch.setattr(T._Run, "evaluate", diverges_for_seed_0)
    with pytest.raises(T.RunDiverged, match=f"1 of 2 runs diverged .*{configs[0].key}"):
        run_sweep(configs, results_dir=tmp_path, progress=False, log=None)
    assert not result_path(configs[0], tmp_path).exists()
    assert result_path(configs[1], tmp_path).exists()


def test_the_command_line_reads_a_field_as_its_metadata_says():
    from locolib.config import field_info
    from locolib.sweep import _option_type

    assert field_info("train_subset")["parse"] is int  # its default, None, names no type
    assert _option_type("train_subset")("100") == 100
    assert _option_type("gamma")("0.5,2") == (0.5, 2.0) and _option_type("eta")("2") == 2.0
    assert _option_type("lam")("0.01") == 0.01 and _option_type("amp")("no") is False
    with pytest.raises(argparse.ArgumentTypeError, match="train_subset must lie in"):
        _option_type("train_subset")("0")
