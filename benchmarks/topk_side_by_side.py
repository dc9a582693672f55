"""topk_cosine vs faiss IndexFlatIP.search vs torch mm+topk: one process, same data.

    python benchmarks/topk_side_by_side.py [--Q 8192 --N 100000 --d 384 --k 32 --threads 0]

Prints seconds, GFLOP/s (2*Q*N*d / s) and extra memory (peak RSS during the call above the
level before it, outputs included) for each, and checks all three agree. faiss's index also
holds its own copy of the corpus (added before timing; reported separately).
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch
from _rss import PeakRSS

from fastembed_tune.kernels import simd_name, topk_cosine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--Q", type=int, default=8192)
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="best of R runs")
    a = ap.parse_args()
    import faiss

    threads = a.threads or torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.standard_normal((n, a.d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    q, x = unit(a.Q), unit(a.N)
    flops = 2.0 * a.Q * a.N * a.d
    index = faiss.IndexFlatIP(a.d)
    with PeakRSS() as m_add:
        index.add(x)
    tq, tx = torch.from_numpy(q), torch.from_numpy(x)

    def ours():
        return topk_cosine(q, x, a.k, threads=threads)

    def faiss_search():
        return index.search(q, a.k)

    def torch_mm_topk():
        S, I = [], []
        with torch.inference_mode():
            for b in range(0, a.Q, 1024):
                s, i = torch.topk(tq[b:b + 1024] @ tx.T, a.k, dim=1)
                S.append(s)
                I.append(i)
        return torch.cat(S).numpy(), torch.cat(I).numpy()

    rows, results = [], {}
    for name, fn in ((f"fastembed_tune.topk_cosine ({simd_name()})", ours),
                     ("faiss IndexFlatIP.search", faiss_search), ("torch mm+topk (1024-query blocks)", torch_mm_topk)):
        best = None
        for _ in range(a.repeat):
            gc.collect()
            with PeakRSS() as m:
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best = (dt, m.extra)
            results[name] = out
            del out
        rows.append((name, best[0], flops / best[0] / 1e9, best[1] / 2**20))

    ref_s, ref_i = results[rows[0][0]]
    print(f"Q={a.Q} N={a.N} d={a.d} k={a.k} threads={threads}  (faiss index.add copied the corpus: "
          f"+{m_add.extra / 2**20:.0f} MiB)")
    print(f"{'method':42s} {'seconds':>8s} {'GFLOP/s':>8s} {'extra MiB':>10s} {'vs faiss':>9s} {'ids agree':>10s}")
    f_gf = rows[1][2]
    for name, dt, gf, mib in rows:
        s, i = results[name]
        agree = (np.asarray(i) == ref_i).mean()
        np.testing.assert_allclose(np.asarray(s), ref_s, atol=1e-4)
        print(f"{name:42s} {dt:8.2f} {gf:8.1f} {mib:10.1f} {gf / f_gf:8.2f}x {agree:10.5f}")
    print("outputs (scores + ids) take", f"{a.Q * a.k * 12 / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
