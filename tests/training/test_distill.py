"""Distillation: layer pruning, the teacher cache, the loop (MSE, KL, projection), saving.

Everything runs on tiny random BERTs (hidden 32 / 16) with the MiniLM tokenizer.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import Pair
from fastembed_tune.embed.model import EmbeddingModel, default_model_path
from fastembed_tune.training.distill import (
    DistillConfig,
    default_layers,
    distill,
    distill_loss,
    distillation_texts,
    hidden_state_loss,
    in_batch_kl,
    parse_layers,
    prune_layers,
    pseudo_queries,
    query_word_range,
    spread_layers,
    teacher_embeddings,
)

WORDS = ["apple", "river", "engine", "violin", "planet", "bread", "tiger", "castle", "rocket", "garden",
         "pencil", "ocean", "candle", "mirror", "forest", "silver", "window", "dragon", "coffee", "saddle"]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models here: see conftest.one_torch_thread."""


def _tiny(hidden: int, layers: int, seed: int) -> EmbeddingModel:
    """A random BERT; initializer_range 0.2 (not 0.02) so that its layers are far from the identity
    and a pruned copy starts far from the teacher."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                                  initializer_range=0.2)
    return EmbeddingModel(transformers.BertModel(cfg), tok, "mean", True, 32).eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("teacher") / "model"
    _tiny(32, 4, seed=0).save(path)
    return str(path)


@pytest.fixture(scope="module")
def small_student_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("student") / "model"
    _tiny(16, 1, seed=1).save(path)
    return str(path)


# ---- prune_layers ---------------------------------------------------------------------------


def test_prune_keeps_exactly_the_requested_layers(teacher_dir):
    teacher = EmbeddingModel.load(teacher_dir)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = prune_layers(teacher, [1, 3])
    assert student.transformer.config.num_hidden_layers == 2
    assert len(student.transformer.encoder.layer) == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([1, 3]):
        prefix_s, prefix_t = f"transformer.encoder.layer.{new}.", f"transformer.encoder.layer.{old}."
        names = [k for k in t_sd if k.startswith(prefix_t)]
        assert names
        for k in names:
            torch.testing.assert_close(s_sd[prefix_s + k[len(prefix_t):]], t_sd[k], rtol=0, atol=0)
    assert not any(k.startswith("transformer.encoder.layer.2.") for k in s_sd)
    for k, v in s_sd.items():  # the embeddings (and pooler) are copied
        if "encoder.layer" not in k:
            torch.testing.assert_close(v, t_sd[k], rtol=0, atol=0)
    # a deep copy: training the student leaves the teacher alone, and the teacher is unchanged
    with torch.no_grad():
        student.transformer.encoder.layer[0].output.dense.weight.add_(1.0)
        student.transformer.embeddings.word_embeddings.weight.add_(1.0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert teacher.transformer.config.num_hidden_layers == 4
    assert [layer.attention.self.layer_idx for layer in student.transformer.encoder.layer
            if hasattr(layer.attention.self, "layer_idx")] in ([], [0, 1])


@pytest.mark.parametrize("layers, match", [
    ([0, 4], "between 0 and 3"), ([-1], "between 0 and 3"), ([1, 1], "listed twice.*between 0 and 3"),
    ([], "at least one layer.*between 0 and 3"), ("0,a", "comma-separated integers"),
    ([3, 1], "increasing order.*did you mean 1,3"), ("", "--layers is empty"), (" ", "--layers is empty"),
])
def test_bad_layer_lists_raise_user_error(teacher_dir, layers, match):
    teacher = EmbeddingModel.load(teacher_dir)
    with pytest.raises(UserError, match=match):
        prune_layers(teacher, layers)


def test_parse_and_default_layers():
    assert parse_layers("0,2,4") == [0, 2, 4]
    assert default_layers(6) == [0, 2, 5] and default_layers(3) == [0, 2] and default_layers(4) == [0, 3]
    assert default_layers(2) == [1]  # the last layer (pooling reads it) is always kept
    with pytest.raises(UserError):
        parse_layers([0.5])


def test_pruned_model_round_trip_and_sentence_transformers_parity(teacher_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    student = prune_layers(EmbeddingModel.load(teacher_dir), [0, 2])
    texts = _texts(6, seed=3)
    path = tmp_path / "pruned"
    student.save(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    reloaded = EmbeddingModel.load(path)
    assert len(reloaded.transformer.encoder.layer) == 2
    expected = student.encode(texts)
    np.testing.assert_allclose(reloaded.encode(texts), expected, atol=1e-5)
    st = SentenceTransformer(str(path), device="cpu")
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), expected, atol=1e-5)


# ---- the teacher cache ----------------------------------------------------------------------


def test_teacher_cache_is_reused_and_invalidated(teacher_dir, tmp_path, monkeypatch):
    teacher = EmbeddingModel.load(teacher_dir)
    calls = []
    real = teacher.encode
    monkeypatch.setattr(teacher, "encode", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw))
    texts = _texts(40, seed=4)
    path = tmp_path / "cache" / "t.npy"

    first = teacher_embeddings(teacher, texts, path, batch_size=8)
    assert isinstance(first, np.memmap) and first.dtype == np.float32 and first.shape == (40, 32)
    assert sum(calls) == 40
    np.testing.assert_allclose(first, real(texts), atol=1e-6)  # rows in input order
    assert np.load(path).shape == (40, 32)  # a plain .npy
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]

    calls.clear()
    again = teacher_embeddings(teacher, texts, path, batch_size=8)
    assert calls == []  # reused, the teacher never ran
    np.testing.assert_array_equal(again, first)

    changed = texts[:-1] + ["something else entirely"]
    third = teacher_embeddings(teacher, changed, path, batch_size=8)
    assert sum(calls) == 40  # recomputed
    np.testing.assert_allclose(third[-1], real(["something else entirely"])[0], atol=1e-6)

    calls.clear()
    teacher.max_seq_length = 4  # a different max_seq_length: a different key
    teacher_embeddings(teacher, changed, path, batch_size=8)
    assert sum(calls) == 40

    calls.clear()
    with torch.no_grad():  # different weights: a different teacher
        teacher.transformer.embeddings.word_embeddings.weight.mul_(1.5)
    teacher_embeddings(teacher, changed, path, batch_size=8)
    assert sum(calls) == 40


def test_teacher_cache_without_its_key_is_recomputed(teacher_dir, tmp_path):
    teacher = EmbeddingModel.load(teacher_dir)
    path = tmp_path / "t.npy"
    teacher_embeddings(teacher, ["a", "b"], path)
    os.unlink(str(path) + ".meta.json")  # as if killed between the rename and the key
    calls = []
    real = teacher.encode
    teacher.encode = lambda texts, **kw: calls.append(1) or real(texts, **kw)
    teacher_embeddings(teacher, ["a", "b"], path)
    assert calls


# ---- the loop -------------------------------------------------------------------------------


def _mse(model: EmbeddingModel, target: np.ndarray, texts: list[str]) -> float:
    return float(((model.encode(texts) - target) ** 2).mean())


def test_distillation_reduces_mse_on_held_out_texts(teacher_dir, tmp_path):
    train_texts, held_out = _texts(192, seed=5), _texts(48, seed=6)
    teacher = EmbeddingModel.load(teacher_dir)
    target = teacher.encode(held_out)
    before = _mse(prune_layers(teacher, [0, 2]), target, held_out)
    cfg = DistillConfig(layers="0,2", epochs=2, batch_size=16, lr=3e-3, logging_steps=4, show_progress_bar=False,
                        device="cpu")
    out = distill(teacher_dir, train_texts + train_texts[:5], tmp_path / "d", cfg)
    assert out["texts"] == 192 and out["steps"] == 24  # duplicates dropped; 2 epochs x 12 batches
    assert out["student_layers"] == [0, 2] and out["student_num_layers"] == 2 and not out["projection"]
    student = EmbeddingModel.load(out["output"])
    assert len(student.transformer.encoder.layer) == 2
    after = _mse(student, target, held_out)
    assert after < 0.5 * before, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "d" / "distill_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 16, 20, 24]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert json.loads((tmp_path / "d" / "distill_summary.json").read_text())["steps"] == 24
    assert not out["cache_reused"]
    # a second run on the same texts reuses the teacher cache; keyword settings override the config's
    again = distill(teacher_dir, train_texts, tmp_path / "d", replace(cfg, layers=None, epochs=1, batch_size=64, lr=1e-3))
    assert again["cache_reused"] and again["student_layers"] == [0, 3]  # default: half, first to last


def test_kl_term_runs_and_is_finite(teacher_dir, tmp_path):
    t, s = torch.randn(6, 32), torch.randn(6, 16, requires_grad=True)
    kl = in_batch_kl(t, s, temperature=0.05)
    kl.backward()
    assert torch.isfinite(kl) and kl > 0 and torch.isfinite(s.grad).all()
    assert float(in_batch_kl(t, t.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(in_batch_kl(t[:1], s[:1].detach())) == 0.0
    out = distill(teacher_dir, _texts(40, seed=7), tmp_path / "kl", DistillConfig(layers=[1], batch_size=8, lr=1e-3, kl_weight=1.0, kl_temperature=0.1, logging_steps=1, show_progress_bar=False, device="cpu"))
    assert np.isfinite(out["final_loss"])
    lines = [json.loads(x) for x in (tmp_path / "kl" / "distill_log.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in lines)
    assert all(r["loss"] >= r["mse"] for r in lines)


def test_student_with_another_dim_uses_the_projection(teacher_dir, small_student_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = distill(teacher_dir, _texts(32, seed=8), tmp_path / "p", DistillConfig(student_dir=small_student_dir, batch_size=8, lr=1e-3, show_progress_bar=False, device="cpu"))
    assert out["projection"] and out["student_dim"] == 16 and out["teacher_dim"] == 32
    assert out["student_layers"] is None and out["student_num_layers"] == 1
    st = SentenceTransformer(out["output"], device="cpu")
    assert st.encode(["apple river"]).shape == (1, 16)


def test_distill_argument_errors(teacher_dir, small_student_dir, tmp_path):
    with pytest.raises(UserError, match="not both"):
        distill(teacher_dir, ["a"], tmp_path, DistillConfig(student_dir=small_student_dir, layers=[0]))
    with pytest.raises(UserError, match="non-empty text"):
        distill(teacher_dir, ["", "  "], tmp_path)
    with pytest.raises(UserError, match="kl_temperature"):
        distill(teacher_dir, ["a"], tmp_path, DistillConfig(kl_temperature=0))
    with pytest.raises(UserError, match="between 0 and 3"):
        distill(teacher_dir, ["a"], tmp_path, DistillConfig(layers="0,9", show_progress_bar=False))
    with pytest.raises(TypeError, match="no_such_setting"):  # a misspelt setting is not silently ignored
        distill(teacher_dir, ["a"], tmp_path, DistillConfig(no_such_setting=1))


def test_cli_distill_needs_texts(tmp_path, capsys):
    from fastembed_tune.cli.app import main

    assert main(["distill", "-o", str(tmp_path / "d")]) == 2
    assert "give the texts to distil on" in capsys.readouterr().err
    assert main(["distill", "--pairs", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "d")]) == 2


def test_teacher_embeddings_use_precomputed_rows(teacher_dir, tmp_path):
    """Rows the caller already has (e.g. from evaluating the teacher) are copied, not recomputed."""
    teacher = EmbeddingModel.load(teacher_dir)
    texts = _texts(20, seed=3)
    ref = teacher.encode(texts)
    seen = []
    real = teacher.encode
    teacher.encode = lambda t, **kw: seen.extend(t) or real(t, **kw)
    known = {texts[i]: ref[i] for i in range(0, 20, 2)}
    out = teacher_embeddings(teacher, texts, tmp_path / "t.npy", precomputed=known)
    assert sorted(seen) == sorted(texts[1::2])  # only the others went through the teacher
    np.testing.assert_allclose(out, ref, atol=1e-6)


# ---- a better student: pseudo-queries, the contrastive term, validated epochs ---------------------


def test_pseudo_queries_are_deterministic_substrings_of_the_right_length():
    docs = _texts(30, seed=9) + ["(BER) The fraction of a message,  or block of data, that is wrong.", "", "   "]
    a = pseudo_queries(docs, per_doc=3, min_words=2, max_words=4, seed=1)
    assert a == pseudo_queries(docs, per_doc=3, min_words=2, max_words=4, seed=1)  # deterministic
    assert a != pseudo_queries(docs, per_doc=3, min_words=2, max_words=4, seed=2)  # and seeded
    assert len(a) == 3 * 31  # empty documents give none; nothing here trims to empty
    it = iter(a)
    for doc in docs[:31]:
        for _ in range(3):
            span = next(it)
            assert span in doc and span == span.strip(" .,;:()") and 1 <= len(span.split()) <= 4
    assert pseudo_queries(["one"], per_doc=2, min_words=3, max_words=5) == ["one", "one"]
    assert pseudo_queries(docs, per_doc=0) == []


def test_distillation_texts_with_pseudo_queries():
    pairs = [Pair("bit error rate", "the fraction of bits that are wrong"), Pair("cpu", "the processor")]
    corpus = ["the processor of a computer", "a protocol for sending mail between servers"]
    plain = distillation_texts(pairs, corpus)
    more = distillation_texts(pairs, corpus, pseudo_per_doc=2, seed=0)
    assert more[:len(plain)] == plain and len(more) > len(plain)
    lo, hi = query_word_range([p.query for p in pairs])
    assert (lo, hi) == (1, 3)
    assert all(any(x in d for d in corpus) and lo <= len(x.split()) <= hi for x in more[len(plain):])


def _reference_loss(emb, targets, n, w, scale, proj=None, keys=None):
    """MSE + w * InfoNCE written out in plain torch (cross-entropy over masked logits)."""
    pred = emb @ proj.T if proj is not None else emb
    mse = ((pred - targets) ** 2).mean()
    q, p = emb[-2 * n:-n], emb[-n:]
    logits = scale * q @ p.T
    if keys is not None:  # a doc with the positive's key (the same text) is no negative
        same = keys[None, :] == keys[:, None]
        logits = logits.masked_fill(same & ~torch.eye(n, dtype=torch.bool), float("-inf"))
    return mse + w * torch.nn.functional.cross_entropy(logits, torch.arange(n))


@pytest.mark.parametrize("with_projection", [False, True])
def test_distill_loss_is_mse_plus_infonce(with_projection):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(10, 8), dim=1).requires_grad_()
    targets = torch.randn(10, 12 if with_projection else 8)
    proj = torch.nn.Linear(8, 12, bias=False) if with_projection else None
    loss, mse, con = distill_loss(emb, targets, n_pairs=3, contrastive_weight=0.3, scale=20.0, projection=proj)
    ref = _reference_loss(emb, targets, 3, 0.3, 20.0, proj.weight if proj is not None else None)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    g, = torch.autograd.grad(loss, emb)
    g_ref, = torch.autograd.grad(ref, emb)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    # duplicate positives (the same text twice in a batch) are not negatives of each other
    keys = torch.tensor([5, 5, 7])
    loss_k, _, _ = distill_loss(emb, targets, 3, 0.3, 20.0, doc_keys=keys, projection=proj)
    torch.testing.assert_close(loss_k, _reference_loss(emb, targets, 3, 0.3, 20.0,
                                                       proj.weight if proj is not None else None, keys))
    # without pairs or weight it is the MSE alone, as before
    for n, w in ((0, 0.3), (3, 0.0)):
        only, m, c = distill_loss(emb, targets, n, w, projection=proj)
        assert c is None and torch.equal(only, m)


def test_bad_options_raise_value_errors(teacher_dir, tmp_path):
    pairs = [("q1", "d1"), ("q2", "d2")]
    cases = [
        (dict(contrastive_weight=0.1), "needs training pairs"),
        (dict(pairs=pairs), "contrastive_weight > 0"),
        (dict(pairs=pairs, contrastive_weight=-1.0), "contrastive_weight must be"),
        (dict(pairs=pairs, contrastive_weight=float("nan")), "contrastive_weight must be"),
        (dict(pairs=pairs, contrastive_weight=0.1, contrastive_scale=0), "contrastive_scale must be"),
        (dict(pairs=pairs, contrastive_weight=0.1, pair_batch_size=1), "pair_batch_size must be"),
        (dict(pairs=pairs[:1], contrastive_weight=0.1), "at least 2 pairs"),
        (dict(pairs=[("q", "")] * 2, contrastive_weight=0.1), r"pairs\[0\]"),
        (dict(validation=object()), "score\\(model\\)"),
        (dict(patience=0), "patience must be"),
        (dict(tolerance=-0.1), "tolerance must be"),
    ]
    for kw, match in cases:
        runtime = {k: kw.pop(k) for k in ("pairs", "validation") if k in kw}
        with pytest.raises(ValueError, match=match):
            distill(teacher_dir, ["a"], tmp_path / "bad", DistillConfig(show_progress_bar=False, **kw), **runtime)
    with pytest.raises(ValueError, match="min_words <= max_words"):
        pseudo_queries(["a b"], min_words=3, max_words=2)
    with pytest.raises(ValueError, match="per_doc"):
        pseudo_queries(["a b"], per_doc=-1)
    with pytest.raises(ValueError, match="n_pairs"):
        distill_loss(torch.zeros(3, 2), torch.zeros(3, 2), n_pairs=2, contrastive_weight=1.0)
    with pytest.raises(ValueError, match="keep between 1 and 6"):
        spread_layers(6, 0)


class _ScriptedValidation:
    """Scores from a script; remembers the student's embedding of a probe text at every call."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def score(self, model) -> float:
        model.eval()
        self.seen.append(model.encode(["apple river engine"]))
        model.train()
        return self.scores[len(self.seen) - 1]


