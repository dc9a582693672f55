"""A better student (issue 12, item 3): distil a fine-tuned teacher into layer-pruned students of
2, 3 and 4 layers on all the in-domain text (training queries, the leak-free corpus, training
positives, pseudo-queries cut from the documents) with MSE to the teacher (plus, with
--contrastive-weight, InfoNCE on the training pairs); the epoch is chosen on a validation split of
the training queries (the one ``run`` holds out from the teacher, so the teacher never trained on
it), then every student and the teacher are scored on the built-in sample's test queries (nDCG@10
at 128 tokens).

    nice -n 10 .venv/bin/python benchmarks/distill_student.py --teacher runs/sample/train/model

Prints the CPU, then a table (kept layers, epochs chosen / run, distil seconds, validation ratio,
test nDCG@10, ratio to the teacher) and writes it as JSON (``--results``). The layer count to ship is
the smallest whose validation nDCG@10 keeps ``--keep`` of the teacher's (never the test set).
``--baseline`` adds the MSE-only, 1-epoch student ``run`` makes today. ``--corpus full`` distils on
every corpus document (and pseudo-queries cut from each), test-relevant ones included: the corpus is
unlabeled text a user deploys over, so this uses no test label (no qrel; the validation split and
its distractors stay leak-free). In either mode a pseudo-query that happens to spell a test or
validation query is dropped (sessions before 2026-12-04 kept the ~20 such short phrases).
``--extra-texts FILE`` (one text a line, e.g. from ``benchmarks/debian_descriptions.py``) adds its
first ``--extra-max`` texts to the distillation set, MSE to the teacher only (no pair, no label; one
that spells a test or validation query is dropped too); their teacher targets get their own cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fastembed_tune.core.cpu import cpu_description  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="runs/sample/train/model", help="fine-tuned model directory")
    ap.add_argument("--layer-counts", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--epochs", type=int, default=3, help="the most epochs (the schedule spans them)")
    ap.add_argument("--patience", type=int, default=2, help="stop after this many epochs below the best")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bs", type=int, default=64, help="texts per step")
    ap.add_argument("--pair-bs", type=int, default=32, help="training pairs per step (contrastive term)")
    ap.add_argument("--contrastive-weight", type=float, default=0.0,
                    help="0: MSE only; 1e-3 pulls about as hard as the per-element MSE at the start (d = 384), "
                         "and on the sample cost 0.07x of the teacher's test nDCG@10 (3 layers, 3 epochs)")
    ap.add_argument("--corpus", choices=("leakfree", "full"), default="leakfree",
                    help="documents to distil on: the corpus minus every test-relevant document, or all of it")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="weight of the layer-to-layer term (each kept layer's token states against the teacher "
                         "layer it was copied from; 1 pulls as hard per unit of cosine as the embedding MSE)")
    ap.add_argument("--pseudo-per-doc", type=int, default=1, help="pseudo-queries cut from each document")
    ap.add_argument("--extra-texts", default=None, metavar="FILE",
                    help="more distillation text, one a line (e.g. Debian package descriptions), MSE only")
    ap.add_argument("--extra-max", type=int, default=None, metavar="N", help="at most N of the --extra-texts")
    ap.add_argument("--msl", type=int, default=128, help="max_seq_length while distilling")
    ap.add_argument("--keep", type=float, default=0.95, help="validation ratio the shipped layer count keeps")
    ap.add_argument("--seed", type=int, default=42, help="run's seed: the same validation split as the teacher's")
    ap.add_argument("--teacher-scores", type=float, nargs=2, metavar=("VAL", "TEST"),
                    help="the teacher's validation and test nDCG@10 from an earlier run of this script (skips them)")
    ap.add_argument("--baseline", action="store_true", help="also the MSE-only 1-epoch student run makes today")
    ap.add_argument("--out", default="runs/distill_student", help="students go to OUT/TAG<name>; the teacher cache is shared")
    ap.add_argument("--tag", default="", help="prefix of the students' folders (runs of other settings share OUT)")
    ap.add_argument("--results", default=None, help="JSON file (default: OUT/results.json)")
    return ap.parse_args(argv)


def load(a: argparse.Namespace):
    """(fit pairs, validation pairs, leak-free corpus, test set) split as ``run`` splits them."""
    from fastembed_tune.data.bundled import sample_paths
    from fastembed_tune.data.readers import load_eval, read_pairs
    from fastembed_tune.mining.exact import leakfree_corpus
    from fastembed_tune.training.validation import split_validation

    p = sample_paths()
    pairs, ev = read_pairs(p["train"]), load_eval(p["test"], p["corpus"])
    fit, val = split_validation(pairs, 0.1, 500, a.seed, avoid=set(ev.queries.values()))
    return fit, val, leakfree_corpus(ev), ev


def score_test(model_dir: str, ev) -> float:
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.evaluation.metrics import evaluate

    m = EmbeddingModel.load(model_dir)
    m.max_seq_length = 128
    return float(evaluate(m, ev)["metrics"]["ndcg@10"])


def one_student(a, name: str, texts, validation, keep_layers, precomputed: dict, per_epoch: bool, **kw) -> dict:
    """Distil one student; its wall time. ``per_epoch``: validated after every epoch (the best
    ships); else (the baseline) scored once on ``validation`` at the end."""
    from fastembed_tune.training.distill import DistillConfig, distill

    t0 = time.perf_counter()
    cfg = DistillConfig(layers=keep_layers, batch_size=a.bs, max_seq_length=a.msl, seed=a.seed, show_progress_bar=False,
                        **kw)
    s = distill(a.teacher, texts, os.path.join(a.out, a.tag + name), cfg, precomputed=precomputed,
                validation=validation if per_epoch else None)
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    if "validation" not in s:
        from fastembed_tune.embed.model import EmbeddingModel

        student = EmbeddingModel.load(s["output"])
        student.max_seq_length = a.msl
        s.update(best_epoch=s["epochs"], epochs_run=s["epochs"],
                 validation=[{"epoch": s["epochs"], "ndcg@10": validation.score(student)}])
    return s


def main(argv=None) -> None:
    import torch

    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.training.distill import distillation_texts, spread_layers, teacher_embeddings
    from fastembed_tune.training.validation import Validation

    a = parse_args(argv)
    if not os.path.isfile(os.path.join(a.teacher, "modules.json")):
        sys.exit(f"no teacher at {a.teacher}: make one with `fastembed-tune run --output runs/sample` "
                 f"(its runs/sample/train/model) and pass --teacher")
    results = a.results or os.path.join(a.out, "results.json")
    fit, val, corpus, ev = load(a)
    validation = Validation(val, corpus, seed=0)
    teacher = EmbeddingModel.load(a.teacher)
    teacher.max_seq_length = 128
    n_layers = teacher.transformer.config.num_hidden_layers
    t_val, t_test = a.teacher_scores or (validation.score(teacher), score_test(a.teacher, ev))
    docs = list(dict.fromkeys(ev.corpus.values())) if a.corpus == "full" else corpus
    texts = distillation_texts(fit, docs, pseudo_per_doc=a.pseudo_per_doc, seed=a.seed)
    plain = distillation_texts(fit, docs)
    extra = []
    if a.extra_texts:
        with open(a.extra_texts, encoding="utf-8") as f:
            extra = [t for t in (line.strip() for line in f) if t][:a.extra_max]
        texts = list(dict.fromkeys(texts + extra))
    # a pseudo-query may happen to spell a test or validation query ("interface"): never distil on those
    held = set(ev.queries.values()) | {p.query for p in val}
    texts, plain = ([t for t in ts if t not in held] for ts in (texts, plain))
    teacher.max_seq_length = a.msl  # the teacher's targets, computed once for every student
    every = list(dict.fromkeys(texts + plain))
    t0 = time.perf_counter()
    cache = "teacher_embeddings" + (f".{os.path.basename(a.extra_texts)}" if extra else "") + ".npy"
    cached = teacher_embeddings(teacher, every, os.path.join(a.out, cache))
    precomputed = {t: cached[i] for i, t in enumerate(every)}
    teacher_s = time.perf_counter() - t0
    del teacher
    print(cpu_description(), f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"teacher {a.teacher}: {n_layers} layers, validation nDCG@10 {t_val:.4f} ({len(val)} queries), "
          f"test nDCG@10 {t_test:.4f} ({len(ev.qrels)} queries); {len(texts)} distillation texts "
          f"({a.pseudo_per_doc} pseudo-queries per document, {a.corpus} corpus: {len(docs)} documents"
          f"{f'; {len(extra)} from {a.extra_texts}' if extra else ''}), "
          f"{len(fit)} training pairs; teacher targets {teacher_s:.0f} s", flush=True)

    plans = [(f"l{k}", k, spread_layers(n_layers, k), texts, dict(
        epochs=a.epochs, lr=a.lr, per_epoch=True, patience=a.patience,
        pairs=fit if a.contrastive_weight > 0 else None, contrastive_weight=a.contrastive_weight,
        hidden_weight=a.hidden_weight,
        pair_batch_size=a.pair_bs)) for k in a.layer_counts]
    if a.baseline:  # what run does today: default layers, MSE only, 1 epoch at lr 1e-3, no pseudo-queries
        plans.append(("baseline", (n_layers + 1) // 2, None, plain, dict(epochs=1, lr=1e-3, per_epoch=False)))
    rows = []

    def save(chosen) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
        with open(results, "w") as f:
            json.dump({"cpu": cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "args": vars(a), "teacher": {"path": a.teacher, "layers": n_layers, "test_ndcg@10": t_test,
                                                    "val_ndcg@10": t_val},
                       "texts": len(texts), "extra_texts": len(extra), "pairs": len(fit), "validation_queries": len(val),
                       "teacher_targets_s": round(teacher_s, 1), "rows": rows, "chosen": chosen}, f, indent=1)

    for name, k, layers, texts_k, kw in plans:
        s = one_student(a, name, texts_k, validation, layers, precomputed, **kw)
        v_best = next(c["ndcg@10"] for c in s["validation"] if c["epoch"] == s["best_epoch"])
        st = score_test(s["output"], ev)
        row = {"name": name, "layers": k, "kept": s["student_layers"], "epochs_chosen": s["best_epoch"],
               "epochs_run": s["epochs_run"], "distill_s": s["seconds"], "wall_s": s["wall_s"],
               "val_ndcg@10": v_best, "val_ratio": v_best / t_val, "test_ndcg@10": st, "ratio": st / t_test,
               "texts": s["texts"], "steps": s["steps"], "curve": s["validation"]}
        rows.append(row)
        print(json.dumps({k2: row[k2] for k2 in row if k2 != "curve"}), flush=True)
        save(None)

    ship = next((r for r in sorted(rows, key=lambda r: r["layers"]) if r["name"] != "baseline"
                 and r["val_ratio"] >= a.keep), None)
    print()
    print(cpu_description())
    print(f"teacher: {n_layers} layers, test nDCG@10 {t_test:.4f}, validation nDCG@10 {t_val:.4f}")
    print(f"{'student':>9} {'layers':>12} {'epochs':>8} {'distil s':>9} {'val ratio':>9} {'nDCG@10':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['name']:>9} {str(r['kept']):>12} {r['epochs_chosen']:>3}/{r['epochs_run']:<4} {r['distill_s']:>9.0f} "
              f"{r['val_ratio']:>9.3f} {r['test_ndcg@10']:>8.4f} {r['ratio']:>5.3f}x")
    print(f"chosen on validation (smallest keeping {a.keep:.2f}x): {ship['name'] if ship else 'none'}")
    save(ship['name'] if ship else None)
    print(f"results: {results}")


if __name__ == "__main__":
    main()
