"""Fused contrastive kernel vs the eager torch formula sentence-transformers uses
(``cross_entropy(scale * q @ docs.T)``), forward + backward, one hard negative (M = 2B), d = 384.

    python benchmarks/contrastive_side_by_side.py [--batches 1024 4096 8192] [--big 65536]
                                                  [--threads 2] [--repeats 3] [--simd auto]

Each (method, B) run is its own process, so peak RSS is its own; "extra" is the peak minus the
RSS once torch is imported, the inputs exist and the warm-up ran. Every process first warms up the
method it times (thread pools, first-call costs) on a small case, then times one forward + backward.
Seconds are the best of --repeats runs, the runs interleaved (round r runs every case, methods
alternating in order) so load drift on a shared machine hits every case alike; peak and extra are the
largest seen over the runs. The --big row (fused only: the eager B x M matrix would not fit) is
repeated too; pass --big 0 to skip it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(method: str, B: int, d: int, threads: int, simd: str) -> dict:
    import resource

    import psutil
    import torch

    torch.set_num_threads(threads)
    from fastembed_tune.kernels import contrastive

    def step(q, docs, pos):
        if method == "eager":
            loss = torch.nn.functional.cross_entropy(20.0 * q @ docs.T, pos)
        else:
            loss = contrastive(q, docs, pos, 20.0, simd=simd)
        loss.backward()
        return loss

    def inputs(n, seed):
        g = torch.Generator().manual_seed(seed)
        q = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
        docs = torch.nn.functional.normalize(torch.randn(2 * n, d, generator=g), dim=1).requires_grad_()
        return q, docs, torch.arange(n)

    step(*inputs(min(B, 256), 1))  # warm-up of the method being timed
    q, docs, pos = inputs(B, 0)
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    loss = step(q, docs, pos)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "B": B, "seconds": dt, "peak_rss": peak, "extra": peak - base, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="*", default=[1024, 4096, 8192])
    ap.add_argument("--big", type=int, default=65536, help="fused-only batch size (0: skip)")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many interleaved runs per case")
    ap.add_argument("--simd", default="auto", help="the fused kernel's path (auto, avx512, avx2, scalar, reference)")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.d, a.threads, a.simd)))
        return

    def run(method, B):
        out = subprocess.run([sys.executable, __file__, "--child", method, str(B), "--d", str(a.d),
                              "--threads", str(a.threads), "--simd", a.simd], capture_output=True, text=True)
        if out.returncode != 0:
            return {"method": method, "B": B, "error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
        return json.loads(out.stdout.strip().splitlines()[-1])

    best: dict = {}
    for r in range(max(1, a.repeats)):
        order = ("eager", "fused") if r % 2 == 0 else ("fused", "eager")  # alternate who runs first
        cases = [(m, B) for B in a.batches for m in order] + ([("fused", a.big)] if a.big else [])
        for m, B in cases:
            res, old = run(m, B), best.get((m, B))
            if old is None or "error" in old:
                best[(m, B)] = res
            elif "error" not in res:
                best[(m, B)] = dict(res, seconds=min(res["seconds"], old["seconds"]),
                                    peak_rss=max(res["peak_rss"], old["peak_rss"]), extra=max(res["extra"], old["extra"]))

    from fastembed_tune.kernels import simd_name

    mib = 2 ** 20
    from fastembed_tune.core.cpu import cpu_description

    print(f"CPU: {cpu_description()}")
    print(f"fused kernel path: {simd_name(a.simd)}; {a.threads} threads; d = {a.d}; "
          f"best of {a.repeats} interleaved runs, each case in its own process, each warmed up on its own method")
    print(f"{'B':>6s} {'M':>7s} {'eager s':>8s} {'fused s':>8s} {'speed-up':>8s} "
          f"{'eager peak MiB':>14s} {'fused peak MiB':>14s} {'eager extra':>11s} {'fused extra':>11s} {'loss diff':>9s}")
    for B in a.batches:
        e, f = best[("eager", B)], best[("fused", B)]
        if "error" in e or "error" in f:
            print(f"{B:6d} {2 * B:7d}  eager: {e.get('error', 'ok')}  fused: {f.get('error', 'ok')}")
            continue
        print(f"{B:6d} {2 * B:7d} {e['seconds']:8.2f} {f['seconds']:8.2f} {e['seconds'] / f['seconds']:7.2f}x "
              f"{e['peak_rss'] / mib:14.0f} {f['peak_rss'] / mib:14.0f} {e['extra'] / mib:11.0f} "
              f"{f['extra'] / mib:11.0f} {abs(e['loss'] - f['loss']):9.1e}")
    if a.big:
        f = best[("fused", a.big)]
        print(f"{a.big:6d} {2 * a.big:7d} {f'(B x M = {a.big * 2 * a.big * 4 / 2**30:.3g} GiB)':>8s} "
              f"{f.get('seconds', float('nan')):8.2f} {'':8s} {'':14s} {f.get('peak_rss', 0) / mib:14.0f} "
              f"{'':11s} {f.get('extra', 0) / mib:11.0f}  {f.get('error', '')}")


if __name__ == "__main__":
    main()
