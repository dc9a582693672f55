"""Distillation: layer pruning, the teacher cache, the loop (MSE, KL, projection), saving.

Everything runs on tiny random BERTs (hidden 32 / 16) with the MiniLM tokenizer.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fastembed_tune.distill import default_layers, distill, in_batch_kl, parse_layers, prune_layers, teacher_embeddings
from fastembed_tune.errors import UserError
from fastembed_tune.model import EmbeddingModel, default_model_path

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
    out = distill(teacher_dir, train_texts + train_texts[:5], tmp_path / "d", layers="0,2", epochs=2,
                  batch_size=16, lr=3e-3, logging_steps=4, show_progress_bar=False, device="cpu")
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
    # a second run on the same texts reuses the teacher cache
    again = distill(teacher_dir, train_texts, tmp_path / "d", epochs=1, batch_size=64, lr=1e-3,
                    show_progress_bar=False, device="cpu")
    assert again["cache_reused"] and again["student_layers"] == [0, 3]  # default: half, first to last


def test_kl_term_runs_and_is_finite(teacher_dir, tmp_path):
    t, s = torch.randn(6, 32), torch.randn(6, 16, requires_grad=True)
    kl = in_batch_kl(t, s, temperature=0.05)
    kl.backward()
    assert torch.isfinite(kl) and kl > 0 and torch.isfinite(s.grad).all()
    assert float(in_batch_kl(t, t.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(in_batch_kl(t[:1], s[:1].detach())) == 0.0
    out = distill(teacher_dir, _texts(40, seed=7), tmp_path / "kl", layers=[1], batch_size=8, lr=1e-3,
                  kl_weight=1.0, kl_temperature=0.1, logging_steps=1, show_progress_bar=False, device="cpu")
    assert np.isfinite(out["final_loss"])
    lines = [json.loads(x) for x in (tmp_path / "kl" / "distill_log.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in lines)
    assert all(r["loss"] >= r["mse"] for r in lines)


def test_student_with_another_dim_uses_the_projection(teacher_dir, small_student_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = distill(teacher_dir, _texts(32, seed=8), tmp_path / "p", student_dir=small_student_dir, batch_size=8,
                  lr=1e-3, show_progress_bar=False, device="cpu")
    assert out["projection"] and out["student_dim"] == 16 and out["teacher_dim"] == 32
    assert out["student_layers"] is None and out["student_num_layers"] == 1
    st = SentenceTransformer(out["output"], device="cpu")
    assert st.encode(["apple river"]).shape == (1, 16)


def test_distill_argument_errors(teacher_dir, small_student_dir, tmp_path):
    with pytest.raises(UserError, match="not both"):
        distill(teacher_dir, ["a"], tmp_path, student_dir=small_student_dir, layers=[0])
    with pytest.raises(UserError, match="non-empty text"):
        distill(teacher_dir, ["", "  "], tmp_path)
    with pytest.raises(UserError, match="kl_temperature"):
        distill(teacher_dir, ["a"], tmp_path, kl_temperature=0)
    with pytest.raises(UserError, match="between 0 and 3"):
        distill(teacher_dir, ["a"], tmp_path, layers="0,9", show_progress_bar=False)


def test_cli_distill_needs_texts(tmp_path, capsys):
    from fastembed_tune.cli import main

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
