"""Pure-torch versions of the native kernels, for CUDA tensors (same maths, same API).

They run blockwise so a Q x N matrix exists only one query block at a time.
"""
from __future__ import annotations

from typing import Any, Optional

import torch


def topk_cosine_torch(queries: torch.Tensor, corpus: torch.Tensor, k: int, *, exclude: Any = None,
                      skip_top: int = 0, max_ratio: Optional[float] = None,
                      positive_scores: Any = None, block: int = 1024):
    """``kernels.topk_cosine`` for tensors on any device: mm + a stable sort per query block.

    >>> import torch
    >>> x = torch.eye(3)
    >>> topk_cosine_torch(x[:1], x, 2, exclude=[[0]])[1].tolist()
    [[1, 2]]
    """
    for name, t in (("queries", queries), ("corpus", corpus)):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
        if t.ndim != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D tensor, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or Inf; embeddings must be finite")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but corpus has dimension {corpus.shape[1]}")
    Q, N = queries.shape[0], corpus.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"k must be between 1 and the corpus size N={N}, got k={k}")
    dev = queries.device
    excl = None
    if exclude is not None:
        excl = [torch.as_tensor([i for i in row if i >= 0] if row is not None else [], dtype=torch.long)
                for row in (exclude.tolist() if hasattr(exclude, "tolist") else exclude)]
        if len(excl) != Q:
            raise ValueError(f"exclude has {len(excl)} entries but there are {Q} queries")
        for qi, r in enumerate(excl):
            if r.numel() and (int(r.min()) < 0 or int(r.max()) >= N):
                raise ValueError(f"exclude[{qi}] contains an id outside the corpus ids [0, {N})")
    upper = None
    if max_ratio is not None:
        if positive_scores is None:
            if excl is None or any(r.numel() == 0 for r in excl):
                raise ValueError("max_ratio needs positive_scores or a non-empty exclude per query")
            positive_scores = torch.stack([(queries[i:i + 1].double() @ corpus[r.to(dev)].double().T).min()
                                           for i, r in enumerate(excl)])
        upper = ratio_bound_torch(max_ratio, torch.as_tensor(positive_scores, dtype=torch.float64, device=dev))
    scores = torch.full((Q, k), float("-inf"), device=dev)
    ids = torch.full((Q, k), -1, dtype=torch.long, device=dev)
    for b0 in range(0, Q, block):
        s = queries[b0:b0 + block] @ corpus.T
        if excl is not None:
            for i in range(s.shape[0]):
                r = excl[b0 + i]
                if r.numel():
                    s[i, r.to(dev)] = float("-inf")
        if upper is not None:
            s = torch.where(s > upper[b0:b0 + block, None], torch.full_like(s, float("-inf")), s)
        sv, si = torch.sort(s, dim=1, descending=True, stable=True)  # stable: ties keep smaller id first
        sv, si = sv[:, skip_top:skip_top + k], si[:, skip_top:skip_top + k]
        valid = torch.isfinite(sv)
        w = sv.shape[1]
        scores[b0:b0 + block, :w] = torch.where(valid, sv, torch.full_like(sv, float("-inf")))
        ids[b0:b0 + block, :w] = torch.where(valid, si, torch.full_like(si, -1))
    return scores, ids


def ratio_bound_torch(max_ratio: float, p: torch.Tensor) -> torch.Tensor:
    """``kernels.ratio_bound`` in torch, on ``p``'s device: ``p - (1 - r) * |p|`` with ``r`` capped at 1
    (``r * p`` for ``p >= 0``, ``(2 - r) * p`` below), computed in float64 and rounded down to float32.

    >>> ratio_bound_torch(0.5, torch.tensor([0.5, -0.5], dtype=torch.float64)).tolist()
    [0.25, -0.75]
    """
    p = p.to(torch.float64)
    r = min(float(max_ratio), 1.0)
    b = torch.where(p >= 0, r * p, (2.0 - r) * p)
    b32 = b.float()
    return torch.where(b32.double() > b, torch.nextafter(b32, torch.full_like(b32, float("-inf"))), b32)


def contrastive_mask(pos: torch.Tensor, doc_keys: Optional[torch.Tensor], rows: slice, M: int) -> Optional[torch.Tensor]:
    """[rows, M] bool: True where doc j shares row i's positive key but is not the positive."""
    if doc_keys is None:
        return None
    p = pos[rows]
    m = doc_keys[None, :] == doc_keys[p][:, None]
    m[torch.arange(p.shape[0], device=p.device), p] = False
    return m


class _TiledContrastive(torch.autograd.Function):
    """InfoNCE over row blocks: forward keeps only the per-row log-sum-exp, backward recomputes."""

    @staticmethod
    def forward(ctx, q, docs, pos, scale, doc_keys, block):
        B, M = q.shape[0], docs.shape[0]
        lse = torch.empty(B, dtype=torch.float32, device=q.device)
        loss = torch.zeros((), dtype=torch.float64, device=q.device)
        for b0 in range(0, B, block):
            rows = slice(b0, min(B, b0 + block))
            s = (q[rows] @ docs.T) * scale
            m = contrastive_mask(pos, doc_keys, rows, M)
            if m is not None:
                s = s.masked_fill(m, float("-inf"))
            l = torch.logsumexp(s, dim=1)
            lse[rows] = l
            loss += (l - s.gather(1, pos[rows, None]).squeeze(1)).double().sum()
        ctx.save_for_backward(q, docs, pos, lse, doc_keys)
        ctx.scale, ctx.block = scale, block
        return (loss / B).float()

    @staticmethod
    def backward(ctx, g):
        q, docs, pos, lse, doc_keys = ctx.saved_tensors
        scale, block = ctx.scale, ctx.block
        B, M = q.shape[0], docs.shape[0]
        dq = torch.zeros_like(q)
        dd = torch.zeros_like(docs)
        coef = g / B
        for b0 in range(0, B, block):
            rows = slice(b0, min(B, b0 + block))
            s = (q[rows] @ docs.T) * scale
            m = contrastive_mask(pos, doc_keys, rows, M)
            p = torch.exp(s - lse[rows, None])
            if m is not None:
                p = p.masked_fill(m, 0.0)
            p[torch.arange(p.shape[0], device=p.device), pos[rows]] -= 1.0
            p *= coef * scale
            dq[rows] = p @ docs
            dd += p.T @ q[rows]
        return dq, dd, None, None, None, None


def contrastive_torch(q: torch.Tensor, docs: torch.Tensor, pos: torch.Tensor, scale: float = 20.0, *,
                      doc_keys: Optional[torch.Tensor] = None, symmetric: bool = False,
                      block: int = 1024) -> torch.Tensor:
    """``kernels.contrastive`` in plain torch (any device): row-blocked, memory O(block x M).

    >>> q = torch.eye(2, requires_grad=True)
    >>> round(contrastive_torch(q, torch.eye(2), torch.tensor([0, 1]), 1.0).item(), 4)
    0.3133
    """
    loss = _TiledContrastive.apply(q, docs, pos, float(scale), doc_keys, block)
    if symmetric:
        B = q.shape[0]
        keys_t = doc_keys[pos] if doc_keys is not None else None
        back = _TiledContrastive.apply(docs[pos], q, torch.arange(B, device=q.device), float(scale), keys_t, block)
        loss = (loss + back) / 2
    return loss
