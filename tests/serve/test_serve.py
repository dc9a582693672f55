"""``fastembed-tune serve``: the OpenAI-compatible embeddings server.

The server runs as a real subprocess on 127.0.0.1 (a free port it picks itself and prints), serving a tiny
random BERT given as a sentence-transformers directory, so the parity-gated export into the cache is part
of the test. Answers are checked against ``OnnxEmbedder.embed`` of the same export, one text at a time (the
single-request answer), through the official ``openai`` client and through raw HTTP. Back-pressure and
coalescing are tested in-process with an engine that blocks until released, so they need no timing.
"""
import asyncio
import base64
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

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastembed_tune import serve as serve_mod
from fastembed_tune.cli.app import main
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.serve import extra as serve_extra
from fastembed_tune.serve.batching import Batcher, Ids, plan_batches, truncate_ids

openai = pytest.importorskip("openai")

NAME = "tiny"
TEXTS = ["hello world", "Embeddings map texts to vectors.", "a", "tuple", "TCP guarantees in-order delivery.",
         "  spaces  around  ", "ünïcödé and emoji 🙂", "x " * 40, "A longer sentence about databases, indexes "
         "and the trade-offs of B-trees versus LSM trees in write-heavy workloads.", "query: what is a monad?"]
LONG = " ".join(["Embeddings map texts to vectors so that similar meanings end up close together."] * 60)
MIN_COS = 0.99999


def cosine(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ---- a server subprocess ------------------------------------------------------------------------------------
class Server:
    def __init__(self, args, timeout=180.0):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastembed_tune", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        deadline = time.time() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                self.proc.kill()
                raise RuntimeError(f"server not ready in {timeout} s: {''.join(self.stderr)[-2000:]}")
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))
                break
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line)

    def _pump_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self, timeout=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve_cache")


@pytest.fixture(scope="module")
def server(tiny_model_dir, cache_dir):
    """The tiny sentence-transformers directory served (exported into ``cache_dir`` first)."""
    s = Server(["--model", tiny_model_dir, "--name", NAME, "--cache-dir", str(cache_dir), "--threads", "1",
                "--precision", "fp32"])
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def export_dir(server, tiny_model_dir, cache_dir):
    """The export the server made (found again in the cache, not made twice)."""
    return serve_mod.resolve_model(tiny_model_dir, cache_dir=cache_dir, log=lambda line: None)


@pytest.fixture(scope="module")
def embedder(export_dir):
    return OnnxEmbedder(export_dir, threads=1)


@pytest.fixture(scope="module")
def single(embedder):
    """The single-request answer: each text embedded alone."""
    cache = {}

    def get(text):
        if text not in cache:
            cache[text] = embedder.embed([text])[0]
        return cache[text]
    return get


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def post(http, body, raw=False):
    return http.post("/v1/embeddings", content=body if raw else json.dumps(body),
                     headers={"Content-Type": "application/json"})


# ---- answers equal OnnxEmbedder.embed ------------------------------------------------------------------------
def test_openai_client_string_and_list(client, single, embedder):
    r = client.embeddings.create(input=TEXTS[1], model=NAME, encoding_format="float")
    assert r.object == "list" and r.model == NAME and len(r.data) == 1 and r.data[0].index == 0
    assert cosine(r.data[0].embedding, single(TEXTS[1])) >= MIN_COS
    r = client.embeddings.create(input=TEXTS, model=NAME, encoding_format="float", user="ignored")
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    for d, t in zip(r.data, TEXTS):
        assert d.object == "embedding" and len(d.embedding) == embedder.dim
        assert cosine(d.embedding, single(t)) >= MIN_COS
    tokens = sum(len(e.ids) for e in embedder.tokenizer.encode_batch(TEXTS))
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens


def test_client_default_base64_decodes_to_the_same_floats(client, http):
    """The openai client asks for base64 when no format is given (as the .NET client always does)."""
    via_client = np.array(client.embeddings.create(input=TEXTS[:3], model=NAME).data[0].embedding, np.float32)
    floats = post(http, {"input": TEXTS[:3], "model": NAME}).json()["data"]
    b64 = post(http, {"input": TEXTS[:3], "model": NAME, "encoding_format": "base64"}).json()["data"]
    for f, b in zip(floats, b64):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(f["embedding"], np.float32))
    np.testing.assert_array_equal(via_client, np.array(floats[0]["embedding"], np.float32))


