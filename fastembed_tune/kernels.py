"""The Python face of the native kernels: argument checks, dtype/contiguity, torch glue.

Every public function validates its inputs here and raises ``ValueError`` with a sentence a
user can act on before anything reaches C++ (which checks again). CPU inputs (numpy arrays,
``np.memmap``, CPU torch tensors) are passed to the native code without a copy; CUDA tensors
take a pure-torch path with the same maths and the same API.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _native

ArrayLike = Any  # np.ndarray | np.memmap | torch.Tensor

__all__ = ["topk_cosine", "available_simd", "simd_name"]


def available_simd() -> list[str]:
    """SIMD paths this CPU can run, best first; always ends with ``"scalar"``.

    >>> "scalar" in available_simd()
    True
    """
    return list(_native.available_simd())


def simd_name(simd: str = "auto") -> str:
    """The SIMD path ``simd`` resolves to here (``"auto"`` honours ``FASTEMBED_TUNE_SIMD``).

    >>> simd_name("scalar")
    'scalar'
    """
    return _native.simd_name(simd)


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "device")


def _as_f32_matrix(x: Any, name: str) -> np.ndarray:
    """A C-contiguous float32 [rows, d] view of x (copying only a non-contiguous input)."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; pass CPU tensors or numpy arrays here")
        x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()
        if str(x.dtype) != "torch.float32":
            raise ValueError(f"{name} must be float32, got {x.dtype}; convert it with .float()")
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy array, np.memmap or torch tensor, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}; convert it with .astype(np.float32)")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); it needs at least one row and one column")
    if not x.flags.c_contiguous:
        # Documented behaviour: a strided view (e.g. emb[:, :256]) is copied once, like faiss does.
        x = np.ascontiguousarray(x)
    return x


def _check_rows(x: np.ndarray, name: str, normalized: bool, threads: int) -> None:
    r = _native.check_rows(x, 1e-2 if normalized else -1.0, threads)
    if r["nonfinite_row"] >= 0:
        v = x[r["nonfinite_row"], r["nonfinite_col"]]
        raise ValueError(
            f"{name} row {r['nonfinite_row']} column {r['nonfinite_col']} is {v}; embeddings must be finite")
    if r["badnorm_row"] >= 0:
        raise ValueError(
            f"{name} row {r['badnorm_row']} has L2 norm {r['badnorm']:.4g}, not 1: cosine top-k needs "
            f"L2-normalised rows (divide by np.linalg.norm(x, axis=1, keepdims=True)), or pass "
            f"normalized=False for a raw inner-product search")


