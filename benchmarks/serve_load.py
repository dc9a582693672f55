"""Closed-loop load on loopback against OpenAI-compatible embedding servers, in ONE run, same machine:

* ``fastembed``  ``fastembed-tune serve`` on an ONNX export of the model (fp32; ``--int8`` adds the int8 row)
* ``infinity``   infinity-emb ``v2 --engine optimum`` on the same model, from its own venv (``--infinity-bin``)
* ``st``         sentence-transformers (PyTorch) behind OUR server and batcher: the floor

N clients (``--clients``) each send one request, wait for the answer, send the next, for ``--duration``
seconds (after ``--warmup`` seconds not counted), for each request size (``--sizes``, texts per request,
drawn from the bundled sample corpus with a fixed seed, the same for every server). Throughput is texts
answered per second; p50/p99 are per-request latencies. The load generator is a minimal asyncio HTTP/1.1
keep-alive client (one connection per client) so that it takes as little CPU from the server as it can.
Before the load, one request checks each server's vectors against OnnxEmbedder.embed (cosine).

    nice -n 10 .venv/bin/python benchmarks/serve_load.py [--duration 20] [--clients 16] [--sizes 1,32]
        [--servers fastembed,infinity,st] [--infinity-bin /tmp/infvenv/bin/infinity_emb] [--export DIR]

``--export`` reuses an ONNX export of the built-in model (else one is made, once, in the serve cache).
Run it as ``serve-st MODEL_DIR`` to start only the sentence-transformers server (used internally).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
NAME = "minilm"


# ---- sentence-transformers behind our server (the floor) -----------------------------------------------
class STEngine:
    """A batcher engine over sentence_transformers.SentenceTransformer (PyTorch, CPU)."""

    class _Text:
        __slots__ = ("text", "ids")

        def __init__(self, text, ids):
            self.text, self.ids = text, ids

    def __init__(self, path: str, threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = SentenceTransformer(path, device="cpu")
        # a copy for the tokenizer thread: a Rust tokenizer used by two threads at once fails ("Already borrowed")
        self.tok = copy.deepcopy(self.model.tokenizer)
        self.max_seq_length = int(self.model.max_seq_length)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.vocab_size = len(self.tok)
        self.file = "sentence-transformers (PyTorch)"

    def tokenize(self, texts):
        ids = self.tok(texts, truncation=True, max_length=self.max_seq_length)["input_ids"]
        return [self._Text(t, i) for t, i in zip(texts, ids)]

    def from_ids(self, ids):
        raise ValueError("token-id inputs are not supported by this engine")

    def run(self, encs):
        with self.torch.inference_mode():
            return self.model.encode([e.text for e in encs], batch_size=len(encs), convert_to_numpy=True)


def serve_st(model_dir: str, threads: int) -> int:
    from fastembed_tune.serve.app import create_app
    from fastembed_tune.serve.server import bind, run_server

    engine = STEngine(model_dir, threads)
    engine.run(engine.tokenize(["warm up"]))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    return run_server(create_app(engine, NAME), sock, f"serving '{NAME}' on http://127.0.0.1:{port}/v1")


# ---- starting and stopping servers ----------------------------------------------------------------------
def _wait_banner(proc, pattern=r"http://127\.0\.0\.1:(\d+)", timeout=600.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            continue
        m = re.search(pattern, line)
        if m:
            return int(m.group(1))
    raise RuntimeError("server not ready in time")


def _wait_http(port: int, path: str, proc, timeout=600.0) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready (see its log)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, a, export_dir: str, log_dir: str):
    """(process, port, path of /embeddings) of a started server."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = open(os.path.join(log_dir, f"{kind}.log"), "w")
    if kind == "fastembed-spin":
        env["FASTEMBED_TUNE_ORT_SPIN"] = "1"
        kind = "fastembed"
    if kind in ("fastembed", "fastembed-int8"):
        cmd = [sys.executable, "-m", "fastembed_tune", "serve", "--model", export_dir, "--port", "0", "--name", NAME]
        cmd += ["--int8"] if kind == "fastembed-int8" else []
        cmd += ["--threads", str(a.threads)] if a.threads else []
        cmd += a.fastembed_args.split() if a.fastembed_args else []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        return proc, _wait_banner(proc), "/v1/embeddings", log
    if kind == "st":
        cmd = [sys.executable, __file__, "serve-st", a.model] + (["--threads", str(a.threads)] if a.threads else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        return proc, _wait_banner(proc), "/v1/embeddings", log
    if kind.startswith("infinity"):
        # infinity-emb 0.0.78 hands optimum the ONNX file's path *including* the model directory, which optimum
        # then looks for inside that directory: a local model only loads as "--model-id ." from inside it.
        model_dir = export_dir if kind == "infinity-export" else a.infinity_model
        port = _free_port()
        cmd = [a.infinity_bin, "v2", "--model-id", ".", "--served-model-name", NAME, "--engine", "optimum",
               "--device", "cpu", "--port", str(port), "--host", "127.0.0.1", "--url-prefix", "/v1",
               "--no-vector-disk-cache", "--onnx-do-not-prefer-quantized", "--pooling-method", "mean",
               "--log-level", "warning"]
        cmd += a.infinity_args.split() if a.infinity_args else []
        log.write(f"cd {model_dir} && " + " ".join(cmd) + "\n")
        log.flush()
        env.pop("PYTHONPATH", None)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=model_dir,
                                start_new_session=True)
        _wait_http(port, "/health", proc)
        return proc, port, "/v1/embeddings", log
    raise ValueError(kind)


