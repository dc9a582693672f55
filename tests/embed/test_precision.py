"""precision.choose_precision: candidates by CPU features, the measured probe, the parity gates.

A tiny random BERT (MiniLM's tokenizer) is exported once (fp32 + int8 + portable): seconds.
"""
import numpy as np
import pytest
import torch

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed import precision as P
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.export.onnx import export_onnx

TEXTS = ["ok", "a short sentence", "garbage collection reclaims memory that is no longer reachable"] * 4


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("prec")
    base = EmbeddingModel.load()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=base.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    EmbeddingModel(BertModel(cfg).eval(), base.tokenizer, "mean", True, 128).save(d / "tiny")
    export_onnx(d / "tiny", d / "onnx", quantize="int8", optimize=False)
    return d / "onnx"


@pytest.mark.parametrize("features,openvino,want", [
    ({"avx2", "fma"}, True, ["fp32", "int8", "fp32-openvino"]),  # AVX2-only EPYC: no VNNI, no bf16
    ({"avx2", "fma"}, False, ["fp32", "int8"]),
    ({"avx512f", "avx512_vnni", "avx512_bf16"}, True, ["int8", "bf16", "fp32"]),  # Zen 4
    ({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}, True, ["bf16", "int8", "fp32"]),  # AMX
    ({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}, False, ["int8", "fp32"]),  # no openvino
])
def test_candidates_by_features(tiny_export, features, openvino, want):
    assert P.candidates(tiny_export, frozenset(features), openvino=openvino) == want


def test_no_probe_picks_by_features(tiny_export, monkeypatch):
    monkeypatch.setattr(P, "cpu_features", lambda: frozenset({"avx512_vnni"}))
    c = P.choose_precision(tiny_export, probe=False)
    assert (c.precision, c.engine, c.file.name) == ("int8", "onnxruntime", "model_int8.onnx")
    assert c.description.startswith("precision: int8 (onnxruntime, model_int8.onnx)") and "CPU: " in c.description
    c = P.choose_precision(tiny_export, probe=False, allow=("fp32",))
    assert c.precision == "fp32" and c.file.name == "model.onnx"


def test_probe_measures_and_gates(tiny_export):
    c = P.choose_precision(tiny_export, threads=2, texts=TEXTS, batch_size=4)
    assert c.candidate in P.candidates(tiny_export)
    assert "fp32" in c.measured and c.measured["fp32"]["sent_per_s"] > 0
    chosen = c.measured[c.candidate]
    assert "skipped" not in chosen and chosen["min_cosine"] >= P.GATES[c.precision]
    for p, m in c.measured.items():  # none is faster, or only within the margin and of a lower precision
        if "skipped" not in m and m["sent_per_s"] > chosen["sent_per_s"]:
            assert m["sent_per_s"] <= chosen["sent_per_s"] * P.PRECISION_MARGIN
            assert P.FIDELITY[P.CANDIDATES[p][0]] < P.FIDELITY[c.precision]
    ref = P.choose_precision(tiny_export, probe=False, allow=("fp32",)).load().embed(TEXTS)
    got = c.load().embed(TEXTS)
    cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= P.GATES[c.precision]


