"""``fastembed-tune adapt``: adapters on frozen embeddings, the API source and its cache.

The "API" is either ``fastembed-tune serve`` of a tiny model on loopback (a subprocess, called through
the official ``openai`` client, its ``/metrics`` counting the texts it embedded) or a fake
OpenAI-compatible server in this process (``http.server`` on 127.0.0.1, a free port) that counts every
text it is asked for, can answer 429/503 first, and can hold a request so that a caching run can be
killed mid-way. Its vectors are made so that an adapter can learn something: a query's vector is its
document's through a fixed random distortion (plus noise), so the frozen vectors retrieve poorly and
a linear adapter can undo it. Adapters are checked against torch, onnxruntime and a
plain-numpy formula written here.
"""
import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fastembed_tune.adapt.adapter import Adapter, AdapterNet, apply_params, init_params, onnx_graph
from fastembed_tune.adapt.api_client import ApiEmbedder, TokenBudget
from fastembed_tune.adapt.sources import PrecomputedVectors, open_source
from fastembed_tune.adapt.training import AdapterConfig, mine, train_adapter
from fastembed_tune.cli.app import main
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.store import EmbeddingStore, model_fingerprint

openai = pytest.importorskip("openai")

KEY = "sk-test-0123456789"
DIM = 16
MIX = np.eye(DIM) + 2.0 * np.random.default_rng(0).standard_normal((DIM, DIM)) / np.sqrt(DIM)


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fake_vector(text: str) -> np.ndarray:
    """``d N``: a random unit vector of N; ``q N``: that vector through a fixed distortion, plus noise; else: by hash."""
    m = re.fullmatch(r"([qd]) (\d+)", text)
    seed = int(m.group(2)) if m else int.from_bytes(hashlib.blake2b(text.encode()).digest()[:8], "little")
    v = unit(np.random.default_rng([seed, 1]).standard_normal(DIM))
    if m and m.group(1) == "q":
        v = unit(v @ MIX + 0.1 * np.random.default_rng([seed, 2]).standard_normal(DIM))
    return v.astype(np.float32)


