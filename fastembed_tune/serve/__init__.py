"""``fastembed-tune serve``: an OpenAI-compatible embeddings server over an ONNX export.

One job a module: :mod:`~fastembed_tune.serve.protocol` (OpenAI's request, response and errors),
:mod:`~fastembed_tune.serve.batching` (concurrent requests into onnxruntime batches),
:mod:`~fastembed_tune.serve.metrics` (Prometheus), :mod:`~fastembed_tune.serve.app` (the Starlette
application), :mod:`~fastembed_tune.serve.models` (which export to serve, loaded into an engine),
:mod:`~fastembed_tune.serve.server` (socket, uvicorn, ``serve()``) and
:mod:`~fastembed_tune.serve.extra` (whether the ``serve`` extra is installed).

The names below are loaded lazily, from the module that defines them:

>>> import fastembed_tune.serve as S
>>> S.resolve_model.__module__
'fastembed_tune.serve.models'
"""
from __future__ import annotations

from fastembed_tune.core.lazy import lazy_exports

_WHERE = {
    "ApiError": "fastembed_tune.serve.protocol",
    "parse_request": "fastembed_tune.serve.protocol",
    "apply_dimensions": "fastembed_tune.serve.protocol",
    "encode_response": "fastembed_tune.serve.protocol",
    "Batcher": "fastembed_tune.serve.batching",
    "OnnxEngine": "fastembed_tune.serve.batching",
    "create_app": "fastembed_tune.serve.app",
    "AdaptedEngine": "fastembed_tune.serve.app",
    "resolve_model": "fastembed_tune.serve.models",
    "default_name": "fastembed_tune.serve.models",
    "default_cache_dir": "fastembed_tune.serve.models",
    "directory_fingerprint": "fastembed_tune.serve.models",
    "load_engine": "fastembed_tune.serve.models",
    "bind": "fastembed_tune.serve.server",
    "run_server": "fastembed_tune.serve.server",
    "serve": "fastembed_tune.serve.server",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_exports("fastembed_tune.serve", _WHERE, globals())
