"""The ASGI application of ``fastembed-tune serve``: OpenAI's embeddings routes on Starlette.

Routes: ``POST /v1/embeddings`` (OpenAI's request and response, errors in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape, see :mod:`fastembed_tune.serve.protocol`),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).

Starlette (the ``serve`` extra) is a plain ASGI toolkit with no validation layer of its own, so every
check is ours and every refusal reads like OpenAI's. The work is done off the event loop by
:class:`~fastembed_tune.serve.batching.Batcher` (a tokenizer thread and a model thread that coalesces
concurrent requests into token-budgeted onnxruntime batches).

* Texts longer than the model's window are truncated, never refused.
* Status codes: 400 bad request, 404 unknown model or route, 405, 413 too large (body, or more inputs
  than ``max_inputs``), 429 at capacity (``Retry-After: 1``), 503 while shutting down, 500 if the model
  fails or produces NaN/Inf.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any, Optional

import numpy as np

from fastembed_tune.serve.batching import MAX_WINDOW_TOKENS, Batcher, Draining, EngineError, Overloaded
from fastembed_tune.serve.extra import require_extra
from fastembed_tune.serve.protocol import MAX_INPUTS, ApiError, apply_dimensions, encode_response, parse_request

try:  # the serve extra; create_app refuses with the pip command to run when it is missing
    import orjson
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route

    from fastembed_tune.serve.metrics import ServeMetrics
except ImportError:  # pragma: no cover - exercised by a test that hides the extra
    pass

MAX_BODY_BYTES = 16 * 1024 * 1024
CLIENT_GONE = 499  # the status recorded (and sent to nobody) for a request whose client left


async def _client_left(request: "Request") -> None:
    """Return once the client of ``request`` (its body already read) has closed the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not a disconnect: look again shortly


def _json(obj: Any, status: int = 200, headers: Optional[dict] = None) -> "Response":
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


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
            return await self._embeddings(request)
        except ClientDisconnect:  # the client left (mid-body, or before its answer): nobody to answer
            print("note: a client closed its connection before its answer; its request was dropped",
                  file=sys.stderr, flush=True)
            request.scope["fastembed.error_code"] = "client_closed"
            return Response(status_code=CLIENT_GONE)
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
            self.metrics.queued.set(self.batcher.queued)

    async def _embed_while_connected(self, request: "Request", req: Any) -> tuple:
        """The batcher's answer to ``req``; raises ClientDisconnect as soon as the client leaves, and the
        batcher then drops the request's texts not yet run (a gone client delays nobody)."""
        if await request.is_disconnected():
            raise ClientDisconnect()
        work = asyncio.ensure_future(self.batcher.embed(texts=req.texts, ids=req.ids))
        gone = asyncio.ensure_future(_client_left(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        raise ClientDisconnect()

    async def _embeddings(self, request: "Request") -> "Response":
        """``POST /v1/embeddings`` once admitted: read, check, embed, answer."""
        body = await self._read_body(request)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request: it is not valid JSON "
                                "(UTF-8)") from None
        req = parse_request(payload, self.name, self.engine.dim, self.engine.vocab_size, self.max_inputs)
        try:
            emb, tokens = await self._embed_while_connected(request, req)
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
    require_extra()
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
