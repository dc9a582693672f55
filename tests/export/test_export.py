"""ONNX export, quantisation, parity and OnnxEmbedder.

The built-in MiniLM is exported once per session (conftest's ``minilm_export``: fp32 + int8); the
refusal and pooling cases use a tiny random BERT with MiniLM's tokenizer, which exports in seconds.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.bundled import SAMPLE_DIR
from fastembed_tune.embed.int8_weights import unsigned_weights
from fastembed_tune.embed.model import EmbeddingModel, default_model_path
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.parity import check_parity, passes
from fastembed_tune.export import onnx as export_mod
from fastembed_tune.export import quantize as quantize_mod
from fastembed_tune.export.onnx import ParityError, export_onnx

torch.set_num_threads(min(2, os.cpu_count() or 1))

LONG = " ".join(["Embeddings map texts to vectors so that similar meanings end up close together."] * 50)


def cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def corpus(n, skip=0):
    path = SAMPLE_DIR / "corpus.jsonl"
    with open(path) as f:
        return [json.loads(line)["text"] for line in f][skip:skip + n]


@pytest.fixture(scope="module")
def minilm():
    return EmbeddingModel.load()


@pytest.fixture(scope="module")
def exported(minilm_export):
    return minilm_export


@pytest.fixture(scope="module")
def fp32(exported):
    return OnnxEmbedder(exported[0], threads=2)


def tiny_model(path, pooling="mean", normalize=True, max_seq_length=128):
    from transformers import BertConfig, BertModel

    base = EmbeddingModel.load()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=base.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    m = EmbeddingModel(BertModel(cfg).eval(), base.tokenizer, pooling, normalize, max_seq_length)
    m.save(path)
    return path


# ---- layout and parity figures ----------------------------------------------------------------
def test_layout_and_metadata(exported):
    import onnx

    out, info = exported
    for f in ("model.onnx", "model_int8.onnx", "tokenizer.json", "tokenizer_config.json", "config.json",
              "special_tokens_map.json", "fastembed_tune_onnx.json", "onnx/model.onnx", "modules.json",
              "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (out / f).is_file(), f
    assert not [p for p in os.listdir(out.parent) if p.startswith(".minilm.tmp")]
    meta = json.loads((out / "fastembed_tune_onnx.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is True
    assert meta["max_seq_length"] == 256 and meta["dim"] == 384
    assert meta["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx", "portable": "onnx/model.onnx"}
    g = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in g.output] == ["sentence_embedding"]
    for i in g.input:  # dynamic batch and sequence axes
        assert all(d.dim_param and not d.dim_value for d in i.type.tensor_type.shape.dim)
    out_dims = g.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and out_dims[1].dim_value == 384


def test_parity_figures(exported):
    _, info = exported
    fp, q = info["parity"]["fp32"], info["parity"]["int8"]
    assert set(fp["cases"]) == {"batch33_padded", "batch1_one_token", "batch1_sentence", "batch1_long"}
    assert min(fp["cases"].values()) >= 0.9999
    assert min(q["cases"].values()) >= 0.99
    assert q["batched_vs_alone"] >= 0.99999
    assert info["parity"]["portable"]["min_cosine"] >= 0.9999


# ---- int8: batch-invariant, int8 word embeddings ------------------------------------------------------
def test_int8_is_batch_invariant(exported):
    """A text gets the same int8 vector alone and batched beside texts of every length (per-token
    activation scales; the dynamic per-tensor scales of before gave 0.9987)."""
    q = OnnxEmbedder(exported[0] / "model_int8.onnx", threads=2)
    texts = ["ok", LONG, "What is a tuple?"] + corpus(20, skip=300)
    together = q.embed(texts, batch_size=len(texts))
    alone = np.concatenate([q.embed([t], batch_size=1) for t in texts])
    assert cos(together, alone).min() >= 0.99999
    shuffled = q.embed(texts[::-1], batch_size=5)[::-1]  # other neighbours, other padding
    assert cos(shuffled, alone).min() >= 0.99999


def _mmi_graph(w: np.ndarray, m: int):
    """One MatMulIntegerToFloat: uint8 rows (zero point 128) x int8 weights, unit scales."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "s", "ws", "zp"], ["y"], domain="com.microsoft")
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1), "s"),
             numpy_helper.from_array(np.ones(n, np.float32), "ws"), numpy_helper.from_array(np.uint8(128), "zp")]
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("case", ["random", "extreme"])
def test_unsigned_weights_make_the_int8_gemm_exact(case):
    """On x86 without VNNI onnxruntime's u8 x s8 GEMM adds product pairs in 16 bits and saturates
    (255 x 127 x 2 > 32767); the uint8-weight rewrite computes the same products exactly on every CPU,
    and the original graph is exact wherever cpu.int8_pairs_saturate() says so."""
    import onnxruntime as ort

    from fastembed_tune.core.cpu import int8_pairs_saturate

    rng = np.random.default_rng(0)
    if case == "random":
        a, w = rng.integers(0, 256, (16, 384)).astype(np.uint8), rng.integers(-127, 128, (384, 48)).astype(np.int8)
    else:
        a, w = np.full((16, 384), 255, np.uint8), np.full((384, 48), 127, np.int8)
    exact = (a.astype(np.int64) - 128) @ w.astype(np.int64)

    def run(model):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"a": a})[0].astype(np.int64)

    original = _mmi_graph(w, len(a))
    if not int8_pairs_saturate():
        assert np.array_equal(run(original), exact)
    assert unsigned_weights(original) == 1
    assert np.array_equal(run(original), exact)


