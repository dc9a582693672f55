"""``adapt`` against misuse and faults: conflicting precomputed vectors, a store edited on disk, and
the inputs and answers that used to end in an internal error (a zero vector, an endpoint answering
HTML, a Parquet ``embedding`` column of strings or nulls, a damaged store ``meta.json``, NaN in a
store shard). Each is one line ``error: ...`` naming the file, row or endpoint, with exit code 2.

The endpoint is a tiny ``http.server`` on 127.0.0.1 (a free port) serving the bad answers; the
commands run through a subprocess, as a user runs them.
"""
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fastembed_tune.adapt.api_client import ApiEmbedder
from fastembed_tune.adapt.sources import PrecomputedVectors
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.store import EmbeddingStore, model_fingerprint

KEY = "sk-hardening-0123456789"
DIM = 8
TEXTS = [f"{s} {i}" for i in range(12) for s in "qd"]


def vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def cli(*args, tmp_path, env=None):
    """``python -m fastembed_tune ARGS``: (exit code, stderr)."""
    e = dict(os.environ, HF_HUB_OFFLINE="1", OPENAI_API_KEY=KEY, **(env or {}))
    e.pop("FASTEMBED_TUNE_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "fastembed_tune", *map(str, args)], capture_output=True, text=True,
                       env=e, cwd=tmp_path, timeout=300)
    return p.returncode, p.stderr


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def pairs(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"query": f"q {i}", "positive": f"d {i}"}) + "\n" for i in range(12)))
    return p


def adapt_args(pairs, tmp_path, *source):
    return ["adapt", "--pairs", pairs, *source, "--store", tmp_path / "store", "--epochs", "1", "--quiet",
            "-o", tmp_path / "out"]


