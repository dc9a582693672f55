"""Sources of frozen vectors: where the vectors an adapter learns on come from.

- an OpenAI-compatible endpoint (:class:`~fastembed_tune.adapt.api_client.ApiEmbedder`), opened lazily
  through the embedding store;
- a local sentence-transformers or ONNX model;
- precomputed vectors (:class:`PrecomputedVectors`), looked up by text.

Model and API vectors go through the :class:`~fastembed_tune.embed.store.StoredEncoder`: each distinct
text is embedded once, ever, and every epoch, run and stage reads it from disk. :func:`open_source`
picks the source from the ``adapt`` flags.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from fastembed_tune.core.atomic import PathLike
from fastembed_tune.core.errors import UserError


def default_store_dir() -> Path:
    """Where the embedding store lives unless ``--store`` says otherwise: ``$FASTEMBED_TUNE_STORE``,
    else ``~/.cache/fastembed-tune/store``.

    >>> default_store_dir().name
    'store'
    """
    env = os.environ.get("FASTEMBED_TUNE_STORE")
    return Path(env) if env else Path.home() / ".cache" / "fastembed-tune" / "store"


class PrecomputedVectors:
    """Vectors computed elsewhere, looked up by text: a ``.parquet`` file with ``text`` and
    ``embedding`` columns, or a ``.npy`` matrix beside a texts file of the same name
    (``vectors.npy`` + ``vectors.jsonl``/``.txt``/``.csv``/``.tsv``/``.parquet``, one row per text).

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> np.save(f"{d}/v.npy", np.eye(2, dtype=np.float32)); _ = open(f"{d}/v.txt", "w").write("a\\nb\\n")
    >>> PrecomputedVectors(f"{d}/v.npy").encode(["b", "a"]).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """

    TEXT_EXTS = (".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet")

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--embeddings {self.path}: file not found")
        if self.path.suffix == ".parquet":
            texts, rows = self._parquet()
        elif self.path.suffix == ".npy":
            texts, rows = self._npy()
        else:
            raise UserError(f"--embeddings {self.path}: vectors must be a .npy (beside a texts file) or a "
                            f".parquet file with 'text' and 'embedding' columns")
        self.rows = self._checked(rows)
        self.index = self._index_texts(texts)
        self.dim = int(self.rows.shape[1])
        self.fingerprint = "vectors|" + hashlib.blake2b(self.rows.tobytes(), digest_size=16).hexdigest()
        self.embedded, self.served = 0, 0

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as contiguous float32, refused (naming the 1-based row) when not a matrix, or a row
        holds NaN/Inf or is all zeros (no direction, so no cosine)."""
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise UserError(f"{self.path}: expected a [texts, dim] matrix, got shape {tuple(rows.shape)}")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise UserError(f"{self.path} row {int(np.argmax(bad)) + 1}: NaN or Inf in the vector")
        zero = ~rows.any(axis=1)
        if zero.any():
            raise UserError(f"{self.path} row {int(np.argmax(zero)) + 1}: the vector is all zeros (a failed "
                            f"embedding?); it has no direction, so no cosine similarity")
        return rows

    def _index_texts(self, texts: Sequence[str]) -> dict[str, int]:
        """``{text: row}``; a text given twice must have the same vector both times (else a
        :class:`UserError` naming both rows: which one is right cannot be guessed)."""
        index: dict[str, int] = {}
        for i, t in enumerate(texts):
            first = index.setdefault(t, i)
            if first != i and not np.array_equal(self.rows[first], self.rows[i]):
                short = t if len(t) <= 60 else t[:57] + "..."
                raise UserError(f"{self.path} rows {first + 1} and {i + 1}: the same text {short!r} has two "
                                f"different vectors; keep one of them (identical duplicates are fine)")
        return index

    def _parquet(self) -> tuple[list[str], np.ndarray]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for col in ("text", "embedding"):
            if col not in table.column_names:
                raise UserError(f"{self.path}: column '{col}' is missing (columns: {', '.join(table.column_names)})")
        texts = table.column("text").to_pylist()
        for i, t in enumerate(texts, 1):
            if not isinstance(t, str) or not t:
                raise UserError(f"{self.path} row {i}: field 'text' must be a non-empty string")
        return texts, self._parquet_embeddings(table.column("embedding").combine_chunks())

    def _parquet_embeddings(self, col: Any) -> np.ndarray:
        """The ``embedding`` column as a [rows, size] matrix: numpy straight from Arrow when it is a
        list of numbers without nulls, all of one size; else the first bad row, named."""
        import pyarrow as pa

        t = col.type
        if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
                pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)) and col.null_count == 0:
            flat = col.flatten()
            lengths = np.diff(np.asarray(col.offsets)) if not pa.types.is_fixed_size_list(t) else None
            size = int(lengths[0]) if lengths is not None and len(lengths) else getattr(t, "list_size", 0)
            if flat.null_count == 0 and (lengths is None or (lengths == size).all()):
                return flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), size)
        emb = col.to_pylist()
        size = next((len(e) for e in emb if isinstance(e, (list, tuple))), None)
        for i, e in enumerate(emb, 1):
            if not (isinstance(e, (list, tuple)) and len(e) == size and _what(e) == f"a list of {size}"):
                raise UserError(f"{self.path} row {i}: field 'embedding' must be a list of {size or 'N'} numbers, got "
                                f"{_what(e)}")
        return np.asarray(emb, dtype=np.float32).reshape(len(emb), size or 0)

    def _npy(self) -> tuple[list[str], np.ndarray]:
        from fastembed_tune.data.readers import read_texts

        siblings = [self.path.with_suffix(e) for e in self.TEXT_EXTS if self.path.with_suffix(e).is_file()]
        if len(siblings) != 1:
            raise UserError(f"--embeddings {self.path}: needs exactly one texts file beside it with the same name "
                            f"({', '.join(self.path.stem + e for e in self.TEXT_EXTS)}), found "
                            f"{len(siblings) or 'none'}")
        try:
            rows = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{self.path}: not a readable .npy matrix ({e})") from None
        texts = list(read_texts(siblings[0]).values())
        if len(texts) != rows.shape[0]:
            raise UserError(f"{self.path}: {rows.shape[0]} vectors but {siblings[0]} holds {len(texts)} texts")
        return texts, np.asarray(rows, dtype=np.float32)

    def describe(self) -> str:
        """How reports name these vectors."""
        return f"precomputed vectors {self.path}"

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "") -> np.ndarray:
        """float32 rows of ``texts``; a :class:`UserError` naming how many texts have no vector."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.index]
        if missing:
            raise UserError(f"{self.path}: no vector for {len(missing)} of the texts the run needs (first: "
                            f"{missing[0][:60]!r}); embed the pairs' queries and documents, the corpus and the test "
                            f"set with the same model")
        self.served += len(texts)
        return self.rows[[self.index[t] for t in texts]] if texts else np.empty((0, self.dim), np.float32)


def _what(value: Any) -> str:
    """How a message names a bad ``embedding`` value.

    >>> _what(None), _what("[0.1, 0.2]"), _what([0.1, None]), _what([0.5] * 3)
    ('null', "a string '[0.1, 0.2]'", 'a list holding null', 'a list of 3')
    """
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string {value[:30]!r}"
    if isinstance(value, (list, tuple)):
        if any(x is None for x in value):
            return "a list holding null"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return "a list holding non-numbers"
        return f"a list of {len(value)}"
    return type(value).__name__


class Source:
    """Frozen vectors by text: ``encoder`` (anything with ``encode`` and ``dim``), how reports name
    it, and what the adapter records about it (kind, fingerprint, dim; never a key).

    >>> class E: dim = 2
    >>> Source(E(), "vectors", "v.npy", "f").info()["dim"]
    2
    """

    def __init__(self, encoder: Any, kind: str, description: str, fingerprint: str):
        self.encoder, self.kind, self.description, self.fingerprint = encoder, kind, description, fingerprint

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        return int(self.encoder.dim)

    def info(self) -> dict:
        """What the adapter's config and the report record of the source (never a key)."""
        return {"kind": self.kind, "description": self.description, "fingerprint": self.fingerprint, "dim": self.dim}

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> np.ndarray:
        """float32 rows of ``texts``, one per text, from the encoder (and its store)."""
        return np.asarray(self.encoder.encode(list(texts), batch_size=64, show_progress_bar=show_progress_bar,
                                              desc="embed"), dtype=np.float32)


