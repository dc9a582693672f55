"""``fastembed-tune serve``: an OpenAI-compatible embeddings server over an ONNX export.

Routes: ``POST /v1/embeddings`` (OpenAI's request and response, errors in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text).

Built on Starlette under uvicorn (the ``serve`` extra): a plain ASGI toolkit with no validation layer of
its own, so every check below is ours and every refusal reads like OpenAI's. The work is done off the
event loop by :class:`~fastembed_tune.serve.batching.Batcher` (a tokenizer thread and a model thread that
coalesces concurrent requests into token-budgeted onnxruntime batches).

* ``input``: a string, a list of strings, a list of token ids, or a list of token-id lists (ids of the
  model's own vocabulary, as its ``tokenizer.json`` encodes a text, special tokens included). Texts
  longer than the model's window are truncated, never refused; an empty string is refused, as OpenAI does.
* ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32, what OpenAI's clients
  decode). ``dimensions``: the first k dimensions, re-normalised to unit length.
* ``usage.prompt_tokens``: the tokens the model read (special tokens included, after truncation).
* Status codes: 400 bad request, 404 unknown model or route, 405, 413 too large (body, or more inputs
  than ``max_inputs``), 429 at capacity (``Retry-After: 1``), 503 while shutting down, 500 if the model
  fails or produces NaN/Inf.
* SIGTERM / Ctrl-C: stop accepting connections, answer the requests in flight, exit 0.
* onnxruntime runs with thread spinning off: on a small machine idle spinning workers take the cores the
  event loop needs between batches (3x the size-1 throughput on 2 cores); ``FASTEMBED_TUNE_ORT_SPIN=1``
  restores onnxruntime's default. The model runs one batch at a time on every thread (``streams=1``).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.atomic import cache_dir
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.layout import INT8_FILE, METADATA_FILE, MODEL_FILE
from fastembed_tune.serve.batching import MAX_WINDOW_TOKENS, Batcher, Draining, EngineError, OnnxEngine, Overloaded

INSTALL_HINT = 'the server needs the serve extra: pip install "fastembed-tune[serve]"'
try:  # the serve extra; ``serve()`` says which pip command to run when it is missing
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from fastembed_tune.serve.metrics import ServeMetrics
    _MISSING: Optional[str] = None
except ImportError as _e:  # pragma: no cover - exercised by a test that hides the extra
    _MISSING = _e.name or "starlette"

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
MAX_BODY_BYTES = 16 * 1024 * 1024
ENCODING_FORMATS = ("float", "base64")
GENERIC_DIR_NAMES = ("onnx", "model", "export", "onnx_int8")


# ---- errors in OpenAI's shape --------------------------------------------------------------------------
class ApiError(Exception):
    """A refusal answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``.

    >>> ApiError(400, "input is missing", param="input").body()["error"]["param"]
    'input'
    """

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- the request -------------------------------------------------------------------------------------
@dataclass
class EmbeddingsRequest:
    """A checked ``POST /v1/embeddings`` body: ``texts`` or token ``ids`` (one of them), and options."""
    texts: Optional[List[str]]
    ids: Optional[List[List[int]]]
    encoding_format: str
    dimensions: Optional[int]

    @property
    def n(self) -> int:
        """Number of inputs."""
        return len(self.texts if self.texts is not None else self.ids)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_ids(ids: list, where: str, vocab_size: int) -> List[int]:
    if not ids:
        raise ApiError(400, f"{where} is an empty token list; every input must hold at least one token", "input")
    for x in ids:
        if not _is_int(x) or not 0 <= x < vocab_size:
            raise ApiError(400, f"{where} holds {x!r}, not a token id of this model (integers from 0 to "
                                f"{vocab_size - 1})", "input")
    return ids


def parse_request(payload: Any, model_name: str, dim: int, vocab_size: int,
                  max_inputs: int = MAX_INPUTS) -> EmbeddingsRequest:
    """Check a decoded ``/v1/embeddings`` body as OpenAI does; raise :class:`ApiError` (400, 404 for
    another model, 413 for more than ``max_inputs`` inputs). ``user`` and unknown fields are ignored.

    >>> r = parse_request({"input": "hi", "model": "m", "dimensions": 8}, "m", dim=384, vocab_size=100)
    >>> r.texts, r.encoding_format, r.dimensions
    (['hi'], 'float', 8)
    >>> parse_request({"input": "", "model": "m"}, "m", 384, 100)
    Traceback (most recent call last):
    ...
    fastembed_tune.serve.app.ApiError: input is an empty string; every input must contain text
    """
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object with 'input' and 'model'")
    model = payload.get("model")
    if model is None:
        raise ApiError(400, "you must provide a model parameter", "model")
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {type(model).__name__}", "model")
    if model != model_name:
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{model_name}'", "model",
                       "model_not_found")
    fmt = payload.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODING_FORMATS:
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = payload.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= dim):
        raise ApiError(400, f"dimensions must be an integer from 1 to {dim} (this model's size), got {dims!r}",
                       "dimensions")
    if "input" not in payload:
        raise ApiError(400, "'input' is missing: give a string or a list of strings", "input")
    inp = payload["input"]
    texts: Optional[List[str]] = None
    ids: Optional[List[List[int]]] = None
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list) and inp:
        if all(isinstance(x, str) for x in inp):
            texts = inp
        elif all(_is_int(x) for x in inp):
            ids = [inp]
        elif all(isinstance(x, list) for x in inp):
            ids = inp
        else:
            raise ApiError(400, "'input' must be a string, a list of strings, a list of token ids or a list of "
                                "token-id lists (not a mixture)", "input")
    elif isinstance(inp, list):
        raise ApiError(400, "'input' is an empty list; give at least one text", "input")
    else:
        raise ApiError(400, f"'input' must be a string or a list of strings, got {type(inp).__name__}", "input")
    n = len(texts if texts is not None else ids)
    if n > max_inputs:
        raise ApiError(413, f"'input' holds {n} inputs; at most {max_inputs} per request", "input",
                       "too_many_inputs")
    if texts is not None:
        for i, t in enumerate(texts):
            if not t:
                where = "input" if isinstance(inp, str) else f"input[{i}]"
                raise ApiError(400, f"{where} is an empty string; every input must contain text", "input")
    else:
        ids = [_check_ids(x, "input" if len(ids) == 1 and _is_int(inp[0]) else f"input[{i}]", vocab_size)
               for i, x in enumerate(ids)]
    return EmbeddingsRequest(texts, ids, fmt, dims)


# ---- the response ------------------------------------------------------------------------------------
def apply_dimensions(emb: np.ndarray, dimensions: Optional[int]) -> np.ndarray:
    """The first ``dimensions`` columns, each row re-normalised to unit length (an all-zero row stays
    zero); ``None`` or the full size: ``emb`` unchanged.

    >>> apply_dimensions(np.array([[3.0, 4.0, 12.0]], np.float32), 2)
    array([[0.6, 0.8]], dtype=float32)
    """
    if dimensions is None or dimensions == emb.shape[1]:
        return emb
    cut = emb[:, :dimensions].astype(np.float32)
    norm = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.ascontiguousarray(cut / np.where(norm > 0, norm, 1), dtype=np.float32)


def encode_response(emb: np.ndarray, model_name: str, tokens: int, encoding_format: str = "float") -> bytes:
    """The ``/v1/embeddings`` JSON body: float lists, or base64 of little-endian float32 bytes.

    >>> import json
    >>> json.loads(encode_response(np.array([[0.5, 1.0]], np.float32), "m", 3))["data"][0]["embedding"]
    [0.5, 1.0]
    """
    emb = np.ascontiguousarray(emb, dtype="<f4")
    if encoding_format == "base64":
        rows: Sequence[Any] = [base64.b64encode(r.tobytes()).decode("ascii") for r in emb]
    else:
        rows = list(emb)
    data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(obj: Any, status: int = 200, headers: Optional[dict] = None) -> "Response":
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


# ---- the application ---------------------------------------------------------------------------------
class _Service:
    """The routes' state: engine, batcher, limits, metrics."""

    def __init__(self, engine: Any, name: str, batcher: Batcher, metrics: "ServeMetrics", max_inputs: int,
                 max_body_bytes: int, max_concurrent: int):
        self.engine, self.name, self.batcher, self.metrics = engine, name, batcher, metrics
        self.max_inputs, self.max_body_bytes, self.max_concurrent = max_inputs, max_body_bytes, max_concurrent
        self.inflight = 0
        self.created = int(time.time())

    async def _read_body(self, request: "Request") -> bytes:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > self.max_body_bytes:
            raise ApiError(413, f"the request body is {int(size)} bytes; at most {self.max_body_bytes}",
                           code="request_too_large")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > self.max_body_bytes:
                raise ApiError(413, f"the request body is over {self.max_body_bytes} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def embeddings(self, request: "Request") -> "Response":
        if self.batcher.draining:
            raise ApiError(503, "the server is shutting down; retry on another instance", type="server_error",
                           code="shutting_down")
        if self.inflight >= self.max_concurrent:
            raise ApiError(429, f"too many concurrent requests (at most {self.max_concurrent}); retry shortly",
                           type="requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            body = await self._read_body(request)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ApiError(400, "We could not parse the JSON body of your request: it is not valid JSON "
                                    "(UTF-8)") from None
            req = parse_request(payload, self.name, self.engine.dim, self.engine.vocab_size, self.max_inputs)
            try:
                emb, tokens = await self.batcher.embed(texts=req.texts, ids=req.ids)
            except Overloaded as e:
                raise ApiError(429, str(e), type="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"}) from None
            except Draining:
                raise ApiError(503, "the server is shutting down; retry on another instance", type="server_error",
                               code="shutting_down") from None
            except EngineError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                raise ApiError(500, str(e), type="server_error", code="model_error") from None
            self.metrics.embedded(req.n, tokens)
            out = apply_dimensions(emb, req.dimensions)
            return Response(encode_response(out, self.name, tokens, req.encoding_format),
                            media_type="application/json")
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
            self.metrics.queued.set(self.batcher.queued)

    async def models(self, request: "Request") -> "Response":
        return _json({"object": "list", "data": [self._model()]})

    async def model(self, request: "Request") -> "Response":
        if request.path_params["model"] != self.name:
            raise ApiError(404, f"The model '{request.path_params['model']}' does not exist; this server serves "
                                f"'{self.name}'", "model", "model_not_found")
        return _json(self._model())

    def _model(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "fastembed-tune"}

    async def health(self, request: "Request") -> "Response":
        if self.batcher.draining:
            return _json({"status": "draining"}, 503)
        return _json({"status": "ok", "model": self.name, "queued_texts": self.batcher.queued})

    async def metrics_route(self, request: "Request") -> "Response":
        self.metrics.queued.set(self.batcher.queued)
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