def infinity_model(a, log_dir: str) -> str:
    """The model directory infinity's optimum engine can load: an optimum export of ``a.model`` (a plain
    transformer graph with ``last_hidden_state``; infinity pools and normalises itself), made once with the
    ``optimum-cli`` beside ``--infinity-bin`` and kept under ``/tmp``."""
    from fastembed_tune.serve.models import directory_fingerprint

    if a.infinity_model:
        return a.infinity_model
    out = Path(tempfile.gettempdir()) / f"serve_load_infinity_{directory_fingerprint(a.model)}"
    if not (out / "model.onnx").is_file():
        cli = Path(a.infinity_bin).parent / "optimum-cli"
        with open(os.path.join(log_dir, "optimum_export.log"), "w") as log:
            subprocess.run([str(cli), "export", "onnx", "--model", a.model, "--task", "feature-extraction",
                            "--library-name", "transformers", str(out)], stdout=log, stderr=subprocess.STDOUT,
                           check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return str(out)


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the load generator ------------------------------------------------------------------------------------
async def _request(reader, writer, head: bytes, body: bytes):
    writer.write(head + body)
    status_head = await reader.readuntil(b"\r\n\r\n")
    status = int(status_head[9:12])
    headers = status_head.lower()
    m = re.search(rb"content-length: *(\d+)", headers)
    if m:
        data = await reader.readexactly(int(m.group(1)))
    else:  # chunked
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        data = b"".join(parts)
    return status, data


async def _client(port, path, bodies, t_start, t_end, out, seed):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(seed)
    try:
        while True:
            body = bodies[rng.randrange(len(bodies))]
            head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                status, _ = await asyncio.wait_for(_request(reader, writer, head, body), t_end + 1 - t0)
            except asyncio.TimeoutError:  # still running long after the end: not counted
                return
            t1 = time.perf_counter()
            if t_start <= t1 <= t_end:  # answered inside the measured window
                out.append((t1 - t0, status))
    finally:
        writer.close()


async def _load(port, path, bodies, clients, warmup, duration):
    now = time.perf_counter()
    t_start, t_end = now + warmup, now + warmup + duration
    out: list = []
    await asyncio.gather(*[_client(port, path, bodies, t_start, t_end, out, i) for i in range(clients)])
    return out


def run_load(port, path, bodies, size, clients, a) -> dict:
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    out = runner(_load(port, path, bodies, clients, a.warmup, a.duration))
    ok = sorted(t for t, s in out if s == 200)
    bad = sum(1 for _, s in out if s != 200)
    if not ok:
        return {"texts_per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "requests": 0, "errors": bad}
    q = lambda p: ok[min(len(ok) - 1, int(round(p * (len(ok) - 1))))] * 1000  # noqa: E731
    return {"texts_per_s": len(ok) * size / a.duration, "p50_ms": q(0.50), "p99_ms": q(0.99),
            "requests": len(ok), "errors": bad}


def check_vectors(port, path, texts, ref) -> float:
    """Min cosine of the server's answer for ``texts`` (one request) to the reference rows."""
    import urllib.request

    import numpy as np

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                 data=json.dumps({"input": texts, "model": NAME}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        data = json.loads(r.read())["data"]
    got = np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float64)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float((got * r).sum(1).min())


def main(argv=None) -> int:
    from fastembed_tune.core.cpu import cpu_description

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "serve-st":
        p = argparse.ArgumentParser()
        p.add_argument("model")
        p.add_argument("--threads", type=int, default=0)
        s = p.parse_args(argv[1:])
        return serve_st(s.model, s.threads)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--clients", default="16,4",
                    help="concurrent clients per request size (one number: the same for every size)")
    ap.add_argument("--sizes", default="1,32")
    ap.add_argument("--servers", default="fastembed,infinity-export,infinity,st",
                    help="comma list of fastembed, fastembed-int8, infinity-export (infinity on our export "
                         "directory), infinity (on an optimum export of the same model), st")
    ap.add_argument("--model", default=None, help="sentence-transformers directory (default: built-in MiniLM)")
    ap.add_argument("--export", default=None, help="ONNX export of --model (default: made once in the serve cache)")
    ap.add_argument("--infinity-bin", default="/tmp/infvenv/bin/infinity_emb")
    ap.add_argument("--infinity-model", default=None,
                    help="model directory for the 'infinity' row (default: an optimum export of --model)")
    ap.add_argument("--infinity-args", default="", help="extra infinity_emb v2 arguments")
    ap.add_argument("--fastembed-args", default="", help="extra fastembed-tune serve arguments")
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0: the server's default)")
    ap.add_argument("--texts", choices=["auto", "queries", "passages"], default="auto",
                    help="auto: size-1 requests carry search queries (the sample's, ~5 tokens), larger ones "
                         "corpus passages (~70 tokens), as a search service and an indexer send them")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    import numpy as np

    from fastembed_tune.embed.model import default_model_path
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
    from fastembed_tune.serve.models import resolve_model

    a.model = a.model or default_model_path()
    export_dir = a.export or str(resolve_model(a.model, int8="fastembed-int8" in a.servers))
    data = ROOT / "fastembed_tune" / "sample_data"
    with open(data / "corpus.jsonl") as f:
        passages = [json.loads(line)["text"] for line in f]
    with open(data / "train.jsonl") as f:
        queries = [json.loads(line)["query"] for line in f]
    rng = random.Random(0)
    sizes = [int(s) for s in a.sizes.split(",")]
    clients = [int(c) for c in a.clients.split(",")]
    clients = dict(zip(sizes, clients if len(clients) == len(sizes) else clients[:1] * len(sizes)))
    pool = lambda n: {"queries": queries, "passages": passages}[a.texts] if a.texts != "auto" else (  # noqa: E731
        queries if n == 1 else passages)
    bodies = {n: [json.dumps({"input": rng.sample(pool(n), n), "model": NAME}).encode() for _ in range(256)]
              for n in sizes}
    probe = queries[:4] + passages[:4]
    ref = OnnxEmbedder(export_dir, threads=1).embed(probe).astype(np.float64)

    log_dir = tempfile.mkdtemp(prefix="serve_load_")
    print(f"# serve_load: {a.clients} clients, {a.duration:g} s per cell (+{a.warmup:g} s warm-up), "
          f"request sizes {a.sizes}, texts {a.texts}; CPU: {cpu_description()}; logs in {log_dir}", flush=True)
    results = []
    for kind in a.servers.split(","):
        if kind.startswith("infinity") and not shutil.which(a.infinity_bin):
            results.append({"server": kind, "error": f"{a.infinity_bin} not found"})
            continue
        if kind == "infinity":
            try:
                a.infinity_model = infinity_model(a, log_dir)
            except (OSError, subprocess.CalledProcessError) as e:
                results.append({"server": kind, "error": f"no optimum export of the model for infinity: {e}"})
                continue
        t0 = time.time()
        try:
            proc, port, path, log = start_server(kind, a, export_dir, log_dir)
        except Exception as e:
            tail = open(os.path.join(log_dir, f"{kind}.log")).read().strip().splitlines()[-3:]
            results.append({"server": kind, "error": f"{e}: {' | '.join(tail)}"})
            print(f"{kind}: could not start ({e}); last log lines: {tail}", flush=True)
            continue
        try:
            cosine = check_vectors(port, path, probe, ref)
            print(f"{kind}: ready in {time.time() - t0:.1f} s on port {port}; min cosine to OnnxEmbedder "
                  f"{cosine:.5f}", flush=True)
            for n in sizes:
                r = run_load(port, path, bodies[n], n, clients[n], a)
                r.update(server=kind, size=n, clients=clients[n], cosine=cosine)
                results.append(r)
                print(f"  size {n:>3}: {r['texts_per_s']:8.1f} texts/s  p50 {r['p50_ms']:8.1f} ms  "
                      f"p99 {r['p99_ms']:8.1f} ms  ({r['requests']} requests, {r['errors']} errors)", flush=True)
        finally:
            stop_server(proc)
            log.close()

    print()
    print("| server | request size | clients | texts/s | p50 ms | p99 ms | requests | errors | min cos vs OnnxEmbedder |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['server']} | - | - | could not run: {r['error']} | | | | | |")
            continue
        print(f"| {r['server']} | {r['size']} | {r['clients']} | {r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['requests']} | {r['errors']} | {r['cosine']:.5f} |")
    base = {r["size"]: r for r in results if r.get("server") == "infinity" and "size" in r}
    for r in results:
        if r.get("server") == "fastembed" and r.get("size") in base and base[r["size"]]["texts_per_s"]:
            b = base[r["size"]]
            print(f"size {r['size']}: fastembed / infinity throughput {r['texts_per_s'] / b['texts_per_s']:.2f}x, "
                  f"p99 {r['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu_description(), "clients": a.clients, "duration": a.duration, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
