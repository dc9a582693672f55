"""openvino_int8: the NNCF static int8 OpenVINO IR, its export gates, OnnxEmbedder on an IR, and
the int8-openvino precision candidate. References: the fp32 onnxruntime graph and the text alone."""
import json
import shutil

import numpy as np
import pytest
from conftest import make_tiny_model

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed import precision as P
from fastembed_tune.embed.layout import OV_INT8_FILE, PORTABLE_FILE
from fastembed_tune.embed.model import default_model_path
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.parity import batch_invariance
from fastembed_tune.export.onnx import BATCH_INVARIANCE_MIN_COSINE, INT8_MIN_COSINE, export_onnx
from fastembed_tune.export.openvino_int8 import nncf_available, quantize_openvino_int8, with_short_texts

pytestmark = pytest.mark.skipif(not nncf_available(), reason="needs openvino and nncf")
TEXTS = ["ok", "a short sentence", "garbage collection reclaims memory that is no longer reachable",
         "the kernel schedules threads", "MI treatment", "a b c d e f g h i j k l m n o p"]


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_ov_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("ovq")
    make_tiny_model(d / "tiny", dropout=0.0)
    info = export_onnx(d / "tiny", d / "onnx", optimize=False, openvino_int8=True, warn=lambda line: None,
                       calibration_texts=TEXTS * 3)
    return d / "onnx", info


def test_export_writes_a_gated_batch_invariant_ir(tiny_ov_export):
    out, info = tiny_ov_export
    ir = out / OV_INT8_FILE
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    meta = json.loads((out / "fastembed_tune_onnx.json").read_text())
    assert meta["files"]["openvino_int8"] == OV_INT8_FILE
    parity = meta["parity"]["openvino_int8"]
    assert parity["min_cosine"] >= INT8_MIN_COSINE and parity["batched_vs_alone"] >= BATCH_INVARIANCE_MIN_COSINE
    ov = meta["openvino_int8"]
    assert ov["weight_nodes"] == 12 and ov["quantized"] + len(ov["kept_float"]) == 12  # 2 layers: Q K V O FFN x2
    e = OnnxEmbedder(ir, engine="openvino")
    ref = OnnxEmbedder(out).embed(TEXTS)
    assert _cos(e.embed(TEXTS), ref).min() >= INT8_MIN_COSINE
    alone = np.stack([e.embed([t])[0] for t in TEXTS])
    assert _cos(e.embed(TEXTS, batch_size=4), alone).min() >= BATCH_INVARIANCE_MIN_COSINE


def test_an_ir_runs_on_openvino_only_and_is_checked_at_load(tiny_ov_export, tmp_path):
    out, _ = tiny_ov_export
    with pytest.raises(UserError, match="engine='openvino' only"):
        OnnxEmbedder(out / OV_INT8_FILE)
    bad = tmp_path / "openvino" / "x.xml"
    bad.parent.mkdir()
    bad.write_text("<net>not an IR")
    (tmp_path / "tokenizer.json").write_text((out / "tokenizer.json").read_text())
    with pytest.raises(UserError, match="OpenVINO cannot read it"):
        OnnxEmbedder(bad, engine="openvino")


def test_int8_openvino_is_a_probed_candidate(tiny_ov_export, tmp_path, monkeypatch):
    out, _ = tiny_ov_export
    assert P.candidates(out, frozenset({"avx512_vnni"}), openvino=True)[0] == "int8-openvino"
    assert P.candidates(out, frozenset({"avx2"}), openvino=True)[-1] == "int8-openvino"
    assert "int8-openvino" not in P.candidates(out, frozenset({"avx512_vnni"}), openvino=False)
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    speed = P._speed
    monkeypatch.setattr(P, "_speed", lambda emb, *a: speed(emb, *a) * (100 if emb.model_file.suffix == ".xml" else 1))
    c = P.choose_precision(out, threads=2, texts=TEXTS, batch_size=4, allow=("int8",))
    assert (c.candidate, c.engine, c.file) == ("int8-openvino", "openvino", out / OV_INT8_FILE)
    assert c.measured["int8-openvino"]["min_cosine"] >= P.GATES["int8"]
    assert c.description.startswith(f"precision: int8 (openvino, {OV_INT8_FILE})")
    assert c.load().model_file.suffix == ".xml"


def test_export_refuses_a_non_boolean_openvino_int8(tmp_path):
    with pytest.raises(UserError, match="openvino_int8 must be True or False"):
        export_onnx(default_model_path(), tmp_path / "o", openvino_int8="yes")
    with pytest.raises(UserError, match="openvino_int8_optional must be True or False"):
        export_onnx(default_model_path(), tmp_path / "o", openvino_int8=True, openvino_int8_optional=1)


