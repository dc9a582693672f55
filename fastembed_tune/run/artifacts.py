"""The artifacts ``run`` makes of the fine-tuned model and evaluates: its ONNX export (fp32 + int8,
and where it pays the OpenVINO int8 IR), a layer-pruned student distilled from it, the student's
export, and every one of them on the test set against the fine-tuned model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fastembed_tune.core.cpu import EXACT_INT8_DOT, cpu_features, float_precision, has_any
from fastembed_tune.embed.layout import INT8_FILE, OV_INT8_FILE
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.evaluation.gate import compare
from fastembed_tune.evaluation.metrics import evaluate
from fastembed_tune.export.onnx import export_onnx
from fastembed_tune.export.openvino_int8 import nncf_available
from fastembed_tune.run.config import RunConfig, StageClock
from fastembed_tune.run.ship import OV_INT8_LABEL
from fastembed_tune.run.stages import DataStage, Training, Tuned, load_model, ndcg_rows
from fastembed_tune.training.distill import DistillConfig, distill, distillation_texts

__all__ = ["Export", "Artifacts", "ArtifactEvals", "openvino_int8_pays", "export_model", "make_artifacts",
           "evaluate_artifacts", "PARITY_ROW"]

Log = Callable[[str], None]
PARITY_ROW = "fine-tuned, ONNX fp32"  # the PyTorch model itself (parity >= 0.9999): its row stands for it


@dataclass
class Export:
    """One model's export: what :func:`~fastembed_tune.export.onnx.export_onnx` returned, the report's
    line, and ``{label: (embedder, path)}`` for its graphs."""
    info: dict
    line: str
    artifacts: dict


@dataclass
class Artifacts:
    """Everything made of the fine-tuned model: ``{label: (embedder, path)}`` in the order made, the
    exports' infos by model name, the distillation summary (None: no student), the report's lines."""
    artifacts: dict = field(default_factory=dict)
    exports: dict = field(default_factory=dict)
    distill: Optional[dict] = None
    lines: list[str] = field(default_factory=list)


@dataclass
class ArtifactEvals:
    """The artifacts on the test set: their evaluations and their comparisons with the fine-tuned
    model (``"<label> vs fine-tuned"``), in the order evaluated, and the report's line of ratios."""
    evaluations: dict = field(default_factory=dict)
    comparisons: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def openvino_int8_pays() -> bool:
    """Whether ``run`` writes the OpenVINO int8 IR by default: the CPU has int8 dot products (VNNI
    or AMX-INT8) and ``openvino`` + ``nncf`` are installed (the speedups measured are in
    docs/benchmarks.md); ``serve``/``embed --precision auto`` measure it again anyway.

    >>> isinstance(openvino_int8_pays(), bool)
    True
    """
    return has_any(EXACT_INT8_DOT, cpu_features()) and nncf_available()


def export_model(onnx_dir: Path, model_dir: str, name: str, corpus: list[str], openvino_int8: bool) -> Export:
    """Export one model (fp32 + int8 calibrated on the user's corpus, never a test document, and with
    ``openvino_int8`` the OpenVINO int8 IR). An IR below its parity gates is left out (the rest of
    the export stands) and the line says why."""
    t0 = time.perf_counter()
    info = export_onnx(model_dir, onnx_dir, quantize="int8", calibration_texts=corpus, openvino_int8=openvino_int8,
                       openvino_int8_optional=True)
    note = f"; no OpenVINO int8 IR ({info['openvino_int8_refused']})" if "openvino_int8_refused" in info else ""
    par = info["parity"]
    irs = f", OpenVINO int8 {par['openvino_int8']['min_cosine']:.5f}" if "openvino_int8" in par else ""
    line = (f"- ONNX export of the {name} model: `{onnx_dir}`, min cosine to PyTorch fp32 "
            f"{par['fp32']['min_cosine']:.5f}, int8 {par['int8']['min_cosine']:.5f}{irs}; "
            f"{time.perf_counter() - t0:.0f} s{note}")
    int8 = onnx_dir / INT8_FILE
    out: dict[str, tuple[Any, Path]] = {f"{name}, ONNX fp32": (OnnxEmbedder(onnx_dir), onnx_dir),
                                        f"{name}, ONNX int8": (OnnxEmbedder(int8), int8)}
    if "openvino_int8" in par:
        ir = onnx_dir / OV_INT8_FILE
        out[f"{name}, {OV_INT8_LABEL}"] = (OnnxEmbedder(ir, engine="openvino", precision=float_precision()), ir)
    return Export(info, line, out)


