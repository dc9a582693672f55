"""Reading and validating input data: every format round-trips, every bad input names file, line, field."""
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import (
    EvalSet,
    Pair,
    data_report,
    load_eval,
    pairs_from_beir,
    pairs_to_evalset,
    read_beir,
    read_corpus,
    read_pairs,
)

ROWS = [
    {"query": "what is a tuple", "positive": "an ordered, finite list", "negatives": ["a set", "a bag"]},
    {"query": 'say "hi"', "positive": "line one\nline two, with comma", "negatives": []},
    {"query": "caf\u00e9 \u2603", "positive": "tab\there", "negatives": ["x"]},
]
EXPECTED = [(r["query"], r["positive"], r["negatives"]) for r in ROWS]


def _tuples(pairs):
    return [(p.query, p.positive, p.negatives) for p in pairs]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td2\t0\nq3\td3\t1\n",
          split="test"):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    _write_jsonl(d / "corpus.jsonl", [{"_id": "d1", "title": "Tuple", "text": "an ordered list"},
                                      {"_id": "d2", "title": "", "text": "a product type"},
                                      {"_id": "d3", "title": "Set", "text": "unordered"}])
    _write_jsonl(d / "queries.jsonl", [{"_id": "q1", "text": "what is a tuple"},
                                       {"_id": "q2", "text": "unjudged"},
                                       {"_id": "q3", "text": "what is a set"}])
    (d / "qrels" / f"{split}.tsv").write_text(qrels)
    return d


# ---------------------------------------------------------------------------------------------- formats


def test_jsonl_round_trip(tmp_path):
    p = _write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    pairs = read_pairs(p)
    assert _tuples(pairs) == EXPECTED
    assert pairs[0].source == f"{p}:1" and pairs[2].source == f"{p}:3"


def test_jsonl_blank_lines_and_crlf(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(b'\n{"query": "a", "positive": "b"}\r\n   \n{"query": "c", "positive": "d"}\r\n\n')
    pairs = read_pairs(p)
    assert _tuples(pairs) == [("a", "b", []), ("c", "d", [])]
    assert pairs[1].source.endswith(":4")


def test_json_array(tmp_path):
    p = tmp_path / "pairs.json"
    p.write_text(json.dumps(ROWS, indent=2))
    assert _tuples(read_pairs(p)) == EXPECTED


def test_csv_round_trip(tmp_path):
    p = _write_csv(tmp_path / "pairs.csv", ["query", "positive", "negatives"],
                   [[r["query"], r["positive"], json.dumps(r["negatives"])] for r in ROWS])
    pairs = read_pairs(p)
    assert _tuples(pairs) == EXPECTED
    # the second row's positive spans two physical lines, so row 3 starts on line 5
    assert [x.source.rsplit(":", 1)[1] for x in pairs] == ["2", "3", "5"]


def test_tsv_round_trip(tmp_path):
    p = _write_csv(tmp_path / "pairs.tsv", ["query", "positive", "negatives"],
                   [[r["query"], r["positive"], json.dumps(r["negatives"])] for r in ROWS], delimiter="\t")
    assert _tuples(read_pairs(p)) == EXPECTED


def test_parquet_round_trip(tmp_path):
    p = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    pairs = read_pairs(p)
    assert _tuples(pairs) == EXPECTED
    assert pairs[0].source == f"{p}:1"  # the first data row is row 1


def test_parquet_optional_nulls(tmp_path):
    p = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["a", "b"], "positive": ["x", "y"], "negative": [None, "n"]}), p)
    assert _tuples(read_pairs(p)) == [("a", "x", []), ("b", "y", ["n"])]


def test_openai_jsonl(tmp_path):
    p = _write_jsonl(tmp_path / "ft.jsonl", [{"input": "q", "output": "answer"}])
    assert _tuples(read_pairs(p)) == [("q", "answer", [])]


def test_sentence_transformers_aliases(tmp_path):
    p = _write_jsonl(tmp_path / "st.jsonl", [{"anchor": "q", "positive": "p", "negative": "n"}])
    assert _tuples(read_pairs(p)) == [("q", "p", ["n"])]
    c = _write_csv(tmp_path / "st.csv", ["anchor", "positive", "negative_1", "negative_2"], [["q", "p", "n1", "n2"]])
    assert _tuples(read_pairs(c)) == [("q", "p", ["n1", "n2"])]


