"""Mining a big corpus (issue 16): memory and time of ``mine`` in memory (``read_pairs`` +
``read_corpus`` + ``mine_to_file``) against ``mine --stream`` (``mining_stream.mine_stream``).

    python benchmarks/mine_stream_scale.py --docs 1000000 --pairs 20000

Writes a synthetic JSONL corpus of ``--docs`` documents (~400 bytes each, 1 in 50 a duplicate) and
``--pairs`` pairs whose positives are corpus documents (1 in 20 missing from it), then runs each
route in its own process (so one's memory does not hide the other's) with a stand-in encoder: each
text's row is drawn from a generator seeded by its hash, so both routes see the same rows and this
measures the data path (reading, de-duplicating, holding, scanning, writing), not a transformer.
Prints the CPU above the table: seconds, peak resident memory above the process's start, the same
without memory-mapped pages (anonymous), and whether the two outputs are byte-identical.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class StandIn:
    """A 384-dim encoder that costs ~10 us a text: a seeded Gaussian row per text hash."""
    dim, fingerprint = 384, "stand-in-384"

    def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def make_files(folder: str, docs: int, pairs: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    corpus, pairs_path = os.path.join(folder, "corpus.jsonl"), os.path.join(folder, "pairs.jsonl")

    def doc(i: int) -> str:
        return f"document {i} on topic {i % 4999}: " + " ".join(f"w{(i * 7 + j) % 9973}" for j in range(60))

    with open(corpus, "w") as f:
        for i in range(docs):
            j = int(rng.integers(i)) if i and rng.random() < 0.02 else i  # 1 in 50 repeats an earlier text
            f.write(json.dumps({"_id": f"d{i}", "text": doc(j)}) + "\n")
    with open(pairs_path, "w") as f:
        for i in range(pairs):
            pos = doc(int(rng.integers(docs))) if rng.random() >= 0.05 else f"a positive of its own, number {i}"
            f.write(json.dumps({"query": f"what does topic {i % 4999} say about w{i % 9973}", "positive": pos}) + "\n")
    return pairs_path, corpus


def one(kind: str, pairs: str, corpus: str, out: str, window: int) -> dict:
    """Run in a child process: time and peak memory of one route."""
    from _rss import PeakRSS

    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.mining.exact import mine_to_file
    from fastembed_tune.mining.stream import mine_stream

    with PeakRSS(interval=0.01) as m:
        t0 = time.perf_counter()
        if kind == "stream":
            s = mine_stream(pairs, out, StandIn(), corpus, window=window, show_progress_bar=False)
        else:
            s = mine_to_file(read_pairs(pairs), out, StandIn(), list(read_corpus(corpus).values()),
                             show_progress_bar=False)
        t1 = time.perf_counter()
    return {"route": kind, "seconds": t1 - t0, "peak_mib": m.extra / 2**20, "anon_mib": m.extra_anon / 2**20,
            "scan": s["scan"], "candidates": s["corpus_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=100_000)
    ap.add_argument("--routes", default="memory,stream", help="which routes to run (10M documents: stream alone)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, pairs, corpus, out, window = a.child
        print(json.dumps(one(kind, pairs, corpus, out, int(window))))
        return
    from fastembed_tune.core.cpu import cpu_description

    with tempfile.TemporaryDirectory(prefix="mine_stream_scale_") as tmp:
        t0 = time.perf_counter()
        pairs, corpus = make_files(tmp, a.docs, a.pairs)
        print(f"wrote {a.docs} documents ({os.path.getsize(corpus) / 2**20:.0f} MiB) and {a.pairs} pairs in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for kind in a.routes.split(","):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, pairs, corpus,
                                  os.path.join(tmp, f"{kind}.jsonl"), str(a.window)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        outs = [os.path.join(tmp, f"{k}.jsonl") for k in ("memory", "stream")]
        same = (open(outs[0], "rb").read() == open(outs[1], "rb").read()) if len(rows) == 2 else "(one route)"
    print()
    print(cpu_description())
    print(f"{a.docs} documents, {a.pairs} pairs, window {a.window}, scan {rows[0]['scan']}, "
          f"{rows[0]['candidates']} distinct candidates; outputs byte-identical: {same}")
    print(f"{'route':>7} {'seconds':>8} {'peak MiB':>9} {'anon MiB':>9}")
    for r in rows:
        print(f"{r['route']:>7} {r['seconds']:>8.1f} {r['peak_mib']:>9.0f} {r['anon_mib']:>9.0f}")


if __name__ == "__main__":
    main()
