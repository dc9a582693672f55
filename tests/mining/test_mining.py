"""Hard-negative mining: the kernel's filters through mine_hard_negatives, against brute force."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastembed_tune.data.readers import Pair
from fastembed_tune.kernels import ratio_bound
from fastembed_tune.mining.exact import mine_hard_negatives, write_pairs_jsonl


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(qemb, demb, excl, k, skip, upper):
    s = qemb.astype(np.float64) @ demb.astype(np.float64).T
    out = []
    for i in range(len(qemb)):
        cand = [j for j in np.lexsort((np.arange(s.shape[1]), -s[i])) if j not in excl[i]
                and (upper is None or s[i, j] <= upper[i])]
        out.append(cand[skip:skip + k])
    return out


@pytest.mark.parametrize("scan", ["fp32", "int8"])
@pytest.mark.parametrize("skip,ratio", [(0, None), (2, None), (0, 0.9), (1, 0.8)])
def test_matches_brute_force(skip, ratio, scan):
    rng = np.random.default_rng(0)
    docs = [f"doc {i}" for i in range(60)]
    pairs = [Pair(f"q{i % 25}", docs[(3 * i) % 60]) for i in range(40)]  # repeated queries: several positives
    qemb, demb = unit(rng, 40, 16), unit(rng, 60, 16)
    for i, p in enumerate(pairs):  # same query text -> same embedding
        qemb[i] = qemb[int(p.query[1:])]
    res = mine_hard_negatives(pairs, corpus=docs, num_negatives=4, skip_top=skip, max_ratio=ratio,
                              embeddings=(qemb, demb), show_progress_bar=False, scan=scan)
    assert res.summary["scan"].startswith(scan)
    pos_ids = {}
    for p in pairs:
        pos_ids.setdefault(p.query, set()).add(docs.index(p.positive))
    excl = [pos_ids[p.query] for p in pairs]
    pos_score = np.array([qemb[i] @ demb[docs.index(p.positive)] for i, p in enumerate(pairs)], dtype=np.float64)
    upper = None if ratio is None else ratio_bound(ratio, pos_score)
    want = brute(qemb, demb, excl, 4, skip, upper)
    assert len(res.pairs) == len(pairs)  # never drops a pair
    for p, got, w in zip(pairs, res.pairs, want):
        assert (got.query, got.positive) == (p.query, p.positive)
        assert got.negatives == [docs[j] for j in w]
        assert not set(got.negatives) & {docs[j] for j in pos_ids[p.query]}
    assert res.summary["pairs"] == 40


def test_int8_scan_mines_the_same_negatives_on_near_ties(monkeypatch):
    """Corpus rows that differ by less than the int8 step (near-ties) and exact duplicates: the
    int8 candidate scan + fp32 rescoring mines exactly what the fp32 scan mines, summary included;
    ``auto`` takes it on a VNNI CPU from ``LOWP_MIN_ROWS`` rows."""
    from fastembed_tune.core import cpu
    from fastembed_tune.mining import common as mining

    rng = np.random.default_rng(7)
    base = unit(rng, 50, 32)
    demb = np.concatenate([base, base + 1e-4 * rng.standard_normal(base.shape).astype(np.float32), base[:10]])
    demb = (demb / np.linalg.norm(demb, axis=1, keepdims=True)).astype(np.float32)
    docs = [f"d{i}" for i in range(len(demb))]
    pairs = [Pair(f"q{i}", docs[i]) for i in range(30)]
    qemb = (base[:30] + 0.3 * unit(rng, 30, 32)).astype(np.float32)
    qemb /= np.linalg.norm(qemb, axis=1, keepdims=True)
    got = {scan: mine_hard_negatives(pairs, corpus=docs, num_negatives=6, max_ratio=0.99, embeddings=(qemb, demb),
                                     show_progress_bar=False, scan=scan) for scan in ("fp32", "int8")}
    assert [p.negatives for p in got["int8"].pairs] == [p.negatives for p in got["fp32"].pairs]
    assert {k: v for k, v in got["int8"].summary.items() if k != "scan"} == \
        {k: v for k, v in got["fp32"].summary.items() if k != "scan"}
    monkeypatch.setattr(cpu, "cpu_features", lambda: frozenset({"avx512_vnni"}))
    monkeypatch.setattr(mining, "LOWP_MIN_ROWS", len(demb))
    auto = mine_hard_negatives(pairs, corpus=docs, num_negatives=6, embeddings=(qemb, demb), show_progress_bar=False)
    assert auto.summary["scan"].startswith("int8")
    monkeypatch.setattr(mining, "LOWP_MIN_ROWS", len(demb) + 1)
    auto = mine_hard_negatives(pairs, corpus=docs, num_negatives=6, embeddings=(qemb, demb), show_progress_bar=False)
    assert auto.summary["scan"] == "fp32"
    with pytest.raises(ValueError, match="scan must be"):
        mine_hard_negatives(pairs, corpus=docs, embeddings=(qemb, demb), show_progress_bar=False, scan="bf16")


def test_max_ratio_summary_counts_dropped():
    rng = np.random.default_rng(1)
    docs = [f"d{i}" for i in range(30)]
    pairs = [Pair(f"q{i}", docs[i]) for i in range(10)]
    qemb, demb = unit(rng, 10, 8), unit(rng, 30, 8)
    plain = mine_hard_negatives(pairs, corpus=docs, num_negatives=5, embeddings=(qemb, demb), show_progress_bar=False)
    res = mine_hard_negatives(pairs, corpus=docs, num_negatives=5, max_ratio=0.5, embeddings=(qemb, demb),
                              show_progress_bar=False)
    pos = np.array([qemb[i] @ demb[i] for i in range(10)])
    s = qemb @ demb.T
    expect = 0
    for i, p in enumerate(plain.pairs):
        expect += sum(s[i, docs.index(n)] > ratio_bound(0.5, pos)[i] for n in p.negatives)
    assert res.summary["candidates_dropped_as_false_negatives"] == expect
    assert sum(res.summary["negative_score_histogram"]) == res.summary["negatives_mined"]


def test_default_corpus_is_the_positives_and_existing_negatives_are_kept():
    rng = np.random.default_rng(2)
    pairs = [Pair("a", "A", ["given"]), Pair("b", "B"), Pair("c", "C")]
    res = mine_hard_negatives(pairs, num_negatives=5, embeddings=(unit(rng, 3, 4), unit(rng, 3, 4)),
                              show_progress_bar=False)
    assert res.pairs[0].negatives[0] == "given"
    assert sorted(res.pairs[1].negatives) == ["A", "C"]  # only 2 candidates: fewer than asked, not dropped
    assert res.summary["pairs_with_fewer_negatives"] == 3


def test_write_is_atomic(tmp_path):
    out = tmp_path / "m.jsonl"
    write_pairs_jsonl([Pair("q", "p", ["n1", "n2"])], str(out))
    assert json.loads(out.read_text()) == {"query": "q", "positive": "p", "negatives": ["n1", "n2"]}
    assert [f.name for f in tmp_path.iterdir()] == ["m.jsonl"]


def test_cli_mine_with_the_builtin_model(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [("What is a thunk?", "A delayed computation wrapped in a function."),
            ("What is ACID?", "Atomicity, consistency, isolation and durability of transactions."),
            ("What is COBOL?", "A business-oriented programming language from 1959."),
            ("What is a mutex?", "A lock that gives one thread exclusive access."),
            ("What is a heap?", "A tree with the heap property used for priority queues.")]
    pairs.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in rows))
    out = tmp_path / "mined.jsonl"
    r = subprocess.run([sys.executable, "-m", "fastembed_tune", "mine", "--pairs", str(pairs), "-o", str(out),
                        "--num-negatives", "2", "--max-ratio", "0.99", "--quiet", "--summary",
                        str(tmp_path / "s.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [g["query"] for g in got] == [q for q, _ in rows]
    for g, (q, p) in zip(got, rows):
        assert p not in g["negatives"] and len(g["negatives"]) <= 2
    assert "score histogram" in r.stdout
    assert json.loads((tmp_path / "s.json").read_text())["pairs"] == 5