def test_minilm_all_int8_ir_stays_close_and_batch_invariant(tmp_path, minilm_export):
    """The real model, every weight MatMul int8 (one NNCF run; the export's search would keep the
    most sensitive in float): held-out corpus texts stay close to fp32, and a text gets the same
    vector batched as alone (static activation scales + length buckets)."""
    from fastembed_tune.export.quantize import bundled_sample_texts

    d = tmp_path / "minilm"  # a copy: the session's export stays as exported
    shutil.copytree(minilm_export[0], d, ignore=shutil.ignore_patterns("model_int8.onnx"))
    tried, sample = [], bundled_sample_texts(200)
    r = quantize_openvino_int8(d / PORTABLE_FILE, d / OV_INT8_FILE, lambda p: tried.append(p) or {"min_cosine": 1.0},
                               INT8_MIN_COSINE, calibration_texts=sample[-64:])
    assert len(tried) == 1 and r.kept_float == [] and r.quantized == 36
    held_out = sample[:64]  # calibrated on the last 64 (and their first words)
    e = OnnxEmbedder(d / OV_INT8_FILE, engine="openvino", precision="f32")
    got, ref = e.embed(held_out), OnnxEmbedder(d).embed(held_out)
    assert _cos(got, ref).mean() >= 0.99 and _cos(got, ref).min() >= 0.95
    assert batch_invariance(lambda b, bs: e.embed(b, batch_size=bs), held_out[:16]) >= BATCH_INVARIANCE_MIN_COSINE


def test_short_texts_are_word_prefixes():
    assert with_short_texts(["one two three four five"] * 5)[5:] == [
        "one", "one two", "one two three", "one two three four", "one"]


class _Val:
    """A validation split whose scores are given: the fine-tuned model's, and an IR's."""

    def __init__(self, teacher, ir):
        self.teacher, self.ir = teacher, ir

    def score(self, model):
        return self.ir if isinstance(model, OnnxEmbedder) else self.teacher


@pytest.mark.parametrize("ir_score,kept", [(0.97, True), (0.90, False)])
def test_run_keeps_the_ir_only_where_validation_holds(tmp_path, ir_score, kept):
    """`run`'s export writes the IR (an artifact of its own, evaluated like the others); below
    SHIP_RATIO of the fine-tuned model's validation nDCG@10 its files and metadata entry go, so no
    precision probe can offer it."""
    from fastembed_tune.run import ship
    from fastembed_tune.run.artifacts import export_model

    make_tiny_model(tmp_path / "tiny", dropout=0.0)
    made = export_model(tmp_path / "onnx", str(tmp_path / "tiny"), "fine-tuned", TEXTS * 3, openvino_int8=True)
    arts, lines = made.artifacts, [made.line]
    label = f"fine-tuned, {ship.OV_INT8_LABEL}"
    assert list(arts) == ["fine-tuned, ONNX fp32", "fine-tuned, ONNX int8", label]
    assert arts[label][1] == tmp_path / "onnx" / OV_INT8_FILE and "OpenVINO int8 0.9" in lines[0]
    assert ship.SHIP_RATIO == 0.95  # the scores below straddle it
    check = ship.check_openvino_int8({label: arts[label]}, object(), _Val(1.0, ir_score))
    out = check.lines
    assert check.kept[label] == {"validation": ir_score, "kept": kept}
    meta = json.loads((tmp_path / "onnx" / "fastembed_tune_onnx.json").read_text())
    assert ("openvino_int8" in meta["files"]) == kept == (tmp_path / "onnx" / OV_INT8_FILE).is_file()
    assert ("int8-openvino" in P.candidates(tmp_path / "onnx", frozenset({"amx_int8"}), openvino=True)) == kept
    assert out[0].startswith(f"- {label} (`{arts[label][1]}`) kept" if kept else f"- {label} removed")
    if not kept:
        assert "0.9000 < 0.95x" in meta["openvino_int8_removed"]["why"]
        assert not (tmp_path / "onnx" / "openvino").exists()
        assert OnnxEmbedder(tmp_path / "onnx").embed(["ok"]).shape[0] == 1  # the rest of the export stands


def test_run_exports_without_the_ir_when_nncf_fails(tmp_path, monkeypatch):
    """NNCF failing inside (or the IR missing a gate) costs the IR, not the run: the export goes on
    without it (optional, as `run` asks) and records why."""
    from fastembed_tune.export import openvino_int8
    from fastembed_tune.run.artifacts import export_model

    def broken(*a, **kw):
        raise RuntimeError("Exception from src/core/src/node.cpp: something inside")

    monkeypatch.setattr(openvino_int8, "quantize_openvino_int8", broken)
    make_tiny_model(tmp_path / "tiny", dropout=0.0)
    made = export_model(tmp_path / "onnx", str(tmp_path / "tiny"), "fine-tuned", TEXTS * 3, openvino_int8=True)
    arts, lines = made.artifacts, [made.line]
    assert list(arts) == ["fine-tuned, ONNX fp32", "fine-tuned, ONNX int8"]
    assert "no OpenVINO int8 IR (NNCF could not quantise the graph for OpenVINO (RuntimeError: " in lines[0]
    assert (tmp_path / "onnx" / "model_int8.onnx").is_file() and not (tmp_path / "onnx" / "openvino").exists()
    meta = json.loads((tmp_path / "onnx" / "fastembed_tune_onnx.json").read_text())
    assert meta["openvino_int8_refused"].startswith("NNCF could not quantise the graph for OpenVINO (RuntimeError: ")
    assert "openvino_int8" not in meta["files"] and made.info["model_int8"]
    with pytest.raises(UserError, match="NNCF could not quantise"):  # `export --openvino-int8` says so, exit 2
        export_onnx(tmp_path / "tiny", tmp_path / "o2", optimize=False, openvino_int8=True, warn=lambda line: None)
