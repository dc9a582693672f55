"""The embeddings server's Prometheus metrics, in a registry of its own (``GET /metrics``).

Requests and errors by route and status, texts and tokens embedded, the size of every onnxruntime
batch (texts and padded tokens), inference time per batch, request latency, and the queue.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/v1/embeddings", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class ServeMetrics:
    """Counters and histograms of one server.

    >>> m = ServeMetrics(); m.request("/v1/embeddings", 200, 0.01); m.batch(4, 64, 0.002)
    >>> b"fastembed_batch_size_bucket" in m.render()
    True
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fastembed_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("fastembed_errors", "error answers by route and OpenAI error code", ["route", "code"],
                              registry=r)
        self.latency = Histogram("fastembed_request_latency_seconds", "time from request to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.texts = Counter("fastembed_texts", "texts embedded", registry=r)
        self.tokens = Counter("fastembed_prompt_tokens", "tokens read by the model (after truncation)", registry=r)
        self.batch_size = Histogram("fastembed_batch_size", "texts per onnxruntime batch", buckets=SIZE_BUCKETS,
                                    registry=r)
        self.batch_tokens = Histogram("fastembed_batch_padded_tokens", "padded tokens per onnxruntime batch",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fastembed_batch_seconds", "inference time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("fastembed_inflight_requests", "embedding requests being handled", registry=r)
        self.queued = Gauge("fastembed_queued_texts", "texts admitted and not yet answered", registry=r)

    def request(self, route: str, status: int, seconds: float, code: str = "") -> None:
        """Count one answered request (``route`` outside :data:`ROUTES` is counted as ``other``)."""
        route = route if route in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, code or str(status)).inc()

    def embedded(self, texts: int, tokens: int) -> None:
        """Count the texts and tokens of one answered embeddings request."""
        self.texts.inc(texts)
        self.tokens.inc(tokens)

    def batch(self, texts: int, padded_tokens: int, seconds: float) -> None:
        """Record one onnxruntime batch (called from the model thread)."""
        self.batch_size.observe(texts)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
