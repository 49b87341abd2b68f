"""The device check's smoke mode: every part runs on a CPU, and part E says which CPU records
it found and which are missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from locolib.plans import study
from locolib.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_gpu_check_smoke(tmp_path):
    s = study("smoke")
    (cell,) = s.arm("l2/vgg13").configs(s.dataset, s.protocol)[:1]
    train(cell, results_dir=tmp_path / "cpu", progress=False, device="cpu")  # one CPU record
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                    "--device", "cpu", "--out", str(out), "--records", str(tmp_path / "cpu"),
                    "--budget", "1000"], check=True, env=env, cwd=tmp_path, timeout=900)
    r = json.loads(out.read_text())
    assert r["meta"]["smoke"] and r["meta"]["device"] == "cpu"
    parts = r["parts"]
    assert set(parts) == set("ABCDE")
    assert not [k for k, v in parts.items() if "error" in v or "skipped" in v], parts
    a = parts["A"]
    for net in ("resnet18", "vgg13", "mobilenet"):
        for reg in ("l2", "loco"):
            x = a[f"{net}/{reg}"]
            assert x["images_per_s"] > 0 and 0 < x["eval_share"] < 1
            assert 0 < x["checkpoint_share_every_epoch"] < 1
    assert a["loco_vs_l2_step"]["step_ratio"]["loco"]["rounds"] >= 10
    assert parts["B"]["no_graph_after_first_epoch"] and parts["B"]["compile_s"] > 0
    assert parts["C"]["training"]["speedup"]["median"] > 0
    assert set(parts["D"]) == {"1", "2"}
    e = parts["E"]
    assert e["l2/vgg13"]["n_cpu"] == 1 and e["l2/vgg13"]["missing_cpu_records"] == []
    assert e["loco/vgg13"]["n_cpu"] == 0 and len(e["loco/vgg13"]["missing_cpu_records"]) == 1
    assert "1 of 2 CPU records are missing" in e["note"]
    assert set(r["goals"]) == {"resnet18_images_per_s", "loco_step_ratio", "pipeline_speedup",
                               "share4_speedup"}
