"""``fastembed-tune run``: base evaluation -> mining -> training -> evaluation -> report.

It only chains the stage functions (evaluate, mine_hard_negatives, train, distill, export_onnx,
write_report); each is also its own subcommand and behaves here as it does alone. The stages share
embeddings through an :class:`~fastembed_tune.embed.store.EmbeddingCache` per model: the base model's
corpus rows serve its evaluation and mining, the fine-tuned model's serve its evaluation and the
distillation targets.
"""
from __future__ import annotations

import json
import os
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastembed_tune.core.atomic import check_output, output_lock
from fastembed_tune.core.cpu import EXACT_INT8_DOT, cpu_features, float_precision, has_any
from fastembed_tune.core.errors import NoSignificantGain, UserError
from fastembed_tune.data.bundled import guard_paths, sample_paths
from fastembed_tune.data.readers import data_report, load_eval, read_pairs
from fastembed_tune.embed.layout import INT8_FILE, OV_INT8_FILE
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.store import EmbeddingCache
from fastembed_tune.evaluation.gate import compare, describe, mean_ci, significant_gain
from fastembed_tune.evaluation.metrics import evaluate, format_table, write_report
from fastembed_tune.export.onnx import export_onnx, remove_openvino_int8
from fastembed_tune.export.openvino_int8 import nncf_available
from fastembed_tune.mining.common import format_summary
from fastembed_tune.mining.exact import (
    leakfree_corpus,
    mine_hard_negatives,
    negatives_warning,
    write_pairs_jsonl,
)
from fastembed_tune.training.distill import distill, distillation_texts
from fastembed_tune.training.forgetting import choose_alpha, relative_forgetting
from fastembed_tune.training.loop import use_bf16
from fastembed_tune.training.train import TrainConfig, train
from fastembed_tune.training.validation import Validation, split_validation

OV_INT8_LABEL = "OpenVINO int8"
SHIP_RATIO = 0.95  # an export ships when it keeps this share of the fine-tuned model's validation nDCG@10


@dataclass
class RunConfig:
    """The settings of one ``run`` (see :func:`run_pipeline`; the CLI flags of ``fastembed-tune run``).

    >>> RunConfig("runs/x").num_negatives, RunConfig("runs/x").max_ratio
    (1, 0.95)
    """
    output_dir: str
    model: Optional[str] = None
    train_path: Optional[str] = None
    test_path: Optional[str] = None
    corpus_path: Optional[str] = None
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 2e-4
    num_negatives: int = 1
    max_ratio: Optional[float] = 0.95
    skip_top: int = 0
    max_seq_length: Optional[int] = 128
    train_max_seq_length: Optional[int] = 64
    symmetric: bool = False
    seed: int = 42
    distill: bool = True
    distill_layers: Optional[str] = None
    distill_epochs: int = 1
    distill_lr: float = 1e-3
    distill_kl_weight: float = 0.0
    export: bool = True
    openvino_int8: Optional[bool] = None  # also the NNCF int8 OpenVINO IR; None: where it pays (openvino_int8_pays)
    bf16: Optional[bool] = None
    show_progress_bar: bool = True
    gate: bool = True  # raise NoSignificantGain (exit 3) unless fine-tuned beats base significantly
    validation_share: float = 0.1
    eval_every: Optional[int] = None
    patience: Optional[int] = 2
    guard: bool = True  # report base vs fine-tuned on the general-domain guard set
    max_forgetting: Optional[float] = 0.03  # relative guard loss allowed; else interpolate with the base (None: off)


class StageClock:
    """Wall seconds by stage, in the order the stages first ran (a stage timed twice adds up).

    >>> clock = StageClock()
    >>> with clock("mining"):
    ...     pass
    >>> list(clock.seconds), clock.line().startswith("- time by stage: mining 0 s")
    (['mining'], True)
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def line(self) -> str:
        """The report's line: every stage and its seconds."""
        return "- time by stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())