# ---- a tiny endpoint serving bad answers --------------------------------------------------------------------------
class Endpoint:
    """``POST /v1/embeddings``: ``mode`` "ok" (a vector per text), "zero" (the text "q 3" gets zeros),
    "html" (HTTP 200 with an HTML page) or "html as json" (the same page labelled application/json)."""

    def __init__(self, mode="ok"):
        self.mode, self.texts = mode, []
        ep = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ep.texts += body["input"]
                if ep.mode.startswith("html"):
                    data = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
                    ctype = "text/html" if ep.mode == "html" else "application/json"
                else:
                    rows = [[0.0] * DIM if ep.mode == "zero" and t == "q 3" else vector(t).tolist()
                            for t in body["input"]]
                    data = json.dumps({"object": "list", "model": body["model"],
                                       "data": [{"object": "embedding", "index": i, "embedding": r}
                                                for i, r in enumerate(rows)],
                                       "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def api_store(root, url) -> EmbeddingStore:
    """The store ``adapt --api-base URL --api-model m`` reads, filled with every text of the pairs."""
    s = EmbeddingStore(root, model_fingerprint(ApiEmbedder(url, "m", api_key=KEY)), DIM)
    s.add(TEXTS, np.stack([vector(t) for t in TEXTS]))
    return s


# ---- 1. conflicting duplicates in precomputed vectors ---------------------------------------------------------------
def test_parquet_same_text_two_vectors_is_refused(tmp_path, pairs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = TEXTS + ["q 5"]  # rows 11 and 25 (1-based) both say "q 5"
    vec = np.stack([vector(t) for t in TEXTS] + [vector("something else")])
    pq.write_table(pa.table({"text": texts, "embedding": vec.tolist()}), tmp_path / "v.parquet")
    rc, err = cli(*adapt_args(pairs, tmp_path, "--embeddings", tmp_path / "v.parquet"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and "v.parquet" in line and "rows 11 and 25" in line and "'q 5'" in line, line
    assert not (tmp_path / "out").exists()


def test_npy_with_jsonl_texts_same_text_two_vectors_is_refused(tmp_path, pairs):
    long = "a very long text " * 20
    texts = [long] + TEXTS + [long]
    np.save(tmp_path / "v.npy", np.stack([vector("x")] + [vector(t) for t in TEXTS] + [vector("y")]))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                              for i, t in enumerate(texts)))
    rc, err = cli(*adapt_args(pairs, tmp_path, "--embeddings", tmp_path / "v.npy"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and "v.npy" in line and f"rows 1 and {len(texts)}" in line and "a very long text" in line, line
    assert len(line) < 400  # the text is shortened


def test_identical_duplicates_are_fine(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = TEXTS + ["q 5", "d 0"]
    vec = np.stack([vector(t) for t in texts])
    pq.write_table(pa.table({"text": texts, "embedding": vec.tolist()}), tmp_path / "v.parquet")
    np.save(tmp_path / "w.npy", vec)
    (tmp_path / "w.txt").write_text("\n".join(texts) + "\n")
    for f in ("v.parquet", "w.npy"):
        v = PrecomputedVectors(tmp_path / f)
        assert np.array_equal(v.encode(["q 5", "d 0"]), np.stack([vector("q 5"), vector("d 0")]))


# ---- 2. store shards are checksummed ----------------------------------------------------------------------------------
def test_store_shard_edited_on_disk_is_refused_naming_the_shard(tmp_path):
    s = EmbeddingStore(tmp_path, "m", DIM)
    s.add(TEXTS[:6], np.stack([vector(t) for t in TEXTS[:6]]))
    s.add(TEXTS[6:], np.stack([vector(t) for t in TEXTS[6:]]))
    assert EmbeddingStore(tmp_path, "m", DIM).get(TEXTS).shape == (len(TEXTS), DIM)  # untouched: loads
    rows = tmp_path / "m" / "shard-000001.rows"
    data = bytearray(rows.read_bytes())
    data[5] ^= 0x10  # one bit of one float: still finite, still the right size
    rows.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"shard-000001\.rows.*checksum"):
        EmbeddingStore(tmp_path, "m", DIM)
    rows.write_bytes(bytes(data[:5]) + bytes([data[5] ^ 0x10]) + bytes(data[6:]))  # restored
    keys = tmp_path / "m" / "shard-000000.keys"
    k = keys.read_bytes()
    keys.write_bytes(k[16:32] + k[:16] + k[32:])  # two texts' keys swapped: their vectors would swap
    with pytest.raises(UserError, match=r"shard-000000\.(keys|rows).*checksum"):
        EmbeddingStore(tmp_path, "m", DIM)


def test_store_without_checksums_still_loads(tmp_path):
    """A store written before checksums (no .sum files) is read as it is."""
    s = EmbeddingStore(tmp_path, "m", DIM)
    s.add(TEXTS, np.stack([vector(t) for t in TEXTS]))
    for f in (tmp_path / "m").glob("*.sum"):
        f.unlink()
    assert np.array_equal(EmbeddingStore(tmp_path, "m", DIM).get(TEXTS), np.stack([vector(t) for t in TEXTS]))


def test_adapt_with_an_edited_store_shard_exits_2_naming_it(tmp_path, pairs):
    with Endpoint() as ep:
        s = api_store(tmp_path / "store", ep.url)
        rows = s.dir / "shard-000000.rows"
        v = np.fromfile(rows, np.float32)
        v[3] += 0.5
        v.tofile(rows)
        rc, err = cli(*adapt_args(pairs, tmp_path, "--api-base", ep.url, "--api-model", "m"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and str(rows) in line and "checksum" in line, line
    assert not (tmp_path / "out").exists()


# ---- 3. internal errors where a user's mistake is meant ---------------------------------------------------------------
def test_all_zero_vector_in_npy(tmp_path, pairs):
    vec = np.stack([vector(t) for t in TEXTS])
    vec[4] = 0
    np.save(tmp_path / "v.npy", vec)
    (tmp_path / "v.txt").write_text("\n".join(TEXTS) + "\n")
    rc, err = cli(*adapt_args(pairs, tmp_path, "--embeddings", tmp_path / "v.npy"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and "v.npy row 5" in line and "zero" in line, line


def test_all_zero_vector_from_the_endpoint(tmp_path, pairs):
    with Endpoint("zero") as ep:
        rc, err = cli(*adapt_args(pairs, tmp_path, "--api-base", ep.url, "--api-model", "m"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and ep.url in line and "'q 3'" in line and "zero" in line, line
    assert not (tmp_path / "out").exists()
    store = EmbeddingStore(tmp_path / "store", model_fingerprint(ApiEmbedder(ep.url, "m", api_key=KEY)), DIM)
    assert "q 3" not in store  # never cached


@pytest.mark.parametrize("mode", ["html", "html as json"])
def test_endpoint_answering_html(tmp_path, pairs, mode):
    with Endpoint(mode) as ep:
        rc, err = cli(*adapt_args(pairs, tmp_path, "--api-base", ep.url, "--api-model", "m"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and ep.url in line and "JSON" in line and "internal error" not in line, line
    assert KEY not in err


@pytest.mark.parametrize("case", ["strings", "null row", "null inside"])
def test_parquet_embedding_column_of_strings_or_nulls(tmp_path, pairs, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = [vector(t).tolist() for t in TEXTS]
    if case == "strings":
        col = pa.array([json.dumps(e) for e in emb])
        want = "row 1"
    elif case == "null row":
        emb[0] = None
        col, want = pa.array(emb), "row 1"
    else:
        emb[6][2] = None
        col, want = pa.array(emb), "row 7"
    pq.write_table(pa.table({"text": TEXTS, "embedding": col}), tmp_path / "v.parquet")
    rc, err = cli(*adapt_args(pairs, tmp_path, "--embeddings", tmp_path / "v.parquet"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and f"v.parquet {want}" in line and "'embedding'" in line, line
    assert "internal error" not in line
    if case != "strings":
        assert f"{DIM} numbers" in line, line  # the size of the other rows, not of a null


@pytest.mark.parametrize("damage", ["{not json", '{"dim": "eight"}', "[]"])
def test_damaged_store_meta_json_names_it(tmp_path, pairs, damage):
    with Endpoint() as ep:
        s = api_store(tmp_path / "store", ep.url)
        meta = s.dir / "meta.json"
        meta.write_text(damage)
        rc, err = cli(*adapt_args(pairs, tmp_path, "--api-base", ep.url, "--api-model", "m"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and str(meta) in line and "internal error" not in line, line
    assert meta.read_text() == damage  # left for the user to look at


def test_nan_in_a_store_shard_is_blamed_on_the_shard_not_the_endpoint(tmp_path, pairs):
    with Endpoint() as ep:
        s = api_store(tmp_path / "store", ep.url)
        rows = s.dir / "shard-000000.rows"
        v = np.fromfile(rows, np.float32)
        v[DIM * 2] = np.nan
        v.tofile(rows)
        for f in s.dir.glob("*.sum"):  # even a store written before checksums
            f.unlink()
        rc, err = cli(*adapt_args(pairs, tmp_path, "--api-base", ep.url, "--api-model", "m"), tmp_path=tmp_path)
    line = one_error_line(err)
    assert rc == 2 and str(rows) in line and "NaN" in line and "endpoint" not in line, line
