"""What exact and streamed mining share: the encoder call, the top-k search each scan names, and the
mining summary (counts, means, score histograms) with its merge over shards and its text form.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from fastembed_tune.kernels import quantize_corpus, ratio_bound, topk_cosine, topk_cosine_lowp, unit_rows

HIST_BINS = np.linspace(-0.2, 1.0, 13)


def histogram(scores: np.ndarray) -> list[int]:
    clipped = np.clip(scores, HIST_BINS[0], HIST_BINS[-1])
    return np.histogram(clipped, bins=HIST_BINS)[0].tolist()


LOWP_MIN_ROWS = 20_000  # below this the fp32 scan takes well under a second and quantising costs as much


def make_search(scan: str, corpus: np.ndarray, threads: int, out: Optional[str] = None):
    """The top-k function ``scan`` names (see :func:`mine_hard_negatives`), with a ``.name``; the int8
    one quantises ``corpus`` once (into the folder ``out``, memory-mapped, when given) and reuses it
    for every call."""
    if scan not in ("auto", "fp32", "int8"):
        raise ValueError(f"scan must be 'auto', 'fp32' or 'int8', got {scan!r}")
    if scan == "auto":
        from fastembed_tune.core.cpu import INT8_SCAN, cpu_features, has_any

        fast = has_any(INT8_SCAN, cpu_features())
        scan = "int8" if fast and len(corpus) >= LOWP_MIN_ROWS else "fp32"
    if scan == "fp32":
        def search(*a, **k):
            return topk_cosine(*a, **k)
    else:
        quantized = quantize_corpus(corpus, threads=threads, **({} if out is None else {"out": out, "block_rows": 1 << 16}))

        def search(*a, **k):
            return topk_cosine_lowp(*a, quantized=quantized, **k)
    search.name = "int8 candidates + fp32 rescoring" if scan == "int8" else "fp32"
    return search


def dropped_by_ratio(unbounded: np.ndarray, max_ratio: float, pos_scores: np.ndarray) -> tuple[int, int]:
    """(candidates, pairs with any) that the ``max_ratio`` filter removed, from the scores of the same
    search without it: those above each pair's bound, the kernels' own (:func:`~fastembed_tune.kernels.ratio_bound`).

    >>> dropped_by_ratio(np.array([[0.5, 0.1], [-0.25, -np.inf]], dtype=np.float32), 0.9, np.array([0.4, -0.3]))
    (2, 2)
    """
    over = (unbounded > ratio_bound(max_ratio, pos_scores)[:, None]) & np.isfinite(unbounded)
    return int(over.sum()), int(over.any(1).sum())


def summarize(scores: np.ndarray, ids: np.ndarray, pos_scores: np.ndarray, corpus_size: int, added: int,
             num_negatives: int, skip_top: int, max_ratio: Optional[float], dropped: int, pairs_hit: int) -> dict:
    """The mining summary: counts, means and score histograms (see :func:`format_summary`)."""
    valid = ids >= 0
    got = valid.sum(1)
    return {
        "pairs": len(ids),
        "corpus_size": corpus_size,
        "positives_added_to_corpus": added,
        "num_negatives": num_negatives,
        "skip_top": skip_top,
        "max_ratio": max_ratio,
        "negatives_mined": int(got.sum()),
        "pairs_with_fewer_negatives": int((got < num_negatives).sum()),
        "pairs_with_no_negative": int((got == 0).sum()),
        "candidates_dropped_as_false_negatives": dropped,
        "pairs_with_dropped_candidates": pairs_hit,
        "mean_positive_score": float(pos_scores.mean()),
        "mean_negative_score": float(scores[valid].mean()) if valid.any() else None,
        "histogram_bins": [round(float(b), 2) for b in HIST_BINS],
        "positive_score_histogram": histogram(pos_scores),
        "negative_score_histogram": histogram(scores[valid]),
    }


def merge_summaries(parts: Sequence[dict]) -> dict:
    """One summary from the per-rank summaries of a sharded mining run (counts and histograms
    summed, means weighted).

    >>> merge_summaries([{"pairs": 1, "negatives_mined": 2, "mean_positive_score": 0.5, "mean_negative_score": 0.1},
    ...                  {"pairs": 3, "negatives_mined": 2, "mean_positive_score": 0.1, "mean_negative_score": 0.3}])["pairs"]
    4
    """
    out = dict(parts[0])
    n = sum(p["pairs"] for p in parts)
    negs = sum(p["negatives_mined"] for p in parts)
    for key, v in parts[0].items():
        if key.endswith("histogram"):
            out[key] = [sum(p[key][i] for p in parts) for i in range(len(v))]
        elif key in ("pairs", "negatives_mined", "pairs_with_fewer_negatives", "pairs_with_no_negative",
                     "candidates_dropped_as_false_negatives", "pairs_with_dropped_candidates"):
            out[key] = sum(p[key] for p in parts)
    out["mean_positive_score"] = sum(p["mean_positive_score"] * p["pairs"] for p in parts) / max(n, 1)
    vals = [(p["mean_negative_score"], p["negatives_mined"]) for p in parts if p.get("mean_negative_score") is not None]
    out["mean_negative_score"] = sum(m * c for m, c in vals) / max(negs, 1) if vals else None
    return out


def encode_unit(model, texts: list[str], batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """``texts`` embedded by ``model`` (ours or a sentence-transformers one) as unit rows."""
    if type(model).__module__.startswith("sentence_transformers"):
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=True)
    else:  # EmbeddingModel, EmbeddingCache, OnnxEmbedder: our encode signature
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, desc=desc)
    return unit_rows(emb)


def format_summary(summary: dict) -> str:
    """A human-readable mining summary with text histograms of positive vs negative scores.

    >>> print(format_summary({"pairs": 1, "histogram_bins": [0.0, 0.5, 1.0],
    ...     "positive_score_histogram": [0, 1], "negative_score_histogram": [1, 0]}).splitlines()[0])
    pairs: 1
    """
    lines = [f"{k}: {v}" for k, v in summary.items() if not k.endswith("histogram") and k != "histogram_bins"]
    bins = summary["histogram_bins"]
    pos, neg = summary["positive_score_histogram"], summary["negative_score_histogram"]
    top = max(1, max(pos + neg))
    lines.append("score histogram (P = positives, N = mined negatives):")
    for i in range(len(pos)):
        lines.append(f"  [{bins[i]:5.2f},{bins[i + 1]:5.2f})  P {pos[i]:6d} {'#' * round(30 * pos[i] / top):30s}"
                     f"  N {neg[i]:6d} {'#' * round(30 * neg[i] / top)}")
    return "\n".join(lines)
