"""Dynamic batching for the embeddings server: concurrent requests become onnxruntime batches.

Two worker threads form a pipeline behind the event loop, so neither tokenisation nor inference ever
runs on it::

    request ──admit──▶ tokenizer thread ──▶ pending (FIFO) ──▶ model thread ──rows──▶ request's future
            (bounded)   one encode_batch       token counts       windows of the
                        over all waiting                          token budget, length-sorted runs

* Admission is bounded: at most ``max_queue`` texts are admitted and unanswered at once; a request that
  does not fit is refused whole with :class:`Overloaded` (the server answers 429), never buffered.
  :meth:`Batcher.begin_drain` only raises the :attr:`~Batcher.draining` flag (the server then refuses
  requests that *arrive* with 503, and still answers those already being handled); after
  :meth:`Batcher.close` every request gets :class:`Draining`.
* The model thread takes the oldest pending texts up to ``max_window_tokens`` real tokens: the
  window. It sorts the window by token length and cuts it into runs whose *padded* size (texts x
  longest) stays within ``max_batch_tokens`` (like TEI's ``--max-batch-tokens``) and that hold at
  most ``max_batch_size`` texts, so a long text never pads a batch of short ones. An engine with
  ``padded_length(tokens)`` (the ONNX one: length buckets of 4 tokens) gets runs of one bucket each,
  padded to it, as :meth:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder.embed` batches. The window is
  wider than one run so that the runs of one bucket fill up: with a window of one run's budget
  (1024 tokens, the default before), texts of ~75 tokens spread over as many buckets as texts and
  the server ran 1.2 texts a run. Every run of a window is done before the next window, so no text
  waits behind later arrivals.
* An engine with ``streams`` > 1 (the ONNX one: that many runs at once, each on its share of the
  threads) gets the runs of a window ``streams`` at a time, each whole on one stream
  (``run(encodings, split=False)``); a window of one run is split over the streams instead.
* There is no artificial wait: while one window runs, the next requests queue up, and the next
  window takes them all (continuous batching). A lone request is answered at once.

An engine is what turns texts into vectors: ``tokenize(texts) -> encodings`` (objects with ``.ids``
and ``.type_ids``, already truncated to the model's window), ``from_ids(ids) -> encoding`` and
``run(encodings) -> float32 [n, dim]`` (with ``streams`` > 1: ``run(encodings, split=True)``, and
safe to call from ``streams`` threads at once). :class:`OnnxEngine` is the one the server uses.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np

from fastembed_tune.core.errors import UserError


class Overloaded(Exception):
    """The queue cannot take this request now (the server answers 429 with ``Retry-After``)."""


class Draining(Exception):
    """The server is shutting down: admitted requests are answered, new ones are refused (503)."""


class EngineError(Exception):
    """The model failed on a batch, or produced NaN/Inf (the server answers 500)."""


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int,
                 padded_length: Optional[Callable[[int], int]] = None) -> List[List[int]]:
    """Cut texts of token ``lengths`` into runs: sorted longest first, each run's padded size
    (``len(run) * longest``) within ``max_batch_tokens`` and at most ``max_batch_size`` texts; a text
    longer than the budget runs alone. With ``padded_length`` (tokens -> the length a batch is
    padded to), a run holds texts of one padded length only, and that length is what the budget
    counts. Returns lists of indices into ``lengths``.

    >>> plan_batches([3, 10, 4, 9], max_batch_tokens=20, max_batch_size=8)
    [[1, 3], [2, 0]]
    >>> plan_batches([3, 10, 4, 17], max_batch_tokens=40, max_batch_size=8)
    [[3, 1], [2, 0]]
    >>> plan_batches([3, 10, 4, 17], max_batch_tokens=40, max_batch_size=8, padded_length=lambda n: -(-n // 8) * 8)
    [[3], [1], [2, 0]]
    """
    pad = padded_length or (lambda n: n)
    width = [pad(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-width[i], -lengths[i]))
    runs: List[List[int]] = []
    for i in order:
        if (runs and len(runs[-1]) < max_batch_size and (padded_length is None or width[i] == width[runs[-1][0]])
                and (len(runs[-1]) + 1) * width[runs[-1][0]] <= max_batch_tokens):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


@dataclass
class Ids:
    """A pre-tokenised input (token ids of the model's own vocabulary): what ``feed`` reads.

    >>> Ids([101, 102]).type_ids
    [0, 0]
    """
    ids: List[int]
    type_ids: List[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.type_ids:
            self.type_ids = [0] * len(self.ids)


def truncate_ids(ids: Sequence[int], max_length: int) -> List[int]:
    """Token ids cut to ``max_length`` the way the tokenizer truncates an encoded text: the first
    ``max_length - 1`` ids and the last one (the closing special token such as ``[SEP]``).

    >>> truncate_ids([101, 7, 8, 9, 102], 4)
    [101, 7, 8, 102]
    """
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    return ids[:max_length - 1] + ids[-1:] if max_length > 1 else ids[:1]


class OnnxEngine:
    """The server's engine over an :class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder`: its Rust
    tokenizer (truncating to the model's window) and its graph (onnxruntime, or OpenVINO for bf16).

    >>> from fastembed_tune.embed.onnx_embedder import OnnxEmbedder                  # doctest: +SKIP
    >>> e = OnnxEngine(OnnxEmbedder("/tmp/minilm_onnx"))                     # doctest: +SKIP
    >>> e.run(e.tokenize(["hello", "a longer text"])).shape                  # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.dim = int(embedder.dim)
        self.max_seq_length = int(embedder.max_seq_length)
        self.vocab_size = int(embedder.vocab_rows or embedder.tokenizer.get_vocab_size(with_added_tokens=True))
        try:  # onnx/model.onnx (bf16 runs the portable graph) or model.onnx / model_int8.onnx
            self.file = str(embedder.model_file.relative_to(embedder.dir))
        except ValueError:
            self.file = embedder.model_file.name
        choice = getattr(embedder, "choice", None)
        self.precision = choice.precision if choice is not None else None
        # tokens -> the length a run is padded to (its bucket); None: each run padded to its longest
        self.padded_length = embedder.padded_length if getattr(embedder, "pad_multiple", 0) else None

    def tokenize(self, texts: List[str]) -> list:
        """Encodings of ``texts`` (special tokens added, truncated to ``max_seq_length``)."""
        return self.embedder.encodings(texts)

    def from_ids(self, ids: Sequence[int]) -> Ids:
        """An encoding for token ids given by the client (truncated to ``max_seq_length``)."""
        return Ids(truncate_ids(ids, self.max_seq_length))

    @property
    def streams(self) -> int:
        """Runs the graph takes at once (each on its share of the threads)."""
        return int(getattr(self.embedder, "streams", 1))

    def run(self, encodings: list, split: bool = True) -> np.ndarray:
        """One run of the graph (onnxruntime or OpenVINO): float32 ``[len(encodings), dim]``, padded
        to the longest (to its bucket); ``split=False``: on one stream, else cut over the streams."""
        e = self.embedder
        return e.run(e.feed(encodings), split=split)


class _Job:
    """One admitted request: its inputs, its result rows, and the future its handler awaits."""
    __slots__ = ("texts", "ids", "n", "out", "remaining", "tokens", "future", "loop", "failed", "cancelled")

    def __init__(self, texts, ids, n, loop, future):
        self.texts, self.ids, self.n, self.loop, self.future = texts, ids, n, loop, future
        self.out: Optional[np.ndarray] = None
        self.remaining = n
        self.tokens = 0
        self.failed = False
        self.cancelled = False  # its handler gave up (the client left): its texts are skipped


def _resolve(future: asyncio.Future, result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # the handler gave up (cancelled): nothing to deliver
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


BatchHook = Callable[[int, int, float], None]  # (texts, padded tokens, seconds) of one run
MAX_WINDOW_TOKENS = 16384  # real tokens the model thread takes from the queue at once (then cut into runs)


class Batcher:
    """Coalesce concurrent requests into engine batches (see the module text).

    ``on_batch(texts, padded_tokens, seconds)`` is called after every engine run (for metrics).
    :meth:`embed` is awaited from the event loop; :meth:`start` / :meth:`close` start and stop
    the two worker threads (``close`` answers everything admitted first).

    >>> import asyncio
    >>> class Echo:
    ...     max_seq_length, dim = 8, 2
    ...     def tokenize(self, texts): return [Ids(list(range(len(t)))) for t in texts]
    ...     def run(self, encs): return np.array([[len(e.ids), 1.0] for e in encs], np.float32)
    >>> b = Batcher(Echo()); b.start()
    >>> asyncio.run(b.embed(texts=["ab", "abcd"]))
    (array([[2., 1.],
           [4., 1.]], dtype=float32), 6)
    >>> b.close()
    """

    def __init__(self, engine: Any, max_batch_tokens: int = 1024, max_batch_size: int = 128,
                 max_queue: int = 4096, on_batch: Optional[BatchHook] = None,
                 max_window_tokens: int = MAX_WINDOW_TOKENS):
        for name, v in (("max_batch_tokens", max_batch_tokens), ("max_batch_size", max_batch_size),
                        ("max_queue", max_queue), ("max_window_tokens", max_window_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        self.engine = engine
        self.max_batch_tokens, self.max_batch_size, self.max_queue = max_batch_tokens, max_batch_size, max_queue
        self.max_window_tokens = max(max_window_tokens, max_batch_tokens)
        streams = getattr(engine, "streams", 1)
        self.streams = streams if isinstance(streams, int) and not isinstance(streams, bool) and streams > 1 else 1
        self._pool: Optional[ThreadPoolExecutor] = None
        self._rows_lock = threading.Lock()  # rows of two runs in flight may belong to one request
        self.on_batch = on_batch
        self._padded_length = getattr(engine, "padded_length", None)  # None: each run padded to its longest
        self._lock = threading.Lock()
        self._queued = 0  # texts admitted and not yet answered
        self._draining = False
        self._closed = False
        self._inbox: Deque[Optional[_Job]] = deque()  # jobs waiting for the tokenizer (None: stop)
        self._inbox_ready = threading.Condition(threading.Lock())
        self._pending: Deque[Tuple[int, _Job, int, Any]] = deque()  # (tokens, job, row, encoding)
        self._pending_ready = threading.Condition(threading.Lock())
        self._stop_model = False
        self._threads: List[threading.Thread] = []

    # ---- the event-loop side ----------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Texts admitted and not yet answered."""
        return self._queued

    @property
    def draining(self) -> bool:
        """True once :meth:`begin_drain` (or :meth:`close`) was called."""
        return self._draining

    async def embed(self, texts: Optional[List[str]] = None,
                    ids: Optional[List[Sequence[int]]] = None) -> Tuple[np.ndarray, int]:
        """Embed one request's ``texts`` (or token ``ids``): float32 ``[n, dim]`` in input order and
        the number of tokens the model read. Raises :class:`Overloaded`, :class:`Draining` or
        :class:`EngineError`. Cancelled (the client left), the request's texts not yet run are dropped."""
        inputs = texts if texts is not None else ids
        n = len(inputs or ())
        if n == 0:
            raise ValueError("embed() needs at least one input")
        with self._lock:
            if self._closed:
                raise Draining("the server is shutting down")
            if self._queued + n > self.max_queue:
                raise Overloaded(f"the server is at capacity ({self._queued} texts queued, at most "
                                 f"{self.max_queue}); retry shortly")
            self._queued += n
        loop = asyncio.get_running_loop()
        job = _Job(texts, ids, n, loop, loop.create_future())
        with self._inbox_ready:
            self._inbox.append(job)
            self._inbox_ready.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # read by the worker threads: nobody waits for these rows any more
            raise

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the tokenizer and model threads."""
        if self._threads:
            return
        if self.streams > 1:
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="fastembed-stream")
        self._threads = [threading.Thread(target=self._tokenizer_loop, name="fastembed-tokenize", daemon=True),
                         threading.Thread(target=self._model_loop, name="fastembed-model", daemon=True)]
        for t in self._threads:
            t.start()

    def begin_drain(self) -> None:
        """Mark the batcher as draining (callers stop sending new work; :meth:`embed` still admits)."""
        with self._lock:
            self._draining = True

    def close(self, timeout: Optional[float] = None) -> None:
        """Drain: answer everything admitted, then stop the threads (waiting at most ``timeout`` s)."""
        with self._lock:
            self._draining = self._closed = True
        with self._inbox_ready:
            self._inbox.append(None)
            self._inbox_ready.notify()
        for t in self._threads:
            t.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # ---- the tokenizer thread ----------------------------------------------------------------------
    def _tokenizer_loop(self) -> None:
        stop = False
        while not stop:
            with self._inbox_ready:
                while not self._inbox:
                    self._inbox_ready.wait()
                jobs = list(self._inbox)
                self._inbox.clear()
            if None in jobs:
                stop = True
                jobs = [j for j in jobs if j is not None]
            try:
                self._tokenize(jobs)
            except Exception as e:  # never let the thread die with requests waiting on it
                for j in jobs:
                    if not j.failed and j.remaining == j.n:
                        self._fail(j, EngineError(f"tokenisation failed: {type(e).__name__}: {e}"), count=j.n)
        with self._pending_ready:
            self._stop_model = True
            self._pending_ready.notify()

    def _tokenize(self, jobs: List[_Job]) -> None:
        """One ``encode_batch`` over every waiting text; the encodings go to the model thread."""
        jobs = [j for j in jobs if not (j.cancelled and self._drop(j, j.n))]
        texts = [t for j in jobs if j.texts is not None for t in j.texts]
        try:
            encs = iter(self.engine.tokenize(texts)) if texts else iter(())
        except Exception as e:  # the tokenizer failed on the whole lot: retry one request at a time
            if len(jobs) > 1:
                for j in jobs:
                    self._tokenize([j])
                return
            self._fail(jobs[0], EngineError(f"tokenisation failed: {e}"), count=jobs[0].n)
            return
        items = []
        for j in jobs:
            if j.texts is not None:
                rows = [next(encs) for _ in j.texts]
            else:
                try:
                    rows = [self.engine.from_ids(x) for x in j.ids]
                except Exception as e:
                    self._fail(j, EngineError(f"token-id input refused: {e}"), count=j.n)
                    continue
            j.tokens = sum(len(r.ids) for r in rows)
            items.extend((len(r.ids), j, i, r) for i, r in enumerate(rows))
        with self._pending_ready:
            self._pending.extend(items)
            self._pending_ready.notify()

    # ---- the model thread --------------------------------------------------------------------------
    def _take_window(self) -> Optional[list]:
        """The oldest pending texts within the token budget, or None once stopped and empty."""
        with self._pending_ready:
            while not self._pending and not self._stop_model:
                self._pending_ready.wait()
            if not self._pending:
                return None
            window, tokens = [], 0
            while self._pending:
                n = self._pending[0][0]
                if window and tokens + n > self.max_window_tokens:
                    break
                window.append(self._pending.popleft())
                tokens += n
            return window

    def _model_loop(self) -> None:
        while True:
            window = self._take_window()
            if window is None:
                return
            runs = [[window[i] for i in run] for run in
                    plan_batches([w[0] for w in window], self.max_batch_tokens, self.max_batch_size,
                                 self._padded_length)]
            if self._pool is not None and len(runs) > 1:  # `streams` runs at once, each whole on one stream
                list(self._pool.map(lambda items: self._guarded(items, split=False), runs))
            else:
                for items in runs:
                    self._guarded(items, split=True)

    def _guarded(self, items: list, split: bool) -> None:
        try:
            self._run(items, split)
        except Exception as e:  # a bug of ours: answer 500, keep serving
            with self._rows_lock:
                for it in items:
                    if not it[1].failed:
                        self._fail(it[1], EngineError(f"{type(e).__name__}: {e}"), count=0)

    def _run(self, items: list, split: bool = True) -> None:
        """One engine call; rows go to their requests, a request is answered when its last row is in."""
        t0 = time.perf_counter()
        items = self._live(items)
        if not items:
            return
        encodings = [it[3] for it in items]
        try:
            out = self.engine.run(encodings, split=split) if self.streams > 1 else self.engine.run(encodings)
            emb = np.asarray(out, dtype=np.float32)
            if emb.shape[0] != len(items):
                raise EngineError(f"the model returned {emb.shape[0]} rows for {len(items)} texts")
        except Exception as e:
            err = e if isinstance(e, EngineError) else EngineError(f"inference failed: {type(e).__name__}: {e}")
            with self._rows_lock:
                for it in items:
                    self._fail(it[1], err)
            return
        if self.on_batch is not None:
            longest = max(it[0] for it in items)
            width = self._padded_length(longest) if self._padded_length else longest
            self.on_batch(len(items), len(items) * width, time.perf_counter() - t0)
        finite = np.isfinite(emb).all(axis=1)
        with self._rows_lock:
            self._deliver_rows(items, emb, finite)

    def _deliver_rows(self, items: list, emb: np.ndarray, finite: np.ndarray) -> None:
        for k, (_, job, row, _) in enumerate(items):
            if not finite[k]:
                self._fail(job, EngineError(f"the model produced NaN/Inf for input {row}; it is damaged or "
                                            f"overflows on this text"))
                continue
            if job.failed:
                self._count_down(job, 1)
                continue
            if job.out is None:
                job.out = np.empty((job.n, emb.shape[1]), dtype=np.float32)
            job.out[row] = emb[k]
            self._count_down(job, 1)

    def _live(self, items: list) -> list:
        """``items`` less those of cancelled requests (counted as done, so their queue room is freed)."""
        if not any(it[1].cancelled for it in items):
            return items
        live = []
        for it in items:
            if it[1].cancelled:
                self._drop(it[1], 1)
            else:
                live.append(it)
        return live

    def _drop(self, job: _Job, count: int) -> bool:
        """``count`` texts of the cancelled ``job`` done without running; True."""
        with self._rows_lock:
            job.failed = True  # nothing is delivered to a handler that is gone
            self._count_down(job, count)
        return True

    def _fail(self, job: _Job, error: BaseException, count: int = 1) -> None:
        """Answer ``job`` with ``error`` (once); ``count`` of its rows are done."""
        if not job.failed:
            job.failed = True
            self._deliver(job, None, error)
        self._count_down(job, count)

    def _count_down(self, job: _Job, count: int) -> None:
        job.remaining -= count
        if job.remaining > 0:
            return
        with self._lock:
            self._queued -= job.n
        if not job.failed:
            self._deliver(job, (job.out, job.tokens), None)

    @staticmethod
    def _deliver(job: _Job, result: Any, error: Optional[BaseException]) -> None:
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
        except RuntimeError:  # the event loop is gone (hard shutdown): nobody is waiting
            pass
