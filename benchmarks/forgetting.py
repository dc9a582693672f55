"""What fine-tuning costs elsewhere, and what gets it back: weight interpolation with the base model
(WiSE-FT, what ``run --max-forgetting`` does) against replay of general-domain pairs in training.

For a fine-tuned model (``--tuned``, e.g. ``runs/sample/train/model``, or one trained hard on
purpose: ``fastembed-tune run --lr 1e-3 --epochs 2 --max-forgetting off``), prints nDCG@10 on the
built-in sample's test queries (in-domain) and on the WordNet guard (general English) for
interpolation ratios alpha = 1 (the fine-tuned model) .. 0 (the base). With ``--replay-wordnet DIR``
(WordNet's dict folder: ``apt-get download wordnet-base && dpkg -x wordnet-base_*_all.deb x``) it
also trains the same way with ``--replay N`` general pairs (WordNet lemma -> definition, none of the
guard's lemmas or definitions) mixed into the training pairs, and scores that model too.

    python benchmarks/forgetting.py --tuned /tmp/r_hi/train/model --pairs /tmp/r_hi/mined.jsonl \\
        --replay-wordnet /tmp/wn/x/usr/share/wordnet --lr 1e-3 --epochs 2 --out /tmp/forgetting.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def replay_pairs(wordnet_dir: str, n: int, avoid: set, seed: int = 1) -> list:
    """``n`` WordNet (lemma, definition) pairs whose lemma and definition are not in ``avoid``."""
    from make_guard import candidates

    from fastembed_tune.data.readers import Pair

    items = [Pair(lemma, doc) for lemma, doc in candidates(wordnet_dir) if lemma not in avoid and doc not in avoid]
    random.Random(seed).shuffle(items)
    return items[:n]


def main() -> None:
    from fastembed_tune.core.cpu import cpu_description
    from fastembed_tune.data.bundled import guard_paths, sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.evaluation.metrics import evaluate
    from fastembed_tune.training.forgetting import interpolate
    from fastembed_tune.training.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuned", required=True, help="the fine-tuned model directory")
    ap.add_argument("--base", default=None, help="its base model (default: built-in all-MiniLM-L6-v2)")
    ap.add_argument("--alphas", default="1,0.8,0.6,0.5,0.4,0.2,0")
    ap.add_argument("--pairs", help="the (mined) training pairs the tuned model was trained on (for --replay-wordnet)")
    ap.add_argument("--replay-wordnet", help="WordNet dict folder: also train with general pairs mixed in")
    ap.add_argument("--replay", type=int, default=240, help="general pairs mixed in (default 240: 10%% of the sample)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--msl", type=int, default=128)
    ap.add_argument("--out", default="forgetting.json")
    a = ap.parse_args()

    print(cpu_description())
    test = load_eval(sample_paths()["test"], sample_paths()["corpus"])
    guard = load_eval(guard_paths()["test"], guard_paths()["corpus"])

    def scores(model) -> dict:
        model.max_seq_length = min(model.max_seq_length, a.msl)
        return {"test": evaluate(model, test)["metrics"]["ndcg@10"], "guard": evaluate(model, guard)["metrics"]["ndcg@10"]}

    base, tuned = EmbeddingModel.load(a.base), EmbeddingModel.load(a.tuned)
    rows = []
    for alpha in [float(x) for x in a.alphas.split(",")]:
        t0 = time.perf_counter()
        rows.append({"model": f"interpolated, alpha {alpha:g}", "alpha": alpha, **scores(interpolate(base, tuned, alpha)),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    if a.replay_wordnet:
        g = [json.loads(line) for line in open(guard_paths()["test"])]
        avoid = {r["query"] for r in g} | set(guard.corpus.values())
        extra = replay_pairs(a.replay_wordnet, a.replay, avoid)
        pairs = read_pairs(a.pairs) + extra
        t0 = time.perf_counter()
        out = Path(a.out).with_suffix("") / "replay"
        model = EmbeddingModel.load(a.base)
        train(pairs, TrainConfig(output_dir=str(out), epochs=a.epochs, batch_size=32, lr=a.lr, num_negatives=1,
                                 seed=42, max_seq_length=64, validation_share=0.1, show_progress_bar=True,
                                 validation_avoid=list(test.queries.values())), model=model)
        rows.append({"model": f"replay of {len(extra)} WordNet pairs", "alpha": None,
                     **scores(EmbeddingModel.load(str(out / "model"))), "train_seconds": round(time.perf_counter() - t0)})
        print(rows[-1], flush=True)
    b = next((r for r in rows if r["alpha"] == 0.0), None)
    print("\n| model | test nDCG@10 | guard nDCG@10 | guard vs base |\n|---|---:|---:|---:|")
    for r in rows:
        rel = f"{(r['guard'] - b['guard']) / b['guard']:+.1%}" if b else "—"
        print(f"| {r['model']} | {r['test']:.4f} | {r['guard']:.4f} | {rel} |")
    Path(a.out).write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
