"""Training pairs streamed from a file too big to hold in memory.

:class:`PairStream` reads a ``.jsonl`` or ``.parquet`` pairs file in *windows* of ``window`` rows and
never holds more than one window (plus its batches) at a time. Opening it makes one pass over the
file that checks every row (a bad row is reported with its line and field before training starts,
as :func:`~fastembed_tune.data.readers.read_pairs` reports it), counts the pairs, digests them, notes where
each window starts, and holds out validation queries by a seeded hash of the query text (at most
``validation_max_queries``; all pairs of a held query go to validation).

An epoch visits the windows in an order drawn from ``(seed, epoch)``; each window is shuffled and
cut into batches by :func:`~fastembed_tune.training.train.epoch_batches` with the key ``(seed, epoch,
window)``. So the batches of an epoch are a pure function of (file, seed, epoch, window size): a
resumed run counts the epoch's batches again (one pass over the file, no model) and goes on from
the checkpoint's batch, bit for bit. Such a counting pass is made for every epoch when training
plans its schedule, and again for each epoch as it starts, besides the reading while training.
Pairs meet in-batch negatives from their own window only: keep the window large (the default holds
100,000 pairs, about 100 MB of text). A file that fits in one window trains exactly as the same
pairs read into memory.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Collection, Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import (
    BOM,
    POSITIVE_KEYS,
    QUERY_KEYS,
    Pair,
    check_header,
    decode_line,
    json_line,
    pair_digest_line,
    parse_pair,
    require_regular_file,
)

STREAM_EXTS = (".jsonl", ".parquet")
DEFAULT_WINDOW = 100_000


def held_out(query: str, seed: int, share: float) -> bool:
    """Whether ``query`` goes to validation: a seeded hash of its text falls below ``share``
    (the same answer wherever and however often the query appears).

    >>> sum(held_out(f"q{i}", 0, 0.1) for i in range(10000)) / 10000
    0.0972
    >>> held_out("q1", 0, 0.0), held_out("q1", 0, 1.0)
    (False, True)
    """
    h = hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") / 2.0**64 < share


def jsonl_objects(path: str, start: int = 0, line: int = 1) -> Iterator[tuple[int, int, dict]]:
    """(byte offset, 1-based line number, object) of each non-blank line of a JSONL file from byte
    ``start`` (which is line ``line``), decoded and checked one line at a time as ``data`` does."""
    for pos, i, text, _ in _lines(path, start, line):
        if text.strip():
            yield pos, i, json_line(path, i, text)


def _lines(path: str, start: int = 0, line: int = 1) -> Iterator[tuple[int, int, str, bool]]:
    """(byte offset, 1-based line number, text, whether a newline ended it) of every line from byte
    ``start``, UTF-8 checked."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        f.seek(start)
        pos = start
        for raw in f:
            here, pos, i = pos, pos + len(raw), line
            line += 1
            if here == 0 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            ended = raw.endswith(b"\n")
            yield here, i, decode_line(path, raw[:-1] if ended else raw, i), ended


