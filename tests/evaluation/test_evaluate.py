"""Tests of fastembed_tune.evaluation.metrics: metrics against ranx, retrieval end to end, the report.

ranx compiles its metrics with numba on first use, one version per document-id width; numba caches
them on disk (``cache=True`` in ranx), and ``make test`` compiles them at install time
(``scripts/warm_ranx.py``: ~2 minutes on 2 cores, which landed inside this module's first test before).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastembed_tune.data.readers import EvalSet
from fastembed_tune.evaluation.metrics import embed_evalset, evaluate, ir_metrics
from fastembed_tune.evaluation.report import format_table, write_report

RANX_METRICS = ["ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10", "map@100"]


# ----------------------------------------------------------------------------------------------
# ir_metrics against ranx


@st.composite
def qrels_and_run(draw):
    """Random graded qrels over a pool of docs, and a run drawn from the pool plus distractors.

    Each query's run is one of: missing from the run dict, an empty list, or a random subset of
    (pool + up to 150 distractors) in random order, so runs can be longer than 100 and hold no
    relevant doc at all.
    """
    pool = [f"d{i}" for i in range(draw(st.integers(1, 60)))]
    distractors = [f"x{i}" for i in range(draw(st.integers(0, 150)))]
    candidates = pool + distractors
    nq = draw(st.integers(1, 20))
    qrels, run = {}, {}
    for qi in range(nq):
        q = f"q{qi}"
        rel_docs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=min(5, len(pool)), unique=True))
        qrels[q] = {d: draw(st.integers(1, 3)) for d in rel_docs}
        kind = draw(st.sampled_from(["missing", "empty", "ranked", "ranked", "ranked", "ranked"]))
        if kind == "missing":
            continue
        if kind == "empty":
            run[q] = []
            continue
        perm = draw(st.permutations(candidates))
        run[q] = perm[:draw(st.integers(1, len(perm)))]
    return qrels, run


def _ranx(qrels, run):
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    # ranx needs scores: descending by rank. It also needs every qrels query in the run: an
    # empty dict is accepted for a query with no results (make_comparable=True would add those).
    rrun = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in run.items()}
    for q in qrels:
        rrun.setdefault(q, {})
    if not any(rrun.values()):
        # every run empty: ranx 0.3.21 raises "max() arg is an empty sequence" on an all-empty
        # run, so there is nothing to compare with; every metric of every query is 0.
        return {m: 0.0 for m in RANX_METRICS}
    out = ranx_evaluate(Qrels(qrels), Run(rrun), RANX_METRICS, make_comparable=True)
    return {m: float(v) for m, v in out.items()}


@settings(max_examples=min(settings().max_examples, 40))
@given(qrels_and_run())
def test_ir_metrics_match_ranx(data):
    qrels, run = data
    ours = ir_metrics(run, qrels)
    assert list(ours) == RANX_METRICS
    ref = _ranx(qrels, run)
    for m in RANX_METRICS:
        assert ours[m] == pytest.approx(ref[m], abs=1e-6), m
        assert 0.0 <= ours[m] <= 1.0 + 1e-12
    # a list run aligned with list(qrels) is the same run
    assert ir_metrics([run.get(q, []) for q in qrels], qrels) == ours


def test_ranx_all_empty_run_is_zero():
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 2}}
    assert ir_metrics({"q0": []}, qrels) == {m: 0.0 for m in RANX_METRICS}


def test_ir_metrics_hand_computed_graded():
    qrels = {"q": {"a": 3, "b": 1, "c": 2}}
    m = ir_metrics({"q": ["b", "z", "a"]}, qrels)
    dcg = 1 / math.log2(2) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == 1.0
    assert m["map@100"] == pytest.approx((1 + 2 / 3) / 3)


def test_ir_metrics_cutoffs_and_duplicates():
    # relevant doc at rank 11: outside @10 metrics, inside @100
    run = [f"n{i}" for i in range(10)] + ["r"]
    m = ir_metrics({"q": run}, {"q": {"r": 1}})
    assert m["ndcg@10"] == 0 and m["mrr@10"] == 0 and m["recall@10"] == 0
    assert m["recall@100"] == 1 and m["map@100"] == pytest.approx(1 / 11)
    # a repeated doc id counts once, at its first rank
    assert ir_metrics({"q": ["r", "r"]}, {"q": {"r": 1, "s": 1}})["map@100"] == 0.5
    # custom cutoffs
    m = ir_metrics({"q": ["n", "r"]}, {"q": {"r": 1}}, ks=(2,), ndcg_k=1, mrr_k=1, map_k=1)
    assert m == {"ndcg@1": 0.0, "recall@2": 1.0, "mrr@1": 0.0, "map@1": 0.0}


def test_ir_metrics_skips_unjudged_queries_and_checks_input():
    qrels = {"q0": {"a": 1}, "q1": {"b": 0}}  # q1 has no relevant doc: left out of the mean
    assert ir_metrics({"q0": ["a"]}, qrels)["ndcg@10"] == 1.0
    with pytest.raises(ValueError, match="no query in qrels has a relevant"):
        ir_metrics({}, {"q": {"a": 0}})
    with pytest.raises(ValueError, match="aligned with list"):
        ir_metrics([["a"], ["b"]], {"q0": {"a": 1}})
    with pytest.raises(ValueError, match="ks must hold integers"):
        ir_metrics({}, {"q0": {"a": 1}}, ks=(0,))


# ----------------------------------------------------------------------------------------------
# evaluate end to end with a fake model


class FakeModel:
    """Maps each text to a fixed unit vector from a table; records encode calls."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.calls: list[tuple[int, int, bool, str]] = []

    def encode(self, texts, batch_size=64, show_progress_bar=False, desc="encode"):
        self.calls.append((len(texts), batch_size, show_progress_bar, desc))
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def tiny():
    # corpus on 4 axes; queries placed so their cosine rankings are known exactly
    table = {
        "doc a": _unit(1, 0, 0, 0), "doc b": _unit(0, 1, 0, 0),
        "doc c": _unit(0, 0, 1, 0), "doc d": _unit(0, 0, 0, 1),
        "qa": _unit(4, 3, 2, 1),  # ranking a, b, c, d
        "qb": _unit(1, 2, 3, 4),  # ranking d, c, b, a
        "qc": _unit(0, 1, 5, 0),  # ranking c, b, then a/d tied at 0 -> a (smaller id) first
    }
    es = EvalSet(
        queries={"qa": "qa", "qb": "qb", "qc": "qc", "qx": "qa"},  # qx has no qrels: not scored
        corpus={"a": "doc a", "b": "doc b", "c": "doc c", "d": "doc d"},
        qrels={"qa": {"a": 2, "c": 1}, "qb": {"a": 1}, "qc": {"d": 3, "b": 1}},
    )
    run = {"qa": ["a", "b", "c", "d"], "qb": ["d", "c", "b", "a"], "qc": ["c", "b", "a", "d"]}
    return FakeModel(table), es, run


