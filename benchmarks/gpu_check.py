"""Device check: what the book's training costs on a GPU, in one offline script.

At most 8 minutes on one H100/H200; synthetic CIFAR-shaped data (random uint8 images: for
timings only) plus the committed offline records. Writes JSON to ``--out`` after every part, so
a run cut short still leaves what it measured:

A. images/s of ResNet18, VGG13 and MobileNet trained with standard L2 and with LOCO-REG
   (:func:`locolib.train.train`, the steps after the first epoch), the shares of evaluation and
   of checkpoint writes in the wall time, and LOCO-REG's step-time ratio to L2 resolved in
   interleaved rounds (bench_reg.py);
B. torch.compile on and off (ResNet18): compile time, images/s, and the graphs built after
   each epoch (static shapes: none after the first);
C. the on-device input pipeline against a DataLoader with one worker per core (bench_pipeline.py);
D. 1, 2 and 4 small runs sharing the GPU as separate processes (as ``locolib-sweep --dask local
   --runs-per-gpu 4`` runs them): their aggregate training images/s;
E. a few offline cells of the book's default study (VGG13, standard L2 and LOCO-REG, mnist5k)
   trained on the GPU and compared with the CPU records of the same runs as distributions (CPU
   and GPU runs are not bitwise equal); missing CPU records are reported as such.

Goals on an H100-class GPU: ResNet18 at least 30,000 training images/s; LOCO-REG at most 1.03x
the step time of L2; the pipeline at least as fast as the DataLoader; 4 small runs sharing a GPU
at least 2.5x the images/s of one.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check-$(date +%F)-h100.json
    python benchmarks/gpu_check.py --smoke --out /tmp/check.json   # any CPU, < 2 minutes
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import bench_pipeline
import bench_reg
import torch
from scipy import stats

import locolib.train as T
from locolib.config import LOCO_DEFAULT, RunConfig
from locolib.data import DATASETS, DatasetSpec, ImageData, load_dataset
from locolib.plans import study
from locolib.results import default_results_dir, finished_records, git_commit

SYNTHETIC = "synthetic_cifar"
NETWORKS = ("resnet18", "vgg13", "mobilenet")
#: Sizes of a full check (an H100-class GPU, 8 minutes) and of ``--smoke`` (a CPU, 2 minutes).
SETTINGS = {
    "full": dict(n_train=50_000, n_test=10_000, width=1.0, epochs=3, batch=128,
                 reg_seconds=40.0, pipe_rounds=6, pipe_batches=(50, 20),
                 small=dict(n_train=10_000, width=0.25, epochs=3), shares=(1, 2, 4),
                 profile="default", seeds=6, budget_s=460.0),
    "smoke": dict(n_train=256, n_test=128, width=0.0625, epochs=2, batch=64,
                  reg_seconds=3.0, pipe_rounds=2, pipe_batches=(2, 1),
                  small=dict(n_train=128, width=0.0625, epochs=2), shares=(1, 2),
                  profile="smoke", seeds=1, budget_s=110.0),
}
GOALS = {"resnet18_images_per_s": 30_000, "loco_step_ratio": 1.03, "pipeline_speedup": 1.0,
         "share4_speedup": 2.5}


def register_synthetic(n_train: int, n_test: int) -> None:
    """Add the synthetic CIFAR-shaped dataset to locolib's registry (this process only)."""
    DATASETS[SYNTHETIC] = DatasetSpec(functools.partial(_synthetic, n_train, n_test), 10, 3,
                                      n_train, n_test, "random uint8 32x32x3 images (timings only)",
                                      offline=True)


