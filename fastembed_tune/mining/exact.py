"""Hard-negative mining on top of the native ``topk_cosine`` kernel.

Each training pair's query is searched against the corpus (a given file, or else the
positives of all pairs, as in sentence-transformers' ``mine_hard_negatives``). The query's own
positives are excluded inside the scan, ``skip_top`` drops the closest candidates and
``max_ratio`` drops candidates scoring above ``max_ratio`` x the pair's positive score (likely
false negatives, NV-Retriever's TopK-PercPos; below 0, the positive's score less a
``1 - max_ratio`` share of its magnitude: never above the positive, ``kernels.ratio_bound``).
Filters act inside the scan, so a pair gets fewer negatives only when fewer documents pass; no
pair is ever dropped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from fastembed_tune.core.atomic import atomic_write, write_json
from fastembed_tune.core.distributed import barrier, shard, world
from fastembed_tune.data.readers import Pair
from fastembed_tune.mining.common import dropped_by_ratio, encode_unit, make_search, merge_summaries, summarize


@dataclass
class MiningResult:
    pairs: list[Pair]                      # one per input pair, in input order, negatives filled
    summary: dict = field(default_factory=dict)


def mine_hard_negatives(
    pairs: Sequence[Pair],
    model=None,
    corpus: Optional[Sequence[str]] = None,
    num_negatives: int = 5,
    skip_top: int = 0,
    max_ratio: Optional[float] = None,
    batch_size: int = 64,
    threads: int = 0,
    show_progress_bar: bool = True,
    embeddings: Optional[tuple[np.ndarray, np.ndarray]] = None,
    shard_dir: Optional[str] = None,
    scan: str = "auto",
) -> MiningResult:
    """Fill each pair's ``negatives`` with the closest corpus documents that are not its positives.

    Args:
        pairs: training pairs (query, positive[, negatives]).
        model: an ``EmbeddingModel`` or ``SentenceTransformer`` (default: the built-in MiniLM).
        corpus: candidate documents; default: the positives of all pairs. Positives missing
            from a given corpus are added to it (so they can be excluded for their own query).
        num_negatives: negatives mined per pair.
        skip_top: skip the closest ``skip_top`` passing candidates (sentence-transformers' range_min).
        max_ratio: drop candidates scoring above ``max_ratio`` x the pair's positive score ``p``
            (``p - (1 - max_ratio) * |p|`` when ``p < 0``; never above ``p``).
        embeddings: precomputed ``(query_embeddings[len(pairs)], corpus_embeddings)`` (rows
            L2-normalised), skipping the model. The corpus rows align with ``corpus`` exactly as
            given, duplicate texts included, followed by the positives missing from it in order of
            first appearance (``len(corpus) + missing`` rows; any other count is a ``ValueError``).
            Duplicate texts are searched once, through the row of their first occurrence.
        shard_dir: under torchrun (several ranks), a folder shared by the ranks: the query and
            corpus embeddings are computed once, each rank filling its share of the batches of
            one memory-mapped file there, and this rank mines only its contiguous shard of the
            pairs (``MiningResult.pairs`` holds that shard; see ``merge_shards``).
        scan: ``"fp32"`` (:func:`~fastembed_tune.kernels.topk_cosine`), ``"int8"``
            (:func:`~fastembed_tune.kernels.topk_cosine_lowp`: an int8 candidate scan, then exact
            fp32 rescoring; the same negatives, bit for bit) or ``"auto"``: int8 where the CPU has
            int8 dot products (VNNI or AVX2) and the corpus has at least ``LOWP_MIN_ROWS`` rows,
            else fp32. The summary says which ran.

    Returns:
        MiningResult with new Pair objects (existing negatives kept first) and a summary dict.

    Example:
        >>> from fastembed_tune.data.readers import Pair
        >>> ps = [Pair("cat", "a small feline"), Pair("dog", "a loyal canine"), Pair("car", "a motor vehicle")]
        >>> r = mine_hard_negatives(ps, num_negatives=1, show_progress_bar=False)
        >>> [len(p.negatives) for p in r.pairs]
        [1, 1, 1]
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if not pairs:
        raise ValueError("no pairs to mine negatives for")
    ix = _CorpusIndex(list(corpus) if corpus is not None else [], pairs)
    k = min(num_negatives, len(ix.docs))
    rank, wsize = world()
    rows = shard(len(pairs), rank, wsize) if (wsize > 1 and embeddings is None) else slice(0, len(pairs))
    if embeddings is None:
        qemb, demb = _embed(pairs, ix.docs, model, rows, batch_size, show_progress_bar, shard_dir)
    else:
        qemb, demb = ix.rows_for(pairs, *embeddings)
    pairs, exclude = list(pairs)[rows], ix.exclusions(pairs)[rows]
    pos_ids = np.array([ix.index[p.positive] for p in pairs])
    pos_scores = np.einsum("ij,ij->i", qemb.astype(np.float64), demb[pos_ids].astype(np.float64))
    search = make_search(scan, demb, threads)
    scores, ids = search(qemb, demb, k, exclude=exclude, skip_top=skip_top,
                         max_ratio=max_ratio, positive_scores=pos_scores if max_ratio else None, threads=threads)
    dropped = pairs_hit = 0
    if max_ratio is not None:
        # The same search without the ratio filter tells how many candidates it removed.
        s2, _ = search(qemb, demb, k, exclude=exclude, skip_top=skip_top, threads=threads)
        dropped, pairs_hit = dropped_by_ratio(s2, max_ratio, pos_scores)
    out = [Pair(p.query, p.positive, list(dict.fromkeys(list(p.negatives) + [ix.docs[j] for j in ids[r] if j >= 0])),
                p.source) for r, p in enumerate(pairs)]
    summary = summarize(scores, ids, pos_scores, len(ix.docs), ix.added if corpus is not None else 0, num_negatives,
                       skip_top, max_ratio, dropped, pairs_hit)
    summary["scan"] = search.name
    return MiningResult(out, summary)


class _CorpusIndex:
    """The distinct candidate texts: the corpus as given (a duplicate text once, through its first
    row), then the positives missing from it, in order of first appearance."""

    def __init__(self, given: list[str], pairs: Sequence[Pair]):
        self.given = given
        self.docs: list[str] = []
        self.rows_of: list[int] = []  # row of docs[i] in (the corpus as given + missing positives)
        self.index: dict[str, int] = {}
        for r, t in enumerate(given):
            if t not in self.index:
                self._add(t, r)
        self.added = 0
        for p in pairs:
            if p.positive not in self.index:
                self._add(p.positive, len(given) + self.added)
                self.added += 1

    def _add(self, text: str, row: int) -> None:
        self.index[text] = len(self.docs)
        self.docs.append(text)
        self.rows_of.append(row)

    def exclusions(self, pairs: Sequence[Pair]) -> list[list[int]]:
        """Each query excludes every positive it has anywhere in the data (and its own text)."""
        positives_of: dict[str, set[int]] = {}
        for p in pairs:
            positives_of.setdefault(p.query, set()).add(self.index[p.positive])
        for q, s in positives_of.items():
            if q in self.index:
                s.add(self.index[q])
        return [sorted(positives_of[p.query]) for p in pairs]

    def rows_for(self, pairs: Sequence[Pair], qemb: np.ndarray, cemb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query rows, distinct-document rows) from precomputed embeddings aligned with the corpus as given."""
        if len(qemb) != len(pairs) or len(cemb) != len(self.given) + self.added:
            raise ValueError(f"embeddings must hold {len(pairs)} query rows (one per pair) and "
                             f"{len(self.given) + self.added} corpus rows (the corpus as given, {len(self.given)} "
                             f"rows, then the {self.added} positives missing from it); got {len(qemb)} and {len(cemb)}")
        return qemb, cemb if len(self.docs) == len(cemb) else np.ascontiguousarray(np.asarray(cemb)[self.rows_of])


def _embed(pairs: Sequence[Pair], docs: list[str], model, rows: slice, batch_size: int, progress: bool,
           shard_dir: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    """(query rows of ``pairs[rows]``, rows of ``docs``), each distinct text embedded once; under
    torchrun the ranks share the work through memory-mapped files in ``shard_dir``."""
    if model is None:
        from fastembed_tune.embed.model import EmbeddingModel
        model = EmbeddingModel.load()
    uq = list(dict.fromkeys(p.query for p in pairs))
    qpos = {q: i for i, q in enumerate(uq)}
    if world()[1] > 1:
        if shard_dir is None:
            raise ValueError("mining under torchrun needs shard_dir, a folder shared by the ranks")
        qemb_u = encode_sharded(model, uq, os.path.join(shard_dir, "queries.npy"), batch_size, progress)
        demb = encode_sharded(model, docs, os.path.join(shard_dir, "corpus.npy"), batch_size, progress)
    else:
        qemb_u = encode_unit(model, uq, batch_size, progress, "embed queries")
        demb = encode_unit(model, docs, batch_size, progress, "embed corpus")
    return np.ascontiguousarray(qemb_u[[qpos[p.query] for p in list(pairs)[rows]]]), demb


def leakfree_corpus(evalset) -> list[str]:
    """The texts of ``evalset``'s corpus minus every text relevant to one of its queries (under
    whatever id it appears): what ``run`` mines training negatives from, so no test document ever
    becomes a training negative.

    >>> from fastembed_tune.data.readers import EvalSet
    >>> leakfree_corpus(EvalSet({"q": "cat"}, {"a": "feline", "b": "dog", "c": "feline"}, {"q": {"a": 1}}))
    ['dog']
    """
    test_texts = {evalset.corpus[d] for rel in evalset.qrels.values() for d in rel}
    return [t for t in evalset.corpus.values() if t not in test_texts]


def mine_to_file(pairs: Sequence[Pair], output: str, model=None, corpus: Optional[Sequence[str]] = None,
                 summary_path: Optional[str] = None, **kwargs) -> Optional[dict]:
    """:func:`mine_hard_negatives` written to ``output`` (JSONL, atomically), and its summary to
    ``summary_path``. Under torchrun each rank mines its shard of the pairs into ``output.shards/``
    and rank 0 merges them in order; returns the summary on rank 0, ``None`` on the others.

    >>> import tempfile, json
    >>> out = tempfile.mkdtemp() + "/mined.jsonl"
    >>> mine_to_file([Pair("cat", "a feline"), Pair("car", "a vehicle")], out, num_negatives=1,
    ...              show_progress_bar=False)["pairs"]
    2
    >>> json.loads(open(out).readline())["negatives"]
    ['a vehicle']
    """
    rank, wsize = world()
    if wsize == 1:
        res = mine_hard_negatives(pairs, model, corpus, **kwargs)
        write_pairs_jsonl(res.pairs, output)
        summary = res.summary
    else:
        shard_dir = f"{output}.shards"
        res = mine_hard_negatives(pairs, model, corpus, shard_dir=shard_dir,
                                  **{**kwargs, "show_progress_bar": kwargs.get("show_progress_bar", True) and rank == 0})
        write_pairs_jsonl(res.pairs, os.path.join(shard_dir, f"part-{rank}.jsonl"))
        write_json(os.path.join(shard_dir, f"summary-{rank}.json"), res.summary)
        barrier()
        summary = None
        if rank == 0:
            merge_shards([os.path.join(shard_dir, f"part-{r}.jsonl") for r in range(wsize)], output)
            summary = merge_summaries([json.loads(open(os.path.join(shard_dir, f"summary-{r}.json")).read())
                                       for r in range(wsize)])
            shutil.rmtree(shard_dir, ignore_errors=True)
        barrier()
    if summary is not None and summary_path:
        write_json(summary_path, summary)
    return summary


def negatives_warning(summary: dict) -> Optional[str]:
    """A plain-words warning when mining left pairs without (enough) negatives, else None.

    >>> print(negatives_warning({"pairs": 4, "pairs_with_no_negative": 4, "pairs_with_fewer_negatives": 4,
    ...     "num_negatives": 1, "corpus_size": 3, "skip_top": 5, "max_ratio": None}))
    warning: 4 of 4 pairs got no negative (the corpus has 3 documents and --skip-top 5 skips the closest 5 of each query's candidates); lower --skip-top, raise --max-ratio or give a bigger --corpus
    """
    none, fewer, n = summary["pairs_with_no_negative"], summary["pairs_with_fewer_negatives"], summary["pairs"]
    if not fewer:
        return None
    why = [f"the corpus has {summary['corpus_size']} documents"]
    if summary.get("skip_top"):
        why.append(f"--skip-top {summary['skip_top']} skips the closest {summary['skip_top']} of each query's "
                   f"candidates")
    if summary.get("max_ratio") is not None:
        why.append(f"--max-ratio {summary['max_ratio']} drops candidates scoring above that share of the "
                   f"positive's score")
    head = (f"{none} of {n} pairs got no negative" if none else
            f"{fewer} of {n} pairs got fewer than {summary['num_negatives']} negatives")
    return (f"warning: {head} ({' and '.join(why)}); lower --skip-top, raise --max-ratio or give a bigger "
            f"--corpus")


def encode_sharded(model, texts: list[str], path: str, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embed ``texts`` once across all ranks into one memory-mapped ``.npy`` at ``path``.

    The batches are exactly those a single process makes (``EmbeddingModel.encode``: sorted by
    length, ``batch_size`` each); rank r computes batches r, r + W, ... so every row is
    bit-identical to the single-process embedding. Returns the file, memory-mapped read-only.

    >>> import tempfile, numpy as np
    >>> from fastembed_tune.embed.model import EmbeddingModel
    >>> e = encode_sharded(EmbeddingModel.load(), ["a", "bb"], tempfile.mkdtemp() + "/e.npy")
    >>> e.shape
    (2, 384)
    """
    rank, wsize = world()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[s:s + batch_size] for s in range(0, len(texts), batch_size)]
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(texts), model.dim)).flush()
    barrier()
    out = np.load(path, mmap_mode="r+")
    mine = batches[rank::wsize]
    for b in tqdm(mine, desc=f"embed (rank {rank})", disable=not progress, unit="batch"):
        out[b] = encode_unit(model, [texts[i] for i in b], batch_size, False, "")
    out.flush()
    del out
    barrier()
    return np.load(path, mmap_mode="r")


