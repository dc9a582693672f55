"""``fastembed-tune run``: base evaluation -> mining -> training -> evaluation -> report.

It only chains the stage functions (:mod:`~fastembed_tune.run.stages`, :mod:`~fastembed_tune.run.guard`,
:mod:`~fastembed_tune.run.artifacts`, :mod:`~fastembed_tune.run.ship`), each taking what it needs and
returning what it made; the report and ``metrics.json`` are built once, at the end, from those
results. Each stage's tool is also its own subcommand and behaves here as it does alone. The stages
share embeddings through an :class:`~fastembed_tune.embed.store.EmbeddingCache` per model: the base
model's corpus rows serve its evaluation and mining, the fine-tuned model's serve its evaluation and
the distillation targets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from fastembed_tune.core.atomic import check_output, output_lock
from fastembed_tune.core.errors import UserError
from fastembed_tune.data.bundled import sample_paths
from fastembed_tune.evaluation.gate import compare, describe, enforce_gain, mean_ci, significant_gain, verdict
from fastembed_tune.evaluation.report import format_table, write_report
from fastembed_tune.run.artifacts import (
    ArtifactEvals,
    Artifacts,
    evaluate_artifacts,
    make_artifacts,
    openvino_int8_pays,
)
from fastembed_tune.run.config import RunConfig, StageClock
from fastembed_tune.run.guard import Guard, guard_stage
from fastembed_tune.run.report import run_md, shipped_row, verdict_md
from fastembed_tune.run.ship import OV_INT8_LABEL, IrCheck, ShipChoice, check_openvino_int8, choose
from fastembed_tune.run.stages import (
    BaseEval,
    DataStage,
    Loaded,
    Mining,
    Training,
    Tuned,
    evaluate_base,
    evaluate_tuned,
    fine_tune,
    load_data,
    load_model,
    mine,
    ndcg_rows,
)

__all__ = ["run_pipeline", "RunConfig", "Outcome", "openvino_int8_pays"]

TITLE = "fastembed-tune: base vs fine-tuned"


def run_pipeline(output_dir: str, log: Callable[[str], None] = print, **settings) -> dict:
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


@dataclass
class Outcome:
    """What every stage of one run made, in the order they ran; :meth:`rows`, :meth:`comparisons`
    and :meth:`result` read the report's table, its paired tests and ``run_pipeline``'s answer off it."""
    data: DataStage
    base: Loaded
    base_eval: BaseEval
    mining: Mining
    training: Training
    tuned: Tuned
    guard: Optional[Guard]
    made: Artifacts
    evals: ArtifactEvals
    ship: Optional[ShipChoice]
    ir: Optional[IrCheck]

    def rows(self) -> list[tuple[str, dict]]:
        """The table: base, the raw fine-tuned model (when interpolated), fine-tuned, each artifact."""
        raw = [("fine-tuned, raw (alpha 1)", self.tuned.raw["metrics"])] if self.tuned.raw is not None else []
        return ([("base", self.base_eval.evaluation["metrics"]), *raw, ("fine-tuned", self.tuned.evaluation["metrics"])]
                + [(label, m["metrics"]) for label, m in self.evals.evaluations.items()])

    def comparisons(self, seed: int) -> dict:
        """The paired nDCG@10 comparisons, in the report's order."""
        base, tuned = ndcg_rows(self.base_eval.evaluation), ndcg_rows(self.tuned.evaluation)
        out = {"fine-tuned vs base": compare(base, tuned, seed=seed)}
        if self.tuned.raw is not None:
            out["fine-tuned vs fine-tuned, raw"] = compare(ndcg_rows(self.tuned.raw), tuned, seed=seed)
        if self.guard is not None:
            out["guard (WordNet): fine-tuned vs base"] = self.guard.comparison
        return {**out, **self.evals.comparisons}

    def result(self, comparisons: dict, stages_s: dict) -> dict:
        """What :func:`run_pipeline` returns (before the report's path and the seconds)."""
        t = self.tuned
        raw = {"fine_tuned_raw": t.raw} if t.raw else {}
        r = {"base": self.base_eval.evaluation, "fine_tuned": t.evaluation, **raw, "train": self.training.summary,
             "mining": self.mining.summary, "comparisons": comparisons}
        if self.guard is not None:
            r["guard"] = self.guard.record(with_lines=True)
        for key, value in (("exports", self.made.exports), ("distill", self.made.distill),
                           ("artifacts", self.evals.evaluations), ("ship", self.ship and self.ship.record()),
                           ("openvino_int8", self.ir and self.ir.kept)):
            if value:
                r[key] = value
        caches = (("base", self.base.cache), ("fine-tuned", t.cache))
        return {**r, "embedded": {name: [cache.embedded, cache.served] for name, cache in caches}, "stages_s": stages_s}