def _synthetic(n_train: int, n_test: int, root, download, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return ImageData(SYNTHETIC, x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


def _run(network: str, regularizer: str, s: dict, work: Path, device, hook=None, seed: int = 0,
         **fields) -> dict:
    loco = LOCO_DEFAULT if regularizer == "loco" else {}
    cfg = RunConfig(SYNTHETIC, network, regularizer, seed, epochs=s["epochs"], width=s["width"],
                    batch_size=s["batch"], **{**loco, **fields})
    return T.train(cfg, results_dir=work, device=device, progress=False, download=False,
                   hook=hook)


def _steady(rec: dict) -> float:
    """Training images/s after the first epoch (which includes cuDNN's kernel search)."""
    rates = [h["images_per_s"] for h in rec["history"]]
    return statistics.median(rates[1:] or rates)


def part_a(s: dict, work: Path, device) -> dict:
    out = {}
    for net in NETWORKS:
        for reg in ("l2", "loco"):
            rec = _run(net, reg, s, work / f"A-{net}-{reg}", device, checkpoint_every=0)
            t = rec["timing"]
            write_s = t["checkpoint_s"] / len(rec["history"])
            out[f"{net}/{reg}"] = {
                "images_per_s": _steady(rec), "images_per_wall_s": t["images_per_wall_s"],
                "eval_share": t["eval_s"] / t["wall_s"],
                "checkpoint_share_every_epoch": t["checkpoint_s"] / t["wall_s"],
                "checkpoint_write_s": write_s,
                "checkpoint_share_every_60s": write_s / (60.0 + write_s),
                "wall_s": t["wall_s"], "precision": rec["precision"]}
    out["loco_vs_l2_step"] = bench_reg.measure("resnet18", s["width"], s["batch"], device,
                                               rounds=10, max_seconds=s["reg_seconds"],
                                               call_rounds=20)
    return out


def part_b(s: dict, work: Path, device, smoke: bool) -> dict:
    from torch._dynamo.utils import counters

    graphs: list[int] = []

    def hook(event: str, epoch: int, step: int) -> None:
        if event == "epoch":
            graphs.append(counters["stats"]["unique_graphs"] - before)

    real = T.compile_model
    if smoke:  # the graphs are what is checked; inductor's code generation takes minutes on a CPU
        T.compile_model = functools.partial(real, backend="eager")
    try:
        before = counters["stats"]["unique_graphs"]
        rec = _run("resnet18", "l2", s, work / "B", device, hook, compile=True,
                   checkpoint_every=1e9)
    finally:
        T.compile_model = real
    eager = _run("resnet18", "l2", s, work / "B-eager", device, checkpoint_every=1e9)
    return {"compile_s": rec["timing"]["compile_s"], "images_per_s_compiled": _steady(rec),
            "images_per_s_eager": _steady(eager), "graphs_after_epoch": graphs,
            "no_graph_after_first_epoch": len(set(graphs)) == 1}


def part_c(s: dict, device) -> dict:
    data = load_dataset(SYNTHETIC)
    n_data, n_train = s["pipe_batches"]
    return bench_pipeline.compare(data, device, "resnet18", s["width"], s["batch"], n_data, n_train,
                                  s["pipe_rounds"])


def _share_worker(s: dict, device: str, work: str, index: int, barrier, results) -> None:
    """One of the runs sharing the device (a spawned process): train a small run right after
    all have set up, and report when its first and last epoch ended (the epochs after the
    first are the steady state: no setup, no kernel search)."""
    torch.set_num_threads(1)
    small = s["small"]
    register_synthetic(small["n_train"], s["n_test"])
    times: list[float] = []

    def hook(event: str, epoch: int, step: int) -> None:
        if event == "epoch":
            times.append(time.time())

    barrier.wait()
    rec = _run("vgg13", "l2", {**s, **small}, Path(work) / f"D-{index}", device, hook,
               seed=index, checkpoint_every=1e9)
    results.put({"start": times[0], "end": times[-1],
                 "images": rec["n_train"] * (small["epochs"] - 1)})


def part_d(s: dict, work: Path, device) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for k in s["shares"]:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_share_worker, args=(s, str(device), str(work / f"D{k}"), i,
                                                         barrier, results)) for i in range(k)]
        for proc in procs:
            proc.start()
        try:
            runs = [results.get(timeout=300) for _ in procs]
        except queue.Empty:
            raise RuntimeError(f"shared runs did not finish; exit codes "
                               f"{[proc.exitcode for proc in procs]}") from None
        for proc in procs:
            proc.join()
        wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        out[str(k)] = {"images_per_s": sum(r["images"] for r in runs) / wall, "wall_s": wall}
    one = out[str(s["shares"][0])]["images_per_s"]
    for k in out:
        out[k]["speedup"] = out[k]["images_per_s"] / one
    return out


