"""Training an adapter on cached vectors (what ``adapt`` does between embedding and reporting).

The loss is the native fused contrastive loss (:func:`~fastembed_tune.kernels.contrastive`) over
in-batch negatives plus hard negatives mined from the cached document vectors with
:func:`~fastembed_tune.kernels.topk_cosine` (re-mined with the adapter every ``remine_every``
epochs). The epoch that ships is chosen on a validation split of the training queries
(:class:`~fastembed_tune.training.validation.BestTracker`); for ``linear`` and ``mlp`` adapters it is
the running mean of the epochs' weights.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fastembed_tune.adapt.adapter import Adapter, AdapterNet


@dataclass
class AdapterConfig:
    """The settings of one adapter training (the ``adapt`` flags).

    >>> AdapterConfig().kind, AdapterConfig().sides
    ('linear', 'query')
    """
    kind: str = "linear"
    sides: str = "query"
    rank: int = 64
    hidden: int = 1024
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    num_negatives: int = 7
    max_ratio: Optional[float] = 0.95
    remine_every: int = 1  # epochs between re-mining with the adapter (0: mine once, frozen vectors)
    average: bool = True  # linear/mlp: validate and ship the running mean of the epochs' weights (SWA)
    scale: float = 20.0
    validation_share: float = 0.1
    patience: Optional[int] = 3
    seed: int = 42


def mine(qv: np.ndarray, cv: np.ndarray, positives: Sequence[Sequence[int]], k: int,
         max_ratio: Optional[float]) -> np.ndarray:
    """Hard negatives: for each query row of ``qv``, the ids of the ``k`` nearest rows of ``cv`` (unit
    rows) that are not among its ``positives``, above no ``max_ratio`` x its weakest positive's score;
    ``-1`` pads a query with fewer candidates.

    >>> c = np.eye(3, dtype=np.float32); q = np.array([[0.8, 0.6, 0.0]], np.float32)
    >>> mine(q, c, [[0]], 2, None).tolist()
    [[1, 2]]
    """
    from fastembed_tune.kernels import topk_cosine

    k = min(k, cv.shape[0])
    _, ids = topk_cosine(np.ascontiguousarray(qv), np.ascontiguousarray(cv), k, exclude=[list(p) for p in positives],
                         max_ratio=max_ratio)
    return ids


def train_adapter(vectors: np.ndarray, queries: np.ndarray, positives: np.ndarray, corpus: np.ndarray,
                  cfg: AdapterConfig, score: Optional[Callable[[Adapter], float]] = None,
                  given_negatives: Optional[Sequence[Sequence[int]]] = None, log: Callable = print) -> tuple[Adapter, dict]:
    """Train an adapter on cached vectors.

    Args:
        vectors: float32 [T, d], one row per distinct text.
        queries, positives: int [P], each training pair's query and positive row in ``vectors``.
        corpus: int [N], rows hard negatives are mined from (it should hold every positive).
        score: validation nDCG@10 of an :class:`Adapter` (None: no validation, the last epoch ships).
        given_negatives: per pair, rows of negatives the data brought (used before mined ones).

    Returns:
        ``(the adapter of the best validated epoch, summary)``.

    >>> rng = np.random.default_rng(0); d = rng.standard_normal((20, 8)).astype(np.float32)
    >>> q = d @ np.linalg.qr(rng.standard_normal((8, 8)))[0].astype(np.float32)  # rotated copies
    >>> v = np.concatenate([q, d]); cfg = AdapterConfig(epochs=2, batch_size=8, validation_share=0)
    >>> a, s = train_adapter(v, np.arange(20), np.arange(20, 40), np.arange(20, 40), cfg, log=lambda *_: None)
    >>> s["epochs_run"], a.apply(v[:1]).shape
    (2, (1, 8))
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and never spins against a busy machine
    try:
        return _train(vectors, queries, positives, corpus, cfg, score, given_negatives, log)
    finally:
        torch.set_num_threads(threads)


class _PairNegatives:
    """Per training pair, the rows of its hard negatives in the cached vectors: the negatives the data
    brought first, then those mined from ``corpus`` with an adapter (never the query's positives)."""

    def __init__(self, vectors: np.ndarray, queries: np.ndarray, positives: np.ndarray, corpus: np.ndarray,
                 cfg: AdapterConfig, given: Optional[Sequence[Sequence[int]]]):
        self.vectors, self.corpus, self.given = vectors, corpus, given
        self.k, self.max_ratio, self.pairs = cfg.num_negatives, cfg.max_ratio, len(queries)
        # mining: per distinct query, its positives' positions in the corpus
        self.queries, self.query_of_pair = np.unique(queries, return_inverse=True)
        cpos = {int(r): i for i, r in enumerate(corpus)}
        self.positives: list[set] = [set() for _ in self.queries]
        for j, p in zip(self.query_of_pair, positives):
            if int(p) in cpos:
                self.positives[j].add(cpos[int(p)])

    def __call__(self, adapter: Adapter) -> np.ndarray:
        """int64 [pairs, k] rows of ``vectors`` (``-1`` where a pair has fewer), mined with ``adapter``."""
        k = self.k
        if k == 0:
            return np.full((self.pairs, 0), -1, np.int64)
        ids = mine(adapter.apply(self.vectors[self.queries]), adapter.apply(self.vectors[self.corpus], "document"),
                   self.positives, k, self.max_ratio)
        rows = np.where(ids >= 0, self.corpus[np.maximum(ids, 0)], -1)[self.query_of_pair]
        if self.given is not None:
            rows = np.array([[*given[:k], *r][:k] if len(given) else r
                             for given, r in zip(self.given, rows.tolist())], dtype=np.int64).reshape(self.pairs, -1)
        return rows


