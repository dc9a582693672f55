"""Validation inside the training data: every decision (best checkpoint, early stop) is taken on a
share of the *training* queries held out from training, never on the test set.

- :func:`split_validation`: hold out whole queries (all pairs of a query go to one side), seeded.
- :class:`Validation`: those queries against their positives plus a fixed sample of distractor
  documents, scored by nDCG@10 with the model being trained (a few hundred queries and at most
  ``max_docs`` documents: seconds, not minutes).
- :class:`BestTracker`: the step to ship (the latest within ``tolerance`` of the best score) and
  when to stop (``patience`` evaluations below it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Optional, Sequence

import numpy as np

from fastembed_tune.data.readers import EvalSet, Pair, pairs_to_evalset


def split_validation(pairs: Sequence[Pair], share: float, max_queries: int, seed: int,
                     avoid: Collection[str] = ()) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs): ``min(round(share * queries), max_queries)`` distinct
    queries drawn with ``default_rng([seed, 7])`` go to validation with all their pairs; the others
    keep their order. Queries in ``avoid`` (e.g. test queries that also appear in the training
    data) are never drawn. Nothing is held out when that would leave fewer than 2 training pairs.

    >>> ps = [Pair(f"q{i % 10}", f"d{i}") for i in range(20)]
    >>> tr, va = split_validation(ps, 0.2, 500, seed=0)
    >>> len(tr), len(va), {p.query for p in tr} & {p.query for p in va}
    (16, 4, set())
    """
    queries = list(dict.fromkeys(p.query for p in pairs))
    n = min(int(round(share * len(queries))), max_queries)
    queries = [q for q in queries if q not in set(avoid)]
    n = min(n, len(queries))
    if n < 1:
        return list(pairs), []
    rng = np.random.default_rng([seed, 7])
    held = {queries[i] for i in rng.choice(len(queries), size=n, replace=False)}
    train = [p for p in pairs if p.query not in held]
    if len(train) < 2:
        return list(pairs), []
    return train, [p for p in pairs if p.query in held]


def hold_out(pairs: Sequence[Pair], share: float, seed: int, corpus: Sequence[str], evalset: Optional[EvalSet] = None,
             max_queries: int = 500) -> tuple[list[Pair], list[Pair], Optional["Validation"]]:
    """(training pairs, validation pairs, their :class:`Validation` or None): :func:`split_validation`
    that never draws a test query of ``evalset``, scored against ``corpus`` (never a test document).
    ``run`` and ``adapt`` decide on this split alike.

    >>> ps = [Pair(f"q{i % 10}", f"d{i}") for i in range(20)]
    >>> fit, val, v = hold_out(ps, 0.2, 0, corpus=[f"d{i}" for i in range(20)])
    >>> len(fit), len(val), len(v.evalset.queries)
    (16, 4, 2)
    """
    fit, val = split_validation(pairs, share, max_queries, seed,
                                avoid=set(evalset.queries.values()) if evalset is not None else ())
    return fit, val, (Validation(list(val), list(corpus), seed=seed) if val else None)


@dataclass
class Validation:
    """nDCG@10 of a model on held-out training queries; ``distractors`` are other documents
    (e.g. the mining corpus), of which a seeded sample of at most ``max_docs`` is kept.

    >>> from fastembed_tune.embed.model import EmbeddingModel
    >>> v = Validation([Pair("cat", "a feline"), Pair("car", "a motor vehicle")], ["a dog", "a boat"])
    >>> len(v.evalset.corpus), 0.0 <= v.score(EmbeddingModel.load()) <= 1.0
    (4, True)
    """
    pairs: list[Pair]
    distractors: Sequence[str] = ()
    max_docs: int = 1000
    seed: int = 0
    evalset: EvalSet = field(init=False)

    def __post_init__(self):
        positives = set(p.positive for p in self.pairs)
        others = list(dict.fromkeys(t for t in self.distractors if t not in positives))
        room = max(0, self.max_docs - len(positives))
        if len(others) > room:
            keep = np.sort(np.random.default_rng([self.seed, 8]).choice(len(others), size=room, replace=False))
            others = [others[i] for i in keep]
        corpus = {f"v{i}": t for i, t in enumerate(others)}
        self.evalset = pairs_to_evalset(self.pairs, corpus, add_missing_positives=True)

    def score(self, model, batch_size: int = 64) -> float:
        """nDCG@10 of ``model`` (anything with ``encode``), in eval mode; its train/eval mode is restored."""
        from fastembed_tune.evaluation.metrics import evaluate

        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            return float(evaluate(model, self.evalset, batch_size=batch_size)["metrics"]["ndcg@10"])
        finally:
            if was_training:
                model.train()


@dataclass
class BestTracker:
    """Which validated step ships, and when to stop. A later evaluation within ``tolerance`` of the
    best score so far takes the best one's place: a later step has seen more data at a lower
    learning rate, and a validation split of a few hundred queries cannot tell apart differences
    that small (a step picked for a validation score barely above the last one's can score worse on
    the test set; docs/benchmarks.md). ``should_stop`` after ``patience`` evaluations in a row below ``best - tolerance``
    (``patience`` None: never).

    >>> t = BestTracker(patience=2, tolerance=0.01)
    >>> [t.update(s, step) for step, s in enumerate([0.30, 0.40, 0.395, 0.37, 0.36])]
    [True, True, True, False, False]
    >>> t.best, t.best_step, t.should_stop
    (0.4, 2, True)
    """
    patience: Optional[int] = 2
    tolerance: float = 0.01
    best: float = float("-inf")
    best_step: int = -1
    since_best: int = 0
    curve: list = field(default_factory=list)

    def update(self, score: float, step: int) -> bool:
        """Record ``score`` at ``step``; True when this step is now the one to ship."""
        self.curve.append({"step": step, "ndcg@10": score})
        if score >= self.best - self.tolerance:
            self.best, self.best_step, self.since_best = max(self.best, score), step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best, "curve": self.curve}

    def load(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.since_best, self.curve = state["since_best"], list(state["curve"])
