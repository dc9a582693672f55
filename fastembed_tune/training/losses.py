"""Loss modules, in sentence-transformers' convention: constructed with the model,
``forward(sentence_features, labels)`` returns a scalar loss. They work inside
``SentenceTransformerTrainer`` and in our own trainer alike.

``sentence_features`` is a list of tokenized feature dicts, one per column:
``[anchors, positives, negative_1, ..., negative_n]`` (as sentence-transformers passes them).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from fastembed_tune.kernels import contrastive


def _embed(model, features: dict) -> torch.Tensor:
    return model(features)["sentence_embedding"]


def text_keys(columns: list[dict]) -> Optional[torch.Tensor]:
    """Keys for the docs columns so the same text twice in a batch is not a negative: rows of
    input_ids are hashed (identical token ids, identical key)."""
    keys = []
    for f in columns:
        ids = f["input_ids"]
        mask = f.get("attention_mask", torch.ones_like(ids))
        for row, m in zip(ids.tolist(), mask.tolist()):
            keys.append(hash(tuple(t for t, k in zip(row, m) if k)))
    return torch.tensor(keys, dtype=torch.int64)


class FusedMNRLoss(nn.Module):
    """MultipleNegativesRankingLoss (InfoNCE) on the native fused kernel: in-batch negatives
    plus any hard-negative columns; duplicate texts in a batch are never negatives.

    Example:
        >>> from fastembed_tune.embed.model import EmbeddingModel
        >>> m = EmbeddingModel.load(); loss_fn = FusedMNRLoss(m)
        >>> feats = [m.tokenize(["cat", "dog"]), m.tokenize(["a feline", "a canine"])]
        >>> float(loss_fn(feats, None)) > 0
        True
    """

    def __init__(self, model, scale: float = 20.0, symmetric: bool = False, mask_duplicates: bool = True):
        super().__init__()
        self.model = model
        self.scale = scale
        self.symmetric = symmetric
        self.mask_duplicates = mask_duplicates

    def forward(self, sentence_features: Iterable[dict], labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = list(sentence_features)
        embs = [_embed(self.model, f) for f in feats]
        return self.loss_from_embeddings(embs, feats)

    def loss_from_embeddings(self, embs: list[torch.Tensor], feats: Optional[list[dict]] = None,
                             doc_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of embedded columns ``[queries, positives, negatives...]``; duplicate-text keys
        come from ``feats`` (tokenized columns) or are given as ``doc_keys``."""
        q = embs[0]
        docs = torch.cat(embs[1:], dim=0)
        keys = doc_keys
        if keys is None and self.mask_duplicates and feats is not None:
            keys = text_keys(feats[1:])
        pos = torch.arange(q.shape[0])
        return contrastive(q.float(), docs.float(), pos.to(q.device), self.scale,
                           doc_keys=keys.to(q.device) if keys is not None else None, symmetric=self.symmetric)

    def get_config_dict(self) -> dict:
        return {"scale": self.scale, "symmetric": self.symmetric}


