"""Fused contrastive kernel vs the eager torch formula sentence-transformers uses
(``cross_entropy(scale * q @ docs.T)``), forward + backward, one hard negative (M = 2B), d = 384.

    python benchmarks/contrastive_side_by_side.py [--batches 1024 4096 8192] [--big 65536]

Each (method, B) runs in its own process so peak RSS is its own; "extra" is the peak minus the
RSS once torch is imported and the inputs exist.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(method: str, B: int, d: int, threads: int) -> dict:
    import resource

    import psutil
    import torch

    torch.set_num_threads(threads)
    from fastembed_tune.kernels import contrastive

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).requires_grad_()
    docs = torch.nn.functional.normalize(torch.randn(2 * B, d, generator=g), dim=1).requires_grad_()
    pos = torch.arange(B)
    # warm-up on a tiny case (thread pools, first-call costs)
    contrastive(q[:8].detach().requires_grad_(), docs[:16].detach(), pos[:8], 20.0).backward()
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if method == "eager":
        loss = torch.nn.functional.cross_entropy(20.0 * q @ docs.T, pos)
    else:
        loss = contrastive(q, docs, pos, 20.0)
    loss.backward()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "B": B, "seconds": dt, "peak_rss": peak, "extra": peak - base, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="*", default=[1024, 4096, 8192])
    ap.add_argument("--big", type=int, default=65536, help="fused-only batch size (0: skip)")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.d, a.threads)))
        return

    def run(method, B):
        out = subprocess.run([sys.executable, __file__, "--child", method, str(B), "--d", str(a.d),
                              "--threads", str(a.threads)], capture_output=True, text=True)
        if out.returncode != 0:
            return {"method": method, "B": B, "error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
        return json.loads(out.stdout.strip().splitlines()[-1])

    mib = 2 ** 20
    print(f"{'B':>6s} {'M':>7s} {'eager s':>8s} {'fused s':>8s} {'speed-up':>8s} "
          f"{'eager peak MiB':>14s} {'fused peak MiB':>14s} {'eager extra':>11s} {'fused extra':>11s} {'loss diff':>9s}")
    for B in a.batches:
        e, f = run("eager", B), run("fused", B)
        print(f"{B:6d} {2 * B:7d} {e['seconds']:8.2f} {f['seconds']:8.2f} {e['seconds'] / f['seconds']:7.2f}x "
              f"{e['peak_rss'] / mib:14.0f} {f['peak_rss'] / mib:14.0f} {e['extra'] / mib:11.0f} "
              f"{f['extra'] / mib:11.0f} {abs(e['loss'] - f['loss']):9.1e}")
    if a.big:
        f = run("fused", a.big)
        print(f"{a.big:6d} {2 * a.big:7d} {'(B x M = ' + str(round(a.big * 2 * a.big * 4 / 2**30)) + ' GiB)':>8s} "
              f"{f.get('seconds', float('nan')):8.2f} {'':8s} {'':14s} {f.get('peak_rss', 0) / mib:14.0f} "
              f"{'':11s} {f.get('extra', 0) / mib:11.0f}  {f.get('error', '')}")


if __name__ == "__main__":
    main()
