"""Hard-negative mining over pairs and a corpus too big to hold as Python lists (``mine --stream``).

:func:`~fastembed_tune.mining.exact.mine_hard_negatives` holds the corpus texts, the pairs and a dict of
every text in memory. :func:`mine_stream` mines the same negatives (the same candidate ids, the same
exclusions, filters and ties, so the same texts whenever the embeddings are the same) while it keeps
per document only a 16-byte hash of its text and two 8-byte numbers, and reads the pairs and the
corpus window by window (:class:`~fastembed_tune.data.stream.PairStream`,
:class:`~fastembed_tune.data.stream.CorpusStream`).

Texts are told apart by a 16-byte BLAKE2b hash of their UTF-8 (the store's key): two distinct texts
with one hash (about 2^-128 per pair) would be taken for one. Its work folder, ``OUTPUT.work/``
beside the output, holds:

- ``texts.bin`` + ``offsets.npy``: every candidate text one after the other (the corpus in file
  order, then the positives it lacks), so a mined id is read back as its text;
- ``embeddings.npy``: the distinct candidates' rows, memory-mapped, filled ``window`` at a time;
  ``progress.json`` counts the rows done, so a killed run embeds only the rest when run again
  with the same files and model (``job.json`` says which; anything else starts afresh);
- ``int8/``: the candidates quantised for the int8 scan.

It is removed once the output is in place. Memory: the hashes and row numbers (~40 bytes per
candidate and per pair, while sorting), one window of pairs and their query rows, and whatever of
the memory-mapped files the scan pages in.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from fastembed_tune.core.atomic import atomic_write, reserve, write_json
from fastembed_tune.core.distributed import world
from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import Pair
from fastembed_tune.data.stream import DEFAULT_WINDOW, CorpusStream, PairStream
from fastembed_tune.embed.store import KEY_BYTES, model_fingerprint
from fastembed_tune.mining.common import dropped_by_ratio, encode_unit, make_search, merge_summaries, summarize

_FORMAT = 1


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def _keys(texts) -> np.ndarray:
    return np.frombuffer(b"".join(_key(t) for t in texts), dtype=f"S{KEY_BYTES}")


class TextTable:
    """Texts appended to one file, read back by row number (``offsets.npy`` marks where each starts).

    >>> import tempfile
    >>> w = TextTable.writer(tempfile.mkdtemp()); w.add(["a cat", "ein Hund"]); w.add(["x"])
    >>> t = w.close(); len(t), t.get([2, 0])
    (3, ['x', 'a cat'])
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.offsets = np.load(os.path.join(folder, "offsets.npy"))
        size = int(self.offsets[-1])
        self._blob = (np.memmap(os.path.join(folder, "texts.bin"), dtype=np.uint8, mode="r", shape=(size,))
                      if size else np.zeros(0, np.uint8))

    @classmethod
    def writer(cls, folder: str) -> "_TextTableWriter":
        return _TextTableWriter(folder)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, rows) -> list[str]:
        """The texts of ``rows`` (row numbers), in that order."""
        o = self.offsets
        return [self._blob[o[r]:o[r + 1]].tobytes().decode("utf-8", "surrogatepass") for r in np.asarray(rows)]


class _TextTableWriter:
    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._f = open(os.path.join(folder, "texts.bin"), "wb")
        self._ends: list[np.ndarray] = []
        self._pos = 0

    def add(self, texts) -> None:
        data = [t.encode("utf-8", "surrogatepass") for t in texts]
        self._f.write(b"".join(data))
        ends = self._pos + np.cumsum([len(b) for b in data], dtype=np.int64)
        if len(ends):
            self._pos = int(ends[-1])
        self._ends.append(ends)

    def close(self) -> TextTable:
        self._f.close()
        np.save(os.path.join(self.folder, "offsets.npy"), np.concatenate([np.zeros(1, np.int64), *self._ends]))
        return TextTable(self.folder)