class _LazyApiStore:
    """The API's :class:`~fastembed_tune.embed.store.StoredEncoder`, opened at the first ``encode`` (whose
    first text, if the endpoint's dimension is not known yet, is the one that reveals it)."""

    def __init__(self, api: Any, root: Path):
        self.api, self.root, self.enc = api, root, None

    @property
    def embedded(self) -> int:
        return self.enc.embedded if self.enc is not None else 0

    @property
    def dim(self) -> int:
        return self.enc.dim if self.enc is not None else self.api.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "embed (API)") -> np.ndarray:
        from fastembed_tune.adapt.api_client import stored_api_encoder

        texts = list(texts)
        if self.enc is None:
            if not texts:
                return np.empty((0, self.api.dimensions or 0), np.float32)
            self.enc = stored_api_encoder(self.api, self.root, texts[0])
        return self.enc.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, desc=desc)


def _onnx_fingerprint(emb: Any) -> str:
    h = hashlib.blake2b(digest_size=20)
    for f in (emb.model_file, emb.dir / "tokenizer.json"):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(f"max_seq_length={emb.max_seq_length}".encode())
    return h.hexdigest()


def open_source(embeddings: Optional[str] = None, *, api_base: Optional[str] = None, api_model: Optional[str] = None,
                api_dimensions: Optional[int] = None, api_batch_size: int = 128, api_concurrency: int = 4,
                api_max_retries: int = 6, api_tpm: Optional[float] = None, store_dir: Optional[PathLike] = None,
                max_seq_length: Optional[int] = 128) -> Source:
    """The source of frozen vectors ``adapt`` learns on: ``embeddings`` is ``"api"`` (or None with
    ``api_base``) for an OpenAI-compatible endpoint, ``"builtin"`` or a directory for a local
    sentence-transformers / ONNX model (embedding at ``min(its own, max_seq_length)`` tokens), or a
    ``.npy`` / ``.parquet`` file of precomputed vectors. API and model vectors are cached in the
    store (``store_dir``, default :func:`default_store_dir`).

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> np.save(f"{d}/v.npy", np.eye(2, dtype=np.float32)); _ = open(f"{d}/v.txt", "w").write("a\\nb\\n")
    >>> s = open_source(f"{d}/v.npy"); s.kind, s.dim
    ('vectors', 2)
    """
    from fastembed_tune.embed.store import StoredEncoder, model_fingerprint

    root = Path(store_dir) if store_dir else default_store_dir()
    if api_base or api_model or embeddings == "api":
        if embeddings not in (None, "api"):
            raise UserError(f"--embeddings {embeddings} and --api-base/--api-model name two sources; give one")
        if not api_base or not api_model:
            raise UserError("the API source needs both --api-base URL and --api-model NAME")
        from fastembed_tune.adapt.api_client import ApiEmbedder

        api = ApiEmbedder(api_base, api_model, dimensions=api_dimensions, batch_size=api_batch_size,
                          concurrency=api_concurrency, max_retries=api_max_retries, tokens_per_minute=api_tpm)
        api.client()  # the key is checked before any work
        return Source(_LazyApiStore(api, root), "api", api.describe(), api.fingerprint)
    if embeddings is None:
        raise UserError("give the embeddings to adapt: --api-base URL --api-model NAME (an OpenAI-compatible "
                        "endpoint), --embeddings DIR|builtin (a local model) or --embeddings FILE.npy|FILE.parquet")
    p = Path(embeddings)
    if embeddings != "builtin" and p.is_file() and p.suffix in (".npy", ".parquet"):
        v = PrecomputedVectors(p)
        return Source(v, "vectors", v.describe(), v.fingerprint)
    if embeddings != "builtin" and not p.is_dir():
        raise UserError(f"--embeddings {embeddings}: not a model directory, 'builtin', 'api', or a .npy/.parquet "
                        f"file of vectors")
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    model = load_embedder(None if embeddings == "builtin" else p, precision=None)
    if isinstance(model, OnnxEmbedder):
        fp, dim = _onnx_fingerprint(model), model.dim
        if not dim:
            raise UserError(f"--embeddings {embeddings}: the ONNX graph does not declare its embedding size")
    else:
        if max_seq_length:
            model.max_seq_length = min(model.max_seq_length, max_seq_length)
        fp, dim = model_fingerprint(model), model.dim
    name = "built-in all-MiniLM-L6-v2" if embeddings == "builtin" else str(p)
    return Source(StoredEncoder(model, root, fingerprint=fp), "model", f"local model {name}", fp)


__all__ = ["PrecomputedVectors", "Source", "default_store_dir", "open_source"]