class CachedFusedMNRLoss(FusedMNRLoss):
    """GradCache (Gao et al., 2021) around the fused kernel: embeds mini-batches without grad,
    computes the loss and the embedding gradients on the whole batch with the kernel, then
    re-runs each mini-batch with grad and back-propagates its slice of the embedding gradient.
    The batch is then limited by the kernel's memory, not the transformer's activations.

    ``forward`` returns the loss with the parameter gradients already accumulated (as
    sentence-transformers' CachedMultipleNegativesRankingLoss does, via a surrogate whose
    backward is a no-op), so a trainer's ``loss.backward()`` stays correct.

    Example:
        >>> from fastembed_tune.embed.model import EmbeddingModel
        >>> m = EmbeddingModel.load(); loss_fn = CachedFusedMNRLoss(m, mini_batch_size=1)
        >>> feats = [m.tokenize(["cat", "dog"]), m.tokenize(["a feline", "a canine"])]
        >>> float(loss_fn(feats, None)) > 0
        True
    """

    def __init__(self, model, scale: float = 20.0, symmetric: bool = False, mini_batch_size: int = 32,
                 mask_duplicates: bool = True):
        super().__init__(model, scale, symmetric, mask_duplicates)
        self.mini_batch_size = mini_batch_size

    def _chunks(self, f: dict):
        n = f["input_ids"].shape[0]
        for s in range(0, n, self.mini_batch_size):
            yield {k: v[s:s + self.mini_batch_size] for k, v in f.items()}

    def forward(self, sentence_features: Iterable[dict], labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = list(sentence_features)
        # 1. embed without grad, remembering the RNG state of each mini-batch (dropout replay)
        embs, states = [], []
        with torch.no_grad():
            for f in feats:
                parts, st = [], []
                for c in self._chunks(f):
                    st.append(torch.get_rng_state())
                    parts.append(_embed(self.model, c).detach())
                embs.append(torch.cat(parts))
                states.append(st)
        # 2. loss and d loss / d embeddings on the full batch, with the fused kernel
        leaves = [e.float().requires_grad_() for e in embs]
        loss = self.loss_from_embeddings(leaves, feats)
        grads = torch.autograd.grad(loss, leaves) if torch.is_grad_enabled() else None
        if grads is None:
            return loss.detach()
        # 3. re-embed each mini-batch with grad and push its slice of the gradient through
        for f, g, st in zip(feats, grads, states):
            for i, c in enumerate(self._chunks(f)):
                cpu_state = torch.get_rng_state()
                torch.set_rng_state(st[i])
                e = _embed(self.model, c)
                torch.set_rng_state(cpu_state)
                s = i * self.mini_batch_size
                e.backward(g[s:s + e.shape[0]].to(e.dtype))
        return _AlreadyBackwarded.apply(loss.detach(), *[p for p in self.model.parameters() if p.requires_grad][:1])


class _AlreadyBackwarded(torch.autograd.Function):
    """Returns the loss value; its backward adds nothing (gradients were accumulated already)."""

    @staticmethod
    def forward(ctx, loss, anchor):
        ctx.anchor_shape = anchor.shape
        return loss.clone()

    @staticmethod
    def backward(ctx, g):
        return None, torch.zeros(ctx.anchor_shape, dtype=g.dtype, device=g.device)


class TripletLoss(nn.Module):
    """max(0, d(a, p) - d(a, n) + margin) with cosine distance, per (anchor, positive, negative).

    Example:
        >>> from fastembed_tune.embed.model import EmbeddingModel
        >>> m = EmbeddingModel.load(); t = TripletLoss(m)
        >>> f = [m.tokenize(["cat"]), m.tokenize(["a feline"]), m.tokenize(["a car"])]
        >>> float(t(f, None)) >= 0
        True
    """

    def __init__(self, model, margin: float = 0.25):
        super().__init__()
        self.model = model
        self.margin = margin

    def forward(self, sentence_features: Iterable[dict], labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = list(sentence_features)
        if len(feats) < 3:
            raise ValueError("TripletLoss needs (anchor, positive, negative) columns; mine negatives first")
        return self.loss_from_embeddings([_embed(self.model, f) for f in feats[:3]])

    def loss_from_embeddings(self, embs: list[torch.Tensor]) -> torch.Tensor:
        """The loss of (anchor, positive, negative) embedding columns; the single-process and the
        DDP paths both end here.

        >>> t = TripletLoss(None, margin=0.25); a = torch.tensor([[1.0, 0.0]])
        >>> float(t.loss_from_embeddings([a, a, a]))  # d(a,p) = d(a,n): the margin is the loss
        0.25
        """
        a, p, n = (nn.functional.normalize(e.float(), dim=1) for e in embs[:3])
        d_ap = 1 - (a * p).sum(1)
        d_an = 1 - (a * n).sum(1)
        return torch.relu(d_ap - d_an + self.margin).mean()

    def get_config_dict(self) -> dict:
        return {"margin": self.margin}


class MSELoss(nn.Module):
    """Distillation: mean squared error between the student's embeddings and the teacher's
    (``labels``: [B, teacher_dim]); a learned linear projection bridges different dimensions.

    Example:
        >>> from fastembed_tune.embed.model import EmbeddingModel
        >>> m = EmbeddingModel.load(); l = MSELoss(m)
        >>> float(l([m.tokenize(["cat"])], torch.zeros(1, 384))) > 0
        True
    """

    def __init__(self, model, teacher_dim: Optional[int] = None):
        super().__init__()
        self.model = model
        dim = model.dim if hasattr(model, "dim") else model.get_sentence_embedding_dimension()
        self.projection = nn.Linear(dim, teacher_dim, bias=False) if teacher_dim and teacher_dim != dim else None

    def forward(self, sentence_features: Iterable[dict], labels: torch.Tensor) -> torch.Tensor:
        feats = list(sentence_features)
        loss = 0.0
        for f in feats:
            e = _embed(self.model, f)
            if self.projection is not None:
                e = self.projection(e)
            loss = loss + nn.functional.mse_loss(e, labels.to(e.dtype))
        return loss / len(feats)