def test_int8_embedder_rewrites_weights_where_the_gemm_saturates(exported):
    from fastembed_tune.core.cpu import int8_pairs_saturate

    q = OnnxEmbedder(exported[0] / "model_int8.onnx", threads=2)
    assert q.unsigned_weights == int8_pairs_saturate()
    assert not OnnxEmbedder(exported[0], threads=2).unsigned_weights  # fp32: nothing to rewrite


def test_int8_file_and_word_embeddings(exported):
    import onnx
    from onnx import numpy_helper

    out, _ = exported
    assert os.path.getsize(out / "model_int8.onnx") < 0.35 * os.path.getsize(out / "model.onnx")
    g = onnx.load(str(out / "model_int8.onnx")).graph
    big = [i for i in g.initializer if i.dims and i.dims[0] == 30522]
    assert [numpy_helper.to_array(i).dtype for i in big if len(i.dims) == 2 and i.dims[1] == 384] == [np.int8]
    # the int8 rows times their scales are the fp32 table, within half a step
    table = EmbeddingModel.load().transformer.get_input_embeddings().weight.detach().numpy()
    rows = {i.name: numpy_helper.to_array(i) for i in big}
    q8 = next(v for v in rows.values() if v.dtype == np.int8)
    scale = next(v for v in rows.values() if v.dtype == np.float32 and v.shape == (30522, 1))
    assert np.all(np.abs(q8 * scale - table) <= scale * 0.5 + 1e-7)


# ---- the portable graph: standard operators, sentence-transformers' ONNX layout ----------------------
def test_portable_graph(exported, fp32, minilm):
    import onnx

    out, _ = exported
    m = onnx.load(str(out / "onnx" / "model.onnx"))
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}  # no onnxruntime contrib operators
    assert [o.name for o in m.graph.output] == ["last_hidden_state", "sentence_embedding"]
    p = OnnxEmbedder(out / "onnx" / "model.onnx", threads=2)
    texts = ["ok", LONG, "What is a tuple?"]
    feed = p.tokenize(texts)
    hidden, emb = p.session.run(None, feed)
    mask = feed["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # numpy reference: mean pooling + L2
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, pooled, atol=1e-5)
    assert cos(emb, minilm.encode(texts)).min() >= 0.9999
    modules = json.loads((out / "modules.json").read_text())
    assert [x["type"].rsplit(".", 1)[1] for x in modules] == ["Transformer", "Pooling", "Normalize"]


