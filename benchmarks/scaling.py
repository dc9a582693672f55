"""Training throughput: 1 process vs N processes under torchrun (gloo on CPU), same global steps.

    python benchmarks/scaling.py [--steps 16] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    from fastembed_tune.data.bundled import sample_paths

    pairs = sample_paths()["train"]
    cores = os.cpu_count() or 1
    rows = []
    for n in (1, a.nproc):
        out = tempfile.mkdtemp(prefix=f"scale{n}-")
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(max(1, cores // n)))
        cmd = [sys.executable, "-m", "fastembed_tune", "train", "--pairs", pairs, "-o", out, "--max-steps",
               str(a.steps), "--batch-size", str(a.batch_size), "--max-seq-length", "64", "--num-negatives", "0",
               "--quiet"] + (["--nproc", str(n)] if n > 1 else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        wall = time.perf_counter() - t0
        s = json.load(open(os.path.join(out, "train_summary.json")))
        rows.append((n, env["OMP_NUM_THREADS"], wall, s["pairs_per_s"]))
    print(f"{'processes':>9s} {'threads each':>12s} {'wall s':>8s} {'pairs/s (train loop)':>21s}")
    for n, t, wall, pps in rows:
        print(f"{n:9d} {t:>12s} {wall:8.1f} {pps:21.1f}")


if __name__ == "__main__":
    main()
