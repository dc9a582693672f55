"""``fastembed-tune run``: base evaluation -> mining -> training -> evaluation -> report.

It only chains the stage functions (evaluate, mine_hard_negatives, train, write_report); each
is also its own subcommand. Embeddings of the base model are computed once and reused for the
base evaluation and for mining.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import check_output, output_lock
from .data import data_report, load_eval, read_pairs
from .errors import UserError


def sample_paths() -> dict[str, str]:
    """Paths of the built-in sample (FOLDOC computing jargon: term -> masked definition).

    >>> sorted(sample_paths())
    ['corpus', 'test', 'train']
    """
    base = Path(__file__).resolve().parent / "sample_data"
    return {"train": str(base / "train.jsonl"), "test": str(base / "test.jsonl"), "corpus": str(base / "corpus.jsonl")}


def run_pipeline(output_dir: str, model: Optional[str] = None, train_path: Optional[str] = None,
                 test_path: Optional[str] = None, corpus_path: Optional[str] = None, epochs: int = 1,
                 max_steps: Optional[int] = None, batch_size: int = 32, lr: float = 2e-4,
                 num_negatives: int = 1, max_ratio: Optional[float] = 0.95, skip_top: int = 0,
                 max_seq_length: Optional[int] = 128, train_max_seq_length: Optional[int] = 64,
                 symmetric: bool = False, seed: int = 42, distill: bool = True,
                 distill_layers: Optional[str] = None,
                 distill_epochs: int = 1, distill_lr: float = 1e-3, distill_kl_weight: float = 0.0,
                 export: bool = True, bf16: Optional[bool] = None, show_progress_bar: bool = True,
                 log=print) -> dict:
    """Run the whole pipeline on (train pairs, test pairs or BEIR folder, corpus) and write
    ``output_dir/{report.md, metrics.json, metrics.png, mined.jsonl, train/model, ...}``.
    ``max_seq_length`` truncates texts for embedding (evaluation, mining) and
    ``train_max_seq_length`` for training (cheaper steps; the saved model keeps its own).
    Then (when ``distill``) the fine-tuned model is distilled into a layer-pruned student
    (``output_dir/student/model``) keeping ``distill_layers`` (default: half of them from first to
    last, [0, 2, 5] of MiniLM's 6), trained on the training texts and the mining corpus, never on
    test queries; and (when ``export``) the student is exported to ONNX fp32 + int8
    (``output_dir/onnx``); each adds rows to the report, evaluated on the same held-out queries.
    The defaults fit a 2-core CPU machine in under 10 minutes on the built-in sample.

    Example (the built-in sample; takes minutes, so not run as a doctest):
        >>> run_pipeline("runs/sample")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    use_sample = train_path is None and test_path is None
    if use_sample:
        paths = sample_paths()
        train_path, test_path, corpus_path = paths["train"], paths["test"], corpus_path or paths["corpus"]
    if train_path is None or test_path is None:
        raise UserError("give both --train and --test (or neither, for the built-in sample)")
    out = check_output(output_dir, "dir")
    with output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        return _run_locked(out, model, train_path, test_path, corpus_path, epochs, max_steps, batch_size, lr,
                           num_negatives, max_ratio, skip_top, max_seq_length, train_max_seq_length, symmetric, seed,
                           distill, distill_layers, distill_epochs, distill_lr, distill_kl_weight, export, bf16,
                           show_progress_bar, log, t_start)


def _run_locked(out: Path, model, train_path, test_path, corpus_path, epochs, max_steps, batch_size, lr,
                num_negatives, max_ratio, skip_top, max_seq_length, train_max_seq_length, symmetric, seed,
                distill, distill_layers, distill_epochs, distill_lr, distill_kl_weight, export, bf16,
                show_progress_bar, log, t_start) -> dict:
    """:func:`run_pipeline` once the output folder is checked and locked (arguments as there)."""
    from .evaluate import embed_evalset, evaluate, format_table, write_report
    from .mining import format_summary, mine_hard_negatives, negatives_warning, write_pairs_jsonl
    from .model import EmbeddingModel
    from .train import TrainConfig, train


    train_pairs = read_pairs(train_path)
    evalset = load_eval(test_path, corpus_path)
    test_pairs = read_pairs(test_path) if not os.path.isdir(test_path) else []
    drep = data_report(train_pairs, test_pairs or None)
    log(f"data: {len(train_pairs)} training pairs, {len(evalset.qrels)} test queries, "
        f"{len(evalset.corpus)} corpus documents")
    if drep.get("overlapping_queries"):
        log(f"warning: {drep['overlapping_queries']} test queries also appear in the training data")

    # 1. base model: embed the evaluation set once, evaluate
    base = EmbeddingModel.load(model)
    model_max_len = base.max_seq_length
    if max_seq_length:
        base.max_seq_length = min(base.max_seq_length, max_seq_length)
    eval_max_len = base.max_seq_length
    qemb, cemb = embed_evalset(base, evalset, show_progress_bar=show_progress_bar)
    m_base = evaluate(base, evalset, query_embeddings=qemb, corpus_embeddings=cemb)
    log(f"base nDCG@10 = {m_base['metrics']['ndcg@10']:.4f}")

    # 2. mining against the corpus minus every test-relevant text, under whatever id (no test leakage)
    test_texts = {evalset.corpus[d] for rel in evalset.qrels.values() for d in rel}
    doc_ids = list(evalset.corpus)
    keep = [i for i, d in enumerate(doc_ids) if evalset.corpus[d] not in test_texts]
    mine_docs = [evalset.corpus[doc_ids[i]] for i in keep]
    known = {t: i for i, t in enumerate(mine_docs)}
    missing = list(dict.fromkeys(p.positive for p in train_pairs if p.positive not in known))
    extra = base.encode(missing, show_progress_bar=show_progress_bar, desc="embed train positives") \
        if missing else np.zeros((0, cemb.shape[1]), np.float32)
    uq = list(dict.fromkeys(p.query for p in train_pairs))
    uq_emb = base.encode(uq, show_progress_bar=show_progress_bar, desc="embed train queries")
    qpos = {q: i for i, q in enumerate(uq)}
    mined = mine_hard_negatives(
        train_pairs, corpus=mine_docs, num_negatives=max(1, num_negatives), skip_top=skip_top,
        max_ratio=max_ratio, show_progress_bar=show_progress_bar,
        embeddings=(uq_emb[[qpos[p.query] for p in train_pairs]],
                    np.ascontiguousarray(np.concatenate([cemb[keep], extra]), dtype=np.float32)))
    log(format_summary(mined.summary))
    if num_negatives > 0 and mined.summary["negatives_mined"] == 0:
        raise UserError(f"mining found no negative for any of the {len(train_pairs)} training pairs (corpus of "
                        f"{mined.summary['corpus_size']} documents, --max-ratio {max_ratio}); give a bigger "
                        f"--corpus, raise --max-ratio, or train without hard negatives (--num-negatives 0)")
    write_pairs_jsonl(mined.pairs, str(out / "mined.jsonl"))
    warning = negatives_warning(mined.summary)
    if warning:
        print(warning, file=sys.stderr)

    # 3. fine-tune
    cfg = TrainConfig(output_dir=str(out / "train"), epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                      lr=lr, num_negatives=num_negatives, seed=seed, max_seq_length=train_max_seq_length,
                      symmetric=symmetric, bf16=bf16, show_progress_bar=show_progress_bar)
    base.max_seq_length = model_max_len  # what the saved fine-tuned model will carry
    tsum = train(mined.pairs if num_negatives > 0 else train_pairs, cfg, model=base)

    # 4. evaluate the fine-tuned model on the same data
    tuned = EmbeddingModel.load(tsum["output"])
    tuned.max_seq_length = eval_max_len
    tq, tc = embed_evalset(tuned, evalset, show_progress_bar=show_progress_bar)
    m_tuned = evaluate(tuned, evalset, query_embeddings=tq, corpus_embeddings=tc)
    log(f"fine-tuned nDCG@10 = {m_tuned['metrics']['ndcg@10']:.4f}")
    rows = [("base", m_base["metrics"]), ("fine-tuned", m_tuned["metrics"])]
    result = {"base": m_base, "fine_tuned": m_tuned, "train": tsum, "mining": mined.summary}
    run_lines = []

    # 5. distil the fine-tuned model into a layer-pruned student (training queries + mining corpus)
    if distill:
        from .distill import distill as run_distill

        texts = list(dict.fromkeys([p.query for p in train_pairs] + mine_docs +
                                   [p.positive for p in train_pairs]))
        corpus_rows = {evalset.corpus[doc_ids[i]]: tc[i] for i in keep}  # the teacher's rows, reused
        dsum = run_distill(tsum["output"], texts, out / "student", layers=distill_layers, epochs=distill_epochs,
                           lr=distill_lr, kl_weight=distill_kl_weight, seed=seed, max_seq_length=eval_max_len,
                           show_progress_bar=show_progress_bar, precomputed=corpus_rows, bf16=bf16)
        n_layers = dsum["student_num_layers"]
        name = f"student ({n_layers} layer{'s' if n_layers != 1 else ''})"
        result["distill"] = dsum
        run_lines.append(f"- distillation: layers {dsum['student_layers']} of {dsum['teacher_num_layers']}, "
                         f"{dsum['texts']} texts, {dsum['steps']} steps, lr {distill_lr}, {dsum['seconds']:.0f} s")
        students = [(name, None)]

        # 6. export the student to ONNX (fp32 + int8, parity-checked). The fp32 graph reproduces the
        # PyTorch student (min cosine >= 0.9999, checked by the export), so it is evaluated in its place.
        if export:
            from .export import export_onnx
            from .inference import INT8_FILE, OnnxEmbedder

            t_exp = time.perf_counter()
            info = export_onnx(dsum["output"], out / "onnx", quantize="int8")
            par = info["parity"]
            run_lines.append(f"- ONNX export of the student: `{out / 'onnx'}`, min cosine to PyTorch fp32 "
                             f"{par['fp32']['min_cosine']:.5f}, int8 {par['int8']['min_cosine']:.5f}; "
                             f"{time.perf_counter() - t_exp:.0f} s")
            result["export"] = info
            students = [(f"{name}, ONNX fp32", out / "onnx"), (f"{name}, ONNX int8", out / "onnx" / INT8_FILE)]
        ndcg = {}  # student label -> nDCG@10
        for label, path in students:
            if path is None:
                embedder = EmbeddingModel.load(dsum["output"])
                embedder.max_seq_length = eval_max_len
            else:
                embedder = OnnxEmbedder(path)
            m_s = evaluate(embedder, evalset, show_progress_bar=show_progress_bar)
            rows.append((label, m_s["metrics"]))
            result.setdefault("students", {})[label] = m_s
            ndcg[label] = m_s["metrics"]["ndcg@10"]
            log(f"{label} nDCG@10 = {ndcg[label]:.4f}")
        teacher_ndcg = m_tuned["metrics"]["ndcg@10"]
        if teacher_ndcg > 0:
            run_lines.append("- student vs fine-tuned teacher, nDCG@10: " + ", ".join(
                f"{label} {v / teacher_ndcg:.2f}x" for label, v in ndcg.items()))
        if export:
            fp32_ndcg, int8_ndcg = ndcg.values()
            run_lines.append(f"- int8 vs fp32 ONNX, nDCG@10: {int8_ndcg - fp32_ndcg:+.4f}")
    extra_md = "\n".join([
        "## Run", "", f"- base model: `{model or 'built-in all-MiniLM-L6-v2'}`",
        f"- training pairs: {len(train_pairs)} (`{train_path}`); test queries: {len(evalset.qrels)}; "
        f"corpus: {len(evalset.corpus)} documents",
        f"- hard negatives: {num_negatives} per pair, max_ratio {max_ratio}, skip_top {skip_top}; "
        f"{mined.summary['candidates_dropped_as_false_negatives']} likely false negatives dropped",
        f"- training: {tsum['steps']} steps, batch {batch_size}, lr {lr}, max_seq_length {train_max_seq_length}, "
        f"{tsum['pairs_per_s']} pairs/s, {tsum['seconds']:.0f} s, {'bf16 autocast' if tsum['bf16'] else 'fp32'}; "
        f"evaluation max_seq_length {max_seq_length} (fp32)",
        *run_lines, f"- total wall time: {time.perf_counter() - t_start:.0f} s", "",
        "## Data", "", "```", json.dumps(drep, indent=2), "```"])
    report = write_report(out, rows, "fastembed-tune: base vs fine-tuned", extra_md)
    log(format_table(rows))
    b, t = m_base["metrics"]["ndcg@10"], m_tuned["metrics"]["ndcg@10"]
    log(f"nDCG@10 on {len(evalset.qrels)} held-out queries: base {b:.4f} -> fine-tuned {t:.4f} "
        f"({t / b:.2f}x); report: {out / 'report.md'}")
    result.update(report=report, seconds=time.perf_counter() - t_start)
    return result