def test_fp32_on_openvino_is_a_candidate_where_the_cpu_has_no_bf16(tiny_export, tmp_path, monkeypatch):
    """On a CPU without native bf16 the portable graph on OpenVINO f32 is probed beside onnxruntime
    fp32 (gated >= 0.9999 to it) and chosen when it measures faster; the cache keeps that choice."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "cpu_features", lambda: frozenset({"avx2", "fma"}))
    speed = P._speed
    monkeypatch.setattr(P, "_speed", lambda emb, *a: speed(emb, *a) * (100 if emb.engine == "openvino" else 1))
    c = P.choose_precision(tiny_export, threads=2, batch_size=4, allow=("fp32",))
    assert (c.candidate, c.precision, c.engine, c.file) == ("fp32-openvino", "fp32", "openvino",
                                                            tiny_export / "onnx" / "model.onnx")
    assert c.measured["fp32-openvino"]["min_cosine"] >= P.GATES["fp32"]
    assert c.description.startswith("precision: fp32 (openvino, onnx/model.onnx)")
    e = c.load()
    assert e.engine == "openvino"
    ref = P.choose_precision(tiny_export, probe=False, allow=("fp32",)).load()
    assert ref.engine == "onnxruntime"
    got, want = e.embed(TEXTS), ref.embed(TEXTS)
    assert ((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min() >= 0.9999
    monkeypatch.setattr(P, "_measure", lambda *a, **k: pytest.fail("measured again"))
    again = P.choose_precision(tiny_export, threads=2, batch_size=4, allow=("fp32",))
    assert (again.candidate, again.engine) == ("fp32-openvino", "openvino")


def test_probe_refuses_a_candidate_below_its_gate(tiny_export, monkeypatch):
    monkeypatch.setitem(P.GATES, "int8", 1.01)  # nothing reaches it: int8 is measured, then skipped
    c = P.choose_precision(tiny_export, threads=2, texts=TEXTS, batch_size=4, allow=("int8", "fp32"))
    assert c.precision == "fp32" and "skipped" in c.measured["int8"]


def test_bad_arguments(tmp_path, tiny_export):
    with pytest.raises(UserError, match="no model.onnx"):
        P.choose_precision(tmp_path)
    with pytest.raises(UserError, match="allow"):
        P.choose_precision(tiny_export, allow=("int4",))


def test_forced_precision_is_still_gated(tiny_export, monkeypatch):
    monkeypatch.setitem(P.GATES, "int8", 1.01)
    with pytest.raises(UserError, match="no precision of int8 passed its parity gate"):
        P.choose_precision(tiny_export, threads=2, texts=TEXTS, batch_size=4, allow=("int8",))


def test_load_embedder_precision(tiny_export):
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.model import default_model_path

    e = load_embedder(tiny_export, threads=2, precision="int8")
    assert e.choice.precision == "int8" and e.model_file.name == "model_int8.onnx"
    assert e.encode(TEXTS).shape == (len(TEXTS), 32)
    assert load_embedder(tiny_export, threads=2, precision="auto").choice.description.startswith("precision: ")
    with pytest.raises(UserError, match="export directory"):
        load_embedder(default_model_path(), precision="int8")
    assert type(load_embedder(default_model_path(), precision="auto")).__name__ == "EmbeddingModel"  # as it is
    assert not hasattr(load_embedder(tiny_export / "model.onnx", precision="auto"), "choice")  # one file: as it is
    with pytest.raises(UserError, match="precision must be"):
        load_embedder(tiny_export, precision="int4")
    with pytest.raises(UserError, match="not both"):
        load_embedder(tiny_export, int8=True, precision="fp32")


def test_unavailable_precision_is_refused_not_replaced(tiny_export, monkeypatch):
    """--precision bf16 where it cannot run is one clear error, never a silent fp32."""
    from fastembed_tune.embed.loader import load_embedder

    monkeypatch.setattr(P, "_openvino_available", lambda: False)
    with pytest.raises(UserError, match="precision bf16 is not available here"):
        load_embedder(tiny_export, precision="bf16")


def test_measured_choice_is_cached_per_export_and_cpu(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTEMBED_TUNE_CACHE", str(tmp_path / "cache"))
    first = P.choose_precision(tiny_export, threads=2, batch_size=4)
    assert len(list((tmp_path / "cache" / "precision").glob("*.json"))) == 1

    def no_probe(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(P, "_measure", no_probe)
    again = P.choose_precision(tiny_export, threads=2, batch_size=4)
    assert (again.precision, again.measured) == (first.precision, first.measured)
    assert "measured earlier" in again.reason
    # another thread count, or other texts, is another measurement
    with pytest.raises(AssertionError, match="measured again"):
        P.choose_precision(tiny_export, threads=1, batch_size=4)
    with pytest.raises(AssertionError, match="measured again"):
        P.choose_precision(tiny_export, threads=2, batch_size=4, texts=TEXTS)
    # a damaged cache file is measured again, not trusted
    for f in (tmp_path / "cache" / "precision").glob("*.json"):
        f.write_text("{not json")
    with pytest.raises(AssertionError, match="measured again"):
        P.choose_precision(tiny_export, threads=2, batch_size=4)


def test_cli_embed_prints_the_choice_and_embeds_with_it(tiny_export, tmp_path, capsys):
    from fastembed_tune.cli.app import main
    from fastembed_tune.embed.loader import load_embedder

    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["embed", "--model", str(tiny_export), "-i", str(tmp_path / "t.txt"), "-o",
                 str(tmp_path / "e.npy"), "--threads", "2", "--quiet"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("precision: ")]
    assert len(line) == 1 and "CPU: " in line[0]
    chosen = line[0].split()[1]
    want = load_embedder(tiny_export, threads=2, precision=chosen).encode(TEXTS)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), want, atol=1e-5)


@pytest.mark.parametrize("engine,file,precision", [("onnxruntime", "model.onnx", None),
                                                   ("onnxruntime", "model_int8.onnx", None),
                                                   ("openvino", "onnx/model.onnx", "f32")])
def test_streams_give_the_vectors_of_one_stream(tiny_export, engine, file, precision):
    """Batches run two at a time (and one batch split over two streams in run()) give the vectors a
    single stream gives, in input order, whichever stream ran a batch."""
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    if engine == "openvino":
        pytest.importorskip("openvino")
    texts = [f"{t} {i}" * (1 + i % 7) for i, t in enumerate(TEXTS * 6)]
    one = OnnxEmbedder(tiny_export / file, threads=2, engine=engine, precision=precision, streams=1)
    two = OnnxEmbedder(tiny_export / file, threads=2, engine=engine, precision=precision)
    assert (one.streams, two.streams) == (1, 2)
    ref = one.embed(texts, batch_size=5)
    np.testing.assert_allclose(two.embed(texts, batch_size=5), ref, atol=1e-5)
    feed = one.feed(one.tokenizer.encode_batch(texts[:9]))
    np.testing.assert_allclose(two.run(feed), one.run(feed), atol=1e-5)
    np.testing.assert_allclose(two.run(feed, split=False), one.run(feed), atol=1e-5)  # whole, on one stream
    assert two._lone is None
    lone = one.feed(one.tokenizer.encode_batch(texts[7:8]))
    np.testing.assert_allclose(two.run(lone), ref[7:8], atol=1e-5)  # one text: one stream on every thread
    assert two._lone is not None and one._lone is None
    calls = []
    real_run = two.run
    two.run = lambda feed, split=True: calls.append(split) or real_run(feed, split)
    same = [texts[7]] * 4  # one batch: cut over the two streams, not left on one of them
    np.testing.assert_allclose(two.embed(same), np.repeat(ref[7:8], 4, axis=0), atol=1e-5)
    assert calls == [True]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_streams_are_refused(tiny_export, bad):
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    with pytest.raises(UserError, match="streams must be a positive integer"):
        OnnxEmbedder(tiny_export, streams=bad)


def test_probe_interleaves_the_candidates_each_round_one_later(monkeypatch):
    """Every candidate is timed in every position once (a fixed order favours whichever runs after
    which), and its best pass is what counts."""
    import fastembed_tune.embed.precision as P

    calls, speeds = [], iter(range(1, 100))
    monkeypatch.setattr(P, "_speed", lambda emb, texts, bs: calls.append(emb) or next(speeds))
    best = P._speeds({"a": "a", "b": "b", "c": "c"}, ["x"], 1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert best == {"a": 8, "b": 9, "c": 7}


def test_openvino_runs_short_batches_without_fused_attention(tiny_export, monkeypatch):
    """Batches padded to at most ``unfused_attention_max`` tokens run on a second compiled model with
    OpenVINO's fused attention off, compiled at the first such batch, longer ones on the first; both
    give the vectors of onnxruntime's fp32 graph; only the output read is compiled."""
    ov = pytest.importorskip("openvino")
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    configs = []
    real = ov.Core.compile_model
    monkeypatch.setattr(ov.Core, "compile_model",
                        lambda self, model, dev=None, cfg=None: configs.append(dict(cfg or {})) or real(self, model, dev, cfg))
    e = OnnxEmbedder(tiny_export / "onnx" / "model.onnx", threads=2, engine="openvino", precision="f32", streams=1,
                     unfused_attention_max=8)
    assert [c.get("SNIPPETS_MODE") for c in configs] == [None]
    assert [o.get_any_name() for o in e.session.outputs] == ["sentence_embedding"]
    long_texts = [t for t in TEXTS if len(e.encodings([t])[0].ids) > 8]
    short = ["ok", "a b"]
    ref = OnnxEmbedder(tiny_export, threads=2, streams=1)
    np.testing.assert_allclose(e.embed(long_texts), ref.embed(long_texts), atol=1e-5)
    assert [c.get("SNIPPETS_MODE") for c in configs] == [None]  # no short batch yet: nothing more compiled
    np.testing.assert_allclose(e.embed(short), ref.embed(short), atol=1e-5)
    assert [c.get("SNIPPETS_MODE") for c in configs] == [None, "DISABLE"]
    e.embed(short + long_texts)
    assert len(configs) == 2  # compiled once