def test_negative_and_negatives_merge(tmp_path):
    p = _write_jsonl(tmp_path / "m.jsonl", [{"query": "q", "positive": "p", "negative": "n0", "negatives": ["n1", "n2"]}])
    assert read_pairs(p)[0].negatives == ["n0", "n1", "n2"]
    c = _write_csv(tmp_path / "m.csv", ["query", "positive", "negative", "negatives"],
                   [["q", "p", "n0", '["n1"]'], ["q2", "p2", "", ""]])
    assert _tuples(read_pairs(c)) == [("q", "p", ["n0", "n1"]), ("q2", "p2", [])]


def test_beir_read_and_pairs(tmp_path):
    d = _beir(tmp_path, split="test")
    e = read_beir(d, "test")
    assert e.queries == {"q1": "what is a tuple", "q3": "what is a set"}  # q2 only has score 0
    assert e.qrels == {"q1": {"d1": 1, "d2": 2}, "q3": {"d3": 1}}
    assert e.corpus == {"d1": "Tuple an ordered list", "d2": "a product type", "d3": "Set unordered"}
    assert load_eval(d) == e
    pairs = pairs_from_beir(d, "test")
    assert _tuples(pairs) == [("what is a tuple", "Tuple an ordered list", []),
                              ("what is a tuple", "a product type", []), ("what is a set", "Set unordered", [])]
    assert pairs[0].source.endswith("test.tsv:2")


def test_read_pairs_on_beir_folder_uses_train(tmp_path):
    d = _beir(tmp_path, qrels="q3\td3\t1\n", split="train")  # no header line is fine too
    assert _tuples(read_pairs(d)) == [("what is a set", "Set unordered", [])]
    with pytest.raises(UserError, match=r"test\.tsv: file not found \(splits present: train\)"):
        read_beir(d)


def test_corpus_formats(tmp_path):
    want = {"a": "T1 text one", "b": "text, two"}
    j = _write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "title": "T1", "text": "text one"},
                                            {"id": "b", "title": "", "text": "text, two"}])
    assert read_corpus(j) == want
    c = _write_csv(tmp_path / "c.csv", ["id", "title", "text"], [["a", "T1", "text one"], ["b", "", "text, two"]])
    assert read_corpus(c) == want
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "title": ["T1", None], "text": ["text one", "text, two"]}), p)
    assert read_corpus(p) == want
    t = tmp_path / "c.txt"
    t.write_text("first doc\n\nthird doc\n")
    assert read_corpus(t) == {"0": "first doc", "2": "third doc"}


# ---------------------------------------------------------------------------------------------- evalsets


def test_pairs_to_evalset_dedup_and_multi_positive():
    pairs = [Pair("cat", "a feline"), Pair("dog", "a canine"), Pair("cat", "a kitty"), Pair("cat", "a feline")]
    e = pairs_to_evalset(pairs)
    assert e.queries == {"q0": "cat", "q1": "dog"}
    assert e.corpus == {"p0": "a feline", "p1": "a canine", "p2": "a kitty"}
    assert e.qrels == {"q0": {"p0": 1, "p2": 1}, "q1": {"p1": 1}}


def test_pairs_to_evalset_refuses_positives_missing_from_the_corpus():
    corpus = {"d7": "a canine"}
    pairs = [Pair("dog", "a canine", [], "t.jsonl:1"), Pair("cat", "a feline", [], "t.jsonl:2")]
    with pytest.raises(UserError, match=r"t.jsonl line 2: the positive is not in the corpus c.jsonl \(1 of 2"):
        pairs_to_evalset(pairs, corpus, corpus_name="c.jsonl")