def test_portable_graph_in_openvino(exported, minilm):
    pytest.importorskip("openvino")
    texts = ["ok", LONG, "What is a tuple?", "Garbage collection reclaims memory."]
    ref = minilm.encode(texts)
    f32 = OnnxEmbedder(exported[0] / "onnx" / "model.onnx", threads=2, engine="openvino", precision="f32")
    assert cos(f32.embed(texts, batch_size=2), ref).min() >= 0.9999
    assert cos(f32.run(f32.tokenize(texts)), ref).min() >= 0.9999  # the engine-neutral call the server uses
    bf16 = OnnxEmbedder(exported[0] / "onnx" / "model.onnx", threads=2, engine="openvino", precision="bf16")
    assert cos(bf16.embed(texts, batch_size=2), ref).min() >= 0.999
    with pytest.raises(UserError, match="precision"):
        OnnxEmbedder(exported[0] / "onnx" / "model.onnx", engine="openvino", precision="int4")
    with pytest.raises(UserError, match="engine"):
        OnnxEmbedder(exported[0], engine="tensorrt")


def test_portable_layout_in_sentence_transformers(exported, minilm):
    pytest.importorskip("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(exported[0]), backend="onnx", device="cpu")
    texts = ["ok", LONG, "What is a tuple?"]
    assert cos(st.encode(texts), minilm.encode(texts)).min() >= 0.9999


def test_portable_layout_through_sentence_transformers_modules(exported, minilm):
    """What ``backend="onnx"`` does, without optimum (which needs transformers < 5): the graph's
    ``last_hidden_state`` through the Pooling and Normalize modules the folder's modules.json names."""
    import importlib

    import onnxruntime as ort
    import torch

    out = exported[0]
    texts = ["ok", LONG, "What is a tuple?"]
    mods = json.loads((out / "modules.json").read_text())
    sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = OnnxEmbedder(out / "onnx" / "model.onnx").tokenize(texts)
    hidden = sess.run(["last_hidden_state"], {i.name: feed[i.name] for i in sess.get_inputs()})[0]
    features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(feed["attention_mask"])}
    for m in mods[1:]:
        mod, cls = m["type"].rsplit(".", 1)
        module = getattr(importlib.import_module(mod), cls)
        features = (module.load(str(out / m["path"])) if m["path"] else module())(features)
    assert cos(features["sentence_embedding"].numpy(), minilm.encode(texts)).min() >= 0.9999


def test_exports_load_in_fastembed(exported, minilm):
    """fastembed (the real client) loads both graphs: the portable one pooling ``last_hidden_state``
    itself, the optimised one with pooling and normalisation already in the graph."""
    pytest.importorskip("fastembed")
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    texts = ["ok", LONG, "What is a tuple?"]
    ref = minilm.encode(texts)
    for name, file, pooling, norm in (("fet/portable", "onnx/model.onnx", PoolingType.MEAN, True),
                                      ("fet/optimised", "model.onnx", PoolingType.DISABLED, False)):
        TextEmbedding.add_custom_model(model=name, pooling=pooling, normalization=norm, sources=ModelSource(hf=name),
                                       dim=384, model_file=file)
        got = np.stack(list(TextEmbedding(model_name=name, specific_model_path=str(exported[0])).embed(texts)))
        assert cos(got, ref).min() >= 0.9999, name


# ---- the "cosine 0.90" trap -------------------------------------------------------------------------
def test_dynamic_axes_padding_and_lengths(fp32, minilm):
    """Lengths and batch sizes unlike the export example, padded and unpadded (regression for 0.90)."""
    texts = ["ok", "What is a tuple?", LONG] + corpus(30)
    ref = minilm.encode(texts)
    for t, r in zip(texts[:3], ref[:3]):  # batch 1, unpadded, three lengths
        assert cos(fp32.embed([t], batch_size=1), r[None])[0] >= 0.9999
    got = fp32.run(fp32.tokenize(texts))  # one padded batch of 33, input order
    assert got.shape == (33, 384) and cos(got, ref).min() >= 0.9999
    # a short text padded to 256 beside the long one equals the same text alone
    alone = fp32.embed(["ok"], batch_size=1)
    assert np.abs(got[0] - alone[0]).max() < 1e-4
    assert cos(fp32.embed(texts, batch_size=33), ref).min() >= 0.9999  # batched by length bucket