# ---- a fake OpenAI-compatible endpoint ------------------------------------------------------------------------
class FakeApi:
    def __init__(self, fail=(), block_after=None, delay=0.0):
        self.fail, self.block_after, self.delay = list(fail), block_after, delay
        self.texts: list = []  # every text answered with a vector
        self.requests = 0
        self.sizes: list = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        self.blocked, self.release = threading.Event(), threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/embeddings":
                    return self._answer(404, {"error": {"message": "no such route", "type": "invalid_request_error"}})
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._answer(401, {"error": {"message": "Incorrect API key provided: "
                                                        f"{self.headers.get('Authorization', '')[7:]}",
                                                        "type": "invalid_request_error", "code": "invalid_api_key"}})
                with api.lock:
                    api.requests += 1
                    status = api.fail.pop(0) if api.fail else None
                    api.active += 1
                    api.max_active = max(api.max_active, api.active)
                try:
                    if status is not None:
                        return self._answer(status, {"error": {"message": "slow down", "type": "rate_limit"}},
                                            [("Retry-After", "0")] if status == 429 else [])
                    texts = body["input"]
                    if api.block_after is not None and len(api.texts) >= api.block_after:
                        api.blocked.set()
                        api.release.wait(60)
                        return self._answer(503, {"error": {"message": "gone"}})
                    time.sleep(api.delay)
                    with api.lock:
                        api.texts += texts
                        api.sizes.append(len(texts))
                    data = [{"object": "embedding", "index": i, "embedding": fake_vector(t).tolist()}
                            for i, t in enumerate(texts)]
                    n = sum(len(t.split()) for t in texts)
                    self._answer(200, {"object": "list", "data": data, "model": body["model"],
                                       "usage": {"prompt_tokens": n, "total_tokens": n}})
                finally:
                    with api.lock:
                        api.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def distorted_data(tmp_path):
    """Pairs "q i" -> "d i": 150 for training, 40 for the test; 60 more documents as distractors."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"query": f"q {i}", "positive": f"d {i}"} for i in range(150)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"query": f"q {i}", "positive": f"d {i}"} for i in range(150, 190)])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"c{i}", "text": f"d {i}"} for i in range(150, 250)])
    return train, test, corpus, {f"{s} {i}" for s in "qd" for i in range(250) if s == "d" or i < 190}


# ---- the adapter maths ----------------------------------------------------------------------------------------
def reference(kind, p, x):
    """The adapter written out in float64 numpy, independently of the package."""
    x = unit(x)
    p = {k: v.astype(np.float64) for k, v in p.items()}
    if kind == "linear":
        y = x @ (np.eye(x.shape[1]) + p["delta"])
    elif kind == "lowrank":
        y = x + x @ p["a"] @ p["b"]
    else:
        y = x + np.maximum(0, x @ p["w1"] + p["b1"]) @ p["w2"]
    return unit(y + p["bias"])


def random_params(kind, dim, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in init_params(kind, dim, rank=4, hidden=8).items()}


@pytest.mark.parametrize("kind", ["linear", "lowrank", "mlp"])
def test_numpy_torch_onnx_and_saved_adapter_agree(kind, tmp_path):
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32) * 3
    p = random_params(kind, 6)
    want = reference(kind, p, x)
    assert np.abs(apply_params(kind, p, x) - want).max() < 1e-5
    with torch.no_grad():
        assert np.abs(AdapterNet(kind, p)(torch.from_numpy(x)).numpy() - want).max() < 1e-5
    s = ort.InferenceSession(onnx_graph(kind, p, 6).SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(s.run(None, {"embeddings": x})[0] - want).max() < 1e-5
    q = random_params(kind, 6, seed=2)
    a = Adapter(config={"kind": kind, "dim": 6, "sides": "both"}, params={"query": p, "document": q})
    a.save(tmp_path / "a")
    b = Adapter(tmp_path / "a")
    assert np.abs(b.apply(x) - want).max() < 1e-5
    assert np.abs(b.apply(x, "document") - reference(kind, q, x)).max() < 1e-5
    s = ort.InferenceSession(str(tmp_path / "a" / "adapter_document.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(s.run(None, {"embeddings": x})[0] - reference(kind, q, x)).max() < 1e-5
    # a query-only adapter leaves documents as they are (normalised)
    Adapter(config={"kind": kind, "dim": 6, "sides": "query"}, params={"query": p}).save(tmp_path / "q")
    assert np.abs(Adapter(tmp_path / "q").apply(x, "document") - unit(x)).max() < 1e-6
    # identity at initialisation
    assert np.abs(apply_params(kind, init_params(kind, 6, 4, 8), x) - unit(x)).max() < 1e-6


def test_adapter_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        Adapter(tmp_path / "nope")
    Adapter.identity("linear", 4).save(tmp_path / "a")
    a = Adapter(tmp_path / "a")
    with pytest.raises(UserError, match="maps 4-d vectors"):
        a.apply(np.ones((2, 3), np.float32))
    with pytest.raises(UserError, match="NaN"):
        a.apply(np.array([[1, 0, 0, np.nan]], np.float32))
    (tmp_path / "a" / "adapter_config.json").write_text("{")
    with pytest.raises(UserError, match="adapter_config.json: not valid JSON"):
        Adapter(tmp_path / "a")
    os.unlink(tmp_path / "a" / "adapter.safetensors")
    with pytest.raises(UserError, match="adapter.safetensors is missing"):
        Adapter(tmp_path / "a")


def test_mined_negatives_match_brute_force():
    rng = np.random.default_rng(3)
    c = unit(rng.standard_normal((50, 8))).astype(np.float32)
    q = unit(rng.standard_normal((6, 8))).astype(np.float32)
    pos = [[i, i + 10] for i in range(6)]
    got = mine(q, c, pos, 5, None)
    s = q.astype(np.float64) @ c.T.astype(np.float64)
    for i in range(6):
        s[i, pos[i]] = -np.inf
    assert got.tolist() == np.argsort(-s, axis=1, kind="stable")[:, :5].tolist()


def test_training_learns_the_distortion_and_picks_a_validated_epoch():
    texts = [f"q {i}" for i in range(200)] + [f"d {i}" for i in range(200)]
    V = np.stack([fake_vector(t) for t in texts])
    qi, pi = np.arange(150), np.arange(200, 350)
    vq, vd = np.arange(150, 200), np.arange(200, 400)

    def recall1(a):  # held-out queries 150..199 against all 200 documents
        s = a.apply(V[vq]) @ a.apply(V[vd], "document").T
        return float((s.argmax(1) == np.arange(150, 200)).mean())

    frozen = recall1(Adapter.identity("linear", DIM))
    a, s = train_adapter(V, qi, pi, np.arange(200, 400), AdapterConfig(epochs=8, batch_size=16, lr=1e-2), recall1,
                         log=lambda *_: None)
    assert recall1(a) >= frozen + 0.3
    assert s["curve"][0]["epoch"] == 0 and s["curve"][s["best_epoch"]]["ndcg@10"] == max(c["ndcg@10"] for c in s["curve"])
    assert s["mined_at_epochs"] == list(range(s["epochs_run"]))


# ---- the API client -------------------------------------------------------------------------------------------
def test_token_budget_never_exceeds_the_rate():
    t, slept = [0.0], []

    def sleep(d):
        slept.append(d)
        t[0] += d

    b = TokenBudget(1200, clock=lambda: t[0], sleep=sleep)  # 20 tokens a second
    for n in [500, 500, 500, 300, 5000]:
        b.acquire(n)
    # 1200 at once, then 20 a second: 500+500+500+300+1200(clipped) = 3000 tokens need (3000-1200)/20 s
    assert abs(t[0] - 90.0) < 1e-9
    b.correct(-100)  # the endpoint counted fewer tokens than estimated: credit them
    assert b.acquire(100) == 0.0


def test_batches_concurrency_and_retries_429_then_200():
    texts = [f"d {i}" for i in range(23)]
    with FakeApi(fail=[429, 503, 429], delay=0.05) as fake:
        api = ApiEmbedder(fake.url, "m", api_key=KEY, batch_size=5, concurrency=2, backoff=0.001)
        rows = api.encode(texts)
    assert np.abs(rows - np.stack([fake_vector(t) for t in texts])).max() < 1e-6
    assert sorted(fake.texts) == sorted(texts) and max(fake.sizes) <= 5
    assert fake.max_active <= 2 and api.retries == 3 and fake.requests == 5 + 3
    assert api.tokens == 2 * 23


def test_retries_give_up_with_one_line():
    with FakeApi(fail=[503] * 10) as fake:
        api = ApiEmbedder(fake.url, "m", api_key=KEY, max_retries=2, backoff=0.001)
        with pytest.raises(UserError, match="still failing after 2 retries"):
            api.encode(["a"])
        assert fake.requests == 3


def test_cli_wrong_key_wrong_url_no_key(tmp_path, distorted_data, capsys, monkeypatch):
    train, test, corpus, _ = distorted_data
    args = ["adapt", "--pairs", train, "--api-model", "m", "--store", str(tmp_path / "s"), "-o", str(tmp_path / "o")]
    with FakeApi() as fake:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-secret-999")
        assert main([*args, "--api-base", fake.url]) == 2
        err = capsys.readouterr().err
        assert "refused the key in OPENAI_API_KEY" in err and "sk-wrong-secret-999" not in err
        assert err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    t0 = time.monotonic()
    assert main([*args, "--api-base", f"http://127.0.0.1:{free_port()}/v1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the endpoint" in err and err.count("\n") == 1 and time.monotonic() - t0 < 30
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main([*args, "--api-base", "http://127.0.0.1:9/v1"]) == 2
    assert "set OPENAI_API_KEY" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


# ---- adapt end to end -----------------------------------------------------------------------------------------
def test_adapt_over_the_api_embeds_each_text_once_across_epochs_and_runs(tmp_path, distorted_data, monkeypatch, capsys):
    train, test, corpus, needed = distorted_data
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    store = str(tmp_path / "store")
    with FakeApi() as fake:
        args = ["adapt", "--pairs", train, "--test", test, "--corpus", corpus, "--api-base", fake.url,
                "--api-model", "fake", "--api-batch-size", "32", "--store", store, "--epochs", "8", "--batch-size", "16", "--lr", "1e-2",
                "--quiet"]
        assert main([*args, "-o", str(tmp_path / "a1")]) == 0
        assert len(fake.texts) == len(set(fake.texts)) == len(needed) and set(fake.texts) == needed
        assert main([*args, "--kind", "mlp", "--hidden", "32", "-o", str(tmp_path / "a2")]) == 0
        assert len(fake.texts) == len(needed)  # the second run asked for nothing
    out = capsys.readouterr().out
    assert "0 embedded now" in out and KEY not in out
    m = json.loads((tmp_path / "a1" / "metrics.json").read_text())
    assert m["metrics"]["adapted"]["ndcg@10"] > m["metrics"]["frozen"]["ndcg@10"] + 0.1
    assert m["comparisons"]["adapted vs frozen"]["ci_low"] > 0
    for f in ["adapter.safetensors", "adapter_config.json", "adapter.onnx", "report.md", "metrics.png"]:
        assert (tmp_path / "a1" / f).is_file()
    cfg = json.loads((tmp_path / "a1" / "adapter_config.json").read_text())
    assert cfg["source"]["kind"] == "api" and KEY not in json.dumps(cfg)
    a = Adapter(tmp_path / "a1")  # the shipped adapter reproduces the report from the cached vectors
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.evaluation.metrics import evaluate

    ev = load_eval(test, corpus)
    q = np.stack([fake_vector(t) for t in ev.queries.values()])
    c = np.stack([fake_vector(t) for t in ev.corpus.values()])
    r = evaluate(None, ev, query_embeddings=a.apply(q), corpus_embeddings=c)["metrics"]["ndcg@10"]
    assert abs(r - m["metrics"]["adapted"]["ndcg@10"]) < 1e-6
    for path in (tmp_path / "store").rglob("*"):  # the key is never written to disk
        assert not path.is_file() or KEY.encode() not in path.read_bytes()


KILL_SCRIPT = """
import sys
from fastembed_tune.adapt.sources import open_source
src = open_source(api_base=sys.argv[1], api_model="fake", api_batch_size=4, api_concurrency=1, store_dir=sys.argv[2])
src.encode([f"d {i}" for i in range(60)])
"""


def test_kill_during_caching_then_resume_requests_only_the_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    texts = [f"d {i}" for i in range(60)]
    store = tmp_path / "store"
    with FakeApi(block_after=13) as fake:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, fake.url, str(store)],
                                env=dict(os.environ, HF_HUB_OFFLINE="1"))
        try:
            assert fake.blocked.wait(60), "the caching run never reached the held request"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        fake.release.set()
        api = ApiEmbedder(fake.url, "fake", api_key=KEY, batch_size=4, concurrency=1)
        api.dim = DIM
        have = EmbeddingStore(store, model_fingerprint(api), DIM)
        kept = [t for t in texts if t in have]
        assert 0 < len(kept) < len(texts) and kept == texts[:len(kept)]
        before = list(fake.texts)
        fake.block_after = None
        src = open_source(api_base=fake.url, api_model="fake", api_batch_size=4, api_concurrency=1, store_dir=store)
        rows = src.encode(texts)
    again = fake.texts[len(before):]
    assert sorted(again) == sorted(set(texts) - set(kept))  # only the missing, each once
    assert np.abs(rows - np.stack([fake_vector(t) for t in texts])).max() < 1e-6


def test_precomputed_vectors_npy_and_parquet(tmp_path, distorted_data, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    train, test, corpus, needed = distorted_data
    texts = sorted(needed)
    vec = np.stack([fake_vector(t) for t in texts])
    np.save(tmp_path / "v.npy", vec)
    (tmp_path / "v.txt").write_text("\n".join(texts) + "\n")
    pq.write_table(pa.table({"text": texts, "embedding": [list(map(float, v)) for v in vec]}), tmp_path / "w.parquet")
    for f in ("v.npy", "w.parquet"):
        src = open_source(str(tmp_path / f))
        assert np.abs(src.encode(texts[::-1]) - vec[::-1]).max() < 1e-7
    rc = main(["adapt", "--pairs", train, "--test", test, "--corpus", corpus, "--embeddings", str(tmp_path / "v.npy"),
               "--epochs", "4", "--lr", "1e-2", "--quiet", "-o", str(tmp_path / "o")])
    assert rc == 0 and (tmp_path / "o" / "adapter.onnx").is_file()
    bad = vec.copy()
    bad[5, 2] = np.nan
    np.save(tmp_path / "v.npy", bad)
    with pytest.raises(UserError, match="v.npy row 6: NaN"):
        PrecomputedVectors(tmp_path / "v.npy")
    np.save(tmp_path / "v.npy", vec[:-1])
    with pytest.raises(UserError, match="vectors but"):
        PrecomputedVectors(tmp_path / "v.npy")
    with pytest.raises(UserError, match="no vector for 1 of the texts"):
        PrecomputedVectors(tmp_path / "w.parquet").encode(["d 1", "unknown text"])
    capsys.readouterr()
    assert main(["adapt", "--pairs", train, "-o", str(tmp_path / "o2")]) == 2
    assert "give the embeddings to adapt" in capsys.readouterr().err


def test_embed_with_adapter(tmp_path, tiny_model_dir, one_torch_thread):
    (tmp_path / "t.txt").write_text("what is a monad\nB-trees versus LSM trees\n")
    rng = np.random.default_rng(5)
    p = {k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in init_params("linear", 32).items()}
    Adapter(config={"kind": "linear", "dim": 32, "sides": "query"}, params={"query": p}).save(tmp_path / "a")
    base = ["embed", "--model", tiny_model_dir, "-i", str(tmp_path / "t.txt"), "--quiet"]
    assert main([*base, "-o", str(tmp_path / "raw.npy")]) == 0
    assert main([*base, "-o", str(tmp_path / "q.npy"), "--adapter", str(tmp_path / "a")]) == 0
    raw, q = np.load(tmp_path / "raw.npy"), np.load(tmp_path / "q.npy")
    assert np.abs(q - reference("linear", p, raw)).max() < 1e-5
    assert main([*base, "-o", str(tmp_path / "d.npy"), "--adapter", str(tmp_path / "a"), "--adapter-side",
                 "document"]) == 0
    assert np.abs(np.load(tmp_path / "d.npy") - unit(raw)).max() < 1e-6
    assert main([*base, "-o", str(tmp_path / "x.npy"), "--adapter", str(tmp_path / "nope")]) == 2


# ---- the real server as the API -------------------------------------------------------------------------------
def texts_embedded(url: str) -> float:
    import httpx

    body = httpx.get(url.replace("/v1", "/metrics"), timeout=10).text
    return float(re.search(r"^fastembed_texts_total (\S+)$", body, re.M).group(1))


def start_server(model_dir, tmp_path, *extra):
    """`fastembed-tune serve` of ``model_dir`` on a free loopback port: (process, base URL)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "fastembed_tune", "serve", "--model", model_dir, "--port", "0",
                             "--cache-dir", str(tmp_path / "onnx"), "--threads", "1", "--name", "tiny", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline, url, said = time.monotonic() + 120, None, []
    while url is None and time.monotonic() < deadline:
        try:
            said.append(lines.get(timeout=1))
            m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", said[-1])
            url = m.group(1) if m else None
        except queue.Empty:
            if proc.poll() is not None:
                break
    if url is None:
        proc.kill()
        raise AssertionError(f"the server did not start: {''.join(said)[-500:]}")
    return proc, url


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_with_an_adapter_serves_adapted_query_vectors(tmp_path, tiny_model_dir):
    from openai import OpenAI

    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    rng = np.random.default_rng(7)
    p = {k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in init_params("linear", 32).items()}
    Adapter(config={"kind": "linear", "dim": 32, "sides": "query"}, params={"query": p}).save(tmp_path / "a")
    # fp32: the reference below is the fp32 graph (auto picks by timing, which varies on a busy machine)
    proc, url = start_server(tiny_model_dir, tmp_path, "--adapter", str(tmp_path / "a"), "--precision", "fp32")
    try:
        texts = ["what is a monad", "B-trees versus LSM trees"]
        got = OpenAI(base_url=url, api_key="x").embeddings.create(model="tiny", input=texts, encoding_format="float")
        served = np.array([d.embedding for d in got.data], np.float32)
    finally:
        stop_server(proc)
    raw = OnnxEmbedder(next((tmp_path / "onnx").iterdir())).embed(texts)
    assert np.abs(served - reference("linear", p, raw)).max() < 1e-5
    assert np.abs(served - raw).max() > 1e-3  # not the frozen vectors