def test_evaluate_matches_expected_run(tiny):
    model, es, run = tiny
    r = evaluate(model, es, batch_size=7)
    assert r["queries"] == 3 and r["corpus"] == 4 and r["seconds"] >= 0
    assert r["metrics"] == ir_metrics(run, es.qrels)
    # exact values, worked by hand
    m = r["metrics"]
    assert m["recall@1"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 4 + 1 / 2) / 3)
    assert m["map@100"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4 + (1 / 2 + 2 / 4) / 2) / 3)
    assert m["recall@10"] == 1.0
    assert [c[1:] for c in model.calls] == [(7, False, "embed queries"), (7, False, "embed corpus")]
    # k smaller than the corpus truncates the run
    assert evaluate(model, es, k=1)["metrics"] == ir_metrics({q: d[:1] for q, d in run.items()}, es.qrels)


def test_evaluate_with_precomputed_embeddings(tiny):
    model, es, run = tiny
    qemb, cemb = embed_evalset(model, es, batch_size=3)
    assert qemb.shape == (4, 4) and cemb.shape == (4, 4) and qemb.dtype == np.float32
    model.calls.clear()
    r = evaluate(None, es, query_embeddings=qemb, corpus_embeddings=cemb)
    assert r["metrics"] == ir_metrics(run, es.qrels) and model.calls == []
    # only the corpus given: queries are embedded, the corpus is not
    r2 = evaluate(model, es, corpus_embeddings=cemb)
    assert r2["metrics"] == r["metrics"] and [c[3] for c in model.calls] == ["embed queries"]
    # non-unit rows are normalised (cosine), torch-free numpy float64 accepted
    r3 = evaluate(None, es, query_embeddings=qemb.astype(np.float64) * 3, corpus_embeddings=cemb * 2)
    assert r3["metrics"] == r["metrics"]
    with pytest.raises(ValueError, match="shape"):
        evaluate(None, es, query_embeddings=qemb[:2], corpus_embeddings=cemb)
    with pytest.raises(ValueError, match="needs a model"):
        evaluate(None, es, query_embeddings=qemb)