class _Optimisation:
    """The torch side of a training: one :class:`AdapterNet` per side, started at the identity
    adapter; AdamW with a linear warm-up over the first 5% of the steps and a linear decay to zero;
    and (``linear``/``mlp`` with ``average``) the running mean of the end-of-epoch weights."""

    def __init__(self, ident: Adapter, cfg: AdapterConfig, pairs: int):
        import torch

        self.cfg, self.config = cfg, ident.config
        self.nets = {side: AdapterNet(cfg.kind, p) for side, p in ident.params.items()}
        params = [p for n in self.nets.values() for p in n.parameters()]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, -(-pairs // cfg.batch_size)) * cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, total // 20))
                                                       * max(0.0, 1 - s / total))
        # the mean of low-rank factors is not a mean of their products
        self.averaging = cfg.average and cfg.kind != "lowrank"
        self.avg: Optional[dict] = None
        self.averaged, self.steps = 0, 0

    def current(self) -> Adapter:
        """The adapter as it stands: the running mean when averaging, else the nets' weights."""
        params = {s: n.numpy_params() for s, n in self.nets.items()}
        if self.averaging and self.avg is not None:
            params = {s: {k: v.copy() for k, v in p.items()} for s, p in self.avg.items()}
        return Adapter(config=dict(self.config), params=params)

    def epoch(self, vectors: Any, queries: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
              order: np.ndarray) -> float:
        """One pass over the pairs in ``order`` (torch ``vectors``); the epoch's mean loss."""
        import torch

        from fastembed_tune.kernels import contrastive

        cfg = self.cfg
        for net in self.nets.values():
            net.train()
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            n_rows = negatives[idx].ravel()
            doc_rows = np.concatenate([positives[idx], n_rows[n_rows >= 0]])
            q = self.nets["query"](vectors[queries[idx]])
            d = vectors[doc_rows]
            if "document" in self.nets:
                d = self.nets["document"](d)
            loss = contrastive(q, d, torch.arange(len(idx)), cfg.scale, doc_keys=torch.from_numpy(doc_rows))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.steps += 1
            losses.append(float(loss.detach()))
        if self.averaging:
            self._average()
        return float(np.mean(losses))

    def _average(self) -> None:
        self.averaged += 1
        now = {s: n.numpy_params() for s, n in self.nets.items()}
        self.avg = now if self.avg is None else {s: {k: v + (now[s][k] - v) / self.averaged for k, v in p.items()}
                                                 for s, p in self.avg.items()}


def _train(vectors, queries, positives, corpus, cfg: AdapterConfig, score, given_negatives, log) -> tuple[Adapter, dict]:
    import torch

    from fastembed_tune.training.validation import BestTracker

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 12])
    V = np.ascontiguousarray(vectors, dtype=np.float32)
    Vt = torch.from_numpy(V)
    ident = Adapter.identity(cfg.kind, V.shape[1], cfg.sides, cfg.rank, cfg.hidden, cfg.seed)
    fit = _Optimisation(ident, cfg, len(queries))
    negatives = _PairNegatives(V, queries, positives, corpus, cfg, given_negatives)
    tracker = BestTracker(patience=cfg.patience, tolerance=0.0)
    best, curve = ident, []
    if score is not None:
        tracker.update(score(ident), 0)
        curve.append({"epoch": 0, "ndcg@10": tracker.best})
    neg, mined_with = negatives(ident), [0]
    epoch, losses = 0, []
    for epoch in range(1, cfg.epochs + 1):
        if cfg.remine_every and epoch > 1 and (epoch - 1) % cfg.remine_every == 0:
            neg = negatives(fit.current())
            mined_with.append(epoch - 1)
        losses.append(fit.epoch(Vt, queries, positives, neg, rng.permutation(len(queries))))
        if score is None:
            curve.append({"epoch": epoch, "loss": losses[-1]})
            continue
        adapter = fit.current()
        val = score(adapter)
        curve.append({"epoch": epoch, "ndcg@10": val, "loss": losses[-1]})
        if tracker.update(val, epoch):
            best = adapter
        if tracker.should_stop:
            log(f"validation nDCG@10 has not improved for {cfg.patience} epochs: stopping after epoch {epoch}")
            break
    if score is None:
        best = fit.current()
    summary = {"pairs": len(queries), "epochs_run": epoch, "steps": fit.steps, "seconds": time.perf_counter() - t0,
               "best_epoch": tracker.best_step if score is not None else epoch,
               "validation_best": tracker.best if score is not None else None, "curve": curve,
               "mined_at_epochs": mined_with,
               "negatives_per_pair": float((neg >= 0).sum(1).mean()) if cfg.num_negatives else 0.0}
    best.config["training"] = {**asdict(cfg), **summary}
    return best, summary


__all__ = ["AdapterConfig", "mine", "train_adapter"]
