"""Mining at scale: exact fp32 top-k vs the int8 scan + exact rescoring, against faiss and torch.

    python benchmarks/mining_scale.py [--N 1000000 --Q 100000 --d 384 --k 10 --dir /tmp/mining_scale]

The corpus is written to disk once (float32 .npy) and read memory-mapped, like a store shard.
Columns: seconds, GFLOP/s (2*Q*N*d / s, the exhaustive-scan equivalent), peak RSS above the level
before the call (memory-mapped corpus pages included), and the fraction of ids identical to
fastembed_tune.topk_cosine (fp32 exact). faiss IndexScalarQuantizer rows search k*R candidates
(R = --rerank) and rescore them exactly; faiss indexes hold their own copy of the vectors
(built before timing, reported separately).
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
import torch
from _rss import PeakRSS

from fastembed_tune.core.cpu import cpu_description
from fastembed_tune.kernels import QuantizedCorpus, quantize_corpus, simd_name, topk_cosine, topk_cosine_lowp


def make_corpus(path: str, n: int, d: int, seed: int, block: int = 65536) -> np.ndarray:
    """Unit rows with some structure (clusters), written block by block; returns a read-only memmap."""
    if not os.path.exists(path):
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((256, d), dtype=np.float32)
        out = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=np.float32, shape=(n, d))
        for b in range(0, n, block):
            m = min(block, n - b)
            x = centres[rng.integers(0, 256, m)] * 0.5 + rng.standard_normal((m, d), dtype=np.float32)
            out[b:b + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        os.replace(path + ".tmp.npy", path)
    return np.load(path, mmap_mode="r")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--N", type=int, default=1_000_000)
    ap.add_argument("--Q", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rerank", type=int, default=10, help="faiss SQ: search k*R, rescore exactly")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dir", default="/tmp/mining_scale")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: fp32,faiss,sq8,sq16,torch")
    a = ap.parse_args()
    import faiss

    skip = set(filter(None, a.skip.split(",")))
    threads = a.threads or torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    os.makedirs(a.dir, exist_ok=True)
    x = make_corpus(os.path.join(a.dir, f"corpus_{a.N}x{a.d}.npy"), a.N, a.d, 0)
    q = np.ascontiguousarray(make_corpus(os.path.join(a.dir, f"queries_{a.Q}x{a.d}.npy"), a.Q, a.d, 1))
    flops = 2.0 * a.Q * a.N * a.d
    print(cpu_description())
    print(f"N={a.N} Q={a.Q} d={a.d} k={a.k} threads={threads}; corpus {x.nbytes / 2**20:.0f} MiB on disk, memory-mapped")

    qpath = os.path.join(a.dir, f"corpus_{a.N}x{a.d}.int8")
    t0 = time.perf_counter()
    with PeakRSS() as mq:
        if not os.path.exists(qpath):
            quantize_corpus(x, threads=threads, out=qpath)  # block by block into memory-mapped files
    t_quant = time.perf_counter() - t0
    qc = QuantizedCorpus.load(qpath)  # memory-mapped
    print(f"quantize_corpus to disk (once per corpus): {t_quant:.2f} s, +{mq.extra / 2**20:.0f} MiB "
          f"(+{mq.extra_anon / 2**20:.0f} MiB anonymous); "
          f"int8 corpus {qc.nbytes / 2**20:.0f} MiB")

    rows, results, notes = [], {}, {}

    def run(name, fn):
        gc.collect()
        with PeakRSS() as m:
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
        results[name] = out
        rows.append((name, dt, flops / dt / 1e9, m.extra / 2**20, m.extra_anon / 2**20))
        print(f"  done {name}: {dt:.2f} s", flush=True)

    def lowp():
        s, i, st = topk_cosine_lowp(q, x, a.k, quantized=qc, threads=threads, return_stats=True)
        notes["lowp"] = st
        return s, i

    run("fastembed_tune int8 scan + fp32 rescore", lowp)
    if "fp32" not in skip:
        run(f"fastembed_tune.topk_cosine fp32 ({simd_name()})", lambda: topk_cosine(q, x, a.k, threads=threads))

    if "faiss" not in skip:
        with PeakRSS() as m_add:
            index = faiss.IndexFlatIP(a.d)
            index.add(np.asarray(x))
        notes["faiss_add"] = m_add.extra
        run("faiss IndexFlatIP", lambda index=index: index.search(q, a.k))
        del index
    for tag, qt in (("sq8", "QT_8bit"), ("sq16", "QT_fp16")):
        if tag in skip:
            continue
        index = faiss.IndexScalarQuantizer(a.d, getattr(faiss.ScalarQuantizer, qt), faiss.METRIC_INNER_PRODUCT)
        index.train(np.asarray(x[: min(a.N, 100_000)]))
        index.add(np.asarray(x))

        def sq_search(index=index):
            parts_s, parts_i = [], []
            for b in range(0, a.Q, 8192):
                _, cand = index.search(q[b:b + 8192], a.k * a.rerank)
                qs = q[b:b + 8192]
                ids = np.where(cand < 0, 0, cand)
                sc = np.einsum("qd,qcd->qc", qs, x[ids.ravel()].reshape(*ids.shape, a.d))
                sc[cand < 0] = -np.inf
                o = np.argsort(-sc, axis=1, kind="stable")[:, :a.k]
                parts_s.append(np.take_along_axis(sc, o, 1))
                parts_i.append(np.take_along_axis(cand, o, 1))
            return np.concatenate(parts_s), np.concatenate(parts_i)

        run(f"faiss SQ {qt[3:]} + rescore {a.k * a.rerank}", sq_search)
        del index
    if "torch" not in skip:
        tx = torch.from_numpy(np.array(x)).to(torch.bfloat16)

        def torch_bf16():
            S, I = [], []
            with torch.inference_mode():
                for b in range(0, a.Q, 2048):
                    s, i = torch.topk((torch.from_numpy(q[b:b + 2048]).to(torch.bfloat16) @ tx.T).float(), a.k, dim=1)
                    S.append(s)
                    I.append(i)
            return torch.cat(S).numpy(), torch.cat(I).numpy()

        run("torch bf16 mm+topk (2048-query blocks)", torch_bf16)
        del tx

    ref_name = next((r[0] for r in rows if "fp32" in r[0]), rows[0][0])
    ref_s, ref_i = results[ref_name]
    print(f"\n{'method':44s} {'seconds':>8s} {'GFLOP/s':>8s} {'peak MiB':>9s} {'anon MiB':>9s} {'ids = fp32':>10s}")
    for name, dt, gf, mib, anon in rows:
        s, i = results[name]
        agree = (np.asarray(i) == ref_i).mean()
        print(f"{name:44s} {dt:8.2f} {gf:8.1f} {mib:9.0f} {anon:9.0f} {agree:10.5f}")
    print("(peak MiB: RSS above the level before the call, memory-mapped corpus pages included; anon MiB: without them)")
    st = notes["lowp"]
    print(f"\nint8 path ({st['scan']} scan, {st['simd']} rescoring): scan {st['scan_s']:.2f} s, rescoring "
          f"{st['rescore_s']:.2f} s, {st['candidates_per_query']:.1f} candidates/query")
    t = dict((r[0], r[1]) for r in rows)
    low = t[rows[0][0]]
    if ref_name != rows[0][0]:
        print(f"int8 vs our fp32: {t[ref_name] / low:.2f}x; scores identical: "
              f"{np.array_equal(results[rows[0][0]][0], ref_s)}")
    peers = [v for n, v in t.items() if n.startswith("faiss IndexFlatIP") or n.startswith("torch bf16")]
    if peers:
        print(f"int8 vs the faster of faiss IndexFlatIP / torch bf16: {min(peers) / low:.2f}x")
    if "faiss_add" in notes:
        print(f"(faiss IndexFlatIP.add copied the corpus: +{notes['faiss_add'] / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