def run_pipeline(output_dir: str, log=print, **settings) -> dict:
    """Run the whole pipeline on (train pairs, test pairs or BEIR folder, corpus) and write
    ``output_dir/{report.md, metrics.json, metrics.png, mined.jsonl, train/model, ...}``.
    ``settings`` are the fields of :class:`RunConfig`: ``max_seq_length`` truncates texts for
    embedding (evaluation, mining) and ``train_max_seq_length`` for training (cheaper steps; the
    saved model keeps its own). Then (when ``distill``) the fine-tuned model is distilled into a
    layer-pruned student (``output_dir/student/model``) keeping ``distill_layers`` (default: half
    of them from first to last, [0, 2, 5] of MiniLM's 6), trained on the training split's queries and
    positives and on every corpus document (unlabeled text: what the deployment searches), never on
    a validation or test query; and (when ``export``) the student is exported to ONNX
    fp32 + int8 (``output_dir/onnx``); each adds rows to the report, evaluated on the same held-out
    queries. The defaults fit a 2-core CPU machine in under 10 minutes on the built-in sample.

    Example (the built-in sample; takes minutes, so not run as a doctest):
        >>> run_pipeline("runs/sample")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    c = RunConfig(output_dir, **settings)
    if c.train_path is None and c.test_path is None:
        paths = sample_paths()
        c.train_path, c.test_path, c.corpus_path = paths["train"], paths["test"], c.corpus_path or paths["corpus"]
    if c.train_path is None or c.test_path is None:
        raise UserError("give both --train and --test (or neither, for the built-in sample)")
    out = check_output(output_dir, "dir")
    with output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        return _run(c, out, log, t_start)


def _run(c: RunConfig, out: Path, log, t_start: float) -> dict:
    """The stages, in order, once the output folder is locked."""
    clock = StageClock()
    train_pairs, evalset, drep = _load_data(c, log)
    base_model, base, own_len = _embedder(c.model, c.max_seq_length, c.bf16)
    with clock("base evaluation"):
        m_base = evaluate(base, evalset, show_progress_bar=c.show_progress_bar)
    log(f"base nDCG@10 = {m_base['metrics']['ndcg@10']:.4f}")
    guard = _guard_set() if c.guard else None
    with clock("guard"):
        guard_base = evaluate(base, guard) if guard else None  # now: training changes base_model in place

    corpus = leakfree_corpus(evalset)  # never a test document: mining, validation, distillation, calibration
    with clock("mining"):
        mined = mine_hard_negatives(train_pairs, base, corpus=corpus,
                                    num_negatives=max(1, c.num_negatives), skip_top=c.skip_top,
                                    max_ratio=c.max_ratio, show_progress_bar=c.show_progress_bar)
    _check_mining(c, mined.summary, len(train_pairs), log)
    write_pairs_jsonl(mined.pairs, str(out / "mined.jsonl"))

    base_model.max_seq_length = own_len  # what the saved fine-tuned model will carry
    fit, val_pairs = split_validation(mined.pairs if c.num_negatives > 0 else train_pairs, c.validation_share, 500,
                                      c.seed, avoid=set(evalset.queries.values()))
    with clock("training (with its validations)"):
        tsum = train(fit, TrainConfig(
            output_dir=str(out / "train"), epochs=c.epochs, max_steps=c.max_steps, batch_size=c.batch_size, lr=c.lr,
            num_negatives=c.num_negatives, seed=c.seed, max_seq_length=c.train_max_seq_length, symmetric=c.symmetric,
            bf16=c.bf16, show_progress_bar=c.show_progress_bar, validation_pairs=val_pairs,
            validation_corpus=corpus, eval_every=c.eval_every, patience=c.patience), model=base_model)

    _, tuned, _ = _embedder(tsum["output"], c.max_seq_length, c.bf16)
    tuned_dir = tsum["output"]
    with clock("fine-tuned evaluation"):
        m_tuned = evaluate(tuned, evalset, show_progress_bar=c.show_progress_bar)
    log(f"fine-tuned nDCG@10 = {m_tuned['metrics']['ndcg@10']:.4f}")
    rows = [("base", m_base["metrics"]), ("fine-tuned", m_tuned["metrics"])]
    result = {"base": m_base, "fine_tuned": m_tuned, "train": tsum, "mining": mined.summary,
              "comparisons": {"fine-tuned vs base": compare(_ndcg(m_base), _ndcg(m_tuned), seed=c.seed)}}
    validation = Validation(list(val_pairs), corpus, seed=c.seed) if val_pairs else None
    guard_lines = []
    if guard:
        with clock("guard"):
            m_gt = evaluate(tuned, guard)
        if c.max_forgetting is not None:
            with clock("forgetting bound"):
                merged = _keep_forgetting(c, out, tuned, guard, guard_base, m_gt, validation, own_len, result,
                                          log)
            if merged is not None:  # the interpolated model takes the fine-tuned model's place from here on
                tuned, tuned_dir, m_gt = merged
                with clock("fine-tuned evaluation"):
                    m_raw, m_tuned = m_tuned, evaluate(tuned, evalset, show_progress_bar=c.show_progress_bar)
                log(f"fine-tuned, interpolated nDCG@10 = {m_tuned['metrics']['ndcg@10']:.4f}")
                rows[1:] = [("fine-tuned, raw (alpha 1)", m_raw["metrics"]), ("fine-tuned", m_tuned["metrics"])]
                result.update(fine_tuned=m_tuned, fine_tuned_raw=m_raw)
                result["comparisons"] = {
                    "fine-tuned vs base": compare(_ndcg(m_base), _ndcg(m_tuned), seed=c.seed),
                    "fine-tuned vs fine-tuned, raw": compare(_ndcg(m_raw), _ndcg(m_tuned), seed=c.seed)}
        guard_lines = _guard(c, guard, guard_base, m_gt, result, log)
    lines = guard_lines + _artifact_stages(c, out, fit, val_pairs, evalset, corpus, tuned, tuned_dir,
                                           m_tuned, rows, result, log, validation, clock)
    lines = [f"- {name}, nDCG@10: {describe(cmp)}" for name, cmp in result["comparisons"].items()] + lines
    lines.append("- embeddings computed (texts run through the model) / served again from its cache: " + ", ".join(
        f"{name} {cache.embedded} / {cache.served}" for name, cache in (("base", base), ("fine-tuned", tuned))))
    result["embedded"] = {"base": [base.embedded, base.served], "fine-tuned": [tuned.embedded, tuned.served]}
    lines.append(clock.line())
    result["stages_s"] = {k: round(v, 1) for k, v in clock.seconds.items()}
    evaluations = {"base": m_base, "fine-tuned": m_tuned, **result.get("artifacts", {})}
    intervals = {label: {"ndcg@10": mean_ci(_ndcg(m), seed=c.seed)} for label, m in evaluations.items()}
    report = write_report(out, rows, "fastembed-tune: base vs fine-tuned",
                          _report_md(c, train_pairs, evalset, mined.summary, tsum, lines, drep, t_start),
                          comparisons=result["comparisons"], intervals=intervals,
                          extra={k: _public(result[k]) for k in ("guard", "ship", "stages_s") if k in result})
    log(format_table(rows))
    gain = result["comparisons"]["fine-tuned vs base"]
    b, t = m_base["metrics"]["ndcg@10"], m_tuned["metrics"]["ndcg@10"]
    verdict = ("a significant gain" if significant_gain(gain) else
               "a regression" if gain["diff"] < 0 else "not a significant gain")
    log(f"nDCG@10 on {len(evalset.qrels)} held-out queries: base {b:.4f} -> fine-tuned {t:.4f} "
        f"({t / b:.2f}x, {verdict}: 95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}, p = "
        f"{gain['p_value']:.4f}); report: {out / 'report.md'}" if b > 0 else
        f"nDCG@10: base {b:.4f} -> fine-tuned {t:.4f}; report: {out / 'report.md'}")
    result.update(report=report, seconds=time.perf_counter() - t_start)
    if not significant_gain(gain) and c.gate:
        raise NoSignificantGain(f"the fine-tuned model is {verdict} over the base on the {gain['n']} test queries "
                                f"(nDCG@10 {gain['diff']:+.4f}, 95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}, "
                                f"p = {gain['p_value']:.4f}); do not ship it. Everything is in {out / 'report.md'} "
                                f"(--allow-no-gain exits 0)")
    return result


def _guard_set():
    paths = guard_paths()
    return load_eval(paths["test"], paths["corpus"])


def _guard(c: RunConfig, guard, m_b: dict, m_t: dict, result: dict, log) -> list[str]:
    """Base (``m_b``, evaluated before training) vs fine-tuned (``m_t``) on the general-domain guard
    set: what fine-tuning costs elsewhere."""
    cmp = compare(_ndcg(m_b), _ndcg(m_t), seed=c.seed)
    b, t = m_b["metrics"]["ndcg@10"], m_t["metrics"]["ndcg@10"]
    result.setdefault("guard", {}).update({"base": m_b["metrics"], "fine-tuned": m_t["metrics"],
                                           "forgetting": relative_forgetting(b, t) if b > 0 else None})
    result["comparisons"]["guard (WordNet): fine-tuned vs base"] = cmp
    log(f"guard (general English, WordNet) nDCG@10: base {b:.4f} -> fine-tuned {t:.4f}")
    return [f"- forgetting guard (general-English word -> definition, WordNet, {cmp['n']} queries, not the test "
            f"set's domain): nDCG@10 base {b:.4f} -> fine-tuned {t:.4f}"
            + (f" ({(t - b) / b:+.1%})" if b > 0 else "")] + result["guard"].get("lines", [])


def _keep_forgetting(c: RunConfig, out: Path, tuned, guard, m_gb: dict, m_gt: dict, validation, own_len: int,
                     result: dict, log) -> Optional[tuple]:
    """When the fine-tuned model forgets more than ``c.max_forgetting`` of the base's guard nDCG@10,
    interpolate its weights with the base model's (:func:`~fastembed_tune.training.forgetting.choose_alpha`:
    the ratio is chosen on the validation split within the bound), save the interpolated model to
    ``out/interpolated`` and return ``(its EmbeddingCache, its directory, its guard evaluation)``;
    ``None`` when the fine-tuned model keeps the bound as it is."""
    before, after = m_gb["metrics"]["ndcg@10"], m_gt["metrics"]["ndcg@10"]
    info = {"max_forgetting": c.max_forgetting, "forgetting_raw": relative_forgetting(before, after)}
    result.setdefault("guard", {})["interpolation"] = info
    t0 = time.perf_counter()
    evaluations: dict = {}

    def guard_score(model) -> float:
        evaluations[id(model)] = (weakref.ref(model), evaluate(model, guard))
        return evaluations[id(model)][1]["metrics"]["ndcg@10"]

    pick = choose_alpha(lambda: _embedder(c.model, c.max_seq_length, c.bf16)[0], tuned.model, guard_score,
                        validation.score if validation else (lambda model: 0.0), before, after, c.max_forgetting)
    merged = pick.pop("model")
    if pick["alpha"] == 1.0 and pick["met"]:
        info["alpha"] = 1.0
        result["guard"]["lines"] = [f"- --max-forgetting {c.max_forgetting:.0%}: the fine-tuned model forgets "
                                    f"{info['forgetting_raw']:+.1%} on the guard, within the bound; no interpolation"]
        return None
    info.update({k: v for k, v in pick.items()}, seconds=time.perf_counter() - t0)
    tried = ", ".join(f"{t['alpha']:.1f}: guard {-t['forgetting']:+.1%}"
                      + (f", validation {t['validation']:.4f}" if t["validation"] is not None else "")
                      for t in pick["tried"])
    log(f"the fine-tuned model forgets {info['forgetting_raw']:.1%} of the guard's nDCG@10 (--max-forgetting "
        f"{c.max_forgetting:.0%}): interpolated with the base model's weights, alpha {pick['alpha']:.1f} "
        f"(guard {-pick['forgetting']:+.1%}), {info['seconds']:.0f} s")
    if not pick["met"]:
        log(f"warning: no interpolation ratio tried keeps the guard's forgetting within {c.max_forgetting:.0%}; "
            f"keeping the one that forgets least (alpha {pick['alpha']:.1f}, {pick['forgetting']:.1%})")
    result["guard"]["lines"] = [
        f"- --max-forgetting {c.max_forgetting:.0%}: the raw fine-tuned model forgets {info['forgetting_raw']:.1%} "
        f"on the guard; its weights were interpolated with the base model's, alpha (share of the fine-tuned "
        f"weights) chosen on the validation split among the ratios within the bound "
        f"({'met' if pick['met'] else 'NOT met: the least forgetting one is kept'}): **alpha {pick['alpha']:.1f}**, "
        f"{info['seconds']:.0f} s; tried {tried}"]
    if pick["alpha"] == 1.0:
        return None
    merged.max_seq_length = own_len
    merged.save(out / "interpolated")
    merged.max_seq_length = tuned.model.max_seq_length
    ref, m_g = evaluations.get(id(merged), (None, None))
    if ref is None or ref() is not merged:  # ids of collected models are reused
        m_g = evaluate(merged, guard)
    result["guard"]["fine-tuned, raw"] = m_gt["metrics"]
    return EmbeddingCache(merged), str(out / "interpolated"), m_g


def _public(d: dict) -> dict:
    """``d`` without its report lines (metrics.json holds figures; report.md the sentences)."""
    return {k: v for k, v in d.items() if k != "lines"}


def _ndcg(evaluation: dict) -> list[float]:
    return evaluation["per_query"]["ndcg@10"]


def _load_data(c: RunConfig, log) -> tuple:
    """(training pairs, evaluation set, data report), with the overlap warning."""
    train_pairs = read_pairs(c.train_path)
    evalset = load_eval(c.test_path, c.corpus_path)
    test_pairs = read_pairs(c.test_path) if not os.path.isdir(c.test_path) else []
    drep = data_report(train_pairs, test_pairs or None)
    log(f"data: {len(train_pairs)} training pairs, {len(evalset.qrels)} test queries, "
        f"{len(evalset.corpus)} corpus documents")
    if drep.get("overlapping_queries"):
        log(f"warning: {drep['overlapping_queries']} test queries also appear in the training data")
    return train_pairs, evalset, drep


def _embedder(path: Optional[str], max_seq_length: Optional[int], bf16: Optional[bool] = False) -> tuple:
    """(the model, an EmbeddingCache of it embedding at ``min(its own, max_seq_length)`` tokens,
    under bf16 autocast when :func:`~fastembed_tune.training.loop.use_bf16` says so for ``bf16``; the
    model's own max_seq_length)."""
    model = EmbeddingModel.load(path)
    model.bf16 = use_bf16(model.device, bf16)
    own = model.max_seq_length
    if max_seq_length:
        model.max_seq_length = min(own, max_seq_length)
    return model, EmbeddingCache(model), own


def _check_mining(c: RunConfig, summary: dict, n_pairs: int, log) -> None:
    """Log the mining summary; stop when no pair got a negative, warn when some got fewer."""

    log(format_summary(summary))
    if c.num_negatives > 0 and summary["negatives_mined"] == 0:
        raise UserError(f"mining found no negative for any of the {n_pairs} training pairs (corpus of "
                        f"{summary['corpus_size']} documents, --max-ratio {c.max_ratio}); give a bigger "
                        f"--corpus, raise --max-ratio, or train without hard negatives (--num-negatives 0)")
    warning = negatives_warning(summary)
    if warning:
        print(warning, file=sys.stderr)


def _artifact_stages(c: RunConfig, out: Path, fit_pairs, val_pairs, evalset, corpus: list[str], tuned,
                     tuned_dir: str, m_tuned: dict, rows: list, result: dict, log, validation=None,
                     clock: Optional[StageClock] = None) -> list[str]:
    """Export the fine-tuned model (``onnx/``: fp32 + int8), distil it into a student on the training
    split's texts (``fit_pairs``: never a validation or test query) and every corpus document (no
    query, no relevance label: the teacher's vectors of the texts a deployment searches; on the
    sample this took the 4-layer student from 0.895x to 0.927x the teacher's test nDCG@10) and export that
    (``student/onnx/``), evaluate every artifact on the test set against the fine-tuned model, and
    choose the one to ship on the validation split (:func:`_choose`); returns the report's lines."""
    clock = clock or StageClock()
    lines: list[str] = []
    artifacts: dict = {}  # label -> (embedder, path)
    calibration = corpus or distillation_texts(fit_pairs, corpus)  # a corpus of test documents only: training text
    if c.export:
        with clock("ONNX export"):
            artifacts.update(_export(out / "onnx", tuned_dir, "fine-tuned", calibration, result, lines,
                                     c.openvino_int8))
    if c.distill:
        with clock("distillation"):
            docs = list(dict.fromkeys(evalset.corpus.values()))
            held = set(evalset.queries.values()) | {p.query for p in val_pairs}  # a document may spell one
            texts = [t for t in distillation_texts(fit_pairs, docs) if t not in held]
            dsum = distill(tuned_dir, texts, out / "student", layers=c.distill_layers,
                           epochs=c.distill_epochs, lr=c.distill_lr, kl_weight=c.distill_kl_weight, seed=c.seed,
                           max_seq_length=tuned.model.max_seq_length, show_progress_bar=c.show_progress_bar,
                           precomputed=tuned, bf16=c.bf16)
        result["distill"] = dsum
        n = dsum["student_num_layers"]
        name = f"student ({n} layer{'s' if n != 1 else ''})"
        lines.append(f"- distillation: layers {dsum['student_layers']} of {dsum['teacher_num_layers']}, "
                     f"{dsum['texts']} texts (training queries and positives, every corpus document), "
                     f"{dsum['steps']} steps, lr {c.distill_lr}, {dsum['seconds']:.0f} s")
        if c.export:
            with clock("ONNX export"):
                artifacts.update(_export(out / "student" / "onnx", dsum["output"], name, calibration, result,
                                         lines, c.openvino_int8))
        else:
            artifacts[name] = (_embedder(dsum["output"], c.max_seq_length, c.bf16)[1], Path(dsum["output"]))
    ndcg = {}
    for label, (embedder, _) in artifacts.items():
        if label == "fine-tuned, ONNX fp32":  # the PyTorch model itself (parity >= 0.9999): its row stands
            continue
        with clock("artifact evaluations"):
            m_a = evaluate(embedder, evalset, show_progress_bar=c.show_progress_bar)
        result["comparisons"][f"{label} vs fine-tuned"] = compare(_ndcg(m_tuned), _ndcg(m_a), seed=c.seed)
        rows.append((label, m_a["metrics"]))
        result.setdefault("artifacts", {})[label] = m_a
        ndcg[label] = m_a["metrics"]["ndcg@10"]
        log(f"{label} nDCG@10 = {ndcg[label]:.4f}")
    if m_tuned["metrics"]["ndcg@10"] > 0 and ndcg:
        lines.append("- vs the fine-tuned model (PyTorch), nDCG@10: " + ", ".join(
            f"{label} {v / m_tuned['metrics']['ndcg@10']:.2f}x" for label, v in ndcg.items()))
    if artifacts:
        with clock("choosing the artifact (validation)"):
            ir = {label: a for label, a in artifacts.items() if label.endswith(OV_INT8_LABEL)}
            lines.append(_choose(c, {k: a for k, a in artifacts.items() if k not in ir}, tuned, tuned_dir,
                                 validation, result))
            lines.extend(_check_openvino_int8(ir, tuned, validation, result))
    return lines


def _export(onnx_dir: Path, model_dir: str, name: str, corpus: list[str], result: dict,
            lines: list[str], openvino_int8: Optional[bool] = None) -> dict:
    """Export one model (fp32 + int8 calibrated on the user's corpus, never a test document, and
    where it pays the OpenVINO int8 IR: ``openvino_int8`` None means :func:`openvino_int8_pays`);
    ``{label: (embedder, path)}`` for its graphs, and a report line. An IR below its parity gates is
    left out (the rest of the export stands) and the report says why."""
    t0 = time.perf_counter()
    ov = openvino_int8_pays() if openvino_int8 is None else openvino_int8
    info = export_onnx(model_dir, onnx_dir, quantize="int8", calibration_texts=corpus, openvino_int8=ov,
                       openvino_int8_optional=True)
    note = f"; no OpenVINO int8 IR ({info['openvino_int8_refused']})" if "openvino_int8_refused" in info else ""
    result.setdefault("exports", {})[name] = info
    par = info["parity"]
    irs = f", OpenVINO int8 {par['openvino_int8']['min_cosine']:.5f}" if "openvino_int8" in par else ""
    lines.append(f"- ONNX export of the {name} model: `{onnx_dir}`, min cosine to PyTorch fp32 "
                 f"{par['fp32']['min_cosine']:.5f}, int8 {par['int8']['min_cosine']:.5f}{irs}; "
                 f"{time.perf_counter() - t0:.0f} s{note}")
    out = {f"{name}, ONNX fp32": (OnnxEmbedder(onnx_dir), onnx_dir),
           f"{name}, ONNX int8": (OnnxEmbedder(onnx_dir / INT8_FILE), onnx_dir / INT8_FILE)}
    if "openvino_int8" in par:
        ir = onnx_dir / OV_INT8_FILE
        out[f"{name}, {OV_INT8_LABEL}"] = (OnnxEmbedder(ir, engine="openvino", precision=float_precision()), ir)
    return out


def openvino_int8_pays() -> bool:
    """Whether ``run`` writes the OpenVINO int8 IR by default: the CPU has int8 dot products (VNNI
    or AMX-INT8) and ``openvino`` + ``nncf`` are installed. Measured (MiniLM, 2 threads, batch 64):
    1.43x OpenVINO bf16 on an AMD Zen 4 (VNNI), about 1.05x on an Intel Xeon with AMX, 0.55-0.60x
    OpenVINO f32 on an AVX2-only EPYC; ``serve``/``embed --precision auto`` measure it again anyway.

    >>> isinstance(openvino_int8_pays(), bool)
    True
    """
    return has_any(EXACT_INT8_DOT, cpu_features()) and nncf_available()


def _check_openvino_int8(irs: dict, tuned, validation: Optional[Validation], result: dict) -> list[str]:
    """Keep an OpenVINO int8 IR only where it keeps >= SHIP_RATIO of the fine-tuned model's
    validation nDCG@10 (it passed cosine gates at export; this is the retrieval check): otherwise its
    files are removed, so that ``serve --precision auto`` cannot pick it. Returns report lines."""
    lines = []
    if not irs or validation is None:
        return lines
    teacher = result.get("ship", {}).get("validation_fine_tuned")
    teacher = validation.score(tuned) if teacher is None else teacher
    for label, (embedder, path) in irs.items():
        score = validation.score(embedder)
        keep = teacher <= 0 or score >= SHIP_RATIO * teacher
        result.setdefault("openvino_int8", {})[label] = {"validation": score, "kept": keep}
        if keep:
            lines.append(f"- {label} (`{path}`) kept: validation nDCG@10 {score:.4f} = "
                         f"{score / max(teacher, 1e-12):.2f}x the fine-tuned model's; `serve --precision auto` "
                         f"may run it where it measures fastest")
        else:
            remove_openvino_int8(path.parent.parent, 
                                 f"validation nDCG@10 {score:.4f} < {SHIP_RATIO}x the fine-tuned model's {teacher:.4f}")
            lines.append(f"- {label} removed: validation nDCG@10 {score:.4f} < {SHIP_RATIO}x the fine-tuned "
                         f"model's {teacher:.4f}")
    return lines


def _choose(c: RunConfig, artifacts: dict, tuned, tuned_dir: str, validation: Optional[Validation],
            result: dict) -> str:
    """The artifact to ship, decided on the validation split (never the test set): the smallest and
    fastest that keeps >= SHIP_RATIO of the fine-tuned model's validation nDCG@10, tried in order
    student int8, student fp32, fine-tuned int8, fine-tuned fp32; else the fine-tuned model itself."""
    order = sorted(artifacts, key=lambda label: (not label.startswith("student"), "int8" not in label))
    if validation is None:
        pick = next((a for a in order if a.startswith("fine-tuned")), order[-1])
        result["ship"] = {"artifact": pick, "path": str(artifacts[pick][1]), "why": "no validation split"}
        return f"- **ship: {pick}** (`{artifacts[pick][1]}`): no validation split to compare on, so not a student"
    v = validation
    teacher = v.score(tuned)
    scores = {}
    for label in order:
        scores[label] = v.score(artifacts[label][0])
        if teacher <= 0 or scores[label] >= SHIP_RATIO * teacher:
            why = f"validation nDCG@10 {scores[label]:.4f} = {scores[label] / max(teacher, 1e-12):.2f}x the " \
                  f"fine-tuned model's {teacher:.4f} (>= {SHIP_RATIO}x)"
            result["ship"] = {"artifact": label, "path": str(artifacts[label][1]), "why": why, "validation": scores,
                              "validation_fine_tuned": teacher}
            return f"- **ship: {label}** (`{artifacts[label][1]}`): {why}; smaller or faster ones kept less"
    result["ship"] = {"artifact": "fine-tuned", "path": tuned_dir, "validation": scores,
                      "validation_fine_tuned": teacher, "why": "no export kept the gain on validation"}
    return (f"- **ship: the fine-tuned model** (`{tuned_dir}`): no export kept {SHIP_RATIO}x its validation "
            f"nDCG@10 {teacher:.4f} (" + ", ".join(f"{k} {x:.4f}" for k, x in scores.items()) + ")")


def _report_md(c: RunConfig, train_pairs, evalset, mining: dict, tsum: dict, lines: list[str], drep: dict,
               t_start: float) -> str:
    """The "Run" and "Data" sections of report.md."""
    return "\n".join([
        "## Run", "", f"- base model: `{c.model or 'built-in all-MiniLM-L6-v2'}`",
        f"- training pairs: {len(train_pairs)} (`{c.train_path}`); test queries: {len(evalset.qrels)}; "
        f"corpus: {len(evalset.corpus)} documents",
        f"- hard negatives: {c.num_negatives} per pair, max_ratio {c.max_ratio}, skip_top {c.skip_top}; "
        f"{mining['candidates_dropped_as_false_negatives']} likely false negatives dropped",
        f"- training: {tsum['steps']} steps, batch {c.batch_size}, lr {c.lr}, max_seq_length "
        f"{c.train_max_seq_length}, {tsum['pairs_per_s']} pairs/s, {tsum['seconds']:.0f} s, "
        f"{'bf16 autocast' if tsum['bf16'] else 'fp32'}; evaluation max_seq_length {c.max_seq_length} "
        f"({'bf16 autocast' if tsum['bf16'] else 'fp32'} for the PyTorch models; ONNX graphs as exported)",
        *_validation_lines(tsum), *lines, f"- total wall time: {time.perf_counter() - t_start:.0f} s", "",
        "## Data", "", "```", json.dumps(drep, indent=2), "```"])


def _validation_lines(tsum: dict) -> list[str]:
    """What the validation split decided (best step, early stop), for the report."""
    v = tsum.get("validation")
    if not v:
        return ["- validation: none (the whole training set was trained on; the last step ships)"]
    curve = ", ".join(f"{p['step']}: {p['ndcg@10']:.4f}" for p in v["curve"])
    return [f"- validation: {v['queries']} training queries held out ({v['docs']} documents), nDCG@10 by step "
            f"{curve}; the model of step {v['best_step']} ships"
            + (" (stopped early)" if v["stopped_early"] else "")]
