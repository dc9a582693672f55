"""The Python face of the native kernels: argument checks, dtype/contiguity, torch glue.

Every public function validates its inputs here and raises ``ValueError`` with a sentence a
user can act on before anything reaches C++ (which checks again). CPU inputs (numpy arrays,
``np.memmap``, CPU torch tensors) are passed to the native code without a copy; CUDA tensors
take a pure-torch path with the same maths and the same API.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from fastembed_tune import _native
from fastembed_tune.core.errors import UserError

ArrayLike = Any  # np.ndarray | np.memmap | torch.Tensor

__all__ = ["topk_cosine", "available_simd", "simd_name", "ratio_bound"]


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
    return _check_paths(simd)


def _check_paths(simd: Optional[str], scan: Optional[str] = None) -> Optional[str]:
    """The fp32 path ``simd`` names (and checks the int8 scan path ``scan``): a bad name read from
    ``FASTEMBED_TUNE_SIMD`` / ``FASTEMBED_TUNE_LOWP`` is the user's setting, a ``UserError`` naming the
    variable (the native message starts with ``VARIABLE=value:``); a bad argument stays a ValueError."""
    if not all(n is None or isinstance(n, str) for n in (simd, scan)):
        raise ValueError("simd and scan must be path names such as 'auto'")
    try:
        if scan is not None:
            _native.lowp_name(scan)
        return None if simd is None else _native.simd_name(simd)
    except ValueError as e:
        msg = str(e)
        raise (UserError(msg) if msg.startswith("FASTEMBED_TUNE_") else ValueError(msg)) from None


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


def unit_rows(x: Any) -> np.ndarray:
    """``x`` as contiguous float32 rows of L2 norm 1: rows already within 1e-4 of unit norm are
    left bit-for-bit as they are (a second division would move near-ties), the others divided.

    >>> unit_rows(np.array([[3.0, 4.0], [0.6, 0.8]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.6000000238418579, 0.800000011920929]]
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.all(np.abs(norms - 1.0) <= 1e-4):
        return x
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_rows(x: np.ndarray, name: str, normalized: bool, threads: int, offset: int = 0) -> None:
    """NaN/Inf and (``normalized``) non-unit rows refused; ``offset``: x's first row in the whole."""
    r = _native.check_rows(x, 1e-2 if normalized else -1.0, threads)
    if r["nonfinite_row"] >= 0:
        v = x[r["nonfinite_row"], r["nonfinite_col"]]
        raise ValueError(
            f"{name} row {r['nonfinite_row'] + offset} column {r['nonfinite_col']} is {v}; embeddings must be finite")
    if r["badnorm_row"] >= 0:
        raise ValueError(
            f"{name} row {r['badnorm_row'] + offset} has L2 norm {r['badnorm']:.4g}, not 1: cosine top-k needs "
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


def _filters(q: np.ndarray, x: np.ndarray, exclude: Any, max_ratio: Any, positive_scores: Any) -> tuple:
    """The scan's filters in native form, checked: (exclude CSR ptr, ids, per-query score bound),
    each ``None`` when not asked for. The bound is ``max_ratio`` x the query's positive score
    (given, or the smallest score of its excluded ids)."""
    Q, N = q.shape[0], x.shape[0]
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
        upper = ratio_bound(max_ratio, p)
    return ptr, ids, upper


def ratio_bound(max_ratio: float, positive_scores: ArrayLike) -> np.ndarray:
    """The ``max_ratio`` filter's per-query bound: a candidate passes when its float32 score is at
    most this. The bound is the positive's score ``p`` less a ``(1 - max_ratio)`` share of its
    magnitude, ``p - (1 - r) * |p|`` (``r * p`` when ``p >= 0``, ``(2 - r) * p`` when ``p < 0``), never
    above ``p`` (``r >= 1`` gives ``p``): a candidate scoring above the positive is never a negative,
    whatever the positive's sign (``r * p`` alone lies above a negative ``p``). Computed in float64 and
    rounded down to float32, so ``score <= bound`` in float32 holds exactly when it holds in reals.
    The one definition: the kernels and the mining summary's dropped count both use it.

    >>> ratio_bound(0.5, [0.5, -0.5, 0.0]).tolist()
    [0.25, -0.75, 0.0]
    >>> ratio_bound(2.0, [0.5, -0.5]).tolist()
    [0.5, -0.5]
    """
    if _is_torch(positive_scores):
        positive_scores = positive_scores.detach().cpu().numpy()
    p = np.asarray(positive_scores, dtype=np.float64).ravel()
    r = min(float(max_ratio), 1.0)
    b = np.where(p >= 0, r * p, (2.0 - r) * p)
    b32 = b.astype(np.float32)
    up = b32.astype(np.float64) > b  # rounded up: step down to the float32 just below
    b32[up] = np.nextafter(b32[up], np.float32(-np.inf))
    return np.ascontiguousarray(b32)


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
        max_ratio: drop candidates scoring above the query's positive score ``p`` less a
            ``(1 - max_ratio)`` share of ``|p|`` (``max_ratio * p`` for ``p >= 0``; never above ``p``,
            see :func:`ratio_bound`): likely false negatives; NV-Retriever's TopK-PercPos uses 0.95.
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
        from fastembed_tune import _torch_ref
        return _torch_ref.topk_cosine_torch(queries, corpus, k, exclude=exclude, skip_top=skip_top,
                                            max_ratio=max_ratio, positive_scores=positive_scores)
    q = _as_f32_matrix(queries, "queries")
    x = _as_f32_matrix(corpus, "corpus")
    _check_search_args(q, x, k, skip_top, threads)
    _check_paths(simd)
    _check_rows(q, "queries", normalized, threads)
    _check_rows(x, "corpus", normalized, threads)
    ptr, ids, upper = _filters(q, x, exclude, max_ratio, positive_scores)
    scores, out_ids = _native.topk_cosine(q, x, int(k), ptr, ids, upper, int(skip_top), int(threads), simd)
    if torch_out:
        import torch
        return torch.from_numpy(scores), torch.from_numpy(out_ids)
    return scores, out_ids


# ---------------------------------------------------------------------------------------------
# contrastive: fused InfoNCE / MultipleNegativesRanking loss
# ---------------------------------------------------------------------------------------------
def _check_contrastive(q, docs, pos, scale, doc_keys):
    import torch

    for name, t in (("q", q), ("docs", docs)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (shapes only, no values); the loss needs real "
                             f"tensors: move the model to CPU or CUDA first (e.g. .to_empty(device='cpu') and "
                             f"load the weights)")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}; convert it with .float()")
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D tensor [rows, dim], got shape {tuple(t.shape)}")
    if docs.shape[1] != q.shape[1]:
        raise ValueError(f"q has dimension {q.shape[1]} but docs has dimension {docs.shape[1]}")
    if docs.device != q.device:
        raise ValueError(f"q is on {q.device} but docs is on {docs.device}")
    B, M = q.shape[0], docs.shape[0]
    if not isinstance(pos, torch.Tensor):
        pos = torch.as_tensor(pos)
    for name, t in (("pos", pos), ("doc_keys", doc_keys)):
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (shapes only, no values); pass real integer ids")
    if pos.dtype not in (torch.int64, torch.int32) or pos.shape != (B,):
        raise ValueError(f"pos must be an integer tensor of shape ({B},) (one positive per query), "
                         f"got {pos.dtype} {tuple(pos.shape)}")
    pos = pos.to(device=q.device, dtype=torch.int64)
    if B and (int(pos.min()) < 0 or int(pos.max()) >= M):
        bad = int(((pos < 0) | (pos >= M)).nonzero()[0, 0])
        raise ValueError(f"pos[{bad}] = {int(pos[bad])} is outside the docs rows [0, {M})")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0 (20 is temperature 0.05), got {scale!r}")
    for name, t in (("q", q), ("docs", docs)):
        if not bool(torch.isfinite(t).all()):
            r = int((~torch.isfinite(t)).any(1).nonzero()[0, 0])
            raise ValueError(f"{name} row {r} holds NaN or Inf; embeddings must be finite")
    if doc_keys is not None:
        doc_keys = torch.as_tensor(doc_keys)
        if doc_keys.dtype not in (torch.int64, torch.int32) or doc_keys.shape != (M,):
            raise ValueError(f"doc_keys must be an integer tensor of shape ({M},), got "
                             f"{doc_keys.dtype} {tuple(doc_keys.shape)}")
        doc_keys = doc_keys.to(device=q.device, dtype=torch.int64)
    return pos, doc_keys


def _native_contrastive_function():
    import torch

    class NativeContrastive(torch.autograd.Function):
        """Forward: tiled online log-sum-exp in C++, saving only each row's max and sum; backward recomputes tiles."""

        @staticmethod
        def forward(ctx, q, docs, pos, scale, doc_keys, simd):
            qn = q.detach().contiguous().numpy()
            dn = docs.detach().contiguous().numpy()
            pn = pos.contiguous().numpy()
            kn = doc_keys.contiguous().numpy() if doc_keys is not None else None
            loss, rmax, rsum = _native.contrastive_forward(qn, dn, pn, float(scale), kn, 0, simd)
            ctx.save_for_backward(q, docs, pos, torch.from_numpy(rmax), torch.from_numpy(rsum),
                                  doc_keys if doc_keys is not None else torch.empty(0))
            ctx.scale, ctx.has_keys, ctx.simd = scale, doc_keys is not None, simd
            return torch.tensor(loss, dtype=torch.float32)

        @staticmethod
        def backward(ctx, g):
            q, docs, pos, rmax, rsum, keys = ctx.saved_tensors
            dq, dd = _native.contrastive_backward(
                q.detach().contiguous().numpy(), docs.detach().contiguous().numpy(), pos.numpy(),
                float(ctx.scale), keys.numpy() if ctx.has_keys else None, rmax.numpy(), rsum.numpy(),
                float(g), 0, ctx.simd)
            return torch.from_numpy(dq), torch.from_numpy(dd), None, None, None, None

    return NativeContrastive


_NATIVE_FN = None


def contrastive(q, docs, pos, scale: float = 20.0, *, doc_keys=None, symmetric: bool = False,
                simd: str = "auto"):
    """Fused InfoNCE / MultipleNegativesRanking loss (mean over rows), differentiable in q and docs.

    Row i's positive is ``docs[pos[i]]``; every other doc is a negative, except docs whose
    ``doc_keys`` equals the positive's key (the same text twice in a batch). ``symmetric`` adds
    the document->query direction (CLIP/GTE) and averages the two. CPU float32 tensors run the
    native tiled kernel (never a B x M matrix); other devices run the same maths in torch.

    Example:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_()
        >>> d = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        >>> loss = contrastive(q, d, torch.arange(4), 20.0)
        >>> loss.backward(); q.grad.shape
        torch.Size([4, 8])
    """
    global _NATIVE_FN
    import torch

    from fastembed_tune._torch_ref import contrastive_torch

    pos, doc_keys = _check_contrastive(q, docs, pos, scale, doc_keys)
    if q.device.type != "cpu" or not hasattr(_native, "contrastive_forward"):
        return contrastive_torch(q, docs, pos, float(scale), doc_keys=doc_keys, symmetric=symmetric)
    _check_paths(simd)
    if _NATIVE_FN is None:
        _NATIVE_FN = _native_contrastive_function()
    loss = _NATIVE_FN.apply(q, docs, pos, float(scale), doc_keys, simd)
    if symmetric:
        B = q.shape[0]
        keys_t = doc_keys[pos] if doc_keys is not None else None
        back = _NATIVE_FN.apply(docs[pos], q, torch.arange(B), float(scale), keys_t, simd)
        loss = (loss + back) / 2
    return loss


# ---------------------------------------------------------------------------------------------
# topk_cosine_lowp: int8 candidate scan + exact fp32 rescoring (csrc/lowp.h)
# ---------------------------------------------------------------------------------------------
class QuantizedCorpus:
    """A corpus quantised for :func:`topk_cosine_lowp`: int8 codes per row (symmetric, one scale per
    row), packed in 16-row panels for the scan, plus per-row bounds on the quantisation error.
    Produce it once with :func:`quantize_corpus`, :meth:`save` it beside the corpus, and
    :meth:`load` it memory-mapped for every later mining pass. It is about d + 20 bytes per row.
    """

    _FIELDS = ("codes", "colsum", "scale", "nx", "ex")

    def __init__(self, codes, colsum, scale, nx, ex, N: int, d: int, fingerprint: str):
        self.codes, self.colsum, self.scale, self.nx, self.ex = codes, colsum, scale, nx, ex
        self.N, self.d, self.fingerprint = int(N), int(d), str(fingerprint)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self._FIELDS)

    def save(self, path) -> None:
        """Writes a folder of .npy files (+ meta.json) under a temporary name, then renames it."""
        import os

        def fill(tmp: str) -> "QuantizedCorpus":
            for f in self._FIELDS:
                np.save(os.path.join(tmp, f + ".npy"), getattr(self, f))
            return self

        _commit_qcorpus(path, fill)

    @classmethod
    def load(cls, path, mmap: bool = True) -> "QuantizedCorpus":
        import json
        import os

        path = os.fspath(path)
        try:
            with open(os.path.join(path, "meta.json")) as fh:
                meta = json.load(fh)
            arrays = [np.load(os.path.join(path, f + ".npy"), mmap_mode="r" if mmap else None) for f in cls._FIELDS]
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a quantised corpus written by QuantizedCorpus.save: {e}") from None
        return cls(*arrays, meta["N"], meta["d"], meta["fingerprint"])


