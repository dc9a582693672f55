"""``fastembed-tune serve`` against misuse and faults: a sentence-transformers directory exported and then
served (the export's runtime never stays in the server), ports out of range, clients that leave early.

The server runs as a real subprocess on 127.0.0.1; requests go through a real HTTP client or a raw socket.
"""
import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from fastembed_tune.serve.app import create_app
from fastembed_tune.serve.batching import Ids
from fastembed_tune.serve.server import bind

NAME = "tiny"


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastembed_tune", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


class Server:
    """``serve`` in a subprocess; ``port`` read from its banner."""

    def __init__(self, args, timeout=240.0):
        self.proc = subprocess.Popen([sys.executable, "-m", "fastembed_tune", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        deadline = time.time() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no banner in {timeout} s: {''.join(self.stderr)[-3000:]}") from None
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))
                break
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line)

    def stop(self, timeout=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _export_of(tiny_model_dir, cache):
    from fastembed_tune.serve.models import resolve_model

    return resolve_model(tiny_model_dir, cache_dir=cache, log=lambda line: None)


# ---- 1: a sentence-transformers directory is exported, then served ----------------------------------------
def test_sentence_transformers_dir_is_exported_then_served(tiny_model_dir, tmp_path):
    """With the default flags (precision measured, all threads): the export, then an answering server whose
    process never loaded the export's runtime (torch and its thread pools stay in the export's own process)."""
    s = Server(["--model", tiny_model_dir, "--name", NAME, "--cache-dir", str(tmp_path / "cache")])
    try:
        with httpx.Client(base_url=s.url, timeout=20) as c:
            assert c.get("/health").json()["status"] == "ok"
            r = c.post("/v1/embeddings", json={"input": ["hello", "world"], "model": NAME})
            assert r.status_code == 200 and len(r.json()["data"]) == 2
        maps = open(f"/proc/{s.proc.pid}/maps").read()
        assert "libtorch" not in maps, "the server process kept torch loaded after the export"
        assert "exporting" in "".join(s.stderr)
    finally:
        assert s.stop() == 0


def test_port_not_open_before_the_model_is_ready(tiny_model_dir, tmp_path):
    """The port is reserved before the model loads (a busy one is said at once) but accepts connections
    only once the server answers: a client never waits on a port that does not answer."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    export = _export_of(tiny_model_dir, tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-m", "fastembed_tune", "serve", "--model", str(export), "--port",
                             str(port), "--name", NAME], stdout=subprocess.PIPE, stderr=None,
                            text=True, env=_env())
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            # accepted: it must answer now, not after the model is measured and loaded
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)
            assert r.status_code == 200
            break
        else:
            pytest.fail("the server never listened")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


# ---- 2: ports out of range -------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_port_out_of_range_is_exit_2_naming_the_flag(port, tmp_path):
    r = _cli("serve", "--model", str(tmp_path), "--port", port)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "error:" in last and "--port" in last and "65535" in last, r.stderr
    assert "Traceback" not in r.stderr


# ---- 3: clients that leave early ---------------------------------------------------------------------------
class Slow:
    """An engine whose every run takes 0.2 s and counts the texts it ran."""
    dim, vocab_size, max_seq_length = 3, 100, 16
    file, precision = "slow", None

    def __init__(self):
        self.texts = 0

    def tokenize(self, texts):
        return [Ids([1] * min(len(t), self.max_seq_length)) for t in texts]

    def from_ids(self, ids):
        return Ids(list(ids)[:self.max_seq_length])

    def run(self, encs):
        time.sleep(0.2)
        self.texts += len(encs)
        return np.ones((len(encs), self.dim), np.float32)


@pytest.fixture
def slow_server(caplog):
    """The app over :class:`Slow` (runs of 8 texts) under a real uvicorn in a thread: (engine, port)."""
    import uvicorn

    engine = Slow()
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(engine, NAME, max_batch_size=8), log_config=None, log_level="info",
                            lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    assert server.started
    yield engine, sock.getsockname()[1]
    server.should_exit = True
    t.join(30)


def _raw(port, body: bytes, send: int = None) -> None:
    """POST ``body`` (its first ``send`` bytes only) on a raw socket, then close at once."""
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + body[:send if send is not None else len(body)])


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_client_closing_mid_body_is_no_traceback(slow_server, caplog, capfd):
    engine, port = slow_server
    body = json.dumps({"input": ["hello"] * 50, "model": NAME}).encode()
    _raw(port, body, send=len(body) // 2)
    time.sleep(0.5)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "a", "model": NAME}, timeout=10)
    assert r.status_code == 200
    err = capfd.readouterr().err
    assert not _errors(caplog), [r.getMessage() for r in _errors(caplog)]
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.strip()]) <= 1, err
    assert engine.texts == 1  # the half request was never embedded


def test_work_of_a_client_that_left_is_dropped(slow_server, caplog):
    """256 texts (32 runs of 0.2 s) whose client leaves at once must not delay the next request."""
    engine, port = slow_server
    _raw(port, json.dumps({"input": [f"text {i}" for i in range(256)], "model": NAME}).encode())
    time.sleep(0.3)
    t0 = time.time()
    r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "a", "model": NAME}, timeout=30)
    took = time.time() - t0
    assert r.status_code == 200 and len(r.json()["data"]) == 1
    assert took < 3.0, f"the next request waited {took:.1f} s behind a request whose client had gone"
    time.sleep(0.5)
    assert engine.texts <= 1 + 3 * 8, f"{engine.texts} texts embedded for a client that had left"
    assert not _errors(caplog)