def _run(c: RunConfig, out: Path, log: Callable[[str], None], t_start: float) -> dict:
    """The stages, in order, once the output folder is locked."""
    clock = StageClock()
    data = load_data(c, log)
    base = load_model(c.model, c.max_seq_length, c.bf16)
    base_eval = evaluate_base(c, base, data, clock, log)
    mining = mine(c, data, base, out, clock, log)
    training = fine_tune(c, data, mining, base, out, clock)
    tuned = evaluate_tuned(c, training, data, clock, log)
    guard = None
    if base_eval.guard_set is not None:
        guard = guard_stage(c, out, base_eval, tuned, training.validation, base.own_max_seq_length, data.evalset,
                            clock, log)
        tuned = guard.interpolated or tuned  # the interpolated model takes the fine-tuned model's place
    ov = c.export and (openvino_int8_pays() if c.openvino_int8 is None else c.openvino_int8)
    made = make_artifacts(c, out, data, training, tuned, ov, clock)
    evals = evaluate_artifacts(c, made, data, tuned, clock, log)
    ship, ir = _ship(made, tuned, training, clock)
    outcome = Outcome(data, base, base_eval, mining, training, tuned, guard, made, evals, ship, ir)
    return _report(c, out, outcome, clock, log, t_start)


def _ship(made: Artifacts, tuned: Tuned, training: Training, clock: StageClock
          ) -> tuple[Optional[ShipChoice], Optional[IrCheck]]:
    """The artifact to ship and the OpenVINO int8 IRs kept, both decided on the validation split."""
    if not made.artifacts:
        return None, None
    with clock("choosing the artifact (validation)"):
        irs = {label: a for label, a in made.artifacts.items() if label.endswith(OV_INT8_LABEL)}
        ship = choose({k: a for k, a in made.artifacts.items() if k not in irs}, tuned.cache, tuned.directory,
                      training.validation)
        return ship, check_openvino_int8(irs, tuned.cache, training.validation, ship.teacher)


def _report(c: RunConfig, out: Path, o: Outcome, clock: StageClock, log: Callable[[str], None],
            t_start: float) -> dict:
    """Write report.md, metrics.json and metrics.png, log the table and the verdict, and refuse
    (with the gate) a fine-tuned model that is not a significant gain."""
    comparisons = o.comparisons(c.seed)
    lines = _run_lines(o, comparisons, clock)
    result = o.result(comparisons, {k: round(v, 1) for k, v in clock.seconds.items()})
    extra = {"guard": o.guard.record()} if o.guard else {}
    extra.update({k: result[k] for k in ("ship", "stages_s") if k in result})
    evaluations = {"base": o.base_eval.evaluation, "fine-tuned": o.tuned.evaluation, **o.evals.evaluations}
    intervals = {label: {"ndcg@10": mean_ci(ndcg_rows(m), seed=c.seed)} for label, m in evaluations.items()}
    rows = o.rows()
    gain = comparisons["fine-tuned vs base"]
    opening = verdict_md(c, comparisons, {label: m["ndcg@10"] for label, m in rows}, o.ship, o.ir,
                         o.guard.forgetting if o.guard else None, o.tuned.directory)
    shipped = shipped_row(o.ship, [label for label, _ in rows]) if significant_gain(gain) else None
    details = run_md(c, o.data.train_pairs, o.data.evalset, o.mining.summary, o.training.summary, lines,
                     o.data.report, t_start)
    report = write_report(out, rows, TITLE, details, comparisons=comparisons, intervals=intervals, extra=extra,
                          verdict_md=opening, shipped=shipped)
    log(format_table(rows))
    b, t = o.base_eval.evaluation["metrics"]["ndcg@10"], o.tuned.evaluation["metrics"]["ndcg@10"]
    log(f"nDCG@10 on {len(o.data.evalset.qrels)} held-out queries: base {b:.4f} -> fine-tuned {t:.4f} "
        f"({t / b:.2f}x, {verdict(gain)}: 95% CI {gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}, p = "
        f"{gain['p_value']:.4f}); report: {out / 'report.md'}" if b > 0 else
        f"nDCG@10: base {b:.4f} -> fine-tuned {t:.4f}; report: {out / 'report.md'}")
    result.update(report=report, seconds=time.perf_counter() - t_start)
    if c.gate:
        enforce_gain(gain, "the fine-tuned model", "the base", str(out / "report.md"))
    return result


def _run_lines(o: Outcome, comparisons: dict, clock: StageClock) -> list[str]:
    """The "Run" section's lines after the training ones: the comparisons, the guard, the artifacts,
    the choice of what ships, the embeddings computed and served again, the time by stage."""
    lines = [f"- {name}, nDCG@10: {describe(cmp)}" for name, cmp in comparisons.items()]
    lines += (o.guard.lines if o.guard else []) + o.made.lines + o.evals.lines
    lines += ([o.ship.line] + o.ir.lines) if o.ship and o.ir else []
    caches = (("base", o.base.cache), ("fine-tuned", o.tuned.cache))
    lines.append("- embeddings computed (texts run through the model) / served again from its cache: "
                 + ", ".join(f"{name} {cache.embedded} / {cache.served}" for name, cache in caches))
    return lines + [clock.line()]