def test_dimensions_truncate_and_renormalise(client, single, embedder):
    r = client.embeddings.create(input=TEXTS[:4], model=NAME, dimensions=8, encoding_format="float")
    for d, t in zip(r.data, TEXTS):
        ref = single(t)[:8].astype(np.float64)
        np.testing.assert_allclose(d.embedding, ref / np.linalg.norm(ref), atol=1e-5)
        assert abs(np.linalg.norm(d.embedding) - 1) < 1e-5
    full = client.embeddings.create(input=TEXTS[0], model=NAME, dimensions=embedder.dim, encoding_format="float")
    assert cosine(full.data[0].embedding, single(TEXTS[0])) >= MIN_COS
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(input="x", model=NAME, dimensions=embedder.dim + 1)
    assert e.value.status_code == 400 and e.value.body["param"] == "dimensions"


def test_long_text_is_truncated_not_refused(client, single, embedder):
    r = client.embeddings.create(input=[LONG, "short"], model=NAME, encoding_format="float")
    assert cosine(r.data[0].embedding, single(LONG)) >= MIN_COS
    assert r.usage.prompt_tokens == embedder.max_seq_length + len(embedder.tokenizer.encode("short").ids)


def test_token_id_inputs(http, single, embedder):
    ids = [embedder.tokenizer.encode(t).ids for t in TEXTS[:3]]
    one = post(http, {"input": ids[0], "model": NAME}).json()
    assert cosine(one["data"][0]["embedding"], single(TEXTS[0])) >= MIN_COS
    many = post(http, {"input": ids, "model": NAME}).json()
    for d, t in zip(many["data"], TEXTS):
        assert cosine(d["embedding"], single(t)) >= MIN_COS
    assert many["usage"]["prompt_tokens"] == sum(map(len, ids))
    long_ids = embedder.tokenizer.encode(LONG).ids  # already cut by the tokenizer: re-expand past the window
    long_ids = long_ids[:-1] + long_ids[1:-1] * 2 + long_ids[-1:]
    assert len(long_ids) > embedder.max_seq_length
    r = post(http, {"input": [long_ids], "model": NAME}).json()
    assert cosine(r["data"][0]["embedding"], single(LONG)) >= MIN_COS  # truncated as the tokenizer truncates


# ---- every error, in OpenAI's shape ----------------------------------------------------------------------
ERRORS = [
    (b"not json", 400, None, None),
    (b'{"input": "a", "model": "tiny", "dimensions": NaN}', 400, None, None),
    (b"[1, 2]", 400, None, None),
    ({"model": NAME}, 400, "input", None),
    ({"input": "a"}, 400, "model", None),
    ({"input": "a", "model": 3}, 400, "model", None),
    ({"input": "", "model": NAME}, 400, "input", None),
    ({"input": [], "model": NAME}, 400, "input", None),
    ({"input": ["a", ""], "model": NAME}, 400, "input", None),
    ({"input": ["a", 1], "model": NAME}, 400, "input", None),
    ({"input": 5, "model": NAME}, 400, "input", None),
    ({"input": {"text": "a"}, "model": NAME}, 400, "input", None),
    ({"input": [[]], "model": NAME}, 400, "input", None),
    ({"input": [-1], "model": NAME}, 400, "input", None),
    ({"input": [[101, 10 ** 9]], "model": NAME}, 400, "input", None),
    ({"input": [[101, 1.5]], "model": NAME}, 400, "input", None),
    ({"input": "a", "model": NAME, "encoding_format": "int8"}, 400, "encoding_format", None),
    ({"input": "a", "model": NAME, "dimensions": 0}, 400, "dimensions", None),
    ({"input": "a", "model": NAME, "dimensions": "8"}, 400, "dimensions", None),
    ({"input": "a", "model": NAME, "dimensions": True}, 400, "dimensions", None),
    ({"input": "a", "model": NAME, "dimensions": 10 ** 6}, 400, "dimensions", None),
    ({"input": "a", "model": "text-embedding-3-small"}, 404, "model", "model_not_found"),
    ({"input": ["a"] * 2049, "model": NAME}, 413, "input", "too_many_inputs"),
]


@pytest.mark.parametrize("body,status,param,code", ERRORS)
def test_errors_in_openai_shape(http, body, status, param, code):
    r = post(http, body, raw=isinstance(body, bytes))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code
    assert err["type"] == "invalid_request_error"