class _Candidates:
    """The distinct candidate texts, numbered as :class:`~fastembed_tune.mining.exact._CorpusIndex` numbers
    them (the corpus's distinct texts by first row, then the positives it lacks by first appearance),
    and what each pair needs of them: its positive's id, its exclusions, its query's id if any."""

    def __init__(self, work: str, pairs: PairStream, corpus: Optional[CorpusStream], progress: bool):
        tw = TextTable.writer(work)
        n = len(corpus) if corpus is not None else 0
        ck = np.empty(n, f"S{KEY_BYTES}")
        if corpus is not None:
            at = 0
            for _, texts in tqdm(corpus.windows(), total=-(-n // corpus.window), desc="read corpus",
                                 unit="window", disable=not progress):
                tw.add(texts)
                ck[at:at + len(texts)] = _keys(texts)
                at += len(texts)
        order = np.argsort(ck, kind="stable")
        ck = ck[order]                                  # sorted in place of the file order
        first = np.ones(n, bool)
        first[1:] = ck[1:] != ck[:-1]
        ukeys, urow = ck[first], order[first]           # distinct keys, sorted; the first row of each
        del ck, order, first
        first_rows = np.sort(urow)                      # distinct corpus texts by their first row
        uid = np.searchsorted(first_rows, urow)         # candidate id of each distinct key
        del urow
        qk, pk = self._pair_keys(pairs, progress)
        known = self._find(ukeys, uid, pk)
        missing = np.flatnonzero(known < 0)
        _, at = np.unique(pk[missing], return_index=True)
        added = np.sort(missing[at])                    # pairs whose positive is new, first appearance only
        del missing, at
        self.corpus_size, self.added = len(first_rows) + len(added), len(added)
        self._append_positives(tw, pairs, added)
        self.table = tw.close()
        self.row_of = np.concatenate([first_rows, n + np.arange(len(added))])   # candidate id -> table row
        o = np.argsort(pk[added])
        akeys, aid = pk[added][o], len(first_rows) + o  # the positives the corpus lacks: sorted keys, ids
        del first_rows

        def find(want: np.ndarray) -> np.ndarray:
            got = self._find(ukeys, uid, want)
            return np.where(got >= 0, got, self._find(akeys, aid, want))

        self.pos = np.where(known >= 0, known, self._find(akeys, aid, pk))
        del known, pk
        groups, self.group = np.unique(qk, return_inverse=True)
        self.group = self.group.ravel()
        del qk
        self.group_query = find(groups)                 # the query's own text as a candidate, or -1
        combos = np.unique(self.group.astype(np.int64) * self.corpus_size + self.pos)
        self.excl_ptr = np.searchsorted(combos // self.corpus_size, np.arange(len(groups) + 1))
        self.excl = combos % self.corpus_size

    @staticmethod
    def _pair_keys(pairs: PairStream, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        qs, ps = [], []
        for w in tqdm(range(pairs.num_windows), desc="read pairs", unit="window", disable=not progress):
            win = pairs.window_pairs(w)
            qs.append(_keys(p.query for p in win))
            ps.append(_keys(p.positive for p in win))
        return np.concatenate(qs), np.concatenate(ps)

    @staticmethod
    def _append_positives(tw: _TextTableWriter, pairs: PairStream, added: np.ndarray) -> None:
        start = 0
        for w in range(pairs.num_windows):
            win = pairs.window_pairs(w)
            lo, hi = np.searchsorted(added, [start, start + len(win)])
            tw.add([win[i - start].positive for i in added[lo:hi]])
            start += len(win)

    @staticmethod
    def _find(sorted_keys: np.ndarray, ids: np.ndarray, want: np.ndarray) -> np.ndarray:
        """ids[j] where sorted_keys[j] == want[i], else -1 (keys sorted and distinct)."""
        if len(sorted_keys) == 0:
            return np.full(len(want), -1, np.int64)
        at = np.minimum(np.searchsorted(sorted_keys, want), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == want, ids[at], -1).astype(np.int64)

    def exclusions(self, lo: int, hi: int) -> list[list[int]]:
        """Each pair's excluded ids (all positives of its query anywhere in the data, and the query's
        own text), pairs ``lo``..``hi`` of the stream."""
        out = []
        for g in self.group[lo:hi]:
            s = set(self.excl[self.excl_ptr[g]:self.excl_ptr[g + 1]].tolist())
            if self.group_query[g] >= 0:
                s.add(int(self.group_query[g]))
            out.append(sorted(s))
        return out


def _job(pairs: PairStream, corpus: Optional[CorpusStream], fingerprint: str, window: int) -> dict:
    def file(path):
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    return {"format": _FORMAT, "pairs": file(pairs.path), "corpus": file(corpus.path) if corpus else None,
            "model": fingerprint, "window": window}


def _embed_candidates(work: str, job: dict, cands: _Candidates, model, batch_size: int, window: int,
                      progress: bool) -> np.ndarray:
    """The candidates' unit rows in ``work/embeddings.npy``, resuming a killed run of the same job."""
    emb_path, prog_path, job_path = (os.path.join(work, n) for n in ("embeddings.npy", "progress.json", "job.json"))
    shape = (cands.corpus_size, int(model.dim))
    done = 0
    try:
        if json.loads(open(job_path).read()) == job:
            done = int(json.loads(open(prog_path).read())["rows"])
            if tuple(np.load(emb_path, mmap_mode="r").shape) != shape:
                done = 0
    except (OSError, ValueError, KeyError):
        done = 0
    if done == 0:
        np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=shape).flush()
        reserve(emb_path)  # a full disk is an error naming the file here, never a SIGBUS in the map below
        write_json(prog_path, {"rows": 0})
        write_json(job_path, job)
    out = np.load(emb_path, mmap_mode="r+")
    with tqdm(total=shape[0], initial=done, desc="embed candidates", unit="text", disable=not progress) as bar:
        for s in range(done, shape[0], window):
            rows = cands.row_of[s:s + window]
            out[s:s + len(rows)] = encode_unit(model, cands.table.get(rows), batch_size, False, "")
            out.flush()
            write_json(prog_path, {"rows": s + len(rows)})
            bar.update(len(rows))
    del out
    return np.load(emb_path, mmap_mode="r")


def mine_stream(pairs_path: str, output: str, model=None, corpus_path: Optional[str] = None, *,
                num_negatives: int = 5, skip_top: int = 0, max_ratio: Optional[float] = None,
                batch_size: int = 64, threads: int = 0, window: int = DEFAULT_WINDOW, scan: str = "auto",
                show_progress_bar: bool = True, work_dir: Optional[str] = None) -> dict:
    """:func:`~fastembed_tune.mining.exact.mine_to_file` for files bigger than memory: reads ``pairs_path``
    (``.jsonl``/``.parquet``) and ``corpus_path`` (``.jsonl``/``.txt``/``.parquet``; default: the
    positives) ``window`` rows at a time and writes ``output`` (JSONL, atomically); returns the
    summary. One process (not under torchrun). See the module's docstring for the work folder.

    >>> import tempfile, os, json
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "pairs.jsonl")
    >>> _ = open(p, "w").write('{"query": "cat", "positive": "a feline"}\\n{"query": "car", "positive": "a vehicle"}\\n')
    >>> mine_stream(p, os.path.join(d, "mined.jsonl"), num_negatives=1, show_progress_bar=False)["pairs"]
    2
    >>> json.loads(open(os.path.join(d, "mined.jsonl")).readline())["negatives"], sorted(os.listdir(d))
    (['a vehicle'], ['mined.jsonl', 'pairs.jsonl'])
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if world()[1] > 1:
        raise UserError("mine --stream runs in one process; drop --nproc (torchrun) or mine without --stream")
    progress = show_progress_bar
    pairs = PairStream(pairs_path, window=max(window, 2), min_pairs=1, show_progress_bar=progress)
    corpus = CorpusStream(corpus_path, window=window, skip_blank=True, show_progress_bar=progress) \
        if corpus_path else None
    if model is None:
        from fastembed_tune.embed.model import EmbeddingModel
        model = EmbeddingModel.load()
    work = work_dir or f"{output}.work"
    job = _job(pairs, corpus, model_fingerprint(model), window)
    os.makedirs(work, exist_ok=True)
    cands = _Candidates(work, pairs, corpus, progress)
    demb = _embed_candidates(work, job, cands, model, batch_size, window, progress)
    k = min(num_negatives, cands.corpus_size)
    search = make_search(scan, demb, threads, out=os.path.join(work, "int8"))
    summaries: list[dict] = []

    def write(f) -> None:
        for lo, win in tqdm(_windows(pairs), total=pairs.num_windows, desc="mine", unit="window",
                            disable=not progress):
            hi = lo + len(win)
            found, summary = _mine_window(win, cands, lo, hi, demb, search, model, k, num_negatives, skip_top,
                                          max_ratio, batch_size, threads)
            f.writelines(json.dumps({"query": p.query, "positive": p.positive, "negatives": p.negatives},
                                    ensure_ascii=False) + "\n" for p in found)
            summaries.append(summary)

    atomic_write(output, write)
    shutil.rmtree(work, ignore_errors=True)
    out = merge_summaries(summaries)
    out.update(corpus_size=cands.corpus_size, positives_added_to_corpus=cands.added if corpus else 0,
               scan=summaries[0]["scan"])
    return out


def _windows(pairs: PairStream) -> Iterator[tuple[int, list[Pair]]]:
    lo = 0
    for w in range(pairs.num_windows):
        win = pairs.window_pairs(w)
        yield lo, win
        lo += len(win)


def _mine_window(win: list[Pair], cands: _Candidates, lo: int, hi: int, demb: np.ndarray, search, model, k: int,
                 num_negatives: int, skip_top: int, max_ratio: Optional[float], batch_size: int,
                 threads: int) -> tuple[list[Pair], dict]:
    """One window of pairs mined against every candidate: (pairs with negatives, its summary)."""
    uq = list(dict.fromkeys(p.query for p in win))
    at = {q: i for i, q in enumerate(uq)}
    qemb = np.ascontiguousarray(encode_unit(model, uq, batch_size, False, "")[[at[p.query] for p in win]])
    pos = cands.pos[lo:hi]
    exclude = cands.exclusions(lo, hi)
    pos_scores = np.einsum("ij,ij->i", qemb.astype(np.float64), np.asarray(demb[pos], dtype=np.float64))
    scores, ids = search(qemb, demb, k, exclude=exclude, skip_top=skip_top, max_ratio=max_ratio,
                         positive_scores=pos_scores if max_ratio else None, threads=threads)
    dropped = hit = 0
    if max_ratio is not None:
        s2, _ = search(qemb, demb, k, exclude=exclude, skip_top=skip_top, threads=threads)
        dropped, hit = dropped_by_ratio(s2, max_ratio, pos_scores)
    texts = dict(zip(np.unique(ids[ids >= 0]).tolist(),
                     cands.table.get(cands.row_of[np.unique(ids[ids >= 0])])))
    found = [Pair(p.query, p.positive, list(dict.fromkeys(list(p.negatives) + [texts[j] for j in ids[r] if j >= 0])),
                  p.source) for r, p in enumerate(win)]
    summary = summarize(scores, ids, pos_scores, cands.corpus_size, cands.added, num_negatives, skip_top, max_ratio,
                       dropped, hit)
    summary["scan"] = search.name
    return found, summary