async def _api_error(request: "Request", exc: ApiError) -> "Response":
    request.scope["fastembed.error_code"] = exc.code or exc.type
    return _json(exc.body(), exc.status, exc.headers)


async def _http_error(request: "Request", exc: "HTTPException") -> "Response":
    where = f"({request.method} {request.url.path})"
    message = {404: f"Invalid URL {where}", 405: f"Invalid method for URL {where}"}.get(exc.status_code, exc.detail)
    return await _api_error(request, ApiError(exc.status_code, message, headers=dict(exc.headers or {})))


async def _server_error(request: "Request", exc: Exception) -> "Response":
    return await _api_error(request, ApiError(500, f"internal error ({type(exc).__name__}); see the server log",
                                              type="server_error", code="internal_error"))


class _Metered:
    """ASGI wrapper counting every HTTP answer (route, status, latency, error code) in the metrics."""

    def __init__(self, app: Any, metrics: "ServeMetrics", service: _Service):
        self.app, self.metrics, self.service = app, metrics, service
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(scope["path"], status[0], time.perf_counter() - t0, scope.get("fastembed.error_code", ""))


class AdaptedEngine:
    """An engine whose rows pass through an adapter (``fastembed-tune adapt``) on one side: the
    served vectors are the adapted ones, everything else is the wrapped engine's.

    >>> class Two:
    ...     dim = 2
    ...     def run(self, encs): return np.ones((len(encs), 2), np.float32)
    >>> AdaptedEngine(Two(), lambda x: x * 2).run([0]).tolist(), AdaptedEngine(Two(), None).dim
    ([[2.0, 2.0]], 2)
    """

    def __init__(self, engine: Any, transform: Any):
        self.engine, self.transform = engine, transform

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, encodings: list, **kw: Any) -> np.ndarray:
        return self.transform(self.engine.run(encodings, **kw))