def test_routes_and_methods_errors(http):
    r = http.get("/v1/embeddings")
    assert r.status_code == 405 and "Invalid method" in r.json()["error"]["message"]
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(input="a", model="text-embedding-3-small")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(input="", model=NAME)
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(input=["a"] * 2049, model=NAME)
    assert e.value.status_code == 413


def test_models_health_metrics(client, http):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    assert http.get("/health").json()["status"] == "ok"
    text = http.get("/metrics").text
    for name in ("fastembed_requests_total", "fastembed_errors_total", "fastembed_batch_size_bucket",
                 "fastembed_batch_padded_tokens_bucket", "fastembed_prompt_tokens_total",
                 "fastembed_request_latency_seconds_bucket", "fastembed_queued_texts"):
        assert name in text
    assert re.search(r'fastembed_requests_total\{route="/v1/embeddings",status="200"\} [1-9]', text)


# ---- concurrency: every batched answer equals the single-request answer ---------------------------------------
def test_concurrent_clients_get_their_own_answers(server, single):
    pool = TEXTS + [LONG, LONG[:300], "b", "another short one"]
    errors, checked = [], [0]

    def worker(seed):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(20):
                texts = [pool[i] for i in rng.integers(0, len(pool), size=int(rng.integers(1, 5)))]
                r = post(c, {"input": texts, "model": NAME})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                for d, t in zip(r.json()["data"], texts):
                    if cosine(d["embedding"], single(t)) < MIN_COS:
                        errors.append((t, cosine(d["embedding"], single(t))))
                checked[0] += 1

    for t in pool:  # the references first, so the workers only read the cache
        single(t)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and checked[0] == 16 * 20


# ---- the batcher, deterministic: an engine that blocks until released --------------------------------------
class Gate:
    """A tiny engine whose run() records batch sizes and blocks while ``hold`` is clear."""
    dim, vocab_size, max_seq_length = 3, 100, 16
    file = "gate"

    def __init__(self):
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.runs = []

    def tokenize(self, texts):
        return [Ids([1] * min(len(t), self.max_seq_length)) for t in texts]

    def from_ids(self, ids):
        return Ids(truncate_ids(ids, self.max_seq_length))

    def run(self, encs):
        self.runs.append(len(encs))
        self.entered.set()
        self.hold.wait(30)
        return np.array([[len(e.ids), 1.0, 0.0] for e in encs], np.float32)


def test_batcher_coalesces_waiting_requests():
    gate = Gate()
    b = Batcher(gate, max_batch_tokens=64, max_batch_size=8)
    b.start()

    async def go():
        first = asyncio.ensure_future(b.embed(texts=["aaaa"]))
        await asyncio.to_thread(gate.entered.wait, 30)  # the first run is in the engine, blocked
        rest = [asyncio.ensure_future(b.embed(texts=[t])) for t in ("b", "cc", "ddd")]
        while b.queued < 4:  # all three admitted (they queue behind the blocked run)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the tokenizer thread hand them over
        gate.hold.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(go())
    b.close()
    assert gate.runs == [1, 3]  # the three waiting requests ran as one batch
    assert first[0][0, 0] == 4 and [r[0][0, 0] for r in rest] == [1, 2, 3] and [r[1] for r in rest] == [1, 2, 3]
    assert b.queued == 0