def test_embed_runs_batches_of_one_length_bucket(exported, minilm):
    """Every batch is padded to a multiple of 4 tokens (or to max_seq_length) and holds only texts of
    that bucket; the vectors equal PyTorch's and per-batch padding's, and a text's vector does not
    depend on its batch neighbours."""
    e = OnnxEmbedder(exported[0], threads=2)
    texts = ["ok", "What is a tuple?", LONG, LONG[:300]] + corpus(60, skip=100)
    lengths = [len(x.ids) for x in e.tokenizer.encode_batch(texts)]
    widths, calls = [], []
    run = e._run_one  # one batch, whichever stream runs it

    def spy(feed):
        mask = feed["attention_mask"]
        widths.append(mask.shape[1])
        calls.append(mask.sum(1).tolist())
        return run(feed)

    e._run_one = spy
    got = e.embed(texts, batch_size=16)
    assert sorted(n for c in calls for n in c) == sorted(lengths)  # each text once
    for w, c in zip(widths, calls):
        assert len(c) <= 16 and (w % 4 == 0 or w == e.max_seq_length)
        assert all(w == e.padded_length(n) for n in c)  # one bucket a batch
        assert all(w - 4 < n <= w for n in c)  # fewer than 4 padding tokens a text
    assert len(set(widths)) > 3
    ref = minilm.encode(texts)
    assert cos(got, ref).min() >= 0.9999
    per_batch = OnnxEmbedder(exported[0], threads=2, pad_multiple=0)  # what other stacks do
    run0, sizes = per_batch._run_one, []
    per_batch._run_one = lambda feed: (sizes.append(feed["attention_mask"].shape), run0(feed))[1]
    flat = per_batch.embed(texts, batch_size=16)
    assert [n for n, _ in sizes] == [16, 16, 16, 16]  # (the streams start batches in either order)
    assert sorted((w for _, w in sizes), reverse=True) == sorted(lengths, reverse=True)[::16]
    assert cos(got, flat).min() >= 0.99999
    e._run_one = run
    alone = np.concatenate([e.embed([t]) for t in texts[:8]])
    assert np.abs(alone - got[:8]).max() < 1e-5


