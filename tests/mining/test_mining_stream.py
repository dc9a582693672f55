"""mine --stream: the same negatives as in-memory mining (same ids, exclusions, filters, ties), a killed
run resumes its embedding, bad files get read_pairs' / read_corpus' sentences, bounded memory."""
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import read_corpus, read_pairs
from fastembed_tune.mining.exact import mine_to_file
from fastembed_tune.mining.stream import mine_stream


class Toy:
    """Embeds each text by a hash of it alone: no batch effects, so both routes see the same rows."""
    dim, fingerprint = 8, "toy-model"

    def __init__(self, fail_after=None):
        self.calls, self.texts, self.fail_after = 0, 0, fail_after

    def encode(self, texts, batch_size=64, show_progress_bar=False, desc=""):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.texts += len(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def both(tmp_path, pairs_rows, corpus_rows=None, window=3, **kw):
    """(in-memory output text + summary, streamed output text + summary)."""
    p = write_jsonl(tmp_path / "pairs.jsonl", pairs_rows)
    c = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows) if corpus_rows is not None else None
    a = mine_to_file(read_pairs(p), str(tmp_path / "a.jsonl"), Toy(),
                     list(read_corpus(c).values()) if c else None, show_progress_bar=False, **kw)
    b = mine_stream(p, str(tmp_path / "b.jsonl"), Toy(), c, window=window, show_progress_bar=False, **kw)
    return ((tmp_path / "a.jsonl").read_text(), a), ((tmp_path / "b.jsonl").read_text(), b)


def assert_same(a, b):
    assert b[0] == a[0]
    for key, v in a[1].items():
        if isinstance(v, float):
            assert b[1][key] == pytest.approx(v, rel=1e-6, abs=1e-7), key  # float32 means, summed by window
        else:
            assert b[1][key] == v, key


words = st.sampled_from([f"w{i}" for i in range(9)])
texts = st.lists(words, min_size=1, max_size=2).map(" ".join)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(texts, texts, st.lists(texts, max_size=2)), min_size=1, max_size=14),
       corpus=st.one_of(st.none(), st.lists(texts, min_size=1, max_size=20)),
       window=st.integers(1, 6), skip=st.integers(0, 2), ratio=st.sampled_from([None, 0.9]),
       scan=st.sampled_from(["fp32", "int8"]))
def test_streamed_mining_equals_in_memory_mining(tmp_path_factory, pairs, corpus, window, skip, ratio, scan):
    """Duplicate documents, repeated queries with several positives, queries that are documents,
    positives missing from the corpus, existing negatives, every window size: the same file."""
    tmp = tmp_path_factory.mktemp("m")
    prow = [{"query": q, "positive": p, "negatives": n} for q, p, n in pairs]
    crow = None if corpus is None else [{"_id": str(i), "text": t} for i, t in enumerate(corpus)]
    a, b = both(tmp, prow, crow, window=window, num_negatives=3, skip_top=skip, max_ratio=ratio, scan=scan)
    assert_same(a, b)
    assert sorted(os.listdir(tmp)) == sorted(["pairs.jsonl", "a.jsonl", "b.jsonl"] + (["corpus.jsonl"] if crow else []))


def test_int8_scan_on_a_bigger_corpus_equals_in_memory(tmp_path):
    rng = np.random.default_rng(1)
    corpus = [{"_id": f"d{i}", "text": f"doc {rng.integers(3000)}"} for i in range(2500)]  # many duplicates
    pairs = [{"query": f"q {i % 150}", "positive": corpus[rng.integers(2500)]["text"]} for i in range(300)]
    pairs += [{"query": "q 1", "positive": "a positive not in the corpus"}]
    a, b = both(tmp_path, pairs, corpus, window=64, num_negatives=5, max_ratio=0.95, scan="int8")
    assert_same(a, b)
    assert b[1]["positives_added_to_corpus"] == 1 and b[1]["scan"].startswith("int8")


def test_a_killed_run_resumes_its_embedding_and_a_changed_file_starts_afresh(tmp_path):
    corpus = [{"_id": str(i), "text": f"document number {i}"} for i in range(50)]
    pairs = [{"query": f"query {i}", "positive": f"document number {i}"} for i in range(20)]
    p, c = write_jsonl(tmp_path / "pairs.jsonl", pairs), write_jsonl(tmp_path / "corpus.jsonl", corpus)
    out = str(tmp_path / "mined.jsonl")
    with pytest.raises(RuntimeError, match="killed"):  # dies after 3 windows of 8 candidates
        mine_stream(p, out, Toy(fail_after=3), c, window=8, show_progress_bar=False)
    assert not os.path.exists(out)
    assert json.load(open(out + ".work/progress.json")) == {"rows": 24}
    again = Toy()
    mine_stream(p, out, again, c, window=8, show_progress_bar=False)
    assert again.texts == 50 - 24 + 20  # the other candidates, then the queries
    assert not os.path.exists(out + ".work")
    fresh = str(tmp_path / "fresh.jsonl")
    mine_stream(p, fresh, Toy(), c, window=8, show_progress_bar=False)
    assert open(out).read() == open(fresh).read()

    with pytest.raises(RuntimeError):
        mine_stream(p, out, Toy(fail_after=3), c, window=8, show_progress_bar=False)
    write_jsonl(tmp_path / "corpus.jsonl", corpus + [{"_id": "new", "text": "one more document"}])
    again = Toy()
    mine_stream(p, out, again, c, window=8, show_progress_bar=False)
    assert again.texts == 51 + 20  # another corpus: nothing reused