def test_serve_as_the_api_each_text_once(tmp_path, tiny_model_dir, monkeypatch):
    words = ["array", "tuple", "list", "graph", "tree", "heap", "stack", "queue", "cache", "socket", "thread", "lock"]
    train = write_jsonl(tmp_path / "train.jsonl", [{"query": w, "positive": f"a {w} is a data structure or a resource "
                                                    f"number {i}"} for i, w in enumerate(words * 3)])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": str(i), "text": f"document {i} about {w}"}
                                                     for i, w in enumerate(words)])
    proc, url = start_server(tiny_model_dir, tmp_path)
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "any")
        args = ["adapt", "--pairs", train, "--corpus", corpus, "--api-base", url, "--api-model", "tiny",
                "--api-batch-size", "8", "--store", str(tmp_path / "store"), "--epochs", "2", "--quiet"]
        distinct = len({t for w in words for t in (w,)} | {json.loads(x)["positive"] for x in open(train)}
                       | {f"document {i} about {w}" for i, w in enumerate(words)})
        assert main([*args, "-o", str(tmp_path / "a1")]) == 0
        assert texts_embedded(url) == distinct
        assert main([*args, "--sides", "both", "-o", str(tmp_path / "a2")]) == 0
        assert texts_embedded(url) == distinct  # nothing embedded twice, across epochs and runs
        assert Adapter(tmp_path / "a2").sides == "both"
    finally:
        stop_server(proc)
