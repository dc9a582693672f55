"""The precision cache is a hint, a damaged int8 graph is left out with a warning, texts are valid Unicode.

* a cached choice passes its parity gate again at load, or the export is measured again; a damaged
  cache entry is measured again (and rewritten), never a traceback;
* a ``model_int8.onnx`` that is truncated, garbage or a valid graph giving other vectors is left out
  of the candidates with one warning line naming it: the other precisions still serve;
* a text holding a lone surrogate is refused naming its index, not a TypeError from the tokenizer.

A tiny random BERT (MiniLM's tokenizer) is exported once (fp32 + int8 + portable): seconds.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import make_tiny_model
from onnx import numpy_helper

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed import precision as P
from fastembed_tune.embed.layout import INT8_FILE, MODEL_FILE
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.export.onnx import export_onnx

TEXTS = ["ok", "a short sentence", "garbage collection reclaims memory that is no longer reachable"]
DAMAGES = ("truncated", "garbage", "wrong_vectors")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("prec_cache")
    export_onnx(make_tiny_model(d / "tiny"), d / "onnx", quantize="int8", optimize=False)
    return d / "onnx"


@pytest.fixture(scope="module")
def fp32_vectors(export):
    return OnnxEmbedder(export / MODEL_FILE, threads=1).embed(TEXTS)


def damaged_copy(export, where, damage):
    """A copy of the export whose ``model_int8.onnx`` is damaged as ``damage`` says."""
    d = where / f"onnx_{damage}"
    shutil.copytree(export, d)
    f = d / INT8_FILE
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage":
        f.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "wrong_vectors":  # a valid graph of the same inputs and output, other weights
        m, rng = onnx.load(str(d / MODEL_FILE)), np.random.default_rng(0)
        for init in m.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype == np.float32 and a.size > 1:
                init.CopyFrom(numpy_helper.from_array(rng.standard_normal(a.shape).astype(np.float32), init.name))
        onnx.save(m, str(f))
    return d


def cli_embed(model, tmp_path, cache, *extra):
    """``fastembed-tune embed`` of TEXTS in a subprocess: (the process, the vectors written or None)."""
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "e.npy"
    env = dict(os.environ, HF_HUB_OFFLINE="1", FASTEMBED_TUNE_CACHE=str(cache))
    cmd = [sys.executable, "-m", "fastembed_tune", "embed", "--model", str(model), "-i", str(tmp_path / "t.txt"),
           "-o", str(out), "--threads", "2", "--quiet", *extra]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        # A known intermittent stall of the precision probe (about 1 run in 30 here, threads waiting in a
        # futex; under investigation, docs/design.md "Known problems"): a second stall in a row still fails.
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r, (np.load(out) if out.exists() else None)


def entry_path(cache, export, threads=2, batch_size=32, allow=P.PRECISIONS):
    """Where choose_precision keeps its measured choice for ``export`` (what `embed --threads 2` reads)."""
    order = [c for c in P.candidates(export) if P.CANDIDATES[c][0] in allow]
    key = P._cache_key(export, order, threads, batch_size)
    return cache / "precision" / f"{key}.json"


def plant(cache, export, content, **how):
    f = entry_path(cache, export, **how)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def served(r) -> str:
    line = [x for x in r.stdout.splitlines() if x.startswith("precision: ")]
    assert len(line) == 1, r.stdout
    return line[0]


def min_cosine(a, b) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def warnings_in(err: str):
    return [x for x in err.splitlines() if x.startswith("warning: ")]


# ---- 1. the cache is a hint ------------------------------------------------------------------


PLANTED_INT8 = json.dumps({"precision": "int8", "reason": "planted by hand",
                           "measured": {"int8": {"sent_per_s": 1e9, "min_cosine": 1.0}, "fp32": {"sent_per_s": 1.0}}})


def test_a_planted_entry_whose_choice_fails_its_parity_gate_is_not_served(export, fp32_vectors, tmp_path):
    d = damaged_copy(export, tmp_path, "wrong_vectors")
    cache = tmp_path / "cache"
    f = plant(cache, d, PLANTED_INT8)
    r, got = cli_embed(d, tmp_path, cache)
    assert r.returncode == 0, r.stderr
    assert not served(r).startswith("precision: int8"), served(r)
    assert min_cosine(got, fp32_vectors) >= P.BF16_MIN_COSINE  # the vectors of a choice that passes its gate
    assert any(str(d / INT8_FILE) in w for w in warnings_in(r.stderr)), r.stderr
    again = json.loads(f.read_text())  # measured again and rewritten
    assert again["precision"] != "int8" and "planted" not in again["reason"] and "sent_per_s" in again["measured"]["fp32"]


def test_a_planted_entry_that_passes_its_gate_is_served_without_measuring(export, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    plant(tmp_path / "cache", export, PLANTED_INT8, threads=2, batch_size=4)
    monkeypatch.setattr(P, "_measure", lambda *a, **k: pytest.fail("measured again"))
    c = P.choose_precision(export, threads=2, batch_size=4)
    assert c.candidate == "int8" and "measured earlier" in c.reason
    assert c.load().embed(TEXTS).shape == (len(TEXTS), 32)


def test_a_planted_entry_failing_its_gate_is_measured_again(export, tmp_path, monkeypatch):
    d = damaged_copy(export, tmp_path, "wrong_vectors")
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    f = plant(tmp_path / "cache", d, PLANTED_INT8, threads=2, batch_size=4, allow=("int8", "fp32"))
    c = P.choose_precision(d, threads=2, batch_size=4, allow=("int8", "fp32"))
    assert c.candidate == "fp32" and "measured earlier" not in c.reason and "skipped" in c.measured["int8"]
    assert json.loads(f.read_text())["precision"] == "fp32"


DAMAGED_ENTRIES = {
    "not json": "{not json",
    "not utf-8": b"\xff\xfe{}",
    "empty": "",
    "a list": "[1, 2]",
    "a string": '"fp32"',
    "no measured": '{"precision": "bf16", "reason": "x"}',
    "no reason": '{"precision": "fp32", "measured": {}}',
    "no precision": '{"reason": "x", "measured": {}}',
    "reason not a string": '{"precision": "fp32", "reason": 3, "measured": {}}',
    "measured a list": '{"precision": "fp32", "reason": "x", "measured": []}',
    "measured of numbers": '{"precision": "fp32", "reason": "x", "measured": {"fp32": 1}}',
    "precision not a string": '{"precision": ["fp32"], "reason": "x", "measured": {}}',
    "unknown precision": '{"precision": "int4", "reason": "x", "measured": {}}',
    "not a candidate here": '{"precision": "int8-openvino", "reason": "x", "measured": {}}',
}


@pytest.mark.parametrize("content", DAMAGED_ENTRIES.values(), ids=DAMAGED_ENTRIES.keys())
def test_a_damaged_entry_is_measured_again_and_rewritten(export, tmp_path, monkeypatch, content):
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    how = dict(threads=2, batch_size=4, allow=("int8", "fp32"))
    f = plant(tmp_path / "cache", export, content, **how)
    c = P.choose_precision(export, **{k: v for k, v in how.items()})
    assert c.candidate in ("int8", "fp32") and "measured earlier" not in c.reason
    entry = json.loads(f.read_text())
    assert entry["precision"] == c.candidate and entry["measured"]["fp32"]["sent_per_s"] > 0
    assert [p.name for p in f.parent.iterdir()] == [f.name]  # no temporary file left beside it


def test_cli_embed_measures_a_damaged_entry_again(export, fp32_vectors, tmp_path):
    cache = tmp_path / "cache"
    f = plant(cache, export, '{"precision": "bf16", "reason": "x"}')
    r, got = cli_embed(export, tmp_path, cache)
    assert r.returncode == 0, r.stderr
    assert "measured earlier" not in served(r)
    assert min_cosine(got, fp32_vectors) >= P.INT8_MIN_COSINE
    assert "measured" in json.loads(f.read_text())


# ---- 2. a damaged int8 graph -----------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_int8_graph_is_left_out_with_one_warning(export, fp32_vectors, tmp_path, damage):
    d = damaged_copy(export, tmp_path, damage)
    r, got = cli_embed(d, tmp_path, tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert not served(r).startswith("precision: int8"), served(r)
    assert min_cosine(got, fp32_vectors) >= P.BF16_MIN_COSINE
    named = [w for w in warnings_in(r.stderr) if str(d / INT8_FILE) in w]
    assert len(named) == 1, r.stderr
    assert "int8" not in served(r).split("—", 1)[1].split("min cosine")[0]  # not offered as an alternative


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_int8_graph_asked_for_is_one_error_line(export, tmp_path, damage):
    d = damaged_copy(export, tmp_path, damage)
    r, got = cli_embed(d, tmp_path, tmp_path / "cache", "--precision", "int8")
    assert r.returncode == 2 and got is None
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and str(d / INT8_FILE) in errors[0], r.stderr


def test_a_damaged_int8_graph_is_left_out_by_the_api(export, tmp_path, capsys):
    d = damaged_copy(export, tmp_path, "garbage")
    c = P.choose_precision(d, threads=2, batch_size=4, allow=("int8", "fp32"), cache=False)
    assert c.candidate == "fp32" and str(d / INT8_FILE) in c.measured["int8"]["skipped"]
    assert "sent_per_s" not in c.measured["int8"]
    err = capsys.readouterr().err
    assert len([w for w in warnings_in(err) if str(d / INT8_FILE) in w]) == 1, err


# ---- 3. a lone surrogate ---------------------------------------------------------------------


@pytest.mark.parametrize("call", ["embed", "encode", "tokenize", "encodings"])
def test_a_lone_surrogate_is_refused_naming_its_index(export, call):
    e = OnnxEmbedder(export, threads=1)
    with pytest.raises(UserError, match=r"text #2 holds a lone surrogate \(U\+D800 at position 2\)"):
        getattr(e, call)(["ok", "fine", "a\ud800b"])
    assert e.embed(["ok", "déjà vu"]).shape == (2, 32)  # valid Unicode still embeds