# ----------------------------------------------------------------------------------------------
# report


def test_write_report(tmp_path):
    base = {"ndcg@10": 0.3149, "recall@1": 0.2, "mrr@10": 0.0}
    tuned = {"metrics": {"ndcg@10": 0.4321, "recall@1": 0.3, "mrr@10": 0.5}, "queries": 3, "seconds": 1.0}
    out = tmp_path / "report"
    res = write_report(out, [("base", base), ("fine-tuned", tuned)], "My domain", extra_md="Trained 1 epoch.")
    assert sorted(os.listdir(out)) == ["metrics.json", "metrics.png", "report.md"]  # no temp files
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == res
    assert on_disk["metrics"]["fine-tuned"] == tuned["metrics"]
    gain = on_disk["gain"]["fine-tuned"]
    assert gain["ndcg@10"] == pytest.approx(0.4321 / 0.3149 - 1)
    assert gain["recall@1"] == pytest.approx(0.5) and gain["mrr@10"] is None  # base 0: no ratio
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "# My domain" in md
    assert "| model | nDCG@10 | Recall@1 | MRR@10 |" in md
    assert "| base | 0.3149 | 0.2000 | 0.0000 |" in md
    assert "| fine-tuned | 0.4321 | 0.3000 | 0.5000 |" in md
    assert "nDCG@10: 0.3149 → 0.4321 (+37.2%, 1.37x)" in md
    assert "![metrics](metrics.png)" in md and "Trained 1 epoch." in md
    # overwriting in place works and still leaves no temp files
    write_report(out, [("base", base)], "again")
    assert sorted(os.listdir(out)) == ["metrics.json", "metrics.png", "report.md"]
    assert json.loads((out / "metrics.json").read_text())["gain"] == {}


def test_report_opens_with_the_verdict_and_the_chart_stays_readable(tmp_path):
    """The verdict comes before the table; the chart is at most 1600 px wide however many models,
    one line per model, the shipped row marked; a shipped label that is no row is refused."""
    from PIL import Image

    labels = ["base", "fine-tuned, raw (alpha 1)", "fine-tuned", "fine-tuned, ONNX int8", "fine-tuned, OpenVINO int8",
              "student (3 layers), ONNX fp32", "student (3 layers), ONNX int8"]
    metrics = ["ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10", "map@100"]
    rows = [(label, {m: 0.3 + 0.05 * i for m in metrics}) for i, label in enumerate(labels)]
    intervals = {label: {"ndcg@10": (m["ndcg@10"] - 0.02, m["ndcg@10"] + 0.02)} for label, m in rows}
    write_report(tmp_path, rows, "run", "## Run", intervals=intervals, verdict_md="## Verdict\n\n**Ship it**",
                 shipped="student (3 layers), ONNX int8")
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# run\n\n## Verdict\n\n**Ship it**\n\n| model |")
    assert md.index("## Run") > md.index("| base |")
    with Image.open(tmp_path / "metrics.png") as png:
        width, height = png.size
    assert width <= 1600 and height >= 100 * len(labels)  # not one long strip of tiny panels
    with pytest.raises(ValueError, match="shipped must be one of the row labels"):
        write_report(tmp_path, rows, "run", shipped="nothing")


def test_format_table_and_bad_rows():
    t = format_table([("base", {"ndcg@10": 0.31, "map@100": 0.2}), ("tuned", {"ndcg@10": 0.5})])
    lines = t.splitlines()
    assert lines[0].split() == ["model", "nDCG@10", "MAP@100"]
    assert lines[2].split() == ["base", "0.3100", "0.2000"]
    assert lines[3].split() == ["tuned", "0.5000", "-"]
    with pytest.raises(ValueError, match="rows is empty"):
        format_table([])
    with pytest.raises(ValueError, match="distinct"):
        format_table([("a", {}), ("a", {})])