def parquet_records(path: str, start: int = 0, need: Sequence = ()) -> Iterator[tuple[int, dict]]:
    """(0-based row, record) of a Parquet file from row ``start``, one row group in memory at a
    time; ``need``: the columns to check first (:func:`~fastembed_tune.data.readers._check_header`'s form)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
    if need:
        check_header(list(pf.schema_arrow.names), path, list(need))
    ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    first = int(np.searchsorted(ends, start, side="right"))
    row = int(ends[first - 1]) if first > 0 else 0
    for g in range(first, pf.num_row_groups):
        for rec in pf.read_row_group(g).to_pylist():
            if row >= start:
                yield row, rec
            row += 1


@dataclass
class _Window:
    start: int   # byte offset (JSONL) or row index (Parquet) of the window's first row
    line: int    # 1-based line (JSONL) or row (Parquet) number of that row
    rows: int    # data rows in the window (validation rows included)


class PairStream:
    """Training pairs of ``path`` (``.jsonl`` or ``.parquet``), read ``window`` rows at a time.

    ``len(stream)`` is the number of training pairs; ``stream.validation_pairs`` the held-out ones
    (``validation_share`` of the distinct queries by :func:`held_out`, at most
    ``validation_max_queries``, never one in ``avoid``); ``stream.distractors`` up to
    ``max_distractors`` training positives (a seeded reservoir sample) for the validation corpus;
    ``stream.negatives`` counts the training pairs by how many hard negatives they hold;
    ``stream.digest`` equals the digest :func:`~fastembed_tune.training.train.train` takes of the same
    training pairs held in a list. ``stream.window_pairs(w)`` reads window ``w``'s training pairs.

    >>> import tempfile, os, json
    >>> p = os.path.join(tempfile.mkdtemp(), "pairs.jsonl")
    >>> _ = open(p, "w").write("".join(json.dumps({"query": f"q{i}", "positive": f"d{i}"}) + "\\n" for i in range(10)))
    >>> s = PairStream(p, window=4)
    >>> len(s), s.num_windows, [x.query for x in s.window_pairs(2)]
    (10, 3, ['q8', 'q9'])
    """

    def __init__(self, path: str, window: int = DEFAULT_WINDOW, validation_share: float = 0.0,
                 validation_max_queries: int = 500, seed: int = 42, avoid: Collection[str] = (),
                 max_distractors: int = 1000, show_progress_bar: bool = False, min_pairs: int = 2):
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if not os.path.exists(path):
            raise UserError(f"{path}: file not found")
        if os.path.isdir(path):
            raise UserError(f"{path}: is a directory; streaming reads one .jsonl or .parquet pairs file")
        if ext not in STREAM_EXTS:
            raise UserError(f"{path}: streaming reads .jsonl or .parquet pairs files, not '{ext or '(none)'}' "
                            f"(convert it, or train without --stream)")
        require_regular_file(path, why="streaming reads the file more than once")
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise UserError(f"the stream window must be an integer >= 2 pairs; got {window!r}")
        self.path, self.window, self.seed, self.ext = path, window, seed, ext
        self.share, self.max_queries = validation_share, validation_max_queries
        self._avoid = set(avoid)
        self._held: dict[str, None] = {}
        self.validation_pairs: list[Pair] = []
        self.distractors: list[str] = []
        self.windows: list[_Window] = []
        self.pairs = 0
        self.negatives: dict[int, int] = {}  # hard negatives per training pair -> pairs
        self._index(max_distractors, show_progress_bar, min_pairs)

    # ---- the one pass --------------------------------------------------------------------
    def _is_held(self, q: str) -> bool:
        if q in self._held:
            return True
        if self.share <= 0 or q in self._avoid or len(self._held) >= self.max_queries:
            return False
        if held_out(q, self.seed, self.share):
            self._held[q] = None
            return True
        return False

    def _index(self, max_distractors: int, show_progress_bar: bool, min_pairs: int) -> None:
        digest = hashlib.sha256()
        rng = np.random.default_rng([self.seed, 9])
        seen = 0
        for k, (pos, line, pair) in enumerate(tqdm(self._rows(0, 1), desc="index pairs", unit="pair",
                                                   disable=not show_progress_bar)):
            if k % self.window == 0:
                self.windows.append(_Window(pos, line, 0))
            self.windows[-1].rows += 1
            if self._is_held(pair.query):
                self.validation_pairs.append(pair)
                continue
            self.pairs += 1
            digest.update(pair_digest_line(pair))
            self.negatives[len(pair.negatives)] = self.negatives.get(len(pair.negatives), 0) + 1
            seen += 1  # reservoir sample of the positives (algorithm R, seeded)
            if len(self.distractors) < max_distractors:
                self.distractors.append(pair.positive)
            else:
                j = int(rng.integers(seen))
                if j < max_distractors:
                    self.distractors[j] = pair.positive
        if not self.windows:
            raise UserError(f"{self.path}: empty file (no pairs)")
        if self.pairs < min_pairs:
            raise UserError(f"{self.path}: training needs at least {min_pairs} pairs; {self.pairs} are left after "
                            f"holding out {len(self.validation_pairs)} for validation")
        self.digest = digest.hexdigest()

    # ---- reading -------------------------------------------------------------------------
    def _rows(self, start: int, line: int, limit: Optional[int] = None) -> Iterator[tuple[int, int, Pair]]:
        """(position, line or row number, pair) of up to ``limit`` data rows from ``start``."""
        reader = self._jsonl_rows if self.ext == ".jsonl" else self._parquet_rows
        for n, row in enumerate(reader(start, line)):
            if limit is not None and n >= limit:
                return
            yield row

    def _jsonl_rows(self, start: int, line: int) -> Iterator[tuple[int, int, Pair]]:
        for pos, i, obj in jsonl_objects(self.path, start, line):
            yield pos, i, parse_pair(obj, f"{self.path} line {i}", f"{self.path}:{i}", False)

    def _parquet_rows(self, start: int, line: int) -> Iterator[tuple[int, int, Pair]]:
        need = [(QUERY_KEYS, "query"), (POSITIVE_KEYS, "positive")] if start == 0 else []
        for row, rec in parquet_records(self.path, start, need):
            yield row, row + 1, parse_pair(rec, f"{self.path} row {row + 1}", f"{self.path}:{row + 1}", True)

    def window_pairs(self, w: int) -> list[Pair]:
        """The training pairs of window ``w`` (file order; validation pairs left out)."""
        win = self.windows[w]
        return [p for _, _, p in self._rows(win.start, win.line, win.rows) if p.query not in self._held]

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def __len__(self) -> int:
        return self.pairs

    def __iter__(self) -> Iterator[Pair]:
        for w in range(self.num_windows):
            yield from self.window_pairs(w)

    def __repr__(self) -> str:
        return (f"PairStream({self.path!r}, window={self.window}, pairs={self.pairs}, "
                f"windows={self.num_windows}, validation={len(self.validation_pairs)})")


def window_order(num_windows: int, seed: int, epoch: int) -> list[int]:
    """The order an epoch visits the windows in: ``default_rng([seed, epoch, 2])``; one window: [0].

    >>> window_order(4, 0, 0) != window_order(4, 0, 1), sorted(window_order(4, 0, 0))
    (True, [0, 1, 2, 3])
    """
    if num_windows == 1:
        return [0]
    return [int(w) for w in np.random.default_rng([seed, epoch, 2]).permutation(num_windows)]


class StreamEpoch:
    """One epoch of a :class:`PairStream`: ``len`` batches, ``batch(i)`` the i-th (a list of pairs),
    reading one window at a time. ``make_batches(pairs, key)`` cuts one window's pairs (``key``:
    ``()`` for a single-window stream, else ``(window,)``) and returns (its pairs, index batches).
    """

    def __init__(self, stream: PairStream, epoch: int, make_batches, show_progress_bar: bool = False):
        self.stream, self.epoch, self.make_batches = stream, epoch, make_batches
        self.order = window_order(stream.num_windows, stream.seed, epoch)
        self._cached: tuple = (None, 0, [], [])  # (window, its own pairs, pairs as batched, batches)
        counts, self.extra_pairs = [], 0
        for w in tqdm(self.order, desc=f"batches, epoch {epoch}", unit="window",
                      disable=not show_progress_bar or len(self.order) < 2):
            pairs, batches = self._cut(w)
            counts.append(len(batches))
            self.extra_pairs += len(pairs) - self._cached[1]
        self.ends = [int(x) for x in np.cumsum(counts)]
        key = json.dumps([stream.digest, stream.window, stream.seed, epoch, self.order, counts])
        self.digest = hashlib.sha256(key.encode()).hexdigest()

    def _cut(self, w: int) -> tuple[list[Pair], list[list[int]]]:
        """Window ``w``'s pairs as batched (replay mixed in) and its batches; the last one is kept."""
        if self._cached[0] != w:
            pairs = self.stream.window_pairs(w)
            self._cached = (w, len(pairs), *self.make_batches(pairs, () if self.stream.num_windows == 1 else (w,)))
        return self._cached[2], self._cached[3]

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def batch(self, i: int) -> list[Pair]:
        slot = bisect.bisect_right(self.ends, i)
        pairs, batches = self._cut(self.order[slot])
        local = i - (self.ends[slot - 1] if slot else 0)
        return [pairs[j] for j in batches[local]]