def test_unfused_attention_by_cpu_and_refused_when_bad(tiny_export, monkeypatch):
    pytest.importorskip("openvino")
    import fastembed_tune.embed.onnx_embedder as I

    portable = tiny_export / "onnx" / "model.onnx"
    monkeypatch.setattr(I, "cpu_features", lambda: frozenset({"avx512f", "amx_bf16", "amx_int8"}))
    assert I.OnnxEmbedder(portable, engine="openvino").unfused_attention_max == I.UNFUSED_ATTENTION_MAX
    assert I.OnnxEmbedder(tiny_export).unfused_attention_max == 0  # onnxruntime: not a thing there
    monkeypatch.setattr(I, "cpu_features", lambda: frozenset({"avx512f", "avx512_bf16"}))  # measured on AMX only
    assert I.OnnxEmbedder(portable, engine="openvino").unfused_attention_max == 0
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(UserError, match="unfused_attention_max must be a non-negative integer"):
            I.OnnxEmbedder(portable, engine="openvino", unfused_attention_max=bad)


@pytest.mark.parametrize("int8_speed,want", [(103.0, "bf16"), (110.0, "int8-openvino")])
def test_a_lower_precision_must_lead_by_the_margin(tiny_export, monkeypatch, int8_speed, want):
    """A 3% lead is noise: the higher precision is kept; a 10% lead is not: the faster is chosen."""
    pytest.importorskip("openvino")
    monkeypatch.setattr(P, "candidates", lambda d: ["bf16", "int8-openvino", "fp32"])
    monkeypatch.setattr(P, "_file", lambda d, p: d / ("model.onnx" if p != "bf16" else "onnx/model.onnx"))
    monkeypatch.setattr(P, "_open", lambda p, f, t, *a: P.OnnxEmbedder(f, threads=t))  # the fp32 graph for all
    monkeypatch.setattr(P, "_speeds", lambda embs, *a: {"fp32": 40.0, "bf16": 100.0, "int8-openvino": int8_speed})
    c = P.choose_precision(tiny_export, threads=2, texts=TEXTS, batch_size=4, cache=False)
    assert c.candidate == want
    assert ("lower precision" in c.reason) == (want == "bf16")
