"""The first stages of ``run``, each a function returning what it made: the data, the base
model's evaluation, the mined hard negatives, the fine-tuned model and its evaluation.

The base model's :class:`~fastembed_tune.embed.store.EmbeddingCache` serves its evaluation and
mining; the fine-tuned model's serves its evaluation and, later, the distillation targets.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.bundled import guard_paths
from fastembed_tune.data.readers import EvalSet, Pair, data_report, load_eval, read_pairs
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.embed.store import EmbeddingCache
from fastembed_tune.evaluation.metrics import evaluate
from fastembed_tune.mining.common import format_summary
from fastembed_tune.mining.exact import leakfree_corpus, mine_hard_negatives, negatives_warning, write_pairs_jsonl
from fastembed_tune.run.config import RunConfig, StageClock
from fastembed_tune.training.loop import use_bf16
from fastembed_tune.training.train import TrainConfig, train
from fastembed_tune.training.validation import Validation, hold_out

__all__ = ["DataStage", "Loaded", "BaseEval", "Mining", "Training", "Tuned", "load_data", "load_model",
           "evaluate_base", "mine", "fine_tune", "evaluate_tuned", "ndcg_rows"]

Log = Callable[[str], None]


@dataclass
class DataStage:
    """The training pairs, the test set, the data report and the corpus that holds no test document
    (mining, validation, distillation and calibration draw on it)."""
    train_pairs: list[Pair]
    evalset: EvalSet
    report: dict
    corpus: list[str]


@dataclass
class Loaded:
    """A model, the cache it embeds through, and the max_seq_length it was saved with."""
    model: EmbeddingModel
    cache: EmbeddingCache
    own_max_seq_length: int


@dataclass
class BaseEval:
    """The base model on the test set and (with the guard) on the general-domain guard set."""
    evaluation: dict
    guard_set: Optional[EvalSet]
    guard: Optional[dict]


@dataclass
class Mining:
    """The training pairs with their mined hard negatives, and the mining summary."""
    pairs: list[Pair]
    summary: dict


@dataclass
class Training:
    """The fine-tuning summary and the split it was validated on (``validation`` None: no split)."""
    summary: dict
    fit: list[Pair]
    val_pairs: list[Pair]
    validation: Optional[Validation]


@dataclass
class Tuned:
    """The fine-tuned model as it goes on (its cache and directory) and its test evaluation;
    ``raw``: the fine-tuned model's own evaluation when an interpolated one took its place."""
    cache: EmbeddingCache
    directory: str
    evaluation: dict
    raw: Optional[dict] = None


def ndcg_rows(evaluation: dict) -> list[float]:
    """The per-query nDCG@10 of an :func:`~fastembed_tune.evaluation.metrics.evaluate` result.

    >>> ndcg_rows({"per_query": {"ndcg@10": [0.5, 1.0]}})
    [0.5, 1.0]
    """
    return evaluation["per_query"]["ndcg@10"]


def load_data(c: RunConfig, log: Log) -> DataStage:
    """The training pairs, the test set and the data report, with the overlap warning.

    >>> from fastembed_tune.data.bundled import sample_paths
    >>> p = sample_paths()
    >>> d = load_data(RunConfig("o", train_path=p["train"], test_path=p["test"], corpus_path=p["corpus"]),
    ...               lambda line: None)
    >>> len(d.train_pairs) > 0 and len(d.corpus) > 0
    True
    """
    train_pairs = read_pairs(c.train_path)
    evalset = load_eval(c.test_path, c.corpus_path)
    test_pairs = read_pairs(c.test_path) if not os.path.isdir(c.test_path) else []
    drep = data_report(train_pairs, test_pairs or None)
    log(f"data: {len(train_pairs)} training pairs, {len(evalset.qrels)} test queries, "
        f"{len(evalset.corpus)} corpus documents")
    if drep.get("overlapping_queries"):
        log(f"warning: {drep['overlapping_queries']} test queries also appear in the training data")
    return DataStage(train_pairs, evalset, drep, leakfree_corpus(evalset))


