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
        upper = (max_ratio * torch.as_tensor(positive_scores, dtype=torch.float64, device=dev)).float()
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