def test_txt_corpus_skips_blank_lines_as_read_corpus_does(tmp_path):
    (tmp_path / "corpus.txt").write_text("alpha doc\n\nbeta doc\n  \ngamma doc\n")
    p = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "a", "positive": "beta doc"}, {"query": "b", "positive": "x"}])
    mine_to_file(read_pairs(p), str(tmp_path / "a.jsonl"), Toy(), list(read_corpus(str(tmp_path / "corpus.txt")).values()),
                 num_negatives=2, show_progress_bar=False)
    mine_stream(p, str(tmp_path / "b.jsonl"), Toy(), str(tmp_path / "corpus.txt"), num_negatives=2,
                show_progress_bar=False)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


@pytest.mark.parametrize("pairs_text,corpus_text,message", [
    ('{"query": "a", "positive": "b"}\n{"query": "c"}\n', None, "pairs.jsonl line 2: .*positive"),
    ('{"query": "a", "positive": "b"}\n', '{"_id": "1", "text": "x"}\n{"_id": "1", "text": "y"}\n',
     "corpus.jsonl line 2: duplicate id '1'"),
    ('{"query": "a", "positive": "b"}\n', '{"_id": "1"}\n', "corpus.jsonl line 1: field 'text' is missing"),
])
def test_bad_files_are_refused_with_the_in_memory_sentences(tmp_path, pairs_text, corpus_text, message):
    (tmp_path / "pairs.jsonl").write_text(pairs_text)
    c = None
    if corpus_text is not None:
        (tmp_path / "corpus.jsonl").write_text(corpus_text)
        c = str(tmp_path / "corpus.jsonl")
    with pytest.raises(UserError, match=message):
        mine_stream(str(tmp_path / "pairs.jsonl"), str(tmp_path / "o.jsonl"), Toy(), c, show_progress_bar=False)
    with pytest.raises(UserError, match=message):
        pairs = read_pairs(str(tmp_path / "pairs.jsonl"))
        mine_to_file(pairs, str(tmp_path / "o.jsonl"), Toy(), list(read_corpus(c).values()) if c else None,
                     show_progress_bar=False)
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_memory_is_a_fraction_of_in_memory_mining(tmp_path):
    rng = np.random.default_rng(0)
    filler = " ".join(["lorem ipsum dolor sit amet"] * 60)  # 10,000 documents of ~1.6 kB, 3,000 pairs
    corpus = [{"_id": str(i), "text": f"{i} {filler}"} for i in range(10000)]
    pairs = [{"query": f"query {i}", "positive": corpus[int(rng.integers(10000))]["text"]} for i in range(3000)]
    p, c = write_jsonl(tmp_path / "pairs.jsonl", pairs), write_jsonl(tmp_path / "corpus.jsonl", corpus)

    def peak(fn):
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    mem = peak(lambda: mine_to_file(read_pairs(p), str(tmp_path / "a.jsonl"), Toy(),
                                    list(read_corpus(c).values()), show_progress_bar=False, scan="fp32"))
    streamed = peak(lambda: mine_stream(p, str(tmp_path / "b.jsonl"), Toy(), c, window=200,
                                        show_progress_bar=False, scan="fp32"))
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert streamed < mem / 8, (streamed, mem)  # a window of 200 pairs with their negatives


def test_cli_mine_stream(tmp_path):
    p = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "cat", "positive": "a feline"},
                                               {"query": "car", "positive": "a vehicle"}])
    (tmp_path / "corpus.txt").write_text("a dog\na feline\na vehicle\na truck\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "fastembed_tune", "mine", "--stream", "--pairs", p, "--corpus",
                          str(tmp_path / "corpus.txt"), "-o", str(tmp_path / "m.jsonl"), "--num-negatives", "2",
                          "--summary", str(tmp_path / "s.json"), "--quiet"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(x) for x in open(tmp_path / "m.jsonl")]
    assert [len(r["negatives"]) for r in rows] == [2, 2] and "a feline" not in rows[0]["negatives"]
    assert json.load(open(tmp_path / "s.json"))["pairs"] == 2 and "wrote 2 rows" in run.stdout
    (tmp_path / "pairs.csv").write_text("query,positive\na,b\n")
    bad = subprocess.run([sys.executable, "-m", "fastembed_tune", "mine", "--stream", "--pairs",
                          str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "n.jsonl")], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "pairs.csv: streaming reads .jsonl or .parquet" in bad.stderr