def _fingerprint(x: np.ndarray) -> str:
    """Shape plus a hash of up to 257 rows spread over x: catches a quantised corpus used with the wrong corpus."""
    import hashlib

    n = x.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, 257)).astype(np.int64))
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(x.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(x[rows]).tobytes())
    return h.hexdigest()


def available_lowp() -> list[str]:
    """int8 scan paths this CPU can run, best first; always ends with ``"scalar"``.

    >>> available_lowp()[-1]
    'scalar'
    """
    return list(_native.available_lowp())


LOWP_PANEL = 16  # rows per packed panel of the int8 codes (csrc/lowp.h kLowpPanel)


def quantize_corpus(corpus: ArrayLike, *, normalized: bool = True, threads: int = 0,
                    out: Optional[str] = None, block_rows: int = 1 << 18) -> QuantizedCorpus:
    """Quantises float32 rows ``[N, d]`` for :func:`topk_cosine_lowp` (one pass, multithreaded).

    With ``out`` (a folder path) the corpus is read and quantised ``block_rows`` rows at a time
    straight into memory-mapped files there (written under a temporary name, then renamed): a
    memory-mapped corpus larger than RAM is quantised in bounded memory, each block's pages released
    once read (``madvise(MADV_DONTNEED)``), and the result returned memory-mapped, the same
    :class:`QuantizedCorpus` that ``quantize_corpus(corpus).save(out)`` would write.

    >>> x = np.eye(4, dtype=np.float32)
    >>> qc = quantize_corpus(x); (qc.N, qc.d, qc.codes.dtype.name)
    (4, 4, 'int8')
    """
    x = _as_f32_matrix(corpus, "corpus")
    if not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: all cores), got {threads!r}")
    if x.shape[1] > 65536:
        raise ValueError(f"the int8 scan supports dimensions up to 65536, got {x.shape[1]}")
    if x.shape[0] >= 2**31:
        raise ValueError(f"the int8 scan supports up to 2^31 - 1 rows, got {x.shape[0]}")
    if out is not None:
        return _quantize_to_disk(x, out, normalized, int(threads), block_rows)
    _check_rows(x, "corpus", normalized, threads)
    codes, colsum, scale, nx, ex = _native.quantise_corpus(x, int(threads))
    return QuantizedCorpus(codes, colsum, scale, nx, ex, x.shape[0], x.shape[1], _fingerprint(x))