class BucketGate(Gate):
    """Gate with length buckets of 4 tokens (as the ONNX engine pads)."""

    @staticmethod
    def padded_length(n):
        return -(-n // 4) * 4


def _queue_behind_a_blocked_run(b, gate, inputs):
    """Block the engine on one request, queue ``inputs`` (one request each) behind it, release."""
    async def go():
        first = asyncio.ensure_future(b.embed(texts=["aaaa"]))
        await asyncio.to_thread(gate.entered.wait, 30)
        rest = [asyncio.ensure_future(b.embed(texts=t)) for t in inputs]
        while b.queued < 1 + sum(len(t) for t in inputs):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the tokenizer thread hand them over
        gate.hold.set()
        return await first, await asyncio.gather(*rest)

    return asyncio.run(go())


@pytest.mark.parametrize("window, runs", [(None, [1, 2, 1, 3]), (16, [1, 2, 2, 1, 1])])
def test_the_window_is_wider_than_a_run_so_bucket_runs_fill_up(window, runs):
    """Queued texts of lengths 1,5,2,6,3,7 (buckets 4 and 8), runs of at most 16 padded tokens: the
    default window takes them all, so each bucket's texts run together ([7,6] [5] [3,2,1]); a window of
    16 tokens (one run's budget) takes 1,5,2,6 then 3,7 and runs them in more, smaller runs."""
    gate = BucketGate()
    kw = {} if window is None else {"max_window_tokens": window}
    b = Batcher(gate, max_batch_tokens=16, max_batch_size=8, **kw)
    b.start()
    _, rest = _queue_behind_a_blocked_run(b, gate, [["a" * n] for n in (1, 5, 2, 6, 3, 7)])
    b.close()
    assert gate.runs == runs
    assert [r[0][0, 0] for r in rest] == [1, 5, 2, 6, 3, 7]  # each request got its own row


class StreamGate(BucketGate):
    """Two streams: runs of one window must arrive together (a barrier of two), unsplit."""
    streams = 2

    def __init__(self):
        super().__init__()
        self.together = threading.Barrier(2, timeout=20)
        self.calls = []

    def run(self, encs, split=True):
        self.calls.append((len(encs), split))
        if not split:
            self.together.wait()  # raises (the request fails) unless the other run is in the engine too
        return super().run(encs)


def test_a_window_s_runs_go_to_the_streams_at_once():
    gate = StreamGate()
    b = Batcher(gate, max_batch_tokens=64, max_batch_size=8)
    b.start()
    # one request whose rows land in two runs at once (buckets 4 and 8), and two more requests
    first, rest = _queue_behind_a_blocked_run(b, gate, [["a" * 2, "a" * 7], ["a" * 3], ["a" * 6]])
    b.close()
    assert gate.calls[0] == (1, True)  # a window of one run: split over the streams (here one text)
    assert sorted(gate.calls[1:]) == [(2, False), (2, False)]  # two runs, both in the engine at once
    assert first[0][0, 0] == 4
    assert [r[0][:, 0].tolist() for r in rest] == [[2, 7], [3], [6]]
    assert b.queued == 0


@pytest.fixture
def gated_server():
    """create_app over the Gate engine, under uvicorn in a thread, max_queue 4."""
    import uvicorn

    gate = Gate()
    app = serve_mod.create_app(gate, "gate", max_queue=4, max_body_bytes=10_000)
    sock = serve_mod.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield gate, app, url
    gate.hold.set()
    server.should_exit = True
    t.join(30)


def test_back_pressure_429_then_drain_503(gated_server):
    gate, app, url = gated_server
    with httpx.Client(base_url=url, timeout=30) as c1, httpx.Client(base_url=url, timeout=30) as c2:
        held = {}
        t = threading.Thread(target=lambda: held.update(r=post(c1, {"input": ["a", "b", "c", "d"], "model": "gate"})))
        t.start()
        assert gate.entered.wait(30)  # 4 texts admitted: the queue is full
        r = post(c2, {"input": "e", "model": "gate"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        r = post(c2, {"input": "x" * 20_000, "model": "gate"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        app.state.service.batcher.begin_drain()  # what SIGTERM does first
        r = post(c2, {"input": "e", "model": "gate"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert c2.get("/health").status_code == 503
        gate.hold.set()
        t.join(30)
    assert held["r"].status_code == 200 and len(held["r"].json()["data"]) == 4  # admitted work is answered


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2048), st.integers(1, 64))
def test_plan_batches_covers_everything_within_budget(lengths, budget, size):
    runs = plan_batches(lengths, budget, size)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    order = [lengths[i] for r in runs for i in r]
    assert order == sorted(lengths, reverse=True)  # length-sorted
    for r in runs:
        assert len(r) <= size
        assert len(r) == 1 or len(r) * max(lengths[i] for i in r) <= budget


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2048), st.integers(1, 64), st.integers(1, 16))
def test_plan_batches_by_bucket_holds_one_padded_length_a_run(lengths, budget, size, step):
    pad = lambda n: min(-(-n // step) * step, max(n, 256))  # noqa: E731  (OnnxEmbedder.padded_length)
    runs = plan_batches(lengths, budget, size, pad)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    widths = [pad(lengths[r[0]]) for r in runs]
    assert widths == sorted(widths, reverse=True)  # longest bucket first
    for r, w in zip(runs, widths):
        assert len(r) <= size and all(pad(lengths[i]) == w for i in r)
        assert len(r) == 1 or len(r) * w <= budget
        assert [lengths[i] for i in r] == sorted((lengths[i] for i in r), reverse=True)


# ---- SIGTERM drains ---------------------------------------------------------------------------------------------
def test_sigterm_answers_the_request_in_flight_then_exits_0(export_dir, single):
    s = Server(["--model", str(export_dir), "--name", NAME, "--threads", "1"])
    texts = [f"{i} {LONG}" for i in range(1024)]
    out = {}

    def big():
        with httpx.Client(base_url=s.url, timeout=120) as c:
            out["r"] = post(c, {"input": texts, "model": NAME})

    t = threading.Thread(target=big)
    t.start()
    seen = False
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for _ in range(2000):  # bounded: until the big request is being handled
            if re.search(r"^fastembed_inflight_requests 1\.0$", c.get("/metrics").text, re.M):
                seen = True
                break
            time.sleep(0.005)
    s.proc.send_signal(signal.SIGTERM)
    t.join(120)
    # one SIGTERM only: stop() would send a second one, and one that lands after the drain, while the
    # process tears down with the default handler back in place, kills it (-15)
    assert s.proc.wait(60) == 0
    assert seen and "draining 1 request(s) in flight" in "".join(s.stderr)
    r = out["r"]
    assert r.status_code == 200 and len(r.json()["data"]) == len(texts)
    for i in (0, 511, 1023):
        assert cosine(r.json()["data"][i]["embedding"], single(texts[i])) >= MIN_COS
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()


# ---- the command line and the model cache -----------------------------------------------------------------------
def test_cli_user_errors(tmp_path, export_dir, capsys, monkeypatch):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--model", str(export_dir), "--int8"]) == 2
    assert "model_int8.onnx" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--model", str(tmp_path / "empty")]) == 2
    assert "neither an ONNX export" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", "--model", str(export_dir), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "already in use" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(serve_extra, "_MISSING", "uvicorn")
    assert main(["serve", "--model", str(export_dir)]) == 2
    assert 'pip install "fastembed-tune[serve]"' in capsys.readouterr().err


def test_auto_precision_is_chosen_logged_and_served(tiny_model_dir, tmp_path):
    """``serve`` without --precision measures the candidates on this CPU, says which it serves, and
    serves exactly that graph: answers match the chosen precision's own single-text answers."""
    from fastembed_tune.embed.loader import load_embedder

    s = Server(["--model", tiny_model_dir, "--name", NAME, "--cache-dir", str(tmp_path), "--threads", "1"])
    try:
        for _ in range(100):  # stderr is read by another thread: give it a moment
            lines = [x for x in s.stderr if x.startswith("precision: ")]
            if lines:
                break
            time.sleep(0.05)
        assert len(lines) == 1 and "CPU: " in lines[0], s.stderr
        chosen = lines[0].split()[1]
        export = serve_mod.resolve_model(tiny_model_dir, cache_dir=tmp_path, log=lambda line: None)
        assert (export / "model_int8.onnx").is_file()  # auto exports int8 too, so it can be chosen
        ref = load_embedder(export, threads=1, precision=chosen)
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        got = [d.embedding for d in c.embeddings.create(model=NAME, input=TEXTS[:5]).data]
        want = np.stack([ref.embed([t])[0] for t in TEXTS[:5]])
        assert cosine(got, want).min() >= (0.999 if chosen == "bf16" else MIN_COS), chosen
    finally:
        assert s.stop() == 0


def test_cached_export_is_reused(tiny_model_dir, cache_dir, export_dir, monkeypatch):
    from fastembed_tune.export import onnx as export_mod

    def refuse(*a, **k):
        raise AssertionError("exported again")
    monkeypatch.setattr(export_mod, "export_onnx", refuse)
    assert serve_mod.resolve_model(tiny_model_dir, cache_dir=cache_dir, log=lambda line: None) == export_dir
    assert export_dir.parent == cache_dir and (export_dir / "model.onnx").is_file()


def test_default_names():
    assert serve_mod.default_name("runs/sample/onnx") == "sample/onnx"
    assert serve_mod.default_name("/exports/support-minilm") == "support-minilm"


@pytest.mark.parametrize("precision", [None, "auto"])
def test_the_server_runs_two_streams_and_a_lone_text_on_every_thread(export_dir, precision):
    """The served model runs two batches at once (each on one of two threads), as OnnxEmbedder does,
    and a lone text (the warm-up) on one stream of both threads."""
    engine = serve_mod.load_engine(export_dir, threads=2, precision=precision)
    assert engine.streams == engine.embedder.streams == 2
    assert engine.embedder._lone is not None  # made by the one-text warm-up, not by the first query
