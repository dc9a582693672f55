"""Model I/O: our encoder equals sentence-transformers on the same directory, before and after save."""
import numpy as np
import pytest

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.model import EmbeddingModel, default_model_path

TEXTS = ["thunk", "A delayed computation.", "x " * 400, "Atomicity, consistency, isolation, durability."]


@pytest.fixture(scope="module")
def ours():
    return EmbeddingModel.load()


def test_encode_equals_sentence_transformers(ours, tmp_path):
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(default_model_path(), device="cpu").encode(TEXTS, batch_size=3)
    got = ours.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    ours.save(tmp_path / "saved")
    again = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS, batch_size=3), ref, atol=1e-5)
    assert again.max_seq_length == ours.max_seq_length == 256
    np.testing.assert_allclose(EmbeddingModel.load(tmp_path / "saved").encode(TEXTS), ref, atol=1e-5)


def test_save_is_atomic_and_replaces(ours, tmp_path):
    target = tmp_path / "m"
    ours.save(target)
    ours.save(target)  # replacing an existing model leaves exactly one, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (target / "modules.json").exists() and (target / "model.safetensors").exists()


def test_not_a_model(tmp_path):
    with pytest.raises(UserError, match="model directory not found"):
        EmbeddingModel.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        EmbeddingModel.load(tmp_path / "empty")


def test_bf16_encoding_is_close_to_fp32_and_fingerprinted_apart():
    """``model.bf16``: encode under bfloat16 autocast (what run evaluates with where training uses bf16)."""
    from fastembed_tune.embed.store import model_fingerprint

    m = EmbeddingModel.load()
    texts = ["a tuple is an ordered list", "the kernel schedules processes", "x"]
    a, fa = m.encode(texts), model_fingerprint(m)
    m.bf16 = True
    b, fb = m.encode(texts), model_fingerprint(m)
    assert a.dtype == b.dtype == np.float32 and not np.array_equal(a, b)  # it did run in bf16
    assert float((a * b).sum(1).min()) > 0.999 and fa != fb
    m.bf16 = False
    assert np.array_equal(m.encode(texts), a) and model_fingerprint(m) == fa
