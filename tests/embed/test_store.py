"""The on-disk embedding store: each text embedded once per model, ever; a kill loses at most one shard."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastembed_tune.embed.store import EmbeddingStore, StoredEncoder, model_fingerprint, text_key


class Counting:
    """A fake model whose row for a text is a deterministic function of the text."""
    dim, fingerprint = 4, "counting"

    def __init__(self):
        self.seen = []

    def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
        self.seen.extend(texts)
        return np.stack([row(t) for t in texts]).astype(np.float32)


def row(text):
    rng = np.random.default_rng(int.from_bytes(text_key(text)[:8], "little"))
    return rng.standard_normal(4)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(max_size=6), max_size=8), min_size=1, max_size=4))
def test_rows_are_the_models_and_each_text_is_embedded_once(tmp_path_factory, batches):
    root = tmp_path_factory.mktemp("store")
    model = Counting()
    for batch in batches:  # a new encoder per call: the store on disk is what remembers
        got = StoredEncoder(model, root, chunk=3).encode(batch)
        want = np.stack([row(t) for t in batch]).astype(np.float32) if batch else np.empty((0, 4), np.float32)
        np.testing.assert_array_equal(got, want)
    assert sorted(model.seen) == sorted(set(t for b in batches for t in b))


def test_float16_rows_and_refusals(tmp_path):
    s = EmbeddingStore(tmp_path, "m", dim=4, dtype="float16")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert s.add([f"t{i}" for i in range(5)], x) == 5
    np.testing.assert_allclose(s.get(["t3", "t0"]), x[[3, 0]], rtol=1e-3, atol=1e-3)
    assert s.add(["t0", "new", "new"], np.ones((3, 4))) == 1  # stored texts and repeats are not added again
    with pytest.raises(ValueError, match="NaN"):
        s.add(["bad"], np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="shape"):
        s.add(["a", "b"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="float16 rows of dim 4"):
        EmbeddingStore(tmp_path, "m", dim=8)
    with pytest.raises(KeyError, match="missing"):
        s.get(["missing"])
    with pytest.raises(ValueError, match="fingerprint"):
        EmbeddingStore(tmp_path, "../escape", dim=4)


def test_what_a_killed_writer_left_is_ignored_then_cleaned(tmp_path):
    s = EmbeddingStore(tmp_path, "m", dim=2)
    s.add(["a"], np.ones((1, 2)))
    d = tmp_path / "m"
    (d / "shard-000001.rows").write_bytes(b"\0" * 16)  # rows written, killed before the keys' rename
    (d / ".shard-000001.keys.123.tmp").write_bytes(b"x")
    again = EmbeddingStore(tmp_path, "m", dim=2)
    assert len(again) == 1 and "b" not in again
    again.add(["b"], np.full((1, 2), 2.0))
    assert sorted(os.listdir(d)) == [".lock", "meta.json", "shard-000000.keys", "shard-000000.rows", "shard-000000.sum",
                                     "shard-000001.keys", "shard-000001.rows", "shard-000001.sum"]
    assert EmbeddingStore(tmp_path, "m", dim=2).get(["b", "a"]).tolist() == [[2.0, 2.0], [1.0, 1.0]]


def test_sigkill_mid_encode_resumes_with_only_the_missing_texts(tmp_path):
    """A process embedding 10 chunks is killed after the 3rd; the next run embeds only what is missing."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store import Counting
        from fastembed_tune.embed.store import StoredEncoder
        done = []
        def after(n):
            done.append(n)
            if len(done) == 3 and sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        m = Counting()
        e = StoredEncoder(m, {str(tmp_path / 'root')!r}, chunk=10, on_chunk=after)
        e.encode([f"text {{i}}" for i in range(100)])
        print(len(m.seen))
    """))
    r = subprocess.run([sys.executable, str(script), "kill"], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    r = subprocess.run([sys.executable, str(script), "resume"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "70"
    assert len(EmbeddingStore(tmp_path / "root", _fp(), dim=4)) == 100


def _fp():
    return model_fingerprint(Counting())


def _writer(root, start):
    s = EmbeddingStore(root, "shared", dim=2)
    for i in range(start, start + 40, 4):
        s.add([f"t{j}" for j in range(i, i + 4)] + ["common"], np.full((5, 2), float(i)))


def test_two_processes_append_to_one_store(tmp_path):
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 20)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    s = EmbeddingStore(tmp_path, "shared", dim=2)
    assert len(s) == 61  # t0..t59 and "common", each once
    assert s.get(["t0", "t59"]).tolist() == [[0.0, 0.0], [56.0, 56.0]]


def test_fingerprint_follows_the_weights(tiny_model_dir):
    from fastembed_tune.embed.model import EmbeddingModel

    a, b = EmbeddingModel.load(tiny_model_dir), EmbeddingModel.load(tiny_model_dir)
    assert model_fingerprint(a) == model_fingerprint(b)
    next(b.parameters()).data[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
