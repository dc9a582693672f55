"""An OpenAI-compatible embeddings endpoint as a model: ``encode(texts)`` -> float32 rows.

:class:`ApiEmbedder` calls ``POST {api_base}/embeddings`` with the official ``openai`` client:

- **batching**: ``batch_size`` texts per request (OpenAI takes up to 2048);
- **concurrency**: at most ``concurrency`` requests in flight (a thread pool of that size);
- **retries**: 429 and 5xx answers, time-outs and (once the endpoint has answered) dropped
  connections are retried up to ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds
  (capped at ``max_backoff``, with jitter), or the server's ``Retry-After`` when it sends one;
- **tokens-per-minute budget**: :class:`TokenBudget`, a token bucket refilled at ``tpm / 60`` tokens
  a second, is debited before each request by an estimate (UTF-8 bytes / 4) and corrected by the
  ``usage.prompt_tokens`` the endpoint reports;
- **errors**: a refused key, an unknown model, an unreachable URL or a malformed answer is one
  :class:`~fastembed_tune.core.errors.UserError` sentence naming ``--api-base`` / ``--api-model``. The key
  (``OPENAI_API_KEY``) is never written to disk, logged, or put in a message; the store fingerprint
  is made of the URL, the model name and ``dimensions`` only.

:func:`stored_api_encoder` puts an :class:`~fastembed_tune.embed.store.StoredEncoder` in front of it, so each
text is requested once, ever, and a killed run resumes without re-requesting what it has.
"""
from __future__ import annotations

import base64
import json
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.errors import UserError

