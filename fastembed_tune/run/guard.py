"""What fine-tuning costs elsewhere: the base and the fine-tuned model on a general-domain guard set
(WordNet word -> definition), and, past ``--max-forgetting``, the fine-tuned weights interpolated
with the base's (:func:`~fastembed_tune.training.forgetting.choose_alpha`), the interpolated model
taking the fine-tuned model's place from then on.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from fastembed_tune.data.readers import EvalSet
from fastembed_tune.embed.store import EmbeddingCache
from fastembed_tune.evaluation.gate import compare
from fastembed_tune.evaluation.metrics import evaluate
from fastembed_tune.run.config import RunConfig, StageClock
from fastembed_tune.run.stages import BaseEval, Tuned, load_model, ndcg_rows
from fastembed_tune.training.forgetting import choose_alpha, relative_forgetting
from fastembed_tune.training.validation import Validation

__all__ = ["Forgetting", "Guard", "guard_stage", "keep_forgetting"]

Log = Callable[[str], None]


@dataclass
class Forgetting:
    """What ``--max-forgetting`` decided: ``interpolation`` (metrics.json's ``guard.interpolation``),
    the report's ``lines``, and, when the weights were interpolated, the interpolated model (its
    cache, directory and guard evaluation) and the raw fine-tuned model's guard metrics."""
    interpolation: dict
    lines: list[str]
    merged: Optional[tuple[EmbeddingCache, str, dict]] = None
    raw_guard: Optional[dict] = None


@dataclass
class Guard:
    """The guard set's verdict: base vs fine-tuned (the interpolated model where it took the place),
    their paired comparison, the report's lines, and what ``--max-forgetting`` decided."""
    base: dict
    tuned: dict
    comparison: dict
    lines: list[str]
    forgetting: Optional[Forgetting] = None
    interpolated: Optional[Tuned] = field(default=None, repr=False)

    def record(self, with_lines: bool = False) -> dict:
        """metrics.json's ``guard``: the interpolation (when bounded), the raw fine-tuned model's
        metrics (when interpolated), base, fine-tuned and the relative forgetting; ``with_lines``
        adds the forgetting bound's report lines (:func:`~fastembed_tune.run.pipeline.run_pipeline`
        returns them).

        >>> Guard({"ndcg@10": 0.5}, {"ndcg@10": 0.375}, {}, []).record()["forgetting"]
        0.25
        """
        out: dict = {}
        if self.forgetting is not None:
            out["interpolation"] = self.forgetting.interpolation
            if with_lines:
                out["lines"] = self.forgetting.lines
            if self.forgetting.raw_guard is not None:
                out["fine-tuned, raw"] = self.forgetting.raw_guard
        b, t = self.base["ndcg@10"], self.tuned["ndcg@10"]
        out["base"], out["fine-tuned"] = self.base, self.tuned
        out["forgetting"] = relative_forgetting(b, t) if b > 0 else None
        return out


def guard_stage(c: RunConfig, out: Path, base: BaseEval, tuned: Tuned, validation: Optional[Validation],
                own_len: int, data_evalset: EvalSet, clock: StageClock, log: Log) -> Guard:
    """The fine-tuned model on the guard set, the forgetting bound (an interpolated model replaces
    it, evaluated again on the test set: :attr:`Guard.interpolated`), and the comparison with the
    base model's guard evaluation made before training."""
    with clock("guard"):
        m_gt = evaluate(tuned.cache, base.guard_set)
    forgetting, interpolated = None, None
    if c.max_forgetting is not None:
        with clock("forgetting bound"):
            forgetting = keep_forgetting(c, out, tuned.cache, base.guard_set, base.guard, m_gt, validation, own_len,
                                         log)
        if forgetting.merged is not None:  # the interpolated model takes the fine-tuned model's place from here on
            cache, directory, m_gt = forgetting.merged
            with clock("fine-tuned evaluation"):
                m_tuned = evaluate(cache, data_evalset, show_progress_bar=c.show_progress_bar)
            log(f"fine-tuned, interpolated nDCG@10 = {m_tuned['metrics']['ndcg@10']:.4f}")
            interpolated = Tuned(cache, directory, m_tuned, raw=tuned.evaluation)
    cmp = compare(ndcg_rows(base.guard), ndcg_rows(m_gt), seed=c.seed)
    b, t = base.guard["metrics"]["ndcg@10"], m_gt["metrics"]["ndcg@10"]
    log(f"guard (general English, WordNet) nDCG@10: base {b:.4f} -> fine-tuned {t:.4f}")
    lines = [f"- forgetting guard (general-English word -> definition, WordNet, {cmp['n']} queries, not the test "
             f"set's domain): nDCG@10 base {b:.4f} -> fine-tuned {t:.4f}" + (f" ({(t - b) / b:+.1%})" if b > 0 else "")]
    lines += forgetting.lines if forgetting is not None else []
    return Guard(base.guard["metrics"], m_gt["metrics"], cmp, lines, forgetting, interpolated)