def create_app(engine: Any, name: str, max_batch_tokens: int = 1024, max_batch_size: int = 128,
               max_queue: int = 4096, max_inputs: int = MAX_INPUTS, max_body_bytes: int = MAX_BODY_BYTES,
               max_concurrent: int = 1024, drain_timeout: float = 30.0,
               max_window_tokens: int = MAX_WINDOW_TOKENS) -> Any:
    """The ASGI application serving ``engine`` (an :class:`~fastembed_tune.serve.batching.OnnxEngine` or
    anything with the same ``tokenize``/``from_ids``/``run``/``dim``/``vocab_size``) as model ``name``.
    Its lifespan starts the batcher and, at shutdown, answers what was admitted before stopping it.
    ``app.state.service`` holds the batcher and metrics (``begin_drain`` is called on SIGTERM).

    >>> from fastembed_tune.serve.batching import Ids
    >>> class Zero:
    ...     dim, vocab_size, max_seq_length = 4, 10, 8
    ...     def tokenize(self, texts): return [Ids([1, 2]) for _ in texts]
    ...     def run(self, encs): return np.zeros((len(encs), 4), np.float32)
    >>> type(create_app(Zero(), "zero")).__name__
    '_Metered'
    """
    if _MISSING:
        raise UserError(INSTALL_HINT)
    metrics = ServeMetrics()
    batcher = Batcher(engine, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                      max_queue=max_queue, on_batch=metrics.batch, max_window_tokens=max_window_tokens)
    service = _Service(engine, name, batcher, metrics, min(max_inputs, max_queue), max_body_bytes, max_concurrent)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close, drain_timeout)

    routes = [Route("/v1/embeddings", service.embeddings, methods=["POST"]),
              Route("/embeddings", service.embeddings, methods=["POST"]),
              Route("/v1/models", service.models, methods=["GET"]),
              Route("/v1/models/{model:path}", service.model, methods=["GET"]),
              Route("/health", service.health, methods=["GET"]),
              Route("/metrics", service.metrics_route, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.service = service
    return _Metered(app, metrics, service)


# ---- the model: an export, or a sentence-transformers directory exported into a cache ----------------
def default_cache_dir() -> Path:
    """Where ``serve`` keeps exports of sentence-transformers directories: ``$FASTEMBED_TUNE_CACHE/onnx``,
    else ``$XDG_CACHE_HOME/fastembed-tune/onnx``, else ``~/.cache/fastembed-tune/onnx``.

    >>> default_cache_dir().name
    'onnx'
    """
    return cache_dir("onnx")


def directory_fingerprint(model_dir: Union[str, os.PathLike]) -> str:
    """sha256 (16 hex digits) of a directory's files: relative names and contents.

    >>> import tempfile; d = tempfile.mkdtemp(); _ = open(os.path.join(d, "a"), "w").write("x")
    >>> len(directory_fingerprint(d))
    16
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(root).parts)):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def log(line: str) -> None:
    """The server's messages before uvicorn takes over: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


def resolve_model(model: Union[str, os.PathLike], int8: bool = False,
                  cache_dir: Union[str, os.PathLike, None] = None, log=log,
                  export_int8: Optional[bool] = None) -> Path:
    """The ONNX export directory to serve: ``model`` itself when it is one (with ``model_int8.onnx``
    when ``int8``); a sentence-transformers directory is exported first (parity-gated, with int8 when
    ``export_int8``, default ``int8``) into ``cache_dir`` under its fingerprint, and the cached export
    is reused while the model's files are unchanged.

    >>> resolve_model("/nonexistent")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --model /nonexistent: no such directory
    """
    p = Path(model)
    if not p.exists():
        raise UserError(f"--model {p}: no such directory")
    if not p.is_dir():
        raise UserError(f"--model {p}: give the export directory (with {MODEL_FILE}), not a file")
    if (p / MODEL_FILE).is_file():
        if int8 and not (p / INT8_FILE).is_file():
            raise UserError(f"--model {p}: no {INT8_FILE} here; export with --quantize int8 or serve without --int8")
        return p
    if not ((p / "modules.json").is_file() or (p / "config.json").is_file()):
        raise UserError(f"--model {p}: neither an ONNX export ({MODEL_FILE}) nor a sentence-transformers directory")
    out = Path(cache_dir) if cache_dir else default_cache_dir()
    out = out / f"{p.resolve().name}-{directory_fingerprint(p)}"
    int8 = int8 if export_int8 is None else export_int8 or int8
    if (out / METADATA_FILE).is_file() and (out / MODEL_FILE).is_file() and (not int8 or (out / INT8_FILE).is_file()):
        log(f"using the cached export {out}")
        return out
    from fastembed_tune.export.onnx import export_onnx

    log(f"exporting {p} to ONNX{' (+int8)' if int8 else ''} into {out} (parity-checked; once per model)")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(p, out, quantize="int8" if int8 else None, warn=log)
    return out


def default_name(export_dir: Union[str, os.PathLike]) -> str:
    """The model id served when ``--name`` is not given: the export directory's name, with its parent's
    when the name alone says nothing (``runs/sample/onnx`` -> ``sample/onnx``).

    >>> default_name("runs/sample/onnx"), default_name("/models/support-minilm")
    ('sample/onnx', 'support-minilm')
    """
    p = Path(export_dir).resolve() if str(export_dir) in (".", "") else Path(export_dir)
    if p.name in GENERIC_DIR_NAMES and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name


def load_engine(export_dir: Union[str, os.PathLike], int8: bool = False, threads: Optional[int] = None,
                precision: Optional[str] = None, log=None) -> OnnxEngine:
    """An :class:`~fastembed_tune.serve.batching.OnnxEngine` over ``export_dir`` (``model_int8.onnx`` with
    ``int8``; ``precision="auto"`` or ``fp32``/``int8``/``bf16``: chosen as
    :func:`~fastembed_tune.embed.loader.load_embedder` does, the choice sent to ``log``), warmed up with
    one run (which also fixes its embedding size).

    >>> load_engine("/tmp/minilm_onnx").dim  # doctest: +SKIP
    384
    """
    from fastembed_tune.embed.loader import load_embedder

    # onnxruntime's idle worker threads spin for a while after each run; on a small machine they take
    # the cores the event loop and the tokenizer need between runs
    spin = os.environ.get("FASTEMBED_TUNE_ORT_SPIN", "0") == "1"
    # the batcher runs the runs of a window `streams` at a time, each whole on one stream
    emb = load_embedder(export_dir, int8=int8, threads=threads, precision=None if int8 else precision, spin=spin)
    if log is not None and getattr(emb, "choice", None) is not None:
        log(emb.choice.description)
    probe = emb.run(emb.tokenize(["warm up"]))
    if not emb.dim:
        emb.dim = int(probe.shape[1])
    return OnnxEngine(emb)


# ---- the server process --------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or one clear UserError.

    >>> s = bind("127.0.0.1", 0); s.getsockname()[1] > 0; s.close()
    True
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host}: not an address this machine can listen on") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"{host}:{port} is already in use; choose another --port") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def _server_class():
    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with our signal handling: SIGTERM/SIGINT stop new work, let the requests in
        flight finish and exit 0 (uvicorn itself re-raises the signal after shutting down)."""

        def __init__(self, config, service: _Service, banner: str):
            super().__init__(config)
            self.service, self.banner = service, banner

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print(f"{signal.Signals(sig).name}: draining {self.service.inflight} request(s) in flight "
                      f"({self.service.batcher.queued} texts queued), then exiting", file=sys.stderr, flush=True)
            self.service.batcher.begin_drain()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                print(self.banner, flush=True)

    return DrainingServer


def run_server(app: Any, sock: socket.socket, banner: str, drain_timeout: float = 30.0) -> int:
    """Serve ``app`` (from :func:`create_app`) on the bound ``sock`` until SIGTERM/SIGINT; print ``banner``
    once the server accepts requests; drain for at most ``drain_timeout`` s; return 0.

    >>> run_server(create_app(engine, "m"), bind("127.0.0.1", 0), "ready")  # doctest: +SKIP
    0
    """
    if _MISSING:
        raise UserError(INSTALL_HINT)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=drain_timeout, timeout_keep_alive=30)
    server = _server_class()(config, app.state.service, banner)
    server.run(sockets=[sock])
    return 0


def serve(model: Union[str, os.PathLike], int8: bool = False, host: str = "127.0.0.1", port: int = 8080,
          name: Optional[str] = None, threads: Optional[int] = None, max_batch_tokens: int = 1024,
          max_batch_size: int = 128, max_queue: int = 4096, drain_timeout: float = 30.0,
          cache_dir: Union[str, os.PathLike, None] = None, adapter: Union[str, os.PathLike, None] = None,
          adapter_side: str = "query", precision: Optional[str] = "auto",
          max_window_tokens: int = MAX_WINDOW_TOKENS) -> int:
    """``fastembed-tune serve``: load (or export, then load) ``model`` and serve it until SIGTERM;
    ``precision`` (``auto``: measured on this CPU, see :mod:`fastembed_tune.embed.precision`; or ``fp32``,
    ``int8``, ``bf16``) picks the graph and engine, and the choice is logged;
    with ``adapter`` (a folder written by ``fastembed-tune adapt``) every vector served is adapted
    on ``adapter_side`` (``query``: the default, for a query-side adapter).

    >>> serve("runs/sample/onnx", port=8080)  # doctest: +SKIP
    0
    """
    if _MISSING:
        raise UserError(f"{INSTALL_HINT} (missing: {_MISSING})")
    export_dir = resolve_model(model, int8=int8, cache_dir=cache_dir, export_int8=int8 or precision in ("auto", "int8"))
    sock = bind(host, port)  # a busy port is said before the precision is measured, not after
    try:
        engine = load_engine(export_dir, int8=int8, threads=threads, precision=precision, log=log)
        if adapter is not None:
            from fastembed_tune.adapt.adapter import Adapter

            fitted = Adapter(adapter)
            if fitted.dim != engine.dim:
                raise UserError(f"--adapter {adapter}: it maps {fitted.dim}-d vectors, the model serves "
                                f"{engine.dim}-d; give the adapter trained on this model's vectors")
            engine = AdaptedEngine(engine, lambda rows: fitted.apply(rows, adapter_side))
        name = name or default_name(model)
        app = create_app(engine, name, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                         max_queue=max_queue, drain_timeout=drain_timeout, max_window_tokens=max_window_tokens)
    except BaseException:
        sock.close()
        raise
    h, p = sock.getsockname()[:2]
    shown = f"[{h}]" if ":" in h else h
    adapted = f", adapted by {adapter} ({adapter_side} side)" if adapter is not None else ""
    prec = f", {engine.precision}" if engine.precision else ""
    banner = (f"serving '{name}' ({engine.file}{prec}{adapted}, {engine.dim}-d, up to {engine.max_seq_length} tokens a text) "
              f"on http://{shown}:{p}/v1  (SIGTERM or Ctrl-C: finish the requests in flight, then exit)")
    return run_server(app, sock, banner, drain_timeout)