def test_bucket_batches_cover_every_text_once():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fastembed_tune.embed.onnx_embedder import bucket_batches

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 300), max_size=80), st.integers(1, 9), st.integers(1, 20))
    def check(lengths, step, batch_size):
        buckets = [-(-n // step) * step for n in lengths]
        batches = bucket_batches(buckets, lengths, batch_size)
        flat = [int(i) for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        seen = []
        for b in batches:
            assert 1 <= len(b) <= batch_size and len({buckets[i] for i in b}) == 1
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
            seen.append(buckets[b[0]])
        assert seen == sorted(seen, reverse=True)

    check()


def test_pad_multiple_is_validated(exported):
    for bad in (-8, 2.5, True, "8"):
        with pytest.raises(UserError, match="pad_multiple"):
            OnnxEmbedder(exported[0], pad_multiple=bad)


def test_graph_reads_the_attention_mask(exported, fp32):
    """A graph whose mask was dropped or constant-folded at trace time ignores this change."""
    texts = ["ok", "a considerably longer sentence that forces padding"]
    feed = fp32.tokenize(texts)
    same = fp32.feed(fp32.tokenizer.encode_batch(texts))
    assert all(np.array_equal(feed[k], same[k]) for k in feed) and set(feed) == set(fp32.input_names)
    right = fp32.session.run(None, feed)[0]
    feed["attention_mask"] = np.ones_like(feed["attention_mask"])
    wrong = fp32.session.run(None, feed)[0]
    assert cos(right[:1], wrong[:1])[0] < 0.99


def test_tokenizer_json_as_is_matches_pytorch(exported, fp32, minilm):
    """Users who load tokenizer.json without overrides (onnxruntime, fastembed) get the model's
    truncation (256) and per-batch padding; the shipped hub file (truncation 128, Fixed 128) did not."""
    from tokenizers import Tokenizer

    out, _ = exported
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 256
    texts = [LONG, "ok", "The quick brown fox jumps over the lazy dog."]
    ref = minilm.encode(texts)

    def run(tok_file):
        tok = Tokenizer.from_file(str(tok_file))
        enc = tok.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        return fp32.session.run(None, feed)[0], feed["input_ids"].shape

    ours, shape = run(out / "tokenizer.json")
    assert shape == (3, 256) and cos(ours, ref).min() >= 0.9999
    shipped, shape = run(os.path.join(default_model_path(), "tokenizer.json"))
    assert shape == (3, 128) and cos(shipped, ref)[0] < 0.99  # the trap this export fixes


# ---- OnnxEmbedder against EmbeddingModel.encode -----------------------------------------------------
def test_onnx_embedder_equals_encode(exported, fp32, minilm):
    texts = corpus(40, skip=100) + ["", "x", "Hello, World!", LONG]
    ref = minilm.encode(texts, batch_size=16)
    got = fp32.embed(texts, batch_size=7)  # length-sorted batches, output in input order
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert cos(got, ref).min() >= 0.9999
    q = OnnxEmbedder(exported[0] / "model_int8.onnx", threads=2).embed(texts, batch_size=16)
    c = cos(q, ref)
    assert c.min() >= 0.98 and c.mean() >= 0.995
    assert fp32.embed([]).shape == (0, 384)


def test_embed_rejects_bad_arguments(fp32):
    with pytest.raises(UserError, match="single string"):
        fp32.embed("hello")
    with pytest.raises(UserError, match="not a string"):
        fp32.embed(["a", 3])
    with pytest.raises(UserError, match="batch_size"):
        fp32.embed(["a"], batch_size=0)


# ---- bad input --------------------------------------------------------------------------------------
def test_not_a_model_dir(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a model directory"):
        export_onnx(tmp_path / "src", out)
    with pytest.raises(UserError, match="not found"):
        export_onnx(tmp_path / "missing", out)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["src"]
    with pytest.raises(UserError, match="quantize"):
        export_onnx(default_model_path(), out, quantize="int4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier ONNX export"):
        export_onnx(default_model_path(), busy)
    assert os.listdir(busy) == ["keep.txt"]


def _copy_fp32(exported, dst):
    out, _ = exported
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("model_int8.onnx"))
    return dst


def test_tokenizer_graph_mismatch(exported, tmp_path):
    from tokenizers import Tokenizer

    d = _copy_fp32(exported, tmp_path / "m")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.add_tokens([f"newtoken{i}" for i in range(10)])  # vocab 30532 > 30522 embedding rows
    tok.save(str(d / "tokenizer.json"))
    with pytest.raises(UserError, match="embedding matrix"):
        OnnxEmbedder(d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        OnnxEmbedder(d)


def _write_graph(path, inputs, out_shape):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["E", inputs[0]], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["sentence_embedding"], axes=[1], keepdims=0)
             if len(out_shape) == 2 else helper.make_node("Identity", ["h"], ["sentence_embedding"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in inputs],
                          [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.zeros((30522, 4), np.float32), "E")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_graph_missing_inputs_or_wrong_output(exported, tmp_path):
    d = _copy_fp32(exported, tmp_path / "m")
    _write_graph(d / "model.onnx", ["input_ids"], ["b", 4])
    with pytest.raises(UserError, match="no 'attention_mask' input"):
        OnnxEmbedder(d)
    _write_graph(d / "model.onnx", ["input_ids", "attention_mask", "position_ids"], ["b", 4])
    with pytest.raises(UserError, match="position_ids"):
        OnnxEmbedder(d)
    _write_graph(d / "model.onnx", ["input_ids", "attention_mask"], ["b", "s", 4])
    with pytest.raises(UserError, match="rank 3"):
        OnnxEmbedder(d)
    (d / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        OnnxEmbedder(d)


# ---- refused exports leave nothing behind ---------------------------------------------------------------
def test_refused_export_leaves_nothing(tmp_path, monkeypatch):
    src = tiny_model(tmp_path / "tiny")
    out = tmp_path / "exports" / "tiny"
    first = export_onnx(src, out, optimize=False)  # a good earlier export stays if a later one is refused
    before = sorted(os.listdir(out))
    assert first["parity"]["fp32"]["min_cosine"] >= 0.9999
    monkeypatch.setattr(export_mod, "FP32_MIN_COSINE", 1.01)
    with pytest.raises(ParityError, match="fp32 min cosine"):
        export_onnx(src, tmp_path / "exports" / "fresh")
    with pytest.raises(ParityError):
        export_onnx(src, out, optimize=False)
    assert sorted(os.listdir(tmp_path / "exports")) == ["tiny"]
    assert sorted(os.listdir(out)) == before
    monkeypatch.setattr(export_mod, "FP32_MIN_COSINE", 0.9999)
    monkeypatch.setattr(export_mod, "INT8_MIN_COSINE", 1.01)
    with pytest.raises(ParityError, match="int8 min cosine"):
        export_onnx(src, tmp_path / "exports" / "fresh", quantize="int8", optimize=False)
    assert sorted(os.listdir(tmp_path / "exports")) == ["tiny"]


@pytest.mark.parametrize("pooling,normalize", [("cls", False), ("max", True), ("lasttoken", True)])
def test_pooling_modes_in_graph(tmp_path, pooling, normalize):
    src = tiny_model(tmp_path / "tiny", pooling, normalize)
    info = export_onnx(src, tmp_path / "onnx")
    assert info["parity"]["fp32"]["min_cosine"] >= 0.9999
    m = EmbeddingModel.load(src)
    texts = ["ok", "a short one", LONG]
    got = OnnxEmbedder(tmp_path / "onnx").embed(texts, batch_size=2)
    ref = m.encode(texts)
    assert np.allclose(got, ref, atol=1e-4, rtol=1e-3)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5) == normalize


# ---- CLI: export and embed ------------------------------------------------------------------------
def test_cli_export_and_embed(tmp_path, capsys, minilm):
    from fastembed_tune.cli.app import main

    model = tiny_model(tmp_path / "tiny")
    out = tmp_path / "onnx"
    assert main(["export", "--model", str(model), "-o", str(out), "--quantize", "int8"]) == 0
    assert "fp32 min cosine" in capsys.readouterr().out
    texts = ["a tuple", "garbage collection reclaims memory", "ok"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(texts)))
    ref = EmbeddingModel.load(model).encode(texts)
    for extra, name, tol in ((["--precision", "fp32"], "fp32.npy", 1e-4), (["--int8"], "int8.npy", 0.05),
                             (["--precision", "int8"], "int8b.npy", 0.05), ([], "auto.npy", 0.05)):
        assert main(["embed", "--model", str(out), "-i", str(tmp_path / "in.jsonl"), "-o",
                     str(tmp_path / name), "--quiet", *extra]) == 0
        got = np.load(tmp_path / name)
        assert got.shape == ref.shape
        assert cos(got, ref).min() > 1 - tol
    # .jsonl output keeps the ids; a model directory embeds with PyTorch
    assert main(["embed", "--model", str(model), "-i", str(tmp_path / "in.jsonl"), "-o",
                 str(tmp_path / "e.jsonl"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d0", "d1", "d2"]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), ref, atol=1e-6)


def test_cli_export_embed_bad_input(tmp_path, capsys):
    from fastembed_tune.cli.app import main

    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "x.txt").write_text("hi")
    assert main(["export", "--model", str(tmp_path / "notmodel"), "-o", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    (tmp_path / "t.txt").write_text("hello\n")
    assert main(["embed", "--model", str(tmp_path / "notmodel"), "-i", str(tmp_path / "t.txt"),
                 "-o", str(tmp_path / "e.npy")]) == 2
    assert main(["embed", "--model", default_model_path(), "-i", str(tmp_path / "t.txt"),
                 "-o", str(tmp_path / "e.csv")]) == 2
    assert main(["embed", "--model", default_model_path(), "--int8", "-i", str(tmp_path / "t.txt"),
                 "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 4 and "Traceback" not in err
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.csv").exists()


# ---- int8 calibration on the user's own texts -------------------------------------------------------------
def _spy_stats(monkeypatch):
    """Record the calibration feeds and channel statistics of every int8 export."""
    seen = []
    real = quantize_mod.activation_stats

    def spy(fp32, feeds):
        stats = real(fp32, feeds)
        seen.append((feeds, stats))
        return stats

    monkeypatch.setattr(quantize_mod, "activation_stats", spy)
    return seen


def test_calibration_texts_are_used(tmp_path, monkeypatch):
    src = tiny_model(tmp_path / "tiny")
    seen = _spy_stats(monkeypatch)
    default = export_onnx(src, tmp_path / "default", quantize="int8", optimize=False)
    mine = corpus(150)  # the start of the corpus: the bundled calibration sample is its end
    info = export_onnx(src, tmp_path / "mine", quantize="int8", optimize=False, calibration_texts=mine)
    assert default["int8_calibration"] == {"source": "bundled_sample", "texts": 128}
    assert info["int8_calibration"] == {"source": "calibration_texts", "texts": 128}  # at most 128 of 150
    meta = json.loads((tmp_path / "mine" / "fastembed_tune_onnx.json").read_text())
    assert meta["int8"]["calibration"] == {"source": "calibration_texts", "texts": 128}
    assert passes(info["parity"]["int8"], 0.99)

    (feeds0, stats0), (feeds1, stats1) = seen
    assert sum(len(f["input_ids"]) for f in feeds1) == 33 + 128
    picked, source = quantize_mod.calibration_set(mine)
    assert source == "calibration_texts" and picked[0] == mine[0] and len(set(picked)) == 128
    want = OnnxEmbedder(tmp_path / "mine").tokenize(picked[-16:])  # the last calibration batch
    assert np.array_equal(feeds1[-1]["input_ids"], want["input_ids"])
    assert stats0.keys() == stats1.keys()
    assert any(not np.allclose(stats0[k]["max"], stats1[k]["max"]) for k in stats0)


@pytest.mark.parametrize("bad,match", [
    ([], "calibration_texts is empty"),
    (["a text", 3], "item 1 is a int, not a string"),
    (["a text", "   "], "item 1 is empty"),
    ("one text", "not a single string"),
    ({"d1": "a text"}, "not a mapping"),
    (5, "got int"),
])
def test_bad_calibration_texts(tmp_path, bad, match):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=match) as e:
        export_onnx(default_model_path(), out, quantize="int8", calibration_texts=bad)
    assert "\n" not in str(e.value) and not isinstance(e.value, ParityError)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_calibration_texts_need_int8(tmp_path):
    with pytest.raises(UserError, match="only calibrate the int8 graph"):
        export_onnx(default_model_path(), tmp_path / "out", calibration_texts=["a text"])
    assert os.listdir(tmp_path) == []


def test_nan_calibration_statistics_are_refused(tmp_path, monkeypatch):
    src = tiny_model(tmp_path / "tiny")
    real = quantize_mod.activation_stats

    def nan_stats(fp32, feeds):
        stats = real(fp32, feeds)
        next(iter(stats.values()))["max"][0] = np.nan
        return stats

    monkeypatch.setattr(quantize_mod, "activation_stats", nan_stats)
    with pytest.raises(ParityError, match="NaN/Inf"):
        export_onnx(src, tmp_path / "out", quantize="int8", optimize=False, calibration_texts=["a text"])
    assert sorted(os.listdir(tmp_path)) == ["tiny"]


def test_parity_refuses_nan():
    ref = np.eye(2, dtype=np.float32)
    nan = check_parity(lambda batch, bs: np.full((len(batch), 2), np.nan, np.float32), ["a", "b"],
                       [("both", [0, 1], 2)], ref)
    assert np.isnan(nan["min_cosine"]) and not passes(nan, -1.0)
    ok = check_parity(lambda batch, bs: ref[[0, 1]], ["a", "b"], [("both", [0, 1], 2)], ref)
    assert ok["min_cosine"] == 1.0 and passes(ok, export_mod.FP32_MIN_COSINE)
