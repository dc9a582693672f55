"""Embeddings by text, so that each stage asks for rows and no text is embedded twice.

:class:`EmbeddingCache` wraps one model (at one ``max_seq_length``) and keeps every row it computed,
keyed by the text. Every stage takes "a model": anything with ``encode(texts, batch_size=,
show_progress_bar=, desc=)``; the cache is one, so evaluation, mining and distillation given the
same cache share its rows (``run`` embeds the corpus once for the base evaluation and mining, and
the fine-tuned model's rows once for its evaluation and as distillation targets). Rows are keyed by
text, never by position, so duplicate texts and re-ordered corpora cannot misalign them.

:class:`EmbeddingStore` is the same on disk: rows by (model fingerprint, text hash), memory-mapped,
appended in shards; a shard counts once its key file is renamed into place, so a killed writer loses
at most the shard it was writing and the next run embeds only what is missing. :class:`StoredEncoder`
puts one in front of a model (or an API client): each text is embedded once per model, ever.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.atomic import atomic_write, umask
from fastembed_tune.core.errors import UserError

KEY_BYTES = 16
DTYPES = ("float32", "float16")


class EmbeddingCache:
    """One model's embeddings by text, computed once each.

    >>> import numpy as np
    >>> class Model:
    ...     dim, calls = 2, []
    ...     def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
    ...         self.calls.append(list(texts)); return np.ones((len(texts), 2), np.float32)
    >>> cache = EmbeddingCache(Model())
    >>> cache.encode(["a", "b", "a"]).shape, cache.encode(["b", "c"]).shape, Model.calls
    ((3, 2), (2, 2), [['a', 'b'], ['c']])
    >>> cache.embedded, cache.served, "a" in cache
    (3, 2, True)
    """

    def __init__(self, model: Any):
        self.model = model
        self._rows: dict[str, np.ndarray] = {}
        self.embedded = 0  # texts run through the model
        self.served = 0    # rows answered from the cache

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def __contains__(self, text: object) -> bool:
        return text in self._rows

    def __getitem__(self, text: str) -> np.ndarray:
        return self._rows[text]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "encode") -> np.ndarray:
        """Rows of ``texts`` (float32 ``[len(texts), dim]``, input order); texts not seen before are
        embedded in one call of the model, distinct and in order of first appearance."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if missing:
            emb = np.asarray(self.model.encode(missing, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                               desc=desc), dtype=np.float32)
            self._rows.update(zip(missing, emb))
            self.embedded += len(missing)
        self.served += len(texts) - len(missing)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self._rows[t] for t in texts])


def text_key(text: str) -> bytes:
    """The store's key of a text: 16 bytes of BLAKE2b over its UTF-8 (surrogates escaped).

    >>> text_key("a").hex()[:8], len(text_key("a")), text_key("a") == text_key("b")
    ('27c35e6e', 16, False)
    """
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def model_fingerprint(model: Any) -> str:
    """A digest of what decides a model's embeddings: its weights (names, shapes, dtypes, bytes),
    pooling, normalisation, lower-casing, tokenizer, ``max_seq_length`` and bf16 encoding. For
    anything else (an API client, say) ``model.fingerprint`` (a string) is used as it is.

    >>> from fastembed_tune.embed.model import EmbeddingModel
    >>> m = EmbeddingModel.load(); a = model_fingerprint(m); m.max_seq_length = 16
    >>> len(a), a == model_fingerprint(m)
    (40, False)
    """
    own = getattr(model, "fingerprint", None)
    if isinstance(own, str):
        return hashlib.blake2b(own.encode(), digest_size=20).hexdigest()
    h = hashlib.blake2b(digest_size=20)
    tok = getattr(model, "tokenizer", None)
    h.update(json.dumps({"class": type(model).__name__, "pooling": getattr(model, "pooling", None),
                         "normalize": getattr(model, "normalize", None),
                         "do_lower_case": getattr(model, "do_lower_case", None),
                         "max_seq_length": getattr(model, "max_seq_length", None),
                         "tokenizer": [type(tok).__name__, len(tok) if tok is not None else None],
                         **({"bf16": True} if getattr(model, "bf16", False) is True else {})}).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch_uint8()).numpy().tobytes())
    return h.hexdigest()


def torch_uint8():
    import torch

    return torch.uint8