def make_artifacts(c: RunConfig, out: Path, data: DataStage, training: Training, tuned: Tuned, openvino_int8: bool,
                   clock: StageClock) -> Artifacts:
    """Export the fine-tuned model (``onnx/``), distil it into a student on the training split's texts
    (never a validation or test query) and every corpus document (no query, no relevance label: the
    teacher's vectors of the texts a deployment searches) and export that (``student/onnx/``)."""
    made = Artifacts()
    calibration = data.corpus or distillation_texts(training.fit, data.corpus)  # test documents only: training text

    def export(onnx_dir: Path, model_dir: str, name: str) -> None:
        with clock("ONNX export"):
            e = export_model(onnx_dir, model_dir, name, calibration, openvino_int8)
        made.exports[name] = e.info
        made.lines.append(e.line)
        made.artifacts.update(e.artifacts)

    if c.export:
        export(out / "onnx", tuned.directory, "fine-tuned")
    if c.distill:
        with clock("distillation"):
            docs = list(dict.fromkeys(data.evalset.corpus.values()))
            # a document may spell a test or validation query: the student never learns one
            held = set(data.evalset.queries.values()) | {p.query for p in training.val_pairs}
            texts = [t for t in distillation_texts(training.fit, docs) if t not in held]
            made.distill = dsum = distill(tuned.directory, texts, out / "student", DistillConfig(
                layers=c.distill_layers, epochs=c.distill_epochs, lr=c.distill_lr, kl_weight=c.distill_kl_weight,
                seed=c.seed, max_seq_length=tuned.cache.model.max_seq_length, show_progress_bar=c.show_progress_bar,
                bf16=c.bf16), precomputed=tuned.cache)
        n = dsum["student_num_layers"]
        name = f"student ({n} layer{'s' if n != 1 else ''})"
        made.lines.append(f"- distillation: layers {dsum['student_layers']} of {dsum['teacher_num_layers']}, "
                          f"{dsum['texts']} texts (training queries and positives, every corpus document), "
                          f"{dsum['steps']} steps, lr {c.distill_lr}, {dsum['seconds']:.0f} s")
        if c.export:
            export(out / "student" / "onnx", dsum["output"], name)
        else:
            made.artifacts[name] = (load_model(dsum["output"], c.max_seq_length, c.bf16).cache, Path(dsum["output"]))
    return made


def evaluate_artifacts(c: RunConfig, made: Artifacts, data: DataStage, tuned: Tuned, clock: StageClock,
                       log: Log) -> ArtifactEvals:
    """Every artifact but the fine-tuned model's fp32 graph (:data:`PARITY_ROW`) on the test set,
    compared with the fine-tuned model query by query."""
    evals = ArtifactEvals()
    ndcg = {}
    for label, (embedder, _) in made.artifacts.items():
        if label == PARITY_ROW:
            continue
        with clock("artifact evaluations"):
            m_a = evaluate(embedder, data.evalset, show_progress_bar=c.show_progress_bar)
        evals.comparisons[f"{label} vs fine-tuned"] = compare(ndcg_rows(tuned.evaluation), ndcg_rows(m_a), seed=c.seed)
        evals.evaluations[label] = m_a
        ndcg[label] = m_a["metrics"]["ndcg@10"]
        log(f"{label} nDCG@10 = {ndcg[label]:.4f}")
    top = tuned.evaluation["metrics"]["ndcg@10"]
    if top > 0 and ndcg:
        evals.lines.append("- vs the fine-tuned model (PyTorch), nDCG@10: " + ", ".join(
            f"{label} {v / top:.2f}x" for label, v in ndcg.items()))
    return evals
