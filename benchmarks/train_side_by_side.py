"""One epoch over the same sample pairs, batch 32: our trainer (FusedMNRLoss) vs
sentence-transformers' trainer with MultipleNegativesRankingLoss. Wall time and held-out
nDCG@10 of each, side by side, same base model, same seed, same max_seq_length.

    python benchmarks/train_side_by_side.py [--pairs 2000] [--max-seq-length 128]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-seq-length", type=int, default=128)
    a = ap.parse_args()

    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.training_args import BatchSamplers

    from fastembed_tune.data import load_eval, read_pairs
    from fastembed_tune.evaluate import evaluate
    from fastembed_tune.model import EmbeddingModel, default_model_path
    from fastembed_tune.pipeline import sample_paths
    from fastembed_tune.train import TrainConfig, train

    p = sample_paths()
    pairs = read_pairs(p["train"])[: a.pairs]
    evalset = load_eval(p["test"], p["corpus"])
    out = tempfile.mkdtemp(prefix="bench-train-")
    rows = []

    base = EmbeddingModel.load()
    base.max_seq_length = a.max_seq_length
    rows.append(("base model", 0.0, evaluate(base, evalset)["metrics"]["ndcg@10"]))

    m = EmbeddingModel.load()
    t0 = time.perf_counter()
    s = train(pairs, TrainConfig(output_dir=os.path.join(out, "ours"), batch_size=a.batch_size, lr=a.lr,
                                 max_seq_length=a.max_seq_length, num_negatives=0, show_progress_bar=False), model=m)
    t_ours = time.perf_counter() - t0
    tuned = EmbeddingModel.load(s["output"])
    tuned.max_seq_length = a.max_seq_length
    rows.append(("fastembed-tune train (FusedMNRLoss)", t_ours, evaluate(tuned, evalset)["metrics"]["ndcg@10"]))

    st = SentenceTransformer(default_model_path(), device="cpu")
    st.max_seq_length = a.max_seq_length
    ds = Dataset.from_dict({"anchor": [x.query for x in pairs], "positive": [x.positive for x in pairs]})
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(out, "st"), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr, warmup_ratio=0.1, save_strategy="no", report_to=[], use_cpu=True, seed=42,
        batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=50)
    t0 = time.perf_counter()
    SentenceTransformerTrainer(model=st, args=args, train_dataset=ds,
                               loss=losses.MultipleNegativesRankingLoss(st)).train()
    t_st = time.perf_counter() - t0
    st.save(os.path.join(out, "st-model"))
    st_m = EmbeddingModel.load(os.path.join(out, "st-model"))
    st_m.max_seq_length = a.max_seq_length
    rows.append(("sentence-transformers fit (MNRL)", t_st, evaluate(st_m, evalset)["metrics"]["ndcg@10"]))

    print(f"{len(pairs)} pairs, 1 epoch, batch {a.batch_size}, lr {a.lr}, max_seq_length {a.max_seq_length}")
    print(f"{'trainer':40s} {'seconds':>8s} {'nDCG@10':>8s}")
    for name, secs, nd in rows:
        print(f"{name:40s} {secs:8.1f} {nd:8.4f}")
    print(f"time ratio sentence-transformers / ours: {t_st / t_ours:.2f}x")


if __name__ == "__main__":
    main()