def read_meta(directory: Union[str, os.PathLike]) -> Optional[dict]:
    """A store folder's ``meta.json`` (``{"dim", "dtype", "format"}``), checked; None when there is none.
    A damaged one is a :class:`UserError` naming it.

    >>> import tempfile; d = tempfile.mkdtemp(); read_meta(d) is None
    True
    >>> _ = open(os.path.join(d, "meta.json"), "w").write('{"dim": 0}'); read_meta(d)
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: .../meta.json: damaged (needs {"dim": an integer >= 1, "dtype": "float32" or "float16", "format": 1}); delete the folder ... to re-embed its texts
    """
    path = Path(directory) / "meta.json"
    if not path.exists():
        return None
    hint = f"delete the folder {path.parent} to re-embed its texts"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged, not valid JSON ({e}); {hint}") from None
    dim = meta.get("dim") if isinstance(meta, dict) else None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1 or meta.get("dtype") not in DTYPES \
            or meta.get("format") != 1:
        raise UserError(f'{path}: damaged (needs {{"dim": an integer >= 1, "dtype": "float32" or "float16", '
                        f'"format": 1}}); {hint}')
    return meta


_SHARD = re.compile(r"^shard-(\d{6})\.keys$")


def shard_digest(keys: bytes, rows_path: Union[str, os.PathLike]) -> str:
    """The checksum of one store shard: BLAKE2b (16 bytes, hex) over its keys, then its rows file.

    >>> import tempfile; p = os.path.join(tempfile.mkdtemp(), "r"); _ = open(p, "wb").write(b"rows")
    >>> len(shard_digest(b"k" * 16, p)), shard_digest(b"k" * 16, p) == shard_digest(b"j" * 16, p)
    (32, False)
    """
    h = hashlib.blake2b(keys, digest_size=16)
    with open(rows_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EmbeddingStore:
    """Embeddings of one model on disk, by text: ``root/<fingerprint>/shard-NNNNNN.{rows,keys,sum}``
    plus ``meta.json`` (dim, dtype). Rows are memory-mapped for reading; :meth:`add` appends a shard
    (rows first, then its checksum, then the key file: the key file's rename is the commit), under
    an ``flock`` so several processes can share a store. What a killed writer left (temporary files,
    rows without keys) is ignored and removed by the next writer. A shard whose keys and rows no
    longer match their checksum (:func:`shard_digest`, verified when the shard is first read) is a
    :class:`UserError` naming it: a store is never read past a change made on disk. A shard without
    a ``.sum`` file (written before checksums) is read as it is.

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> s = EmbeddingStore(root, "m1", dim=2)
    >>> s.add(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
    2
    >>> EmbeddingStore(root, "m1", dim=2).get(["b", "a", "b"]).tolist(), len(s), "c" in s
    ([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], 2, False)
    """

    def __init__(self, root: Union[str, os.PathLike], fingerprint: str, dim: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", fingerprint):
            raise ValueError(f"fingerprint must be 1-128 letters, digits, '_', '.' or '-', got {fingerprint!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        self.dir = Path(root) / fingerprint
        self.dim, self.dtype = int(dim), np.dtype(dtype)
        self.dir.mkdir(parents=True, exist_ok=True)
        want = {"dim": self.dim, "dtype": dtype, "format": 1}
        with self._locked():  # a writer holding the lock cleans temporary files: meta.json's among them
            have = read_meta(self.dir)
            if have is None:
                atomic_write(self.dir / "meta.json", lambda f: f.write(json.dumps(want)))
                have = want
        if have != want:
            raise UserError(f"{self.dir}: holds {have['dtype']} rows of dim {have['dim']}, not {dtype} of dim "
                            f"{self.dim}; use another store folder")
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._paths: list[Path] = []  # each shard's rows file, for messages
        self._read_shards()

    def _read_shards(self) -> None:
        names = sorted(n for n in os.listdir(self.dir) if _SHARD.match(n))
        for name in names[len(self._shards):]:
            keys = (self.dir / name).read_bytes()
            rows_path = self.dir / name.replace(".keys", ".rows")
            n = len(keys) // KEY_BYTES
            if len(keys) % KEY_BYTES or rows_path.stat().st_size != n * self.dim * self.dtype.itemsize:
                raise UserError(f"{rows_path}: damaged shard (its rows and keys disagree); {self._delete_hint(name)}")
            sum_path = self.dir / name.replace(".keys", ".sum")
            if sum_path.exists() and sum_path.read_text().strip() != shard_digest(keys, rows_path):
                raise UserError(f"{rows_path}: checksum mismatch (the shard or its .keys file changed on disk since "
                                f"it was written); {self._delete_hint(name)}")
            shard = len(self._shards)
            rows = (np.memmap(rows_path, dtype=self.dtype, mode="r", shape=(n, self.dim)) if n else
                    np.empty((0, self.dim), self.dtype))
            self._shards.append(rows)
            self._paths.append(rows_path)
            for i in range(n):
                self._index.setdefault(keys[i * KEY_BYTES:(i + 1) * KEY_BYTES], (shard, i))

    def _delete_hint(self, keys_name: str) -> str:
        stem = keys_name[:-len(".keys")]
        return f"delete {stem}.rows, {stem}.keys and {stem}.sum in {self.dir} to re-embed those texts"

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text_key(text) in self._index

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts of ``texts`` not in the store, in order of first appearance."""
        return [t for t in dict.fromkeys(texts) if text_key(t) not in self._index]

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """float32 rows of ``texts`` in order; ``KeyError`` naming the first text not stored; a
        :class:`UserError` naming the shard when a stored row holds NaN/Inf (the store keeps finite
        rows only, so the shard was changed on disk)."""
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            where = self._index.get(text_key(t))
            if where is None:
                raise KeyError(f"not in the store: {t[:60]!r}")
            out[i] = self._shards[where[0]][where[1]]
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            shard, row = self._index[text_key(texts[i])]
            name = self._paths[shard].name
            raise UserError(f"{self._paths[shard]}: NaN/Inf in row {row + 1} (the text {texts[i][:40]!r}); the store "
                            f"keeps finite rows only, so the shard was changed on disk; "
                            f"{self._delete_hint(name.replace('.rows', '.keys'))}")
        return out

    def add(self, texts: Sequence[str], rows: np.ndarray) -> int:
        """Append the rows of ``texts`` not stored yet as one shard; returns how many were added."""
        rows = np.asarray(rows)
        if rows.shape != (len(texts), self.dim):
            raise ValueError(f"rows must have shape ({len(texts)}, {self.dim}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("rows hold NaN or Inf; the store keeps finite embeddings only")
        with self._locked():
            self._read_shards()  # another process may have added shards
            keep, seen = [], set()
            for i, t in enumerate(texts):
                k = text_key(t)
                if k not in self._index and k not in seen:
                    seen.add(k)
                    keep.append((i, k))
            if not keep:
                return 0
            self._clean()
            name = f"shard-{len(self._shards):06d}"
            data = np.ascontiguousarray(rows[[i for i, _ in keep]], dtype=self.dtype)
            keys = b"".join(k for _, k in keep)
            atomic_write(self.dir / f"{name}.rows", lambda f: f.write(data.tobytes()), binary=True)
            digest = shard_digest(keys, self.dir / f"{name}.rows")
            atomic_write(self.dir / f"{name}.sum", lambda f: f.write(digest + "\n"))
            atomic_write(self.dir / f"{name}.keys", lambda f: f.write(keys), binary=True)
            self._read_shards()
            return len(keep)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The store's exclusive ``flock`` (``.lock`` in its folder), held by one writer at a time."""
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _clean(self) -> None:
        """Remove what a killed writer left: temporary files, rows and checksums without their keys."""
        for n in os.listdir(self.dir):
            if n.endswith(".tmp") and n.startswith("."):
                os.unlink(self.dir / n)
            elif n.endswith((".rows", ".sum")) and not (self.dir / (n.rsplit(".", 1)[0] + ".keys")).exists():
                os.unlink(self.dir / n)


class StoredEncoder:
    """A model (anything with ``encode``) in front of an :class:`EmbeddingStore`: ``encode`` embeds
    only the texts the store lacks, ``chunk`` at a time (each chunk a shard: a kill loses at most
    one), and answers the rest from disk. ``embedded`` / ``served`` count texts.

    >>> import tempfile
    >>> class Model:
    ...     dim, fingerprint, calls = 2, "toy", []
    ...     def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
    ...         self.calls.append(list(texts)); return np.ones((len(texts), 2), np.float32)
    >>> root = tempfile.mkdtemp()
    >>> StoredEncoder(Model(), root).encode(["a", "b", "a"]).shape
    (3, 2)
    >>> e = StoredEncoder(Model(), root); _ = e.encode(["b", "c"]); Model.calls, e.embedded, e.served
    ([['a', 'b'], ['c']], 1, 1)
    """

    def __init__(self, model: Any, root: Union[str, os.PathLike], dtype: str = "float32", chunk: int = 4096,
                 fingerprint: Optional[str] = None, on_chunk: Optional[Callable[[int], None]] = None):
        self.model = model
        self.store = EmbeddingStore(root, fingerprint or model_fingerprint(model), int(model.dim), dtype)
        self.chunk, self.on_chunk = int(chunk), on_chunk
        self.embedded = 0
        self.served = 0

    @property
    def dim(self) -> int:
        return self.store.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               desc: str = "encode") -> np.ndarray:
        """float32 rows of ``texts`` in input order."""
        texts = list(texts)
        missing = self.store.missing(texts)
        for start in range(0, len(missing), self.chunk):
            part = missing[start:start + self.chunk]
            emb = np.asarray(self.model.encode(part, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                               desc=desc), dtype=np.float32)
            self.store.add(part, emb)
            self.embedded += len(part)
            if self.on_chunk:
                self.on_chunk(len(part))
        self.served += len(texts) - len(missing)
        return self.store.get(texts)
