"""Distil a (fine-tuned) teacher into a layer-pruned student on the built-in sample's training queries
and mining corpus (no test query, no test-relevant document), then score the student's held-out
nDCG@10 at 128 tokens. The README's distillation table is rows of this script.

    python benchmarks/distill_sample.py --teacher runs/sample/train/model --layers 0,2,5 --epochs 6 --msl 64
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from fastembed_tune.data.bundled import sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.evaluation.metrics import evaluate
    from fastembed_tune.training.distill import DistillConfig, distill

    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--layers", default=None, help="default: half the layers, first to last (0,2,5 of 6)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=0.0)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--msl", type=int, default=128, help="max_seq_length while distilling")
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--results", default="runs/distill/results.jsonl")
    a = ap.parse_args()

    p = sample_paths()
    pairs, ev = read_pairs(p["train"]), load_eval(p["test"], p["corpus"])
    test_docs = {d for rel in ev.qrels.values() for d in rel}
    texts = list(dict.fromkeys([x.query for x in pairs] + [t for d, t in ev.corpus.items() if d not in test_docs]))
    name = f"l{(a.layers or 'default').replace(',', '')}_e{a.epochs}_t{a.msl}_lr{a.lr}_kl{a.kl}"
    s = distill(a.teacher, texts, os.path.join(a.out, name), DistillConfig(
        layers=a.layers, epochs=a.epochs, lr=a.lr, kl_weight=a.kl, batch_size=a.bs, max_seq_length=a.msl,
        show_progress_bar=True))
    teacher, student = EmbeddingModel.load(a.teacher), EmbeddingModel.load(s["output"])
    teacher.max_seq_length = student.max_seq_length = 128
    t, st = evaluate(teacher, ev)["metrics"]["ndcg@10"], evaluate(student, ev)["metrics"]["ndcg@10"]
    r = {"name": name, "args": vars(a), "distill_s": s["seconds"], "train_s": s["train_seconds"],
         "student_layers": s["student_layers"], "teacher_ndcg@10": t, "student_ndcg@10": st, "ratio": st / t}
    print(json.dumps(r))
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
