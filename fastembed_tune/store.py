"""Embeddings by text, so that each stage asks for rows and no text is embedded twice.

:class:`EmbeddingCache` wraps one model (at one ``max_seq_length``) and keeps every row it computed,
keyed by the text. Every stage takes "a model": anything with ``encode(texts, batch_size=,
show_progress_bar=, desc=)``; the cache is one, so evaluation, mining and distillation given the
same cache share its rows (``run`` embeds the corpus once for the base evaluation and mining, and
the fine-tuned model's rows once for its evaluation and as distillation targets). Rows are keyed by
text, never by position, so duplicate texts and re-ordered corpora cannot misalign them.

The store of DESIGN.md (rows on disk by model fingerprint and text hash, memory-mapped, resumable)
grows from this in-memory version.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


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