def test_contrastive_distillation_ships_the_best_validated_epoch(teacher_dir, tmp_path):
    texts = _texts(48, seed=10)
    pairs = [(f"q {t.split()[0]} {i}", t) for i, t in enumerate(texts[:16])]
    val = _ScriptedValidation([0.2, 0.5, 0.3, 0.1])
    cfg = DistillConfig(layers=[0, 3], epochs=4, batch_size=16, lr=1e-3, contrastive_weight=0.1, pair_batch_size=4,
                        patience=2, logging_steps=1, show_progress_bar=False, device="cpu")
    out = distill(teacher_dir, texts, tmp_path / "c", cfg, pairs=pairs, validation=val)
    assert out["texts"] == 48 + 16 and out["pairs"] == 16  # the queries joined the texts
    assert out["best_epoch"] == 2 and out["epochs_run"] == 4 and out["steps"] == 4 * 4
    assert [c["epoch"] for c in out["validation"]] == [1, 2, 3, 4]
    student = EmbeddingModel.load(out["output"])  # the best epoch's weights were saved
    np.testing.assert_allclose(student.encode(["apple river engine"]), val.seen[1], atol=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "c" / "distill_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["contrastive"]) and r["contrastive"] > 0 for r in lines)
    assert all(r["loss"] == pytest.approx(r["mse"] + 0.1 * r["contrastive"], rel=1e-4) for r in lines)
    assert all(r["texts_per_s"] > 0 for r in lines)
    early = distill(teacher_dir, texts, tmp_path / "e", DistillConfig(layers=[3], epochs=5, batch_size=32, patience=2, show_progress_bar=False, device="cpu"), validation=_ScriptedValidation([0.5, 0.1, 0.1, 0.9, 0.9]))
    assert early["epochs_run"] == 3 and early["best_epoch"] == 1  # stopped after 2 epochs below the best


def test_hidden_state_loss_matches_numpy():
    rng = np.random.default_rng(3)
    teacher = [torch.from_numpy(rng.normal(size=(2, 5, 6)).astype(np.float32)) for _ in range(5)]  # emb + 4 layers
    student = [teacher[0], torch.from_numpy(rng.normal(size=(2, 5, 6)).astype(np.float32)), teacher[4]]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = float(hidden_state_loss(student, teacher, mask, [1, 3]))

    def dist(s, t):  # mean over real tokens of 1 - cos
        s, t, m = s.numpy(), t.numpy(), mask.numpy().astype(bool)
        cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
        return float((1 - cos)[m].mean())

    want = (dist(student[1], teacher[2]) + dist(student[2], teacher[4])) / 2 * (2 / 6)
    assert got == pytest.approx(want, rel=1e-5) and dist(student[2], teacher[4]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        hidden_state_loss(student[:2], teacher, mask, [1, 3])


def test_hidden_state_term_runs_and_pulls_the_layers_to_the_teacher(teacher_dir, tmp_path):
    texts = _texts(64, seed=8)
    kw = dict(layers=[0, 2], batch_size=16, lr=3e-3, epochs=2, logging_steps=1, show_progress_bar=False,
              device="cpu", bf16=False)
    plain = distill(teacher_dir, texts, tmp_path / "plain", DistillConfig(**kw))
    layered = distill(teacher_dir, texts, tmp_path / "hidden", DistillConfig(hidden_weight=5.0, **kw))
    assert layered["hidden_weight"] == 5.0 and plain["hidden_weight"] == 0.0
    lines = [json.loads(x) for x in (tmp_path / "hidden" / "distill_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["hidden"]) and r["loss"] >= r["mse"] for r in lines)
    assert lines[-1]["hidden"] < lines[0]["hidden"]

    teacher = EmbeddingModel.load(teacher_dir)
    feats = teacher.tokenize(texts)

    def layer_distance(model_dir):  # the term itself, recomputed on every text for each student
        student = EmbeddingModel.load(model_dir)
        with torch.no_grad():
            s = student(dict(feats, output_hidden_states=True))["all_layer_embeddings"]
            t = teacher(dict(feats, output_hidden_states=True))["all_layer_embeddings"]
        return float(hidden_state_loss(s, t, feats["attention_mask"], [0, 2]))

    assert layer_distance(layered["output"]) < layer_distance(plain["output"])
    with pytest.raises(UserError, match="layer-pruned"):
        distill(teacher_dir, texts, tmp_path / "x", DistillConfig(student_dir=plain["output"], hidden_weight=1.0, show_progress_bar=False))


def test_cli_distill_hidden_weight(teacher_dir, tmp_path, capsys):
    from fastembed_tune.cli.app import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(_texts(24, 9))))
    assert main(["distill", "--teacher", teacher_dir, "--corpus", str(corpus), "-o", str(tmp_path / "s"),
                 "--layers", "0,2", "--hidden-weight", "0.5", "--batch-size", "8", "--quiet"]) == 0
    summary = json.loads((tmp_path / "s" / "distill_summary.json").read_text())
    assert summary["hidden_weight"] == 0.5 and summary["student_layers"] == [0, 2]
    assert main(["distill", "--teacher", teacher_dir, "--corpus", str(corpus), "-o", str(tmp_path / "t"),
                 "--hidden-weight", "-1", "--quiet"]) == 2