def load_model(path: Optional[str], max_seq_length: Optional[int], bf16: Optional[bool] = False) -> Loaded:
    """The model at ``path`` (None: the built-in one) embedding through a cache at
    ``min(its own, max_seq_length)`` tokens, under bf16 autocast where
    :func:`~fastembed_tune.training.loop.use_bf16` says so for ``bf16``.

    >>> m = load_model(None, 32)
    >>> m.model.max_seq_length, m.own_max_seq_length > 32
    (32, True)
    """
    model = EmbeddingModel.load(path)
    model.bf16 = use_bf16(model.device, bf16)
    own = model.max_seq_length
    if max_seq_length:
        model.max_seq_length = min(own, max_seq_length)
    return Loaded(model, EmbeddingCache(model), own)


def guard_set() -> EvalSet:
    """The general-domain guard set (WordNet: word -> definition) that measures forgetting."""
    paths = guard_paths()
    return load_eval(paths["test"], paths["corpus"])


def evaluate_base(c: RunConfig, base: Loaded, data: DataStage, clock: StageClock, log: Log) -> BaseEval:
    """The base model on the test set, and on the guard set now: training changes it in place."""
    with clock("base evaluation"):
        m_base = evaluate(base.cache, data.evalset, show_progress_bar=c.show_progress_bar)
    log(f"base nDCG@10 = {m_base['metrics']['ndcg@10']:.4f}")
    guard = guard_set() if c.guard else None
    with clock("guard"):
        guard_base = evaluate(base.cache, guard) if guard else None
    return BaseEval(m_base, guard, guard_base)


def mine(c: RunConfig, data: DataStage, base: Loaded, out: Path, clock: StageClock, log: Log) -> Mining:
    """Hard negatives for the training pairs from the corpus (never a test document), written to
    ``out/mined.jsonl``; stops when no pair got one, warns when some got fewer."""
    with clock("mining"):
        mined = mine_hard_negatives(data.train_pairs, base.cache, corpus=data.corpus,
                                    num_negatives=max(1, c.num_negatives), skip_top=c.skip_top,
                                    max_ratio=c.max_ratio, show_progress_bar=c.show_progress_bar)
    summary = mined.summary
    log(format_summary(summary))
    if c.num_negatives > 0 and summary["negatives_mined"] == 0:
        raise UserError(f"mining found no negative for any of the {len(data.train_pairs)} training pairs (corpus of "
                        f"{summary['corpus_size']} documents, --max-ratio {c.max_ratio}); give a bigger "
                        f"--corpus, raise --max-ratio, or train without hard negatives (--num-negatives 0)")
    warning = negatives_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    write_pairs_jsonl(mined.pairs, str(out / "mined.jsonl"))
    return Mining(mined.pairs, summary)


def fine_tune(c: RunConfig, data: DataStage, mining: Mining, base: Loaded, out: Path, clock: StageClock) -> Training:
    """Fine-tune the base model (in place) on the training split, validated on held-out training
    queries (never a test query), saved to ``out/train/model`` at its own max_seq_length."""
    base.model.max_seq_length = base.own_max_seq_length  # what the saved fine-tuned model will carry
    fit, val_pairs, validation = hold_out(mining.pairs if c.num_negatives > 0 else data.train_pairs,
                                          c.validation_share, c.seed, data.corpus, data.evalset, max_queries=500)
    with clock("training (with its validations)"):
        summary = train(fit, TrainConfig(
            output_dir=str(out / "train"), epochs=c.epochs, max_steps=c.max_steps, batch_size=c.batch_size, lr=c.lr,
            num_negatives=c.num_negatives, seed=c.seed, max_seq_length=c.train_max_seq_length, symmetric=c.symmetric,
            bf16=c.bf16, show_progress_bar=c.show_progress_bar, validation_pairs=val_pairs,
            validation_corpus=data.corpus, eval_every=c.eval_every, patience=c.patience), model=base.model)
    return Training(summary, fit, val_pairs, validation)


def evaluate_tuned(c: RunConfig, training: Training, data: DataStage, clock: StageClock, log: Log) -> Tuned:
    """The saved fine-tuned model, loaded as the base was, on the test set."""
    tuned = load_model(training.summary["output"], c.max_seq_length, c.bf16)
    with clock("fine-tuned evaluation"):
        m_tuned = evaluate(tuned.cache, data.evalset, show_progress_bar=c.show_progress_bar)
    log(f"fine-tuned nDCG@10 = {m_tuned['metrics']['ndcg@10']:.4f}")
    return Tuned(tuned.cache, training.summary["output"], m_tuned)
