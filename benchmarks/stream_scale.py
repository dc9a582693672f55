"""Streaming pairs at scale (issue 16): memory and time of reading a big pairs file for training,
in memory (``read_pairs`` + the epoch's batches) against ``PairStream`` (window by window).

    python benchmarks/stream_scale.py --pairs 1000000 --window 100000

Writes a synthetic JSONL file of ``--pairs`` (query, positive, one negative) rows, then runs each
reader in its own process (so one's memory does not hide the other's): the seconds to open it (the
stream's one checking pass), to count an epoch's batches and to hand over every batch of the epoch
(no model: this is the data path alone), and the peak resident memory above the process's start.
Prints the CPU above the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_file(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"query": f"what is term {i} in field {i % 977}",
                                "positive": f"term {i} is a notion of field {i % 977}: " + "word " * (20 + i % 40),
                                "negatives": [f"term {i + 1} belongs to field {(i + 1) % 977}: " + "text " * 25]})
                    + "\n")


def one(kind: str, path: str, window: int, batch_size: int) -> dict:
    """Run in a child process: time and peak memory of one reader."""
    from _rss import PeakRSS

    from fastembed_tune.data.readers import read_pairs
    from fastembed_tune.data.stream import PairStream
    from fastembed_tune.training.train import TrainConfig, _EpochData

    cfg = TrainConfig("unused", batch_size=batch_size, num_negatives=1)
    with PeakRSS(interval=0.01) as m:
        t0 = time.perf_counter()
        pairs = PairStream(path, window=window) if kind == "stream" else read_pairs(path)
        t1 = time.perf_counter()
        epoch = _EpochData(pairs, [], cfg)(0)
        t2 = time.perf_counter()
        n = 0
        for i in range(len(epoch)):
            n += len(epoch.batch(i))
        t3 = time.perf_counter()
    return {"reader": kind, "open_s": t1 - t0, "count_s": t2 - t1, "batches_s": t3 - t2, "pairs_batched": n,
            "batches": len(epoch), "peak_mib": m.extra / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--file", help="use this pairs file instead of writing one")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, path, window, bs = a.child
        print(json.dumps(one(kind, path, int(window), int(bs))))
        return
    from fastembed_tune.core.cpu import cpu_description

    tmp = tempfile.mkdtemp(prefix="stream_scale_")
    path = a.file or os.path.join(tmp, "pairs.jsonl")
    if not a.file:
        t0 = time.perf_counter()
        make_file(path, a.pairs)
        print(f"wrote {a.pairs} pairs ({os.path.getsize(path) / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    rows = []
    for kind in ("list", "stream"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, path, str(a.window),
                              str(a.batch_size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(cpu_description())
    print(f"{os.path.getsize(path) / 2**20:.0f} MiB of pairs, window {a.window}, batch {a.batch_size}")
    print(f"{'reader':>7} {'open s':>7} {'count s':>8} {'batches s':>10} {'pairs':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['reader']:>7} {r['open_s']:>7.1f} {r['count_s']:>8.1f} {r['batches_s']:>10.1f} "
              f"{r['pairs_batched']:>9} {r['peak_mib']:>9.0f}")
    if not a.file:
        os.remove(path)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