class CorpusStream:
    """Texts to embed from ``path`` (``.jsonl``, ``.txt`` or ``.parquet``), handed over ``window``
    at a time by :meth:`windows`; the rules are :func:`~fastembed_tune.data.readers.read_texts`' (ids,
    title + text, a ``.txt`` line per row and a blank one refused, duplicate ids refused), checked
    in one pass when it opens, which keeps 8 bytes per document (a hash of its id) and nothing else.
    ``skip_blank``: blank ``.txt`` lines are skipped (row ids keep their line numbers), as
    :func:`~fastembed_tune.data.readers.read_corpus` skips them, instead of refused.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "texts.txt")
    >>> _ = open(p, "w").write("a feline\\na dog\\na car\\n")
    >>> s = CorpusStream(p, window=2)
    >>> len(s), list(s.windows())
    (3, [(['0', '1'], ['a feline', 'a dog']), (['2'], ['a car'])])
    """

    EXTS = (".jsonl", ".txt", ".parquet")

    def __init__(self, path: str, window: int = DEFAULT_WINDOW, show_progress_bar: bool = False,
                 skip_blank: bool = False):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "corpus.jsonl")
        ext = os.path.splitext(path)[1].lower()
        if not os.path.exists(path):
            raise UserError(f"{path}: file not found")
        if ext not in self.EXTS:
            raise UserError(f"{path}: streaming reads .jsonl, .txt or .parquet texts, not '{ext or '(none)'}' "
                            f"(convert it, or embed without --stream)")
        require_regular_file(path, why="streaming reads the file more than once")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise UserError(f"the stream window must be a positive integer; got {window!r}")
        self.path, self.ext, self.window, self.skip_blank = path, ext, window, skip_blank
        keys = np.empty(1024, dtype=np.uint64)
        n = 0
        for i, _text in tqdm(self._docs(), desc="index texts", unit="text", disable=not show_progress_bar):
            if n == len(keys):
                keys = np.resize(keys, 2 * n)
            keys[n] = _id_key(i)
            n += 1
        if n == 0:
            raise UserError(f"{path}: empty file (no documents)")
        self.count = n
        uniq, counts = np.unique(keys[:n], return_counts=True)
        if (counts > 1).any():
            self._report_duplicate(set(int(k) for k in uniq[counts > 1]))

    def _docs(self) -> Iterator[tuple[str, str]]:
        """(id, text) of every document, checked."""
        return (d for d, _ in self._docs_where())

    def _docs_where(self) -> Iterator[tuple[tuple[str, str], str]]:
        from fastembed_tune.data.readers import parse_doc

        if self.ext == ".txt":
            for _, i, text, ended in _lines(self.path):
                if not text.strip():
                    if self.skip_blank or (not ended and not text):
                        continue  # a lone "\r" after the last newline
                    raise UserError(f"{self.path} line {i}: blank line; every line is one output row, so each "
                                    f"needs a text (remove the line, or use a .jsonl corpus with ids)")
                yield (str(i - 1), text), f"{self.path} line {i}"
        elif self.ext == ".jsonl":
            for _, i, obj in jsonl_objects(self.path):
                where = f"{self.path} line {i}"
                yield parse_doc(obj, where, False, True), where
        else:
            for row, rec in parquet_records(self.path, 0, [(("id", "_id"), "id"), (("text",), "text")]):
                where = f"{self.path} row {row + 1}"
                yield parse_doc(rec, where, True, True), where

    def _report_duplicate(self, suspects: set) -> None:
        first: dict[str, str] = {}
        for (i, _), where in self._docs_where():
            if _id_key(i) in suspects:
                if i in first:
                    raise UserError(f"{where}: duplicate id '{i}' (first seen at {first[i][len(self.path) + 1:]})")
                first[i] = where
        # only 64-bit hash collisions of distinct ids: nothing is wrong

    def __len__(self) -> int:
        return self.count

    def windows(self) -> Iterator[tuple[list[str], list[str]]]:
        """(ids, texts) of ``window`` documents at a time, in file order."""
        ids: list[str] = []
        texts: list[str] = []
        for i, t in self._docs():
            ids.append(i)
            texts.append(t)
            if len(ids) == self.window:
                yield ids, texts
                ids, texts = [], []
        if ids:
            yield ids, texts


def _id_key(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
