"""Write embeddings to a file: ``.npy`` (a float32 matrix, rows in input order) or ``.jsonl``
(``{"id", "embedding"}`` a line), always under a temporary name renamed when complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from fastembed_tune.core.atomic import atomic_write, reserve, temp_path
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.layout import OUTPUT_SUFFIXES


def _jsonl_lines(ids: Sequence[str], emb: np.ndarray) -> Iterator[str]:
    """``{"id", "embedding"}`` lines, the ``.jsonl`` output format."""
    return (json.dumps({"id": i, "embedding": [float(x) for x in row]}) + "\n" for i, row in zip(ids, emb))


def _write_npy(f, emb: np.ndarray) -> None:
    """``np.save`` through ``f.write`` (numpy's own ``tofile`` reports a full disk as "N requested and M
    written", without the reason): the header, then the rows."""
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(emb))
    f.write(emb.reshape(-1).view(np.uint8))


def write_embeddings(path: Union[str, os.PathLike], ids: Sequence[str], emb: np.ndarray) -> None:
    """Write embeddings atomically: ``.npy`` (the matrix, rows in ``ids`` order) or ``.jsonl``
    (one ``{"id", "embedding"}`` a line).

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "e.npy")
    >>> write_embeddings(f, ["a"], np.ones((1, 2), np.float32)); np.load(f).shape
    (1, 2)
    """
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{path}: the output must end in .npy or .jsonl")
    if len(ids) != len(emb):
        raise ValueError(f"{len(ids)} ids for {len(emb)} embeddings")
    if path.suffix == ".npy":
        atomic_write(path, lambda f: _write_npy(f, np.ascontiguousarray(emb, dtype=np.float32)), binary=True)
    else:
        atomic_write(path, lambda f: f.writelines(_jsonl_lines(ids, emb)))


def embed_stream_to_file(embedder, windows: Iterator[tuple[list[str], list[str]]], count: int,
                         path: Union[str, os.PathLike], batch_size: int = 64,
                         transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                         show_progress_bar: bool = False) -> tuple[int, int]:
    """Embed ``count`` texts handed over as ``(ids, texts)`` windows (e.g.
    :meth:`fastembed_tune.data.stream.CorpusStream.windows`) into ``path`` without holding more than one
    window: ``.npy`` is a memory-mapped matrix filled window by window, ``.jsonl`` is appended to;
    either is written under a temporary name and renamed when complete. ``transform`` (an adapter,
    say) maps each window's rows. Returns the matrix's shape.

    >>> import tempfile, os
    >>> from fastembed_tune.embed.model import EmbeddingModel
    >>> f = os.path.join(tempfile.mkdtemp(), "e.npy")
    >>> embed_stream_to_file(EmbeddingModel.load(), iter([(["a"], ["a cat"]), (["b"], ["a dog"])]), 2, f)
    (2, 384)
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{path}: the output must end in .npy or .jsonl")
    done, dim = 0, None
    with temp_path(path) as tmp, tqdm(total=count, desc="embed", unit="text", disable=not show_progress_bar) as bar:
        out, jf = None, (open(tmp, "w", encoding="utf-8") if path.suffix == ".jsonl" else None)
        try:
            for ids, texts in windows:
                emb = np.asarray(embedder.encode(texts, batch_size=batch_size), dtype=np.float32)
                if transform is not None:
                    emb = np.asarray(transform(emb), dtype=np.float32)
                if done + len(emb) > count:
                    raise ValueError(f"more than the {count} texts announced")
                dim = emb.shape[1]
                if jf is not None:
                    jf.writelines(_jsonl_lines(ids, emb))
                else:
                    if out is None:
                        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
                        reserve(tmp, path)  # a full disk: ENOSPC here, never a SIGBUS in the map
                    out[done:done + len(emb)] = emb
                done += len(emb)
                bar.update(len(emb))
            if done != count:
                raise ValueError(f"{done} texts embedded, {count} announced")
            if jf is not None:
                jf.flush()
                os.fsync(jf.fileno())
            if out is not None:
                out.flush()
        finally:
            del out
            if jf is not None:
                _close_quietly(jf)
    return done, int(dim or 0)


def _close_quietly(f) -> None:
    """Close ``f``; after a write already failed, a second failure of the flush in ``close`` is the same fault."""
    try:
        f.close()
    except OSError:
        pass
