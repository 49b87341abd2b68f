"""Does pinning PyTorch's CPU kernels make a training record bit-identical, and what does it cost?

A record trained on one x86 CPU and retrained on another differs in its last bits (and, after 30
epochs of chaotic SGD, in its test error by up to about half a point), because PyTorch and oneDNN
pick their kernels by the instruction set the CPU has (AVX-512 here, AVX2 on many AMD CPUs). This
script retrains one committed record, each variant in its own process, both at once (one thread
each, so that machine load hits them alike):

* ``as-is``: what the record's machine did, if it had the same CPU capability as this one;
* ``avx2``: ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``, an instruction set
  every x86-64 CPU of the last decade has, so the same kernels run on Intel and AMD alike.

It prints, per variant, the CPU capability torch used, whether the final metrics and weight
statistics equal the committed record's bit for bit, the test error, and the time against
``as-is``.

    python benchmarks/bench_cpu_pinning.py                      # a committed mnist5k VGG13 L2 run
    python benchmarks/bench_cpu_pinning.py --record results/KEY.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "as-is": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# Runs in a fresh interpreter so that the environment variables take effect before torch loads.
RETRAIN = """
import json, sys, time, torch
from locolib.config import RunConfig
from locolib.train import train
torch.set_num_threads(1)
config = RunConfig.from_dict(json.loads(sys.argv[1]))
t0 = time.perf_counter()
rec = train(config, results_dir=sys.argv[2], checkpoint_dir=sys.argv[2], progress=False,
            download=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "final": rec["final"],
                  "weight_stats": rec["weight_stats"],
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", type=Path,
                   default=ROOT / "results" / "mnist5k-vgg13-l2-s0-73a74e9a2b.json")
    a = p.parse_args(argv)
    committed = json.loads(a.record.read_text())
    print(f"record {committed['key']}, trained on {committed['device']['name']}, "
          f"torch {committed['versions']['torch']}")
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for name, env in VARIANTS.items():
            folder = Path(tmp) / name
            folder.mkdir()
            procs[name] = subprocess.Popen(
                [sys.executable, "-c", RETRAIN, json.dumps(committed["config"]), str(folder)],
                env={**os.environ, "OMP_NUM_THREADS": "1", **env}, cwd=ROOT,
                stdout=subprocess.PIPE, text=True)
        out = {name: json.loads(proc.communicate()[0].strip().splitlines()[-1])
               for name, proc in procs.items()}
    print(f"{'variant':<8}{'capability':>11}{'bitwise equal':>15}{'test error':>12}{'time':>8}")
    for name, r in out.items():
        equal = r["final"] == committed["final"] and all(  # the statistics both records keep
            {k: new[k] for k in old} == old
            for new, old in zip(r["weight_stats"], committed["weight_stats"], strict=True))
        print(f"{name:<8}{r['capability']:>11}{str(equal):>15}{100 * r['final']['test_error']:>11.2f}%"
              f"{r['seconds'] / out['as-is']['seconds']:>7.2f}x")
    print(f"committed test error {100 * committed['final']['test_error']:.2f}%")


if __name__ == "__main__":
    main()