def _release(a: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process (they stay in the page cache)."""
    import mmap

    m = getattr(a, "_mmap", None)
    if m is None and isinstance(getattr(a, "base", None), np.memmap):
        m = getattr(a.base, "_mmap", None)
    if m is not None and hasattr(m, "madvise"):
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass  # advice only


def _commit_qcorpus(path, fill: Callable[[str], "QuantizedCorpus"]) -> None:
    """``fill(tmp)`` writes the arrays into a temporary folder beside ``path`` and returns what
    describes them (N, d, fingerprint); meta.json is added and the folder renamed to ``path``
    (replacing an older one); on any error the temporary folder goes and ``path`` is untouched."""
    import json
    import os
    import shutil
    import tempfile

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".qcorpus-", dir=parent)
    try:
        what = fill(tmp)
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump({"N": what.N, "d": what.d, "fingerprint": what.fingerprint, "format": 1}, fh)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _quantize_to_disk(x: np.ndarray, out: str, normalized: bool, threads: int, block_rows: int) -> QuantizedCorpus:
    """:func:`quantize_corpus` block by block into memory-mapped .npy files in ``out``."""
    import os
    from types import SimpleNamespace

    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < LOWP_PANEL:
        raise ValueError(f"block_rows must be an integer >= {LOWP_PANEL}, got {block_rows!r}")
    block = int(block_rows) // LOWP_PANEL * LOWP_PANEL  # whole panels: blocks concatenate exactly
    N, d = x.shape
    npad, dpad = -(-N // LOWP_PANEL) * LOWP_PANEL, -(-d // 4) * 4

    def fill(tmp: str):
        shapes = {"codes": ((npad * dpad,), np.int8), "colsum": ((npad,), np.int32), "scale": ((npad,), np.float32),
                  "nx": ((npad,), np.float32), "ex": ((npad,), np.float32)}
        arrays = {f: np.lib.format.open_memmap(os.path.join(tmp, f + ".npy"), mode="w+", dtype=t, shape=sh)
                  for f, (sh, t) in shapes.items()}
        for b in range(0, N, block):
            rows = np.ascontiguousarray(x[b:b + block])
            _check_rows(rows, "corpus", normalized, threads, offset=b)
            parts = _native.quantise_corpus(rows, threads)
            n = len(parts[1]) if b + block < N else npad - b  # the last block carries the padding rows
            for f, part in zip(QuantizedCorpus._FIELDS, parts):
                per = dpad if f == "codes" else 1
                arrays[f][b * per:(b + n) * per] = part[:n * per]
            del rows, parts
            _release(x)
            for a in arrays.values():
                a.flush()
                _release(a)
        for a in arrays.values():
            a.flush()
        return SimpleNamespace(N=N, d=d, fingerprint=_fingerprint(x))

    _commit_qcorpus(out, fill)
    return QuantizedCorpus.load(out)


def _check_search_args(q: np.ndarray, x: np.ndarray, k, skip_top, threads) -> None:
    """The shape and count arguments of a top-k search, each refused with a ValueError."""
    d, N = q.shape[1], x.shape[0]
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


def _check_lowp_args(q: np.ndarray, x: np.ndarray, k, skip_top, threads, simd, scan) -> None:
    """:func:`topk_cosine_lowp`'s shape, count and path-name arguments, each refused with a ValueError."""
    _check_search_args(q, x, k, skip_top, threads)
    _check_paths(simd, scan)


def _check_quantized(quantized: QuantizedCorpus, x: np.ndarray, normalized: bool) -> None:
    """A ValueError unless ``quantized`` was made from the corpus ``x`` (shape and fingerprint) and,
    when ``normalized``, its rows have unit norm."""
    N, d = x.shape
    if not isinstance(quantized, QuantizedCorpus):
        raise ValueError(f"quantized must be a QuantizedCorpus from quantize_corpus, got {type(quantized).__name__}")
    if (quantized.N, quantized.d) != (N, d) or quantized.fingerprint != _fingerprint(x):
        raise ValueError(f"quantized was made from another corpus (shape {quantized.N} x {quantized.d}, "
                         f"corpus {N} x {d}); run quantize_corpus(corpus) again")
    # quantize_corpus refused NaN/Inf rows already; the row norms it kept (nx) check normalisation
    # without another pass over the fp32 corpus (which may be far larger than RAM)
    nx = np.asarray(quantized.nx[:N])
    bad = np.flatnonzero(~np.isfinite(nx) | ((np.abs(nx - 1.0) > 1e-2) if normalized else False))
    if bad.size:
        raise ValueError(f"corpus row {bad[0]} has L2 norm {nx[bad[0]]:.4g}, not 1: cosine top-k needs "
                         f"L2-normalised rows (divide by np.linalg.norm(x, axis=1, keepdims=True)), or pass "
                         f"normalized=False for a raw inner-product search")


def topk_cosine_lowp(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    *,
    quantized: Optional[QuantizedCorpus] = None,
    precision: str = "int8",
    exclude: Optional[Union[Sequence[Sequence[int]], np.ndarray]] = None,
    skip_top: int = 0,
    max_ratio: Optional[float] = None,
    positive_scores: Optional[ArrayLike] = None,
    normalized: bool = True,
    threads: int = 0,
    simd: str = "auto",
    scan: str = "auto",
    return_stats: bool = False,
):
    """:func:`topk_cosine` with a reduced-precision candidate scan: the same ``(scores, ids)``,
    bit for bit, as ``topk_cosine(..., simd=simd)`` with the same filters.

    An int8 scan (AVX512-VNNI, AVX2, or portable; ``scan`` picks, ``"auto"`` the best this CPU
    runs) bounds every score within ``a +- e``, ``e`` a rigorous bound on the quantisation and
    rounding error of that query/row pair; every row that could still be in the top
    ``k + skip_top`` is rescored with the fp32 kernel ``simd`` (csrc/lowp.h has the argument).

    Args:
        quantized: the corpus quantised by :func:`quantize_corpus` (quantised here if omitted;
            pass it to reuse it across calls). It must come from this very corpus.
        precision: ``"int8"`` (the only one so far).
        scan: ``"auto"``, ``"avx512vnni"``, ``"avx2"``, ``"scalar"`` or ``"reference"``.
        return_stats: also return a dict (candidates rescored per query, seconds scanning,
            seconds rescoring).
        Every other argument is :func:`topk_cosine`'s.

    Example:
        >>> x = np.eye(4, dtype=np.float32)
        >>> s, i = topk_cosine_lowp(x[:2], x, 2, exclude=[[0], [1]])
        >>> i.tolist()
        [[1, 2], [0, 2]]
    """
    if precision != "int8":
        raise ValueError(f"precision must be 'int8' (bf16 is not implemented yet), got {precision!r}")
    torch_out = _is_torch(queries) or _is_torch(corpus)
    if _is_torch(queries) and queries.device.type != "cpu":
        out = topk_cosine(queries, corpus, k, exclude=exclude, skip_top=skip_top, max_ratio=max_ratio,
                          positive_scores=positive_scores, normalized=normalized, threads=threads, simd=simd)
        return (*out, {}) if return_stats else out
    q = _as_f32_matrix(queries, "queries")
    x = _as_f32_matrix(corpus, "corpus")
    _check_lowp_args(q, x, k, skip_top, threads, simd, scan)
    _check_rows(q, "queries", normalized, threads)
    if quantized is None:
        quantized = quantize_corpus(x, normalized=normalized, threads=threads)
    else:
        _check_quantized(quantized, x, normalized)
    if not normalized and (float(np.max(quantized.nx)) > 1e15 or float(np.max(np.abs(q))) > 1e15):
        # Scores near float32 overflow: the error bound would be infinite; the exact scan is as fast.
        out = topk_cosine(queries, corpus, k, exclude=exclude, skip_top=skip_top, max_ratio=max_ratio,
                          positive_scores=positive_scores, normalized=normalized, threads=threads, simd=simd)
        return (*out, {}) if return_stats else out
    ptr, ids, upper = _filters(q, x, exclude, max_ratio, positive_scores)
    qc = quantized
    scores, out_ids, st = _native.topk_cosine_lowp(
        q, x, int(k), qc.codes, qc.colsum, qc.scale, qc.nx, qc.ex, ptr, ids, upper, int(skip_top), int(threads),
        simd, scan)
    if torch_out:
        import torch
        scores, out_ids = torch.from_numpy(scores), torch.from_numpy(out_ids)
    if return_stats:
        return scores, out_ids, {"candidates_per_query": st[0] / max(st[1], 1), "scan_s": st[2], "rescore_s": st[3],
                                 "scan": _native.lowp_name(scan), "simd": _native.simd_name(simd)}
    return scores, out_ids


def lowp_dots(queries: ArrayLike, quantized: QuantizedCorpus, scan: str = "auto") -> np.ndarray:
    """The exact integer dot products ``[Q, N]`` of ``scan``'s int8 query codes with the corpus codes
    (a test hook: every scan path must equal ``scan="reference"``)."""
    q = _as_f32_matrix(queries, "queries")
    _check_paths(None, scan)
    if q.shape[1] != quantized.d:
        raise ValueError(f"queries have dimension {q.shape[1]} but the quantised corpus has {quantized.d}")
    qc = quantized
    return _native.lowp_dots(q, qc.codes, qc.colsum, qc.scale, qc.nx, qc.ex, qc.N, scan)