def _exclude_csr(exclude: Any, Q: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query excluded ids as CSR (offsets [Q+1], ids sorted per query)."""
    if _is_torch(exclude):
        exclude = exclude.detach().cpu().numpy()
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        if exclude.shape[0] != Q:
            raise ValueError(f"exclude has {exclude.shape[0]} rows but there are {Q} queries")
        if not np.issubdtype(exclude.dtype, np.integer):
            raise ValueError(f"exclude must hold integer ids, got {exclude.dtype}")
        rows = [r[r != -1] for r in exclude.astype(np.int64)]  # -1 pads, as in faiss
    else:
        if isinstance(exclude, (str, bytes)) or not hasattr(exclude, "__len__"):
            raise ValueError("exclude must be a list of id lists (one per query) or a [Q, m] int array padded with -1")
        if len(exclude) != Q:
            raise ValueError(f"exclude has {len(exclude)} entries but there are {Q} queries")
        rows = []
        for qi, r in enumerate(exclude):
            a = np.asarray([] if r is None else r)
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"exclude[{qi}] must hold integer corpus ids, got {a.dtype}")
            rows.append(a.astype(np.int64).ravel())
    ptr = np.zeros(Q + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=ptr[1:])
    ids = np.concatenate(rows) if ptr[-1] else np.zeros(0, dtype=np.int64)
    bad = (ids < 0) | (ids >= N)
    if bad.any():
        j = int(np.argmax(bad))
        qi = int(np.searchsorted(ptr, j, side="right") - 1)
        raise ValueError(f"exclude[{qi}] contains id {int(ids[j])}, outside the corpus ids [0, {N})")
    for qi in range(Q):  # sort each query's ids for binary search in C++
        s, e = ptr[qi], ptr[qi + 1]
        if e - s > 1:
            ids[s:e] = np.sort(ids[s:e])
    return ptr, np.ascontiguousarray(ids)


def topk_cosine(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    *,
    exclude: Optional[Union[Sequence[Sequence[int]], np.ndarray]] = None,
    skip_top: int = 0,
    max_ratio: Optional[float] = None,
    positive_scores: Optional[ArrayLike] = None,
    normalized: bool = True,
    threads: int = 0,
    simd: str = "auto",
):
    """Exact top-k cosine similarity of each query against the corpus, fused with filters.

    Args:
        queries: float32 ``[Q, d]`` L2-normalised rows (numpy, ``np.memmap`` or torch tensor).
        corpus: float32 ``[N, d]`` L2-normalised rows.
        k: results per query, ``1 <= k <= N``.
        exclude: per-query corpus ids never returned (e.g. the query's positives): a list of
            id lists, or a ``[Q, m]`` integer array padded with -1.
        skip_top: drop the best ``skip_top`` candidates that pass the filters, like
            sentence-transformers' ``range_min``.
        max_ratio: drop candidates scoring above ``max_ratio * positive_score`` (likely false
            negatives; NV-Retriever's TopK-PercPos uses 0.95).
        positive_scores: ``[Q]`` score of each query's positive, for ``max_ratio``. If omitted,
            the lowest score among the query's ``exclude`` ids is used.
        normalized: check rows have unit L2 norm (set False for a raw inner-product search).
        threads: OpenMP threads (0: all).
        simd: ``"auto"``, ``"avx512"``, ``"avx2"`` or ``"scalar"``.

    Returns:
        ``(scores float32 [Q, k], ids int64 [Q, k])``, rows sorted by descending score, ties
        by smaller id. A query with fewer than k documents passing the filters gets ``-inf`` /
        ``-1`` in its last slots. Torch inputs give torch outputs. Non-contiguous inputs are
        copied once; everything else is read in place.

    Example:
        >>> import numpy as np
        >>> x = np.eye(4, dtype=np.float32)
        >>> scores, ids = topk_cosine(x[:2], x, 2, exclude=[[0], [1]])
        >>> ids.tolist()
        [[1, 2], [0, 2]]
    """
    torch_out = _is_torch(queries) or _is_torch(corpus)
    if torch_out and (queries.device.type != "cpu" if _is_torch(queries) else False):
        from . import _torch_ref
        return _torch_ref.topk_cosine_torch(queries, corpus, k, exclude=exclude, skip_top=skip_top,
                                            max_ratio=max_ratio, positive_scores=positive_scores)
    q = _as_f32_matrix(queries, "queries")
    x = _as_f32_matrix(corpus, "corpus")
    Q, d = q.shape
    N = x.shape[0]
    if x.shape[1] != d:
        raise ValueError(f"queries have dimension {d} but corpus has dimension {x.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= k <= N:
        raise ValueError(f"k must be between 1 and the corpus size N={N}, got k={k}")
    if isinstance(skip_top, bool) or not isinstance(skip_top, (int, np.integer)) or skip_top < 0:
        raise ValueError(f"skip_top must be an integer >= 0, got {skip_top!r}")
    if not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: all cores), got {threads!r}")
    _check_rows(q, "queries", normalized, threads)
    _check_rows(x, "corpus", normalized, threads)
    ptr = ids = None
    if exclude is not None:
        ptr, ids = _exclude_csr(exclude, Q, N)
    upper = None
    if max_ratio is not None:
        if not np.isfinite(max_ratio) or max_ratio <= 0:
            raise ValueError(f"max_ratio must be a finite number > 0, got {max_ratio!r}")
        if positive_scores is None:
            if ptr is None or np.any(np.diff(ptr) == 0):
                raise ValueError("max_ratio needs each query's positive score: pass positive_scores, "
                                 "or exclude with at least one positive id per query")
            pos = np.einsum("ij,ij->i", np.repeat(q, np.diff(ptr), axis=0).astype(np.float64),
                            x[ids].astype(np.float64))
            positive_scores = np.minimum.reduceat(pos, ptr[:-1])
        if _is_torch(positive_scores):
            positive_scores = positive_scores.detach().cpu().numpy()
        p = np.asarray(positive_scores, dtype=np.float64).ravel()
        if p.shape[0] != Q:
            raise ValueError(f"positive_scores has {p.shape[0]} entries but there are {Q} queries")
        if not np.all(np.isfinite(p)):
            raise ValueError("positive_scores must be finite")
        upper = np.ascontiguousarray((max_ratio * p).astype(np.float32))
    scores, out_ids = _native.topk_cosine(q, x, int(k), ptr, ids, upper, int(skip_top), int(threads), simd)
    if torch_out:
        import torch
        return torch.from_numpy(scores), torch.from_numpy(out_ids)
    return scores, out_ids
