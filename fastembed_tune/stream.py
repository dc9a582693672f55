"""Training pairs streamed from a file too big to hold in memory.

:class:`PairStream` reads a ``.jsonl`` or ``.parquet`` pairs file in *windows* of ``window`` rows and
never holds more than one window (plus its batches) at a time. Opening it makes one pass over the
file that checks every row (a bad row is reported with its line and field before training starts,
as :func:`~fastembed_tune.data.read_pairs` reports it), counts the pairs, digests them, notes where
each window starts, and holds out validation queries by a seeded hash of the query text (at most
``validation_max_queries``; all pairs of a held query go to validation).

An epoch visits the windows in an order drawn from ``(seed, epoch)``; each window is shuffled and
cut into batches by :func:`~fastembed_tune.train.epoch_batches` with the key ``(seed, epoch,
window)``. So the batches of an epoch are a pure function of (file, seed, epoch, window size), and a
resumed run re-reads only the window it stopped in. Pairs meet in-batch negatives from their own
window only: keep the window large (the default holds 100,000 pairs, about 100 MB of text).
A file that fits in one window trains exactly as the same pairs read into memory.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Collection, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from .data import _BOM, _POSITIVE_KEYS, _QUERY_KEYS, Pair, _check_header, _pair, _typename, _utf8_error
from .errors import UserError

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
    ``stream.digest`` equals the digest :func:`~fastembed_tune.train.train` takes of the same
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
                 max_distractors: int = 1000, show_progress_bar: bool = False):
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if not os.path.exists(path):
            raise UserError(f"{path}: file not found")
        if os.path.isdir(path):
            raise UserError(f"{path}: is a directory; streaming reads one .jsonl or .parquet pairs file")
        if ext not in STREAM_EXTS:
            raise UserError(f"{path}: streaming reads .jsonl or .parquet pairs files, not '{ext or '(none)'}' "
                            f"(convert it, or train without --stream)")
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
        self._index(max_distractors, show_progress_bar)

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

    def _index(self, max_distractors: int, show_progress_bar: bool) -> None:
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
            digest.update(json.dumps([pair.query, pair.positive, pair.negatives]).encode())
            digest.update(b"\n")
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
        if self.pairs < 2:
            raise UserError(f"{self.path}: training needs at least 2 pairs; {self.pairs} are left after holding "
                            f"out {len(self.validation_pairs)} for validation")
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
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise UserError(f"{self.path}: cannot be read ({e.strerror})") from None
        with f:
            f.seek(start)
            pos = start
            for raw in f:
                here, pos, i = pos, pos + len(raw), line
                line += 1
                if here == 0 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                raw = raw.rstrip(b"\n")
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _utf8_error(self.path, raw, e, line=i) from None
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise UserError(f"{self.path} line {i}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{self.path} line {i}: expected a JSON object, got {_typename(obj)}")
                yield here, i, _pair(obj, f"{self.path} line {i}", f"{self.path}:{i}", False)

    def _parquet_rows(self, start: int, line: int) -> Iterator[tuple[int, int, Pair]]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f"{self.path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
        names = list(pf.schema_arrow.names)
        if start == 0:
            _check_header(names, self.path, [(_QUERY_KEYS, "query"), (_POSITIVE_KEYS, "positive")])
        ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        first = int(np.searchsorted(ends, start, side="right"))
        row = int(ends[first - 1]) if first > 0 else 0
        for g in range(first, pf.num_row_groups):
            for rec in pf.read_row_group(g).to_pylist():
                if row >= start:
                    where = f"{self.path} row {row + 1}"
                    yield row, row + 1, _pair(rec, where, f"{self.path}:{row + 1}", True)
                row += 1

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
        counts, self.extra_pairs = [], 0
        for w in tqdm(self.order, desc=f"batches, epoch {epoch}", unit="window",
                      disable=not show_progress_bar or len(self.order) < 2):
            pairs, batches = self._cut(w)
            counts.append(len(batches))
            self.extra_pairs += len(pairs) - self._window_pairs
        self.ends = [int(x) for x in np.cumsum(counts)]
        key = json.dumps([stream.digest, stream.window, stream.seed, epoch, self.order, counts])
        self.digest = hashlib.sha256(key.encode()).hexdigest()

    def _cut(self, w: int) -> tuple[list[Pair], list[list[int]]]:
        """Window ``w``'s pairs as batched (replay mixed in) and its batches; the last one is kept."""
        if getattr(self, "_cached", (None,))[0] != w:
            pairs = self.stream.window_pairs(w)
            self._window_pairs = len(pairs)
            self._cached = (w, *self.make_batches(pairs, () if self.stream.num_windows == 1 else (w,)))
        return self._cached[1], self._cached[2]

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def batch(self, i: int) -> list[Pair]:
        slot = bisect.bisect_right(self.ends, i)
        pairs, batches = self._cut(self.order[slot])
        local = i - (self.ends[slot - 1] if slot else 0)
        return [pairs[j] for j in batches[local]]