def test_pairs_to_evalset_adds_positives_to_corpus():
    corpus = {"d7": "a canine", "p0": "distractor"}
    e = pairs_to_evalset([Pair("cat", "a feline"), Pair("dog", "a canine")], corpus, add_missing_positives=True)
    assert e.corpus == {"d7": "a canine", "p0": "distractor", "p1": "a feline"}  # p0 taken: no clobbering
    assert e.qrels == {"q0": {"p1": 1}, "q1": {"d7": 1}}
    assert corpus == {"d7": "a canine", "p0": "distractor"}  # caller's dict untouched


def test_load_eval_pairs_with_corpus(tmp_path):
    p = _write_jsonl(tmp_path / "test.jsonl", [{"query": "cat", "positive": "a feline"}])
    c = tmp_path / "corpus.txt"
    c.write_text("a canine\na feline\n")
    assert load_eval(p, c) == EvalSet({"q0": "cat"}, {"0": "a canine", "1": "a feline"}, {"q0": {"1": 1}})


def test_data_report_counts():
    train = [Pair("a", "x"), Pair("a", "x"), Pair("a", "y", ["n"]), Pair("b", "b"), Pair("c", "z")]
    ev = [Pair("c", "z"), Pair("a", "q"), Pair("d", "w")]
    r = data_report(train, ev)
    json.dumps(r)
    assert r == {"pairs": 5, "unique_queries": 3, "unique_positives": 4, "duplicate_pairs": 1,
                 "positive_equals_query": 1, "pairs_with_negatives": 1, "eval_pairs": 3,
                 "eval_unique_queries": 3, "overlapping_queries": 2, "overlapping_query_examples": ["c", "a"]}
    assert "eval_pairs" not in data_report(train)


def test_data_report_examples_capped():
    train = [Pair(f"q{i}", "p") for i in range(8)]
    r = data_report(train, train)
    assert r["overlapping_queries"] == 8 and len(r["overlapping_query_examples"]) == 5


# ---------------------------------------------------------------------------------------------- bad input


def _err(fn, *args):
    with pytest.raises(UserError) as ei:
        fn(*args)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def _bad_jsonl(tmp_path, line3):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"query": "a", "positive": "b"}\n\n' + line3 + "\n")
    return p


def test_missing_field(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"positive": "b"}'))
    assert "pairs.jsonl line 3: field 'query' is missing" in msg


