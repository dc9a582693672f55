"""The ``adapt`` command: training data -> cached frozen vectors -> adapter -> before/after report.

Every text the run needs (pairs, mining corpus, validation and test sets) is embedded once, through
the source's store; the adapter trains on those cached vectors and is judged on the test set
against the frozen vectors with the same report and gate as ``run`` (frozen vs adapted, with the
gate's paired confidence interval). The validation split is ``run``'s as well
(:func:`~fastembed_tune.training.validation.hold_out`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from fastembed_tune.adapt.adapter import Adapter, unit
from fastembed_tune.adapt.sources import Source
from fastembed_tune.adapt.training import AdapterConfig, train_adapter
from fastembed_tune.core.atomic import PathLike
from fastembed_tune.core.errors import UserError

if TYPE_CHECKING:
    from fastembed_tune.data.readers import EvalSet, Pair
    from fastembed_tune.training.validation import Validation


@dataclass
class _Inputs:
    """What ``adapt`` reads: the training pairs, split into ``fit`` and held-out ``val`` (with their
    :class:`~fastembed_tune.training.validation.Validation`), the mining corpus, the test set, and
    every distinct text among them in a fixed order."""
    pairs: list[Pair]
    fit: list[Pair]
    val: list[Pair]
    validation: Optional[Validation]
    corpus_texts: list[str]
    evalset: Optional[EvalSet]
    texts: list[str]


@dataclass
class _Vectors:
    """The unit vectors of every text of a run, how many the source embedded now, and in how long."""
    rows: np.ndarray
    row: dict[str, int]
    new: int
    seconds: float

    def of(self, texts: Any) -> np.ndarray:
        """The rows of ``texts``, in their order."""
        return self.rows[[self.row[t] for t in texts]]


def _mining_words(every: int) -> str:
    """How the report says when negatives were mined.

    >>> _mining_words(0), _mining_words(1), _mining_words(3)
    ('mined once, on the frozen vectors', 're-mined with the adapter every epoch', 're-mined with the adapter every 3 epochs')
    """
    if every == 0:
        return "mined once, on the frozen vectors"
    return "re-mined with the adapter every " + ("epoch" if every == 1 else f"{every} epochs")


def _read_inputs(pairs_path: PathLike, corpus_path: Optional[PathLike], test_path: Optional[PathLike],
                 cfg: AdapterConfig) -> _Inputs:
    """The pairs, the held-out split, the corpus (minus every test document) and the test set."""
    from fastembed_tune.data.readers import load_eval, read_corpus, read_pairs
    from fastembed_tune.mining.exact import leakfree_corpus
    from fastembed_tune.training.validation import hold_out

    pairs = read_pairs(pairs_path)
    evalset = load_eval(test_path, corpus_path) if test_path else None
    if evalset is not None:
        corpus_texts = leakfree_corpus(evalset)
    else:
        corpus_texts = list(read_corpus(corpus_path).values()) if corpus_path else []
    fit, val, validation = hold_out(pairs, cfg.validation_share, cfg.seed, corpus_texts, evalset)
    texts = [t for p in pairs for t in (p.query, p.positive, *p.negatives)] + list(corpus_texts)
    if validation is not None:
        texts += list(validation.evalset.corpus.values())
    if evalset is not None:
        texts += list(evalset.queries.values()) + list(evalset.corpus.values())
    return _Inputs(pairs, fit, val, validation, corpus_texts, evalset, list(dict.fromkeys(texts)))


def _embed_once(source: Source, texts: list[str], show_progress_bar: bool, log: Callable) -> _Vectors:
    """Every text through the source (its store embeds only what it has not seen), checked and
    L2-normalised."""
    t0 = time.perf_counter()
    before = getattr(source.encoder, "embedded", 0)
    V = source.encode(texts, show_progress_bar=show_progress_bar)
    new = getattr(source.encoder, "embedded", 0) - before
    embed_s = time.perf_counter() - t0
    log(f"vectors: {len(texts)} distinct texts from {source.description}: {new} embedded now, "
        f"{len(texts) - new} from the store ({embed_s:.1f} s)")
    if V.shape != (len(texts), source.dim) or not np.isfinite(V).all():
        raise UserError(f"{source.description}: returned vectors of shape {V.shape} (or NaN/Inf) for "
                        f"{len(texts)} texts of dim {source.dim}")
    zero = ~V.any(axis=1)
    if zero.any():
        i = int(np.argmax(zero))
        raise UserError(f"{source.description}: an all-zero vector for the text {texts[i][:40]!r}; it has no direction, "
                        f"so no cosine similarity")
    return _Vectors(unit(V), {t: i for i, t in enumerate(texts)}, new, embed_s)


def _sides(cfg: AdapterConfig) -> str:
    return f"{cfg.sides} side{'s' if cfg.sides == 'both' else ''}"


def _train(inputs: _Inputs, vecs: _Vectors, cfg: AdapterConfig, log: Callable) -> tuple[Adapter, dict]:
    """The adapter trained on the ``fit`` pairs, its epoch chosen on the held-out ones."""
    from fastembed_tune.evaluation.metrics import evaluate

    fit, row = inputs.fit, vecs.row
    docs = list(dict.fromkeys([*inputs.corpus_texts, *(p.positive for p in fit),
                               *(n for p in fit for n in p.negatives)]))
    score = None
    if inputs.validation is not None:
        ve = inputs.validation.evalset
        vq, vc = vecs.of(ve.queries.values()), vecs.of(ve.corpus.values())

        def score(a: Adapter) -> float:
            return evaluate(None, ve, query_embeddings=a.apply(vq), corpus_embeddings=a.apply(vc, "document"))[
                "metrics"]["ndcg@10"]
    given = [[row[n] for n in p.negatives] for p in fit] if any(p.negatives for p in fit) else None
    adapter, tsum = train_adapter(vecs.rows, np.array([row[p.query] for p in fit], np.int64),
                                  np.array([row[p.positive] for p in fit], np.int64),
                                  np.array([row[t] for t in docs], np.int64), cfg, score, given, log)
    log(f"adapter ({cfg.kind}, {_sides(cfg)}): {tsum['epochs_run']} epochs, "
        f"{tsum['steps']} steps on {len(fit)} pairs in {tsum['seconds']:.1f} s; best epoch {tsum['best_epoch']}"
        + (f" (validation nDCG@10 {tsum['validation_best']:.4f})" if tsum["validation_best"] is not None else ""))
    return adapter, tsum


def _run_lines(source: Source, inputs: _Inputs, vecs: _Vectors, cfg: AdapterConfig, tsum: dict,
               comparison: dict, t_start: float) -> list[str]:
    """The report's "Run" section: the comparison, the source, the adapter's training."""
    from fastembed_tune.evaluation.gate import describe

    n = len(inputs.texts)
    return [f"- adapted vs frozen, nDCG@10: {describe(comparison)}",
            f"- source: {source.description} ({source.dim}-d), frozen; {n} distinct texts, "
            f"{vecs.new} embedded by this run, the others read from the store",
            f"- adapter: {cfg.kind}, {_sides(cfg)}; {len(inputs.fit)} training "
            f"pairs, {len(inputs.val)} held out for validation; {tsum['epochs_run']} epochs, batch {cfg.batch_size}, "
            f"lr {cfg.lr}, {cfg.num_negatives} hard negatives a pair ({_mining_words(cfg.remine_every)})"
            f"{', weights averaged over epochs' if cfg.average and cfg.kind != 'lowrank' else ''}, "
            f"{tsum['seconds']:.1f} s; the adapter of epoch {tsum['best_epoch']} ships",
            f"- total wall time: {time.perf_counter() - t_start:.0f} s"]


def _evaluate_and_report(directory: PathLike, inputs: _Inputs, vecs: _Vectors, adapter: Adapter, source: Source,
                         cfg: AdapterConfig, tsum: dict, t_start: float, log: Callable) -> dict:
    """Frozen vs adapted on the test set: ``report.md`` / ``metrics.json`` / ``metrics.png`` written
    into ``directory``; the metrics and their paired comparison returned."""
    from fastembed_tune.evaluation.gate import compare, describe, mean_ci
    from fastembed_tune.evaluation.metrics import evaluate
    from fastembed_tune.evaluation.report import format_table, write_report

    evalset = inputs.evalset
    qv, cv = vecs.of(evalset.queries.values()), vecs.of(evalset.corpus.values())
    m_f = evaluate(None, evalset, query_embeddings=qv, corpus_embeddings=cv)
    m_a = evaluate(None, evalset, query_embeddings=adapter.apply(qv), corpus_embeddings=adapter.apply(cv, "document"))
    nd = lambda m: m["per_query"]["ndcg@10"]  # noqa: E731
    cmp = compare(nd(m_f), nd(m_a), seed=cfg.seed)
    rows = [("frozen", m_f["metrics"]), ("adapted", m_a["metrics"])]
    lines = _run_lines(source, inputs, vecs, cfg, tsum, cmp, t_start)
    write_report(directory, rows, "fastembed-tune adapt: frozen vs adapted", "## Run\n\n" + "\n".join(lines),
                 comparisons={"adapted vs frozen": cmp},
                 intervals={"frozen": {"ndcg@10": mean_ci(nd(m_f), seed=cfg.seed)},
                            "adapted": {"ndcg@10": mean_ci(nd(m_a), seed=cfg.seed)}},
                 extra={"adapter": {k: v for k, v in adapter.config.items() if k != "onnx"}})
    log(format_table(rows))
    b, a = m_f["metrics"]["ndcg@10"], m_a["metrics"]["ndcg@10"]
    log(f"nDCG@10 on {cmp['n']} test queries: frozen {b:.4f} -> adapted {a:.4f}"
        + (f" ({a / b:.2f}x)" if b > 0 else "") + f"; {describe(cmp)}")
    return {"frozen": m_f, "adapted": m_a, "comparison": cmp}


def adapt(output_dir: PathLike, pairs_path: PathLike, source: Source, corpus_path: Optional[PathLike] = None,
          test_path: Optional[PathLike] = None, cfg: Optional[AdapterConfig] = None, gate: bool = True,
          show_progress_bar: bool = True, log: Callable = print) -> dict:
    """Learn an adapter for ``source`` on the pairs of ``pairs_path`` and write it to ``output_dir``
    (adapter files; with ``test_path`` also ``report.md`` / ``metrics.json`` / ``metrics.png``,
    frozen vs adapted). Hard negatives and validation distractors come from ``corpus_path`` minus
    every test document; every text is embedded once through the source's store. Raises
    :class:`~fastembed_tune.core.errors.NoSignificantGain` (after writing everything) when ``gate`` and
    the adapted vectors are not significantly better than the frozen ones on the test set.

    Example (embeds the built-in sample with MiniLM: a minute, so not run as a doctest):
        >>> from fastembed_tune.adapt.sources import open_source                      # doctest: +SKIP
        >>> from fastembed_tune.data.bundled import sample_paths                          # doctest: +SKIP
        >>> p = sample_paths()                                                        # doctest: +SKIP
        >>> adapt("runs/adapter", p["train"], open_source("builtin"), p["corpus"], p["test"])  # doctest: +SKIP
    """
    from fastembed_tune.core.atomic import check_output, output_lock, replace_dir, temp_dir
    from fastembed_tune.evaluation.gate import enforce_gain

    t_start = time.perf_counter()
    cfg = cfg or AdapterConfig()
    out = check_output(output_dir, "dir")
    inputs = _read_inputs(pairs_path, corpus_path, test_path, cfg)
    with output_lock(out):
        vecs = _embed_once(source, inputs.texts, show_progress_bar, log)
        adapter, tsum = _train(inputs, vecs, cfg, log)
        adapter.config.update(source=source.info(), embed_seconds=vecs.seconds)
        tmp = temp_dir(out)
        adapter.save(tmp)
        result: dict = {"train": tsum, "source": source.info(), "texts": len(inputs.texts), "embedded_now": vecs.new,
                        "output": str(out)}
        if inputs.evalset is not None:
            result.update(_evaluate_and_report(tmp, inputs, vecs, adapter, source, cfg, tsum, t_start, log))
        replace_dir(tmp, out)
        log(f"wrote the adapter to {out}" + (f"; report: {out / 'report.md'}" if inputs.evalset is not None else ""))
    result["seconds"] = time.perf_counter() - t_start
    if inputs.evalset is not None and gate:
        enforce_gain(result["comparison"], "the adapter", "the frozen vectors", str(out / "report.md"))
    return result


def apply_to_file_vectors(adapter_dir: PathLike, vectors: np.ndarray, side: str = "query") -> np.ndarray:
    """What ``embed --adapter DIR`` does to the embedded rows: :meth:`Adapter.apply` of that adapter.

    >>> import tempfile; d = tempfile.mkdtemp(); Adapter.identity("mlp", 2, hidden=4).save(d)
    >>> apply_to_file_vectors(d, np.array([[0.0, 3.0]], np.float32)).tolist()
    [[0.0, 1.0]]
    """
    return Adapter(adapter_dir).apply(vectors, side)


__all__ = ["adapt", "apply_to_file_vectors"]
