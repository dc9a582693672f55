"""Streaming pairs (issue 16): a file read window by window trains as the list does when it fits one
window, covers every pair once an epoch, resumes bit for bit after a crash, reports bad rows as
read_pairs does, and holds far less memory than the list."""
from __future__ import annotations

import gc
import json
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from fastembed_tune.cli.app import main
from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import read_pairs, read_texts
from fastembed_tune.data.stream import CorpusStream, PairStream, StreamEpoch, held_out
from fastembed_tune.embed.writers import embed_stream_to_file
from fastembed_tune.training import losses
from fastembed_tune.training.train import TrainConfig, _data_digest, _EpochData, train


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models here: see conftest.one_torch_thread."""


def _rows(n: int, negatives: int = 0, repeat_every: int = 0) -> list[dict]:
    """n distinct pairs (``repeat_every``: every such row reuses the query of the row before it)."""
    out = []
    for i in range(n):
        q = f"topic {i - 1}" if repeat_every and i % repeat_every == 0 and i else f"topic {i}"
        row = {"query": q, "positive": f"a passage about topic {i} with words {i * 7 % 13}"}
        if negatives:
            row["negatives"] = [f"another passage {i} {k}" for k in range(negatives)]
        out.append(row)
    return out


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(out, model, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=model, batch_size=4, lr=1e-3, logging_steps=1,
                show_progress_bar=False, device="cpu", bf16=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(d) -> dict:
    return load_file(os.path.join(d, "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_one_window_trains_exactly_like_the_list(tmp_path, tiny_model_dir):
    f = _jsonl(tmp_path / "p.jsonl", _rows(18, negatives=1))
    stream = PairStream(f, window=1000)
    assert stream.num_windows == 1 and len(stream) == 18 and stream.digest == _data_digest(read_pairs(f))
    kw = dict(epochs=2, num_negatives=1, replay=None)
    a = train(read_pairs(f), _cfg(tmp_path / "list", tiny_model_dir, **kw))
    b = train(stream, _cfg(tmp_path / "stream", tiny_model_dir, **kw))
    assert a["steps"] == b["steps"] > 4
    assert _same(_weights(a["output"]), _weights(b["output"]))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 60), window=st.integers(2, 25), batch_size=st.integers(2, 6), epoch=st.integers(0, 3))
def test_an_epoch_covers_each_pair_once_within_its_window(tmp_path_factory, n, window, batch_size, epoch):
    f = _jsonl(tmp_path_factory.mktemp("s") / "p.jsonl", _rows(n))
    stream = PairStream(f, window=window, seed=3)
    data = _EpochData(stream, [], TrainConfig("unused", batch_size=batch_size, seed=3, num_negatives=0))
    ep = StreamEpoch(stream, epoch, lambda pairs, key: data._batches(pairs, epoch, key))
    batches = [ep.batch(i) for i in range(len(ep))]
    seen = [p.query for b in batches for p in b]
    assert len(seen) == len(set(seen))
    which = {f"topic {i}": i // window for i in range(n)}
    assert all(len({which[p.query] for p in b}) == 1 for b in batches)  # a batch never spans two windows
    sizes = [min(window, n - w * window) for w in range(stream.num_windows)]
    # a window loses at most its last odd pair (a batch of 1 is dropped), never more
    assert len(seen) >= n - sum(s % batch_size == 1 for s in sizes)
    again = StreamEpoch(stream, epoch, lambda pairs, key: data._batches(pairs, epoch, key))
    assert again.digest == ep.digest and [again.batch(i) for i in range(len(again))] == batches


def test_a_crashed_streamed_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    f = _jsonl(tmp_path / "p.jsonl", _rows(26))
    kw = dict(epochs=2, checkpoint_every=3, keep_checkpoints=2, num_negatives=0)
    straight = train(PairStream(f, window=7), _cfg(tmp_path / "straight", tiny_model_dir, **kw))
    assert straight["steps"] >= 10

    calls, orig = [0], losses.FusedMNRLoss.forward

    def crash_at_step_8(self, feats, labels=None):
        calls[0] += 1
        if calls[0] == 8:
            raise RuntimeError("killed")
        return orig(self, feats, labels)

    monkeypatch.setattr(losses.FusedMNRLoss, "forward", crash_at_step_8)
    with pytest.raises(RuntimeError, match="killed"):
        train(PairStream(f, window=7), _cfg(tmp_path / "crashed", tiny_model_dir, **kw))
    monkeypatch.setattr(losses.FusedMNRLoss, "forward", orig)
    resumed = train(PairStream(f, window=7), _cfg(tmp_path / "crashed", tiny_model_dir, resume=True, **kw))
    assert resumed["resumed_from"] == 6 and resumed["steps"] == straight["steps"]
    assert _same(_weights(straight["output"]), _weights(resumed["output"]))
    with pytest.raises(UserError, match="other batch settings"):  # another window is another order
        train(PairStream(f, window=5), _cfg(tmp_path / "crashed", tiny_model_dir, resume=True, **kw))


@pytest.mark.parametrize("lines, match", [
    (['{"query": "a", "positive": "b"}', '{"query": "c", "positive": "d"}', '{"query": "e", "positive": '],
     "line 3: malformed JSON"),
    (['{"query": "a", "positive": "b"}', '{"query": "c"}'], "line 2: field 'positive' is missing"),
    (['{"query": "a", "positive": "b"}', '', '{"query": " ", "positive": "d"}'], "line 3: field 'query' is empty"),
    (['{"query": "a", "positive": "b"}', '[1, 2]'], "line 2: expected a JSON object"),
    (['{"query": "a", "positive": "b", "negatives": "x"}'], "line 1: field 'negatives' must be a list"),
])
def test_a_bad_row_is_reported_before_training_as_read_pairs_reports_it(tmp_path, lines, match):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=match) as streamed:
        PairStream(str(f), window=2)
    with pytest.raises(UserError) as listed:
        read_pairs(str(f))
    assert str(streamed.value) == str(listed.value)


def test_bad_bytes_name_their_line(tmp_path):
    f = tmp_path / "bytes.jsonl"
    f.write_bytes(b'{"query": "a", "positive": "b"}\n{"query": "\xff", "positive": "d"}\n')
    with pytest.raises(UserError, match=r"line 2: not valid UTF-8") as streamed:
        PairStream(str(f))
    with pytest.raises(UserError) as listed:
        read_pairs(str(f))
    assert str(streamed.value) == str(listed.value)


@pytest.mark.parametrize("name, match", [("p.csv", "streaming reads .jsonl or .parquet"),
                                         ("missing.jsonl", "file not found")])
def test_what_cannot_stream_is_refused(tmp_path, name, match):
    if name.endswith(".csv"):
        (tmp_path / name).write_text("query,positive\na,b\n")
    with pytest.raises(UserError, match=match):
        PairStream(str(tmp_path / name))


def test_parquet_streams_as_jsonl_does(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = _rows(23, negatives=2)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=5)
    a = PairStream(_jsonl(tmp_path / "p.jsonl", rows), window=7, validation_share=0.3, seed=1)
    b = PairStream(str(tmp_path / "p.parquet"), window=7, validation_share=0.3, seed=1)
    assert a.digest == b.digest and a.num_windows == b.num_windows == 4
    key = [(p.query, p.positive, p.negatives) for p in a.validation_pairs]
    assert key == [(p.query, p.positive, p.negatives) for p in b.validation_pairs]
    for w in range(a.num_windows):
        assert [(p.query, p.positive, p.negatives) for p in a.window_pairs(w)] == \
               [(p.query, p.positive, p.negatives) for p in b.window_pairs(w)]
    assert b.window_pairs(3)[-1].source.endswith("p.parquet:23")


def test_validation_holds_out_whole_queries_by_hash(tmp_path):
    rows = _rows(400, repeat_every=3)
    f = _jsonl(tmp_path / "p.jsonl", rows)
    avoid = {"topic 10", "topic 11"}
    s = PairStream(f, window=50, validation_share=0.2, validation_max_queries=30, seed=5, avoid=avoid)
    held = {p.query for p in s.validation_pairs}
    train_q = {p.query for p in s}
    assert not held & train_q and not held & avoid
    assert len(held) == 30  # the cap (20% of ~270 distinct queries is more)
    assert len(s) + len(s.validation_pairs) == 400
    expected = [r["query"] for r in rows if r["query"] in held]
    assert [p.query for p in s.validation_pairs] == expected  # every pair of a held query
    assert all(held_out(q, 5, 0.2) for q in held)
    assert len(s.distractors) == 1000 or len(s.distractors) == len(s)


def test_streaming_holds_a_window_not_the_file(tmp_path):
    """tracemalloc peak while reading every batch of an epoch, against reading the list."""
    f = _jsonl(tmp_path / "p.jsonl", _rows(20000, negatives=1))
    cfg = TrainConfig("unused", batch_size=32, num_negatives=1)

    def peak(fn) -> int:
        gc.collect()
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    def listed():
        ep = _EpochData(read_pairs(f), [], cfg)(0)
        for i in range(len(ep)):
            ep.batch(i)

    def streamed():
        ep = _EpochData(PairStream(f, window=500), [], cfg)(0)
        for i in range(len(ep)):
            ep.batch(i)

    a, b = peak(listed), peak(streamed)
    assert b < a / 8, (a, b)


def test_train_cli_streams(tmp_path, tiny_model_dir):
    f = _jsonl(tmp_path / "p.jsonl", _rows(12))
    out = tmp_path / "out"
    assert main(["train", "--pairs", f, "--stream", "--stream-window", "5", "--model", tiny_model_dir,
                 "-o", str(out), "--max-steps", "2", "--batch-size", "4", "--validation-share", "0",
                 "--quiet", "--precision", "fp32"]) == 0
    assert (out / "model" / "modules.json").is_file()
    assert main(["train", "--pairs", f, "--stream", "--stream-window", "1", "-o", str(tmp_path / "o2")]) == 2


# ---- corpora: CorpusStream and embed --stream ------------------------------------------------

def _corpus_files(tmp_path) -> dict:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    docs = [{"_id": f"d{i}", "title": "T" if i % 3 == 0 else "", "text": f"document number {i} " + "w " * (i % 7)}
            for i in range(23)]
    out = {"jsonl": _jsonl(tmp_path / "c.jsonl", docs)}
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbf" + "".join(f"line {i}\n" for i in range(23)).encode())
    out["txt"] = str(tmp_path / "c.txt")
    pq.write_table(pa.Table.from_pylist([{"id": d["_id"], "text": d["text"], "title": d["title"]} for d in docs]),
                   tmp_path / "c.parquet", row_group_size=4)
    out["parquet"] = str(tmp_path / "c.parquet")
    return out


@settings(max_examples=10, deadline=None)
@given(window=st.integers(1, 30))
def test_corpus_windows_are_read_texts_in_order(tmp_path_factory, window):
    for path in _corpus_files(tmp_path_factory.mktemp("c")).values():
        s = CorpusStream(path, window=window)
        got = [(i, t) for ids, texts in s.windows() for i, t in zip(ids, texts)]
        assert got == list(read_texts(path).items()) and len(s) == len(got)
        assert all(len(ids) <= window for ids, _ in s.windows())


@pytest.mark.parametrize("name, content", [
    ("dup.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n'),
    ("missing.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b"}\n'),
    ("blank.txt", "a\n\nb\n"),
    ("trailing.txt", "a\nb\n\n"),
    ("spaces.txt", "a\n  \n"),
    ("empty.txt", ""),
    ("bad.jsonl", '{"_id": "a", "text": "x"}\n{"_id": 1.5, "text": "y"}\n'),
])
def test_a_bad_corpus_is_refused_as_read_texts_refuses_it(tmp_path, name, content):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(UserError) as listed:
        read_texts(str(f))
    with pytest.raises(UserError) as streamed:
        CorpusStream(str(f), window=1)
    assert str(streamed.value) == str(listed.value)


def test_a_final_carriage_return_is_not_a_row(tmp_path):
    f = tmp_path / "cr.txt"
    f.write_bytes(b"a\nb\n\r")
    assert [t for _, ts in CorpusStream(str(f)).windows() for t in ts] == list(read_texts(str(f)).values())


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_embed_stream_writes_what_embed_writes(tmp_path, tiny_model_dir, suffix):
    src = _corpus_files(tmp_path)["jsonl"]
    a, b = str(tmp_path / f"a{suffix}"), str(tmp_path / f"b{suffix}")
    assert main(["embed", "--model", tiny_model_dir, "-i", src, "-o", a, "--quiet"]) == 0
    assert main(["embed", "--model", tiny_model_dir, "-i", src, "-o", b, "--quiet", "--stream",
                 "--stream-window", "5"]) == 0
    if suffix == ".npy":
        x, y = np.load(a), np.load(b)
        assert x.shape == y.shape == (23, 32) and np.abs(x - y).max() < 1e-5
    else:
        x, y = [json.loads(l) for l in open(a)], [json.loads(l) for l in open(b)]
        assert [r["id"] for r in x] == [r["id"] for r in y] == [f"d{i}" for i in range(23)]
        assert np.abs(np.array([r["embedding"] for r in x]) - np.array([r["embedding"] for r in y])).max() < 1e-5


def test_a_failed_stream_leaves_nothing(tmp_path):
    class Breaks:
        calls = 0

        def encode(self, texts, batch_size=64):
            Breaks.calls += 1
            if Breaks.calls == 2:
                raise RuntimeError("boom")
            return np.ones((len(texts), 3), np.float32)

    out = tmp_path / "e.npy"
    with pytest.raises(RuntimeError, match="boom"):
        embed_stream_to_file(Breaks(), iter([(["a"], ["x"]), (["b"], ["y"])]), 2, out)
    assert os.listdir(tmp_path) == []


def test_corpus_streaming_holds_a_window_not_the_file(tmp_path):
    f = _jsonl(tmp_path / "c.jsonl", [{"_id": f"doc-{i}", "text": f"a document {i} " + "word " * 30}
                                      for i in range(20000)])

    def peak(fn) -> int:
        gc.collect()
        tracemalloc.start()
        fn()
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    def streamed():
        for _ in CorpusStream(f, window=500).windows():
            pass

    a, b = peak(lambda: read_texts(f)), peak(streamed)
    assert b < a / 8, (a, b)