KEY_ENV = "OPENAI_API_KEY"
INSTALL_HINT = "the API embedding source needs the openai client: pip install \"fastembed-tune[api]\" (or: pip install openai)"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's tokens for the budget: UTF-8 bytes / 4, at least 1
    (the endpoint's ``usage.prompt_tokens`` corrects it after each request).

    >>> estimate_tokens("a"), estimate_tokens("x" * 40)
    (1, 10)
    """
    return max(1, math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4))


class TokenBudget:
    """A tokens-per-minute budget: a bucket of ``tokens_per_minute`` tokens refilled continuously at
    ``tokens_per_minute / 60`` a second. :meth:`acquire` reserves tokens and sleeps until the bucket
    covers them (reservations may take it below 0, so concurrent callers queue fairly); requests
    larger than the whole bucket wait for a full one. ``clock`` and ``sleep`` are injectable.

    >>> t = [0.0]; slept = []
    >>> b = TokenBudget(600, clock=lambda: t[0], sleep=slept.append)   # 10 tokens a second
    >>> b.acquire(600), b.acquire(50), slept                           # the second waits 5 s
    (0.0, 5.0, [5.0])
    """

    def __init__(self, tokens_per_minute: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not (tokens_per_minute > 0 and math.isfinite(tokens_per_minute)):
            raise ValueError(f"tokens_per_minute must be a finite number > 0, got {tokens_per_minute!r}")
        self.capacity = float(tokens_per_minute)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.clock, self.sleep = clock, sleep
        self._t = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def acquire(self, tokens: int) -> float:
        """Reserve ``tokens`` (at most the bucket's size), sleeping as long as the budget needs;
        returns the seconds slept."""
        n = min(float(tokens), self.capacity)
        with self._lock:
            self._refill()
            wait = max(0.0, (n - self.level) / self.rate)
            self.level -= n
            self.waited += wait
        if wait > 0:
            self.sleep(wait)
        return wait

    def correct(self, extra: float) -> None:
        """Debit (``extra`` > 0) or credit the difference between a request's real and estimated tokens."""
        with self._lock:
            self._refill()
            self.level = min(self.capacity, self.level - extra)


def _scrub(message: str, key: Optional[str]) -> str:
    """``message`` on one line, with the key (if it appears at all) replaced by ``***``."""
    message = " ".join(str(message).split())
    if key and len(key) >= 4:
        message = message.replace(key, "***")
    return message[:300]


def _retry_after(err: Exception) -> Optional[float]:
    resp = getattr(err, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) and v >= 0 else None


class ApiEmbedder:
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (see the module docstring).

    ``api_key`` defaults to ``$OPENAI_API_KEY`` (a :class:`UserError` when unset). ``dimensions``
    is sent when given (OpenAI's text-embedding-3 models shorten their vectors). ``dim`` is known
    after the first answer, or from ``dimensions``. Counters: ``requests``, ``texts``,
    ``retries``, ``tokens`` (reported by the endpoint).

    >>> e = ApiEmbedder("http://127.0.0.1:9/v1", "m", api_key="k", dimensions=8)
    >>> e.dim, e.fingerprint
    (8, 'openai-compatible|http://127.0.0.1:9/v1|m|8')
    """

    def __init__(self, api_base: str, model: str, api_key: Optional[str] = None, dimensions: Optional[int] = None,
                 batch_size: int = 128, concurrency: int = 4, max_retries: int = 6, tokens_per_minute: Optional[float] = None,
                 timeout: float = 60.0, backoff: float = 0.5, max_backoff: float = 30.0):
        if not api_base or "://" not in api_base:
            raise UserError(f"--api-base {api_base!r}: give the endpoint's URL, e.g. https://api.openai.com/v1")
        if not model:
            raise UserError("--api-model is empty; give the embedding model's name, e.g. text-embedding-3-small")
        for name, v in (("--api-batch-size", batch_size), ("--api-concurrency", concurrency)):
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be an integer >= 1, got {v!r}")
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            raise UserError(f"--api-dimensions must be an integer >= 1, got {dimensions!r}")
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.dimensions = dimensions
        self._key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        self.batch_size, self.concurrency = batch_size, concurrency
        self.max_retries, self.timeout = int(max_retries), float(timeout)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.budget = TokenBudget(tokens_per_minute) if tokens_per_minute else None
        self._dim: Optional[int] = dimensions
        self._client = None
        self._answered = False  # once the endpoint has answered, a dropped connection is worth a retry
        self._lock = threading.Lock()
        self.requests = self.texts = self.retries = self.tokens = 0

    # ---- identity --------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """What decides the vectors: URL, model and dimensions (never the key)."""
        return f"openai-compatible|{self.api_base}|{self.model}|{self.dimensions or ''}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError("the endpoint's dimension is known after its first answer")
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:
        self._dim = int(value)

    def describe(self) -> str:
        """How reports name this source (URL and model; no key).

        >>> ApiEmbedder("http://h/v1", "m", api_key="k").describe()
        'OpenAI-compatible endpoint http://h/v1, model m'
        """
        return f"OpenAI-compatible endpoint {self.api_base}, model {self.model}" + (
            f", dimensions {self.dimensions}" if self.dimensions else "")

    # ---- requests --------------------------------------------------------------------------------
    def client(self):
        """The ``openai.OpenAI`` client (created once; its own retries off: ours are counted)."""
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise UserError(INSTALL_HINT) from None
            if not self._key:
                raise UserError(f"set {KEY_ENV} to the endpoint's API key (any non-empty value for a server "
                                f"without keys); it is read from the environment only, never from a file")
            self._client = openai.OpenAI(api_key=self._key, base_url=self.api_base, max_retries=0,
                                         timeout=self.timeout)
        return self._client

    def _where(self) -> str:
        return f"--api-base {self.api_base} --api-model {self.model}"

    def _request(self, batch: list[str]) -> np.ndarray:
        """One batch, retried on 429/5xx/time-outs; float32 [len(batch), dim]."""
        import openai

        client = self.client()
        estimate = sum(estimate_tokens(t) for t in batch)
        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        for attempt in range(self.max_retries + 1):
            if self.budget is not None:
                self.budget.acquire(estimate)
            with self._lock:
                self.requests += 1
            try:
                resp = client.embeddings.create(input=batch, model=self.model, encoding_format="float", **extra)
            except (json.JSONDecodeError, openai.APIResponseValidationError) as e:
                raise self._not_embeddings(f"not JSON: {e}" if isinstance(e, json.JSONDecodeError) else e) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                transient = (isinstance(e, (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError))
                             or (status is not None and (status == 429 or status >= 500))
                             or (isinstance(e, openai.APIConnectionError) and self._answered))
                if not transient:
                    raise self._user_error(e) from None
                if attempt == self.max_retries:
                    raise UserError(f"{self._where()}: still failing after {self.max_retries} retries "
                                    f"({self._describe_error(e)}); try again later or lower --api-concurrency / "
                                    f"--api-tpm") from None
                delay = _retry_after(e)
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                with self._lock:
                    self.retries += 1
                time.sleep(min(delay, self.max_backoff))
                continue
            self._answered = True
            rows = self._rows(resp, batch)
            used = getattr(getattr(resp, "usage", None), "prompt_tokens", None)
            with self._lock:
                self.texts += len(batch)
                self.tokens += int(used or 0)
            if self.budget is not None and isinstance(used, int):
                self.budget.correct(used - estimate)
            return rows
        raise AssertionError("unreachable")

    def _describe_error(self, e: Exception) -> str:
        status = getattr(e, "status_code", None)
        body = getattr(e, "body", None)
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            msg = body["error"].get("message")
        detail = _scrub(msg or getattr(e, "message", None) or str(e), self._key)
        return f"HTTP {status}: {detail}" if status else detail

    def _user_error(self, e: Exception) -> UserError:
        import openai

        d = self._describe_error(e)
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return UserError(f"{self._where()}: the endpoint refused the key in {KEY_ENV} ({d})")
        if isinstance(e, openai.NotFoundError):
            return UserError(f"{self._where()}: not found ({d}); check the URL (it usually ends in /v1) and the "
                             f"model name")
        if isinstance(e, openai.APIConnectionError):
            return UserError(f"{self._where()}: cannot reach the endpoint ({d}); check the URL and that the "
                             f"server is running")
        return UserError(f"{self._where()}: the endpoint refused the request ({d})")

    def _not_embeddings(self, what: object) -> UserError:
        """The endpoint answered (HTTP 200) something that is not an embeddings list: an HTML page, a proxy's
        login form, another API."""
        return UserError(f"{self._where()}: the answer is not an OpenAI embeddings JSON ({_scrub(str(what), self._key)[:120]}); "
                         f"check that the URL is the embeddings API's (it usually ends in /v1)")

    def _vectors(self, resp) -> list[np.ndarray]:
        """The answer's embeddings as float32 arrays, in ``index`` order (a malformed answer: :meth:`_not_embeddings`)."""
        data = getattr(resp, "data", None)
        if not isinstance(data, list):
            raise self._not_embeddings(resp if isinstance(resp, str) else f"no 'data' list in {type(resp).__name__}")
        try:
            data = sorted(data, key=lambda x: x.index)
            rows = []
            for item in data:
                emb = item.embedding
                if isinstance(emb, str):  # a server that answers base64 whatever was asked
                    emb = np.frombuffer(base64.b64decode(emb), dtype="<f4")
                rows.append(np.asarray(emb, dtype=np.float32))
        except (AttributeError, TypeError, ValueError) as e:
            raise self._not_embeddings(f"a malformed 'data' item: {e}") from None
        return rows

    def _rows(self, resp, batch: list[str]) -> np.ndarray:
        rows = self._vectors(resp)
        if len(rows) != len(batch):
            raise UserError(f"{self._where()}: asked for {len(batch)} embeddings, got {len(rows)}")
        dims = {r.shape for r in rows}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise UserError(f"{self._where()}: the embeddings in one answer have different sizes {sorted(dims)}")
        out = np.stack(rows)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"{self._where()}: NaN/Inf in the embedding of {batch[i][:40]!r}; refusing to cache it")
        zero = ~out.any(axis=1)
        if zero.any():
            i = int(np.argmax(zero))
            raise UserError(f"{self._where()}: an all-zero embedding for {batch[i][:40]!r} (it has no direction, so "
                            f"no cosine similarity); refusing to cache it")
        with self._lock:
            if self._dim is None:
                self._dim = out.shape[1]
            elif out.shape[1] != self._dim:
                raise UserError(f"{self._where()}: answered {out.shape[1]}-d embeddings, earlier {self._dim}-d")
        return out

    def encode(self, texts: Sequence[str], batch_size: Optional[int] = None, show_progress_bar: bool = False,
               desc: str = "embed (API)") -> np.ndarray:
        """float32 rows of ``texts`` in input order: ``self.batch_size`` texts a request, at most
        ``self.concurrency`` requests at once (``batch_size`` is ignored: the endpoint's batch is ours)."""
        texts = list(texts)
        if not texts:
            return np.empty((0, self._dim or 0), np.float32)
        self.client()
        batches = [texts[s:s + self.batch_size] for s in range(0, len(texts), self.batch_size)]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress_bar)
        try:
            if self.concurrency == 1 or len(batches) == 1:
                parts = []
                for b in batches:
                    parts.append(self._request(b))
                    bar.update(len(b))
            else:
                with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                    futures = [pool.submit(self._request, b) for b in batches]
                    parts = []
                    try:
                        for f, b in zip(futures, batches):
                            parts.append(f.result())
                            bar.update(len(b))
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()
        return np.concatenate(parts)


def stored_api_encoder(api: ApiEmbedder, root: Union[str, os.PathLike], first_text: str,
                       dtype: str = "float32"):
    """A :class:`~fastembed_tune.embed.store.StoredEncoder` in front of ``api``, each store chunk one round of
    ``batch_size x concurrency`` texts (a kill loses at most the round in flight). The store needs the
    dimension up front: it is read from the store when this endpoint was used before, else taken from
    ``dimensions``, else from embedding ``first_text`` (a text the run needs anyway: its row is kept).

    >>> import tempfile
    >>> api = ApiEmbedder("http://127.0.0.1:9/v1", "m", api_key="k", dimensions=4)
    >>> stored_api_encoder(api, tempfile.mkdtemp(), "hello").dim
    4
    """
    from fastembed_tune.embed.store import StoredEncoder, model_fingerprint, read_meta

    meta = read_meta(Path(root) / model_fingerprint(api))
    probe = None
    if meta is not None:
        api.dim = meta["dim"]
    elif api.dimensions is None:
        probe = api.encode([first_text])
    api.dim = int(api._dim)
    enc = StoredEncoder(api, root, dtype=dtype, chunk=api.batch_size * api.concurrency)
    if probe is not None:
        enc.store.add([first_text], probe)
        enc.embedded += 1
    return enc