def keep_forgetting(c: RunConfig, out: Path, tuned: EmbeddingCache, guard: EvalSet, m_gb: dict, m_gt: dict,
                    validation: Optional[Validation], own_len: int, log: Log) -> Forgetting:
    """When the fine-tuned model forgets more than ``c.max_forgetting`` of the base's guard nDCG@10,
    interpolate its weights with the base model's (the ratio is chosen on the validation split within
    the bound) and save the interpolated model to ``out/interpolated``; :attr:`Forgetting.merged` is
    None when the fine-tuned model keeps the bound as it is."""
    before, after = m_gb["metrics"]["ndcg@10"], m_gt["metrics"]["ndcg@10"]
    info = {"max_forgetting": c.max_forgetting, "forgetting_raw": relative_forgetting(before, after)}
    t0 = time.perf_counter()
    evaluations: dict = {}

    def guard_score(model) -> float:
        evaluations[id(model)] = (weakref.ref(model), evaluate(model, guard))
        return evaluations[id(model)][1]["metrics"]["ndcg@10"]

    pick = choose_alpha(lambda: load_model(c.model, c.max_seq_length, c.bf16).model, tuned.model, guard_score,
                        validation.score if validation else (lambda model: 0.0), before, after, c.max_forgetting)
    merged = pick.pop("model")
    if pick["alpha"] == 1.0 and pick["met"]:
        info["alpha"] = 1.0
        return Forgetting(info, [f"- --max-forgetting {c.max_forgetting:.0%}: the fine-tuned model forgets "
                                 f"{info['forgetting_raw']:+.1%} on the guard, within the bound; no interpolation"])
    info.update({k: v for k, v in pick.items()}, seconds=time.perf_counter() - t0)
    lines = [_interpolation_line(c.max_forgetting, info, pick, log)]
    if pick["alpha"] == 1.0:
        return Forgetting(info, lines)
    merged.max_seq_length = own_len
    merged.save(out / "interpolated")
    merged.max_seq_length = tuned.model.max_seq_length
    ref, m_g = evaluations.get(id(merged), (None, None))
    if ref is None or ref() is not merged:  # ids of collected models are reused
        m_g = evaluate(merged, guard)
    return Forgetting(info, lines, (EmbeddingCache(merged), str(out / "interpolated"), m_g), m_gt["metrics"])


def _interpolation_line(max_forgetting: float, info: dict, pick: dict, log: Log) -> str:
    """Log what the interpolation chose (and warn when no ratio kept the bound); the report's line."""
    tried = ", ".join(f"{t['alpha']:.1f}: guard {-t['forgetting']:+.1%}"
                      + (f", validation {t['validation']:.4f}" if t["validation"] is not None else "")
                      for t in pick["tried"])
    log(f"the fine-tuned model forgets {info['forgetting_raw']:.1%} of the guard's nDCG@10 (--max-forgetting "
        f"{max_forgetting:.0%}): interpolated with the base model's weights, alpha {pick['alpha']:.1f} "
        f"(guard {-pick['forgetting']:+.1%}), {info['seconds']:.0f} s")
    if not pick["met"]:
        log(f"warning: no interpolation ratio tried keeps the guard's forgetting within {max_forgetting:.0%}; "
            f"keeping the one that forgets least (alpha {pick['alpha']:.1f}, {pick['forgetting']:.1%})")
    return (f"- --max-forgetting {max_forgetting:.0%}: the raw fine-tuned model forgets {info['forgetting_raw']:.1%} "
            f"on the guard; its weights were interpolated with the base model's, alpha (share of the fine-tuned "
            f"weights) chosen on the validation split among the ratios within the bound "
            f"({'met' if pick['met'] else 'NOT met: the least forgetting one is kept'}): **alpha {pick['alpha']:.1f}**, "
            f"{info['seconds']:.0f} s; tried {tried}")
