"""One epoch over the same sample pairs, batch 32: our trainer (FusedMNRLoss) vs
sentence-transformers' trainer with MultipleNegativesRankingLoss. Wall time and held-out
nDCG@10 of each, side by side, same base model, same seed, same max_seq_length.

    python benchmarks/train_side_by_side.py [--pairs 2000] [--max-seq-length 128] [--precision auto]

Our trainer runs with ``--precision`` (auto: bf16 autocast where the CPU has native bf16, as
``fastembed-tune train`` does by default); sentence-transformers runs in fp32 (its default) and,
with ``--st-bf16``, also with ``bf16=True`` (the same autocast), so both precisions are compared.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from fastembed_tune.cli.common import PRECISIONS, add_precision_arg

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-seq-length", type=int, default=128)
    add_precision_arg(ap)
    ap.add_argument("--st-bf16", action="store_true", help="add a sentence-transformers bf16 row")
    a = ap.parse_args()

    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    from fastembed_tune.data.bundled import sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel, default_model_path
    from fastembed_tune.evaluation.metrics import evaluate
    from fastembed_tune.training.loop import use_bf16
    from fastembed_tune.training.train import TrainConfig, train

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
    bf16 = use_bf16("cpu", PRECISIONS[a.precision])
    s = train(pairs, TrainConfig(output_dir=os.path.join(out, "ours"), batch_size=a.batch_size, lr=a.lr,
                                 max_seq_length=a.max_seq_length, num_negatives=0, show_progress_bar=False,
                                 bf16=bf16), model=m)
    t_ours = time.perf_counter() - t0
    tuned = EmbeddingModel.load(s["output"])
    tuned.max_seq_length = a.max_seq_length
    rows.append((f"fastembed-tune train (FusedMNRLoss, {'bf16' if bf16 else 'fp32'})", t_ours,
                 evaluate(tuned, evalset)["metrics"]["ndcg@10"]))

    ds = Dataset.from_dict({"anchor": [x.query for x in pairs], "positive": [x.positive for x in pairs]})
    for st_bf16 in [False] + ([True] if a.st_bf16 else []):
        st = SentenceTransformer(default_model_path(), device="cpu")
        st.max_seq_length = a.max_seq_length
        args = SentenceTransformerTrainingArguments(
            output_dir=os.path.join(out, "st"), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
            learning_rate=a.lr, warmup_ratio=0.1, save_strategy="no", report_to=[], use_cpu=True, seed=42,
            batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=50, bf16=st_bf16)
        t0 = time.perf_counter()
        SentenceTransformerTrainer(model=st, args=args, train_dataset=ds,
                                   loss=losses.MultipleNegativesRankingLoss(st)).train()
        t_st = time.perf_counter() - t0
        st.save(os.path.join(out, "st-model"))
        st_m = EmbeddingModel.load(os.path.join(out, "st-model"))
        st_m.max_seq_length = a.max_seq_length
        rows.append((f"sentence-transformers fit (MNRL, {'bf16' if st_bf16 else 'fp32'})", t_st,
                     evaluate(st_m, evalset)["metrics"]["ndcg@10"]))

    print(f"{len(pairs)} pairs, 1 epoch, batch {a.batch_size}, lr {a.lr}, max_seq_length {a.max_seq_length}")
    print(f"{'trainer':48s} {'seconds':>8s} {'nDCG@10':>8s} {'time vs ours':>12s}")
    for name, secs, nd in rows:
        print(f"{name:48s} {secs:8.1f} {nd:8.4f} {secs / t_ours if secs else float('nan'):11.2f}x")


if __name__ == "__main__":
    main()
