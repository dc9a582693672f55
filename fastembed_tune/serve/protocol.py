"""OpenAI's embeddings protocol, without a web framework: the checked request, the response body,
and refusals in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.

* ``input``: a string, a list of strings, a list of token ids, or a list of token-id lists (ids of the
  model's own vocabulary, as its ``tokenizer.json`` encodes a text, special tokens included). An empty
  string is refused, as OpenAI does.
* ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32, what OpenAI's clients
  decode). ``dimensions``: the first k dimensions, re-normalised to unit length.
* ``usage.prompt_tokens``: the tokens the model read (special tokens included, after truncation).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

try:  # the serve extra; require_extra() says which pip command to run when it is missing
    import orjson
except ImportError:  # pragma: no cover - exercised by a test that hides the extra
    orjson = None

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
ENCODING_FORMATS = ("float", "base64")


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


def _check_model(payload: Any, model_name: str) -> None:
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


def _check_options(payload: dict, dim: int) -> Tuple[str, Optional[int]]:
    """(encoding_format, dimensions) of a request, each checked."""
    fmt = payload.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODING_FORMATS:
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = payload.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= dim):
        raise ApiError(400, f"dimensions must be an integer from 1 to {dim} (this model's size), got {dims!r}",
                       "dimensions")
    return fmt, dims


def _split_input(inp: Any) -> Tuple[Optional[List[str]], Optional[List[List[int]]]]:
    """(texts, None) or (None, token-id lists) by the shape of ``input``."""
    if isinstance(inp, str):
        return [inp], None
    if isinstance(inp, list) and inp:
        if all(isinstance(x, str) for x in inp):
            return inp, None
        if all(_is_int(x) for x in inp):
            return None, [inp]
        if all(isinstance(x, list) for x in inp):
            return None, inp
        raise ApiError(400, "'input' must be a string, a list of strings, a list of token ids or a list of "
                            "token-id lists (not a mixture)", "input")
    if isinstance(inp, list):
        raise ApiError(400, "'input' is an empty list; give at least one text", "input")
    raise ApiError(400, f"'input' must be a string or a list of strings, got {type(inp).__name__}", "input")


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
    fastembed_tune.serve.protocol.ApiError: input is an empty string; every input must contain text
    """
    _check_model(payload, model_name)
    fmt, dims = _check_options(payload, dim)
    if "input" not in payload:
        raise ApiError(400, "'input' is missing: give a string or a list of strings", "input")
    inp = payload["input"]
    texts, ids = _split_input(inp)
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
