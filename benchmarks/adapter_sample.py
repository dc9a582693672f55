"""Method 2 on the built-in sample: adapters on a frozen model's vectors vs the frozen model.

The frozen "API" model is the built-in all-MiniLM-L6-v2, embedding locally through the same
embedding store an API source uses (``adapt --embeddings builtin``; an OpenAI-compatible endpoint
serving it gives the same vectors, only slower to fetch). Every variant reads the vectors from the
store: the texts are embedded once, by the first variant (or an earlier run), never again.

For each adapter variant: test nDCG@10 frozen -> adapted with the gate's paired bootstrap 95% CI and
randomization p-value, and the adapter's training seconds on the cached vectors. Then the training
time of a linear adapter on 10,000 pairs (the training pairs repeated; 10 epochs, no early stop).
The full fine-tune of the same model on the same pairs (what owning the weights buys) is quoted from
the README (``fastembed-tune run`` on the sample), not re-run.

    .venv/bin/python benchmarks/adapter_sample.py [--store DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from fastembed_tune.adapt.adapter import unit
from fastembed_tune.adapt.sources import open_source
from fastembed_tune.adapt.training import AdapterConfig, train_adapter
from fastembed_tune.adapt.workflow import adapt
from fastembed_tune.core.cpu import cpu_description
from fastembed_tune.data.bundled import sample_paths

# README, "The built-in sample": `make run` on the same pairs (10% held out), its training stage 131 s
FULL_FINE_TUNE = ("full fine-tune of MiniLM (`fastembed-tune run`, README)", 0.3133, 0.3708, "+0.0382 to +0.0765",
                  0.0001, "131 (1 epoch)")
VARIANTS = [
    ("linear, query side", dict(kind="linear")),
    ("low-rank 64, query side", dict(kind="lowrank", rank=64)),
    ("residual MLP 1024, query side", dict(kind="mlp", hidden=1024)),
    ("linear, both sides", dict(kind="linear", sides="both")),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs/adapter_bench/store", help="embedding store (reused across runs)")
    ap.add_argument("--out", default="runs/adapter_bench", help="where each variant's adapter and report go")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args(argv)
    p = sample_paths()
    print(cpu_description())
    source = open_source("builtin", store_dir=a.store, max_seq_length=128)
    rows = []
    result = None
    for name, kw in VARIANTS:
        cfg = AdapterConfig(seed=a.seed, **kw)
        result = adapt(f"{a.out}/{kw['kind']}-{cfg.sides}", p["train"], source, p["corpus"], p["test"], cfg,
                       gate=False, show_progress_bar=False, log=lambda *x: None)
        c, t = result["comparison"], result["train"]
        rows.append((name, c["mean_a"], c["mean_b"], f"{c['ci_low']:+.4f} to {c['ci_high']:+.4f}", c["p_value"],
                     t["seconds"], t["epochs_run"], t["best_epoch"]))
        print(f"  {name}: {c['mean_a']:.4f} -> {c['mean_b']:.4f} ({t['seconds']:.1f} s)", file=sys.stderr, flush=True)
    print(f"\nfrozen model: built-in all-MiniLM-L6-v2 (max_seq_length 128) standing in for the API; sample: "
          f"{result['train']['pairs']} training pairs (10% of the queries held out for validation), 600 test "
          f"queries, 5,000 documents; {result['texts']} distinct texts in the store, {result['embedded_now']} "
          f"embedded by the last variant\n")
    print("| variant | frozen nDCG@10 | adapted | x | 95% CI of the gain | p | train s (epochs, best) |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for name, b, v, ci, pv, sec, ep, best in rows:
        print(f"| {name} | {b:.4f} | {v:.4f} | {v / b:.2f}x | {ci} | {pv:.4f} | {sec:.1f} ({ep}, {best}) |")
    name, b, v, ci, pv, sec = FULL_FINE_TUNE
    print(f"| {name} | {b:.4f} | {v:.4f} | {v / b:.2f}x | {ci} | {pv:.4f} | {sec} |")

    # training time on 10,000 cached pairs
    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.embed.store import EmbeddingStore

    pairs = read_pairs(p["train"])
    store = EmbeddingStore(a.store, source.fingerprint, source.dim)
    docs = list(read_corpus(p["corpus"]).values())
    texts = list(dict.fromkeys([t for x in pairs for t in (x.query, x.positive)] + docs))
    V = unit(store.get(texts))
    row = {t: i for i, t in enumerate(texts)}
    reps = -(-10_000 // len(pairs))
    q = np.tile(np.array([row[x.query] for x in pairs]), reps)[:10_000]
    d = np.tile(np.array([row[x.positive] for x in pairs]), reps)[:10_000]
    corpus = np.unique(np.concatenate([d, [row[t] for t in docs]]))
    t0 = time.perf_counter()
    _, s = train_adapter(V, q, d, corpus, AdapterConfig(patience=None, seed=a.seed), None, log=lambda *x: None)
    wall = time.perf_counter() - t0
    print(f"\nlinear adapter on 10,000 cached pairs (the {len(pairs)} training pairs repeated), {s['epochs_run']} "
          f"epochs, {s['steps']} steps, 7 hard negatives a pair re-mined every epoch over {len(corpus)} documents: "
          f"{wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