def merge_shards(parts: Sequence[str], path: str) -> None:
    """Concatenate per-rank JSONL shards, in rank order, into ``path`` atomically; remove them.

    >>> import tempfile, os; d = tempfile.mkdtemp()
    >>> for i in range(2): open(f"{d}/{i}", "w").write(f"{i}\\n")
    2
    2
    >>> merge_shards([f"{d}/0", f"{d}/1"], d + "/all.jsonl"); open(d + "/all.jsonl").read()
    '0\\n1\\n'
    """
    def write(f) -> None:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f)

    atomic_write(path, write, binary=True)
    for p in parts:
        os.unlink(p)


def write_pairs_jsonl(pairs: Sequence[Pair], path: str) -> None:
    """Write pairs as JSONL ``{"query", "positive", "negatives"}`` atomically (temp file + rename).

    >>> import tempfile, os; d = tempfile.mkdtemp()
    >>> write_pairs_jsonl([Pair("q", "p", ["n"])], d + "/o.jsonl"); open(d + "/o.jsonl").read()
    '{"query": "q", "positive": "p", "negatives": ["n"]}\\n'
    """
    atomic_write(path, lambda f: f.writelines(
        json.dumps({"query": p.query, "positive": p.positive, "negatives": list(p.negatives)},
                   ensure_ascii=False) + "\n" for p in pairs))
