"""IR metrics of a model on an evaluation set.

- :func:`ir_metrics`: nDCG@10, Recall@1/10/100, MRR@10 and MAP@100 of a ranked run against graded
  qrels, with the definitions of pytrec_eval / ranx (checked against ranx in the tests).
- :func:`embed_evalset` / :func:`evaluate`: embed an :class:`~fastembed_tune.data.readers.EvalSet`, retrieve with
  the exact native :func:`~fastembed_tune.kernels.topk_cosine`, and score the run.

This module imports :mod:`fastembed_tune.kernels` only; a model is any object with
``encode(texts, batch_size=..., show_progress_bar=..., desc=...)`` returning float32 rows.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from fastembed_tune.kernels import topk_cosine, unit_rows

__all__ = ["ir_metrics", "embed_evalset", "evaluate"]

Run = Union[Sequence[Sequence[str]], Mapping[str, Sequence[str]]]
Qrels = Mapping[str, Mapping[str, int]]

_CHUNK = 4096  # queries scored at a time: bounds memory at CHUNK x cutoff floats


# ----------------------------------------------------------------------------------------------
# metrics


def ir_metrics(run_ids: Run, qrels: Qrels, ks: Sequence[int] = (1, 10, 100), *, ndcg_k: int = 10,
               mrr_k: int = 10, map_k: int = 100, per_query: bool = False) -> dict:
    """IR metrics of a ranked run, averaged over the queries of ``qrels``.

    Args:
        run_ids: each query's retrieved doc ids, best first: a dict ``qid -> [doc id, ...]``, or a
            list of lists aligned with ``list(qrels)``. A query missing from the run, or with an
            empty list, scores 0. A doc id repeated in one list counts only at its first rank.
        qrels: ``qid -> {doc id: relevance}``; relevance > 0 means relevant (graded gains for
            nDCG). Queries with no relevant doc are left out of the average, as trec_eval does
            (there is no ideal ranking to compare with); if no query has one, ``ValueError``.
        ks: cutoffs for ``recall@k``.
        ndcg_k, mrr_k, map_k: cutoffs of nDCG, MRR and MAP.

    Returns:
        ``{"ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10", "map@100"}`` (for the
        default cutoffs) as Python floats in [0, 1], where

        - nDCG@k = DCG@k / IDCG@k with DCG = sum over ranks i <= k of rel_i / log2(i + 1) and IDCG
          the DCG of the query's qrels sorted by relevance (pytrec_eval's and ranx's ``ndcg``);
        - Recall@k = relevant docs in the top k / relevant docs;
        - MRR@k = 1 / rank of the first relevant doc in the top k (0 if none);
        - MAP@k = sum of precision@i over the ranks i <= k holding a relevant doc, divided by the
          number of relevant docs (ranx's ``map``).

        With ``per_query=True``: ``{"qids": [the scored qids, qrels order], metric: [one value per
        qid], ...}`` instead of the means (paired tests compare two runs query by query).

    >>> m = ir_metrics({"q1": ["d9", "d1", "d2"]}, {"q1": {"d1": 1, "d2": 1}})
    >>> round(m["ndcg@10"], 4), m["recall@1"], m["recall@10"], m["mrr@10"], round(m["map@100"], 4)
    (0.6934, 0.0, 1.0, 0.5, 0.5833)
    """
    cut = {"ks": ks, "ndcg_k": [ndcg_k], "mrr_k": [mrr_k], "map_k": [map_k]}
    for name, vals in cut.items():
        for k in vals:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"{name} must hold integers >= 1, got {k!r}")
    ks = [int(k) for k in ks]
    qids = list(qrels)
    if isinstance(run_ids, Mapping):
        run_of = run_ids.get
    else:
        if isinstance(run_ids, (str, bytes)) or not hasattr(run_ids, "__len__"):
            raise ValueError("run_ids must be a dict qid -> ranked doc ids, or a list of ranked lists")
        if len(run_ids) != len(qids):
            raise ValueError(f"run_ids has {len(run_ids)} ranked lists but qrels has {len(qids)} queries; "
                             "a list run must be aligned with list(qrels) (or pass a dict qid -> list)")
        by_qid = dict(zip(qids, run_ids))
        run_of = by_qid.get
    judged = [q for q in qids if any(r > 0 for r in qrels[q].values())]
    if not judged:
        raise ValueError("no query in qrels has a relevant document (relevance > 0); nothing to score")

    L = max([*ks, ndcg_k, mrr_k, map_k])
    disc = 1.0 / np.log2(np.arange(2, L + 2, dtype=np.float64))  # rank i (1-based) -> 1/log2(i+1)
    ranks = np.arange(1, L + 1, dtype=np.float64)
    per: dict[str, list[np.ndarray]] = {f"ndcg@{ndcg_k}": [], **{f"recall@{k}": [] for k in ks},
                                        f"mrr@{mrr_k}": [], f"map@{map_k}": []}
    for s in range(0, len(judged), _CHUNK):
        gain, ideal, nrel = _gains(judged[s:s + _CHUNK], qrels, run_of, L)
        hits = gain > 0
        k = ndcg_k
        per[f"ndcg@{k}"].append((gain[:, :k] @ disc[:k]) / (ideal[:, :k] @ disc[:k]))
        for k in ks:
            per[f"recall@{k}"].append(hits[:, :k].sum(1) / nrel)
        k = mrr_k
        h = hits[:, :k]
        per[f"mrr@{k}"].append(np.where(h.any(1), 1.0 / (np.argmax(h, axis=1) + 1.0), 0.0))
        k = map_k
        prec = np.cumsum(hits[:, :k], axis=1) / ranks[:k]
        per[f"map@{k}"].append((prec * hits[:, :k]).sum(1) / nrel)
    values = {m: np.concatenate(v) for m, v in per.items()}
    if per_query:
        return {"qids": judged, **{m: v.tolist() for m, v in values.items()}}
    return {m: float(np.sum(v)) / len(judged) for m, v in values.items()}


def _gains(chunk: Sequence[str], qrels: Qrels, run_of, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query of ``chunk``: the relevance of the doc at each of the first ``L`` ranks (a
    repeated doc counts at its first rank only), its qrels' relevances best first, its relevant count."""
    gain, ideal, nrel = np.zeros((len(chunk), L)), np.zeros((len(chunk), L)), np.zeros(len(chunk))
    for i, q in enumerate(chunk):
        rel = {d: r for d, r in qrels[q].items() if r > 0}
        nrel[i] = len(rel)
        best = sorted(rel.values(), reverse=True)[:L]
        ideal[i, :len(best)] = best
        seen: set = set()
        j = 0
        for d in run_of(q) or ():
            if j >= L:
                break
            if d in seen:
                continue
            seen.add(d)
            gain[i, j] = rel.get(d, 0)
            j += 1
    return gain, ideal, nrel


# ----------------------------------------------------------------------------------------------
# embedding and retrieval


def _normalized(x: Any, name: str, rows: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != rows:
        raise ValueError(f"{name} must have shape [{rows}, dim] (one row per text, in the EvalSet's "
                         f"order), got {tuple(x.shape)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    zero = ~x.any(axis=1)
    if zero.any():
        raise ValueError(f"{name} row {int(np.argmax(zero))} is all zeros; cosine needs a direction")
    return unit_rows(x)


def embed_evalset(model: Any, evalset: Any, batch_size: int = 64,
                  show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embed an EvalSet's queries and corpus: ``(qemb [len(queries), d], cemb [len(corpus), d])``.

    Rows follow ``evalset.queries`` and ``evalset.corpus`` order; pass them back to
    :func:`evaluate` as ``query_embeddings`` / ``corpus_embeddings`` to score again without
    re-embedding (e.g. with different ``k``).

    >>> import numpy as np
    >>> from fastembed_tune.data.readers import EvalSet
    >>> class Fake:
    ...     def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
    ...         return np.eye(4, dtype=np.float32)[[len(t) % 4 for t in texts]]
    >>> q, c = embed_evalset(Fake(), EvalSet({"q": "ab"}, {"a": "b", "b": "cd"}, {"q": {"b": 1}}))
    >>> q.shape, c.shape
    ((1, 4), (2, 4))
    """
    qemb = model.encode(list(evalset.queries.values()), batch_size=batch_size,
                        show_progress_bar=show_progress_bar, desc="embed queries")
    cemb = model.encode(list(evalset.corpus.values()), batch_size=batch_size,
                        show_progress_bar=show_progress_bar, desc="embed corpus")
    return (_normalized(qemb, "query embeddings", len(evalset.queries)),
            _normalized(cemb, "corpus embeddings", len(evalset.corpus)))


def evaluate(model: Any, evalset: Any, batch_size: int = 64, k: int = 100,
             show_progress_bar: bool = False, corpus_embeddings: Optional[Any] = None,
             query_embeddings: Optional[Any] = None) -> dict:
    """Retrieve the top ``min(k, N)`` docs of every query by exact cosine and score the run.

    Args:
        model: anything with ``encode(texts, batch_size=, show_progress_bar=, desc=)`` returning
            float32 rows (e.g. :class:`~fastembed_tune.embed.model.EmbeddingModel`); may be ``None`` when
            both embeddings are given.
        evalset: an :class:`~fastembed_tune.data.readers.EvalSet`.
        k: retrieval depth (metrics at cutoffs beyond it only see the top k).
        corpus_embeddings, query_embeddings: precomputed rows in ``evalset.corpus`` /
            ``evalset.queries`` order (see :func:`embed_evalset`); non-unit rows are normalised.

    Returns:
        ``{"metrics": ir_metrics(...), "per_query": ir_metrics(..., per_query=True), "queries": n scored,
        "corpus": N, "seconds": wall time}``.
        Only queries with qrels are embedded and scored; a qrels query absent from
        ``evalset.queries`` scores 0.

    >>> import numpy as np
    >>> from fastembed_tune.data.readers import EvalSet
    >>> es = EvalSet({"q0": "x", "q1": "y"}, {"a": "x", "b": "y"}, {"q0": {"a": 1}, "q1": {"a": 1}})
    >>> e = np.eye(2, dtype=np.float32)
    >>> r = evaluate(None, es, query_embeddings=e, corpus_embeddings=e)
    >>> r["metrics"]["recall@1"], r["metrics"]["mrr@10"], r["queries"], r["corpus"]
    (0.5, 0.75, 2, 2)
    """
    t0 = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    qids_all = list(evalset.queries)
    docids = list(evalset.corpus)
    if not docids:
        raise ValueError("the EvalSet's corpus is empty; there is nothing to retrieve")
    pos = {q: i for i, q in enumerate(qids_all)}
    scored = [q for q in evalset.qrels if q in pos]
    if (query_embeddings is None or corpus_embeddings is None) and model is None:
        raise ValueError("evaluate needs a model, or both query_embeddings and corpus_embeddings")
    if query_embeddings is not None:
        qemb = _normalized(query_embeddings, "query_embeddings", len(qids_all))[[pos[q] for q in scored]]
    elif scored:
        qemb = _normalized(model.encode([evalset.queries[q] for q in scored], batch_size=batch_size,
                                        show_progress_bar=show_progress_bar, desc="embed queries"),
                           "query embeddings", len(scored))
    if corpus_embeddings is not None:
        cemb = _normalized(corpus_embeddings, "corpus_embeddings", len(docids))
    else:
        cemb = _normalized(model.encode(list(evalset.corpus.values()), batch_size=batch_size,
                                        show_progress_bar=show_progress_bar, desc="embed corpus"),
                           "corpus embeddings", len(docids))
    run: dict[str, list[str]] = {}
    if scored:
        if qemb.shape[1] != cemb.shape[1]:
            raise ValueError(f"query embeddings have dimension {qemb.shape[1]} but corpus embeddings "
                             f"have {cemb.shape[1]}")
        _, ids = topk_cosine(np.ascontiguousarray(qemb), cemb, min(int(k), len(docids)))
        for q, row in zip(scored, ids.tolist()):
            run[q] = [docids[j] for j in row if j >= 0]
    per_query = ir_metrics(run, evalset.qrels, per_query=True)
    metrics = {m: float(np.sum(v)) / len(per_query["qids"]) for m, v in per_query.items() if m != "qids"}
    return {"metrics": metrics, "per_query": per_query, "queries": len(scored), "corpus": len(docids),
            "seconds": time.perf_counter() - t0}