def part_e(s: dict, work: Path, device, records: Path) -> dict:
    st = study(s["profile"])
    out: dict = {"profile": s["profile"], "dataset": st.dataset, "cpu_records": str(records)}
    errors = {}
    for name in ("l2/vgg13", "loco/vgg13"):
        configs = st.arm(name).configs(st.dataset, st.protocol)[:s["seeds"]]
        gpu = [T.train(c, results_dir=work / "E", device=device, progress=False)
               for c in configs]
        cpu = {r["key"]: r for r in finished_records(configs, records)}
        errors[name] = {
            "gpu": [100 * r["final"]["test_error"] for r in gpu],
            "cpu": [100 * cpu[c.key]["final"]["test_error"] for c in configs if c.key in cpu],
            "missing_cpu": [c.key for c in configs if c.key not in cpu]}
        out[name] = _distributions(errors[name]["gpu"], errors[name]["cpu"])
        out[name]["missing_cpu_records"] = errors[name]["missing_cpu"]
    missing = sum(len(e["missing_cpu"]) for e in errors.values())
    if missing:
        out["note"] = (f"{missing} of {sum(len(e['gpu']) for e in errors.values())} CPU records "
                       f"are missing in {records}: train them with `python -m locolib.plans "
                       f"{s['profile']}` (CPU), then rerun part E")
    out["test_error_pp"] = errors
    return out


def _distributions(gpu: list[float], cpu: list[float]) -> dict:
    """Test errors (%) of the GPU and CPU runs of one arm: means, spreads, Welch's t test and
    Mann-Whitney's U test of equal distributions (None where too few runs)."""
    def mean_sd(v):
        return (statistics.fmean(v) if v else None, statistics.stdev(v) if len(v) > 1 else None)

    (mg, sg), (mc, sc) = mean_sd(gpu), mean_sd(cpu)
    enough = len(gpu) > 1 and len(cpu) > 1
    return {"gpu_mean": mg, "gpu_sd": sg, "cpu_mean": mc, "cpu_sd": sc,
            "n_gpu": len(gpu), "n_cpu": len(cpu),
            "welch_p": float(stats.ttest_ind(gpu, cpu, equal_var=False).pvalue) if enough else None,
            "mannwhitney_p": float(stats.mannwhitneyu(gpu, cpu).pvalue) if enough else None}


def _goals(parts: dict) -> dict:
    """Each goal's measured value and whether it is met (None where its part did not run)."""
    def get(*keys):
        d = parts
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    values = {
        "resnet18_images_per_s": get("A", "resnet18/l2", "images_per_s"),
        "loco_step_ratio": get("A", "loco_vs_l2_step", "step_ratio", "loco", "ci_high"),
        "pipeline_speedup": get("C", "training", "speedup", "median"),
        "share4_speedup": get("D", "4", "speedup"),
    }
    return {k: {"value": v, "goal": GOALS[k],
                "met": None if v is None else (v <= GOALS[k] if k == "loco_step_ratio"
                                               else v >= GOALS[k])}
            for k, v in values.items()}


def _meta(device: torch.device, smoke: bool) -> dict:
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "smoke": smoke, "device": str(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "git": git_commit(), "cores": bench_pipeline.cores(),
            "python": sys.version.split()[0]}
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
        meta["capability"] = list(torch.cuda.get_device_capability(device))
    return meta


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: every part on a CPU, < 2 min")
    p.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    p.add_argument("--parts", default="ABCDE", help="which parts to run, e.g. AE")
    p.add_argument("--records", type=Path, default=None,
                   help="CPU records for part E (default: the repository's results/)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; parts not started by then are skipped (default: 460, smoke 110)")
    a = p.parse_args(argv)
    s = SETTINGS["smoke" if a.smoke else "full"]
    budget = a.budget if a.budget is not None else s["budget_s"]
    device = T.choose_device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    register_synthetic(s["n_train"], s["n_test"])
    records = a.records if a.records is not None else default_results_dir()
    result: dict = {"meta": _meta(device, a.smoke), "parts": {}, "seconds": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        run = {"A": lambda: part_a(s, work, device), "B": lambda: part_b(s, work, device, a.smoke),
               "C": lambda: part_c(s, device), "D": lambda: part_d(s, work, device),
               "E": lambda: part_e(s, work, device, records)}
        for name in a.parts.upper():
            if time.perf_counter() - t0 > budget:
                result["parts"][name] = {"skipped": f"out of time ({budget:.0f} s)"}
                continue
            t = time.perf_counter()
            try:
                result["parts"][name] = run[name]()
            except Exception:  # noqa: BLE001 -- report it and go on with the other parts
                result["parts"][name] = {"error": traceback.format_exc(limit=8)}
            result["seconds"][name] = time.perf_counter() - t
            result["goals"] = _goals(result["parts"])
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"part {name}: {result['seconds'][name]:.1f} s", flush=True)
    result["seconds"]["total"] = time.perf_counter() - t0
    a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for k, g in result["goals"].items():
        print(f"{k}: {g['value']} (goal {g['goal']}): {g['met']}")
    return result


if __name__ == "__main__":
    main()
