"""One fine-tuning configuration on the built-in sample, scored like `fastembed-tune run` scores it:
base embeddings (cached in --cache), mining against the corpus minus every test-relevant document,
training, held-out nDCG@10 at 128 tokens. Appends one JSON line to --results. The sweeps in the README
(max_ratio, negatives, lr, batch size) are rows of this script.

    python benchmarks/sample_sweep.py --name r95 --max-ratio 0.95
    python benchmarks/sample_sweep.py --name bs64 --max-ratio 0.95 --bs 64
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import numpy as np

    from fastembed_tune.cli.common import PRECISIONS, add_precision_arg
    from fastembed_tune.data.bundled import sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.evaluation.metrics import embed_evalset, evaluate
    from fastembed_tune.mining.exact import mine_hard_negatives
    from fastembed_tune.training.train import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--max-ratio", type=float, default=None)
    ap.add_argument("--neg", type=int, default=1, help="hard negatives per pair (mined and used)")
    ap.add_argument("--skip-top", type=int, default=0)
    ap.add_argument("--tsl", type=int, default=64, help="training max_seq_length")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--sym", action="store_true")
    add_precision_arg(ap)
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--cache", default="runs/sweep/base_embeddings.npz")
    ap.add_argument("--results", default="runs/sweep/results.jsonl")
    a = ap.parse_args()

    p = sample_paths()
    pairs, ev = read_pairs(p["train"]), load_eval(p["test"], p["corpus"])
    base = EmbeddingModel.load()
    base.max_seq_length = 128
    os.makedirs(os.path.dirname(a.cache) or ".", exist_ok=True)
    if os.path.exists(a.cache):
        z = np.load(a.cache)
        qemb, cemb, uq = z["q"], z["c"], z["uq"]
    else:
        qemb, cemb = embed_evalset(base, ev)
        uq = base.encode([x.query for x in pairs])
        np.savez(a.cache, q=qemb, c=cemb, uq=uq)
    base_ndcg = evaluate(None, ev, query_embeddings=qemb, corpus_embeddings=cemb)["metrics"]["ndcg@10"]
    test_docs = {d for rel in ev.qrels.values() for d in rel}
    ids = list(ev.corpus)
    keep = [i for i, d in enumerate(ids) if d not in test_docs]
    mined = mine_hard_negatives(pairs, corpus=[ev.corpus[ids[i]] for i in keep], num_negatives=max(1, a.neg),
                                skip_top=a.skip_top, max_ratio=a.max_ratio, show_progress_bar=False,
                                embeddings=(uq, np.ascontiguousarray(cemb[keep])))
    out = os.path.join(a.out, a.name)
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(output_dir=out, epochs=a.epochs, max_steps=a.steps, batch_size=a.bs, lr=a.lr,
                      num_negatives=a.neg, max_seq_length=a.tsl, symmetric=a.sym, scale=a.scale,
                      bf16=PRECISIONS[a.precision], show_progress_bar=False)
    base.max_seq_length = 256  # the saved model keeps its own
    s = train(mined.pairs if a.neg > 0 else pairs, cfg, model=base)
    t0 = time.perf_counter()
    tuned = EmbeddingModel.load(s["output"])
    tuned.max_seq_length = 128
    ndcg = evaluate(tuned, ev)["metrics"]["ndcg@10"]
    r = {"name": a.name, "args": vars(a), "train_s": s["seconds"], "steps": s["steps"], "bf16": s["bf16"],
         "eval_s": round(time.perf_counter() - t0, 1), "base_ndcg@10": base_ndcg, "ndcg@10": ndcg,
         "ratio": ndcg / base_ndcg}
    print(json.dumps(r))
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