def test_empty_text(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": "a", "positive": ""}'))
    assert "pairs.jsonl line 3: field 'positive' is empty" in msg


def test_whitespace_text(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": " \\t\\n ", "positive": "b"}'))
    assert "pairs.jsonl line 3: field 'query' is empty" in msg


@pytest.mark.parametrize("value,kind", [("1", "a number"), ("null", "null"), ("true", "a boolean"), ('["x"]', "a list")])
def test_non_string(tmp_path, value, kind):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": "a", "positive": %s}' % value))
    assert f"pairs.jsonl line 3: field 'positive' must be a string, got {kind}" in msg


def test_malformed_json(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": "a" "positive": "b"}'))
    assert "pairs.jsonl line 3: malformed JSON (Expecting ',' delimiter at column 15)" in msg


def test_not_a_json_object(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '["a", "b"]'))
    assert "pairs.jsonl line 3: expected a JSON object, got a list" in msg


def test_non_utf8_byte_jsonl(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(b'{"query": "a", "positive": "b"}\n{"query": "\xff", "positive": "b"}\n')
    assert "pairs.jsonl line 2: not valid UTF-8 (byte 0xff at position 12)" in _err(read_pairs, p)


def test_non_utf8_byte_csv(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_bytes(b'query,positive\na,"multi\nline"\nb\xfe,c\n')
    assert "pairs.csv line 4: not valid UTF-8 (byte 0xfe at position 2)" in _err(read_pairs, p)


def test_negatives_not_a_list(tmp_path):
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": "a", "positive": "b", "negatives": "n"}'))
    assert "pairs.jsonl line 3: field 'negatives' must be a list of strings" in msg
    msg = _err(read_pairs, _bad_jsonl(tmp_path, '{"query": "a", "positive": "b", "negatives": ["n", 3]}'))
    assert "pairs.jsonl line 3: field 'negatives' must be a list of strings (item 2 is a number)" in msg
    c = _write_csv(tmp_path / "pairs.csv", ["query", "positive", "negatives"], [["a", "b", "not json"]])
    assert "pairs.csv line 2: field 'negatives' must be a JSON list of strings" in _err(read_pairs, c)


def test_csv_missing_column_and_ragged_row(tmp_path):
    c = _write_csv(tmp_path / "pairs.csv", ["q", "positive"], [["a", "b"]])
    assert "pairs.csv line 1: column 'query' is missing" in _err(read_pairs, c)
    c.write_text("query,positive\na,b\nc\n")
    assert "pairs.csv line 3: the row has 1 fields but the header has 2" in _err(read_pairs, c)


def test_csv_empty_cell(tmp_path):
    c = _write_csv(tmp_path / "pairs.csv", ["query", "positive"], [["a", "b"], ["c", "  "]])
    assert "pairs.csv line 3: field 'positive' is empty" in _err(read_pairs, c)


def test_parquet_null_required(tmp_path):
    p = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["a", None], "positive": ["x", "y"]}), p)
    assert "pairs.parquet row 2: field 'query' must be a string, got null" in _err(read_pairs, p)


def test_unknown_qrels_query_id(tmp_path):
    d = _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n")
    msg = _err(read_beir, d)
    assert "qrels/test.tsv line 3: query-id 'q9' is not in queries.jsonl" in msg


def test_unknown_qrels_doc_id(tmp_path):
    d = _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\nq1\td99\t1\n")
    msg = _err(pairs_from_beir, d, "test")
    assert "qrels/test.tsv line 4: corpus-id 'd99' is not in corpus.jsonl" in msg


def test_bad_qrels_score(tmp_path):
    d = _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    assert "qrels/test.tsv line 2: field 'score' must be an integer, got 'high'" in _err(read_beir, d)


def test_duplicate_corpus_id(tmp_path):
    p = _write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"},
                                                 {"_id": "a", "text": "z"}])
    assert "corpus.jsonl line 3: duplicate id 'a' (first seen at line 1)" in _err(read_corpus, p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jsonl"
    assert _err(read_pairs, p) == f"{p}: file not found"
    assert _err(read_corpus, tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: file not found"
    assert _err(read_beir, tmp_path / "nodir") == f"{tmp_path / 'nodir'}: file not found"


def test_unsupported_extension(tmp_path):
    p = tmp_path / "pairs.xlsx"
    p.write_text("x")
    msg = _err(read_pairs, p)
    assert "pairs.xlsx: unsupported file extension '.xlsx'" in msg


@pytest.mark.parametrize("name,content", [("pairs.jsonl", "\n  \n"), ("pairs.csv", ""), ("pairs.csv", "query,positive\n")])
def test_empty_file(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    assert _err(read_pairs, p) == f"{p}: empty file (no pairs)"


def test_empty_corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("\n")
    assert _err(read_corpus, p) == f"{p}: empty file (no documents)"


# ---------------------------------------------------------------------------------------------- property

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda s: s.strip() != "")
_tricky = st.one_of(_text, st.sampled_from(['"', ',', '\n', '\r\n', '""', "'", '\t', '\ufeff'])).flatmap(
    lambda s: st.just(s) if s.strip() else st.just("x" + s + "y"))
_record = st.tuples(_tricky, _tricky, st.lists(_tricky, max_size=3))


@given(st.lists(_record, min_size=1, max_size=6))
def test_random_text_round_trips(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("rt")
    want = [(q, p, list(n)) for q, p, n in records]
    j = d / "r.jsonl"
    j.write_text("".join(json.dumps({"query": q, "positive": p, "negatives": n}, ensure_ascii=False) + "\n"
                         for q, p, n in records), encoding="utf-8")
    assert _tuples(read_pairs(j)) == want
    c = _write_csv(d / "r.csv", ["query", "positive", "negatives"],
                   [[q, p, json.dumps(n, ensure_ascii=False)] for q, p, n in records])
    assert _tuples(read_pairs(c)) == want
    t = _write_csv(d / "r.tsv", ["query", "positive", "negatives"], [[q, p, json.dumps(n)] for q, p, n in records],
                   delimiter="\t")
    assert _tuples(read_pairs(t)) == want
