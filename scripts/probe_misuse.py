#!/usr/bin/env python
"""Probe fastembed-tune with misuse and fault cases: every subcommand's flags, input files, the
server, adapt, streams, caches, locks, resume and the Python API.

Each case carries its expectation; the outcome is classified automatically:
  clear      refused as the rules say (exit code expected, one `error:` line with the words)
  handled    worked, and the result was checked
  traceback  a Python traceback / internal error, or an unexpected exception from the API
  silent     exit 0 (or HTTP 200) but the expectation failed
  hang       the timeout ran out
  other      exit code or message not as expected

    python scripts/probe_misuse.py [--only AREA] [--out results.json] [--jobs 2]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SEM = threading.Semaphore(2)
OUTCOMES = ("clear", "handled", "traceback", "silent", "hang", "other")


@dataclass
class Case:
    id: str
    area: str
    argv: Optional[list] = None          # CLI args after `-m fastembed_tune`, with {placeholders}
    expect: str = "clear"                # clear | handled | either
    codes: tuple = (2,)                  # exit codes a clear refusal may use
    words: tuple = ()                    # any of these (lower case) must be in the error line
    files: dict = field(default_factory=dict)   # name -> str/bytes written into the work dir
    env: dict = field(default_factory=dict)
    check: Optional[Callable] = None     # (Result, ctx) -> bool, for handled
    hrc: tuple = (0,)                    # exit codes that count as "worked"
    inputs: tuple = ()                   # paths (templated) that must stay byte-identical
    timeout: float = 120
    fn: Optional[Callable] = None        # custom runner: (case, ctx, work) -> Result or (outcome, line)
    solo: bool = False                   # runs alone (needs two processes at once)
    label: str = ""


@dataclass
class Result:
    rc: object
    out: str
    err: str
    note: str = ""


# ----------------------------------------------------------------------------- process helpers

def base_env(ctx: dict) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
               FASTEMBED_TUNE_CACHE=ctx["CACHE"], FASTEMBED_TUNE_STORE=ctx["STORE"],
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("FASTEMBED_TUNE_DEBUG", None)
    for k in ("OPENAI_API_KEY",):
        env[k] = "sk-probe-not-real"
    return env


def run_proc(cmd: list, env: dict, cwd: str, timeout: float, sem: bool = True, stdin: str = "") -> Result:
    if sem:
        SEM.acquire()
    try:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, process_group=0)
        try:
            out, err = p.communicate(stdin.encode(), timeout=timeout)
            return Result(p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return Result(None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), "timeout")
    finally:
        if sem:
            SEM.release()


def cli(args: list) -> list:
    return [PY, "-m", "fastembed_tune", *args]


def fmt(s: str, ctx: dict) -> str:
    return s.format_map(ctx) if isinstance(s, str) else s


def digest(paths: list) -> dict:
    out = {}
    for p in paths:
        q = Path(p)
        if q.is_file():
            out[p] = hashlib.sha256(q.read_bytes()).hexdigest()
        elif q.is_dir():
            out[p] = hashlib.sha256("".join(sorted(
                f"{f}:{f.stat().st_size}" for f in q.rglob("*") if f.is_file())).encode()).hexdigest()
        else:
            out[p] = None
    return out


def write_files(work: Path, files: dict, ctx: dict) -> None:
    for name, data in files.items():
        path = work / fmt(name, ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(path, ctx)
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8", newline="")


# ----------------------------------------------------------------------------- classification

def error_lines(err: str) -> list:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def classify(case: Case, res: Result, changed: bool, ctx: dict) -> str:
    text = res.out + res.err
    if "Traceback" in text or "internal error" in text.lower():
        return "traceback"
    if res.rc is None:
        return "silent" if "serving '" in res.out else "hang"   # a server that started on a bad flag
    if isinstance(res.rc, int) and res.rc < 0:
        return "other"
    if changed:
        return "silent" if res.rc == 0 else "other"
    errs = error_lines(res.err)
    low = errs[0].lower().replace("_", "-") if errs else ""
    words_ok = bool(errs) and (not case.words or any(w.replace("_", "-") in low for w in case.words))
    if case.expect in ("clear", "either") and res.rc in case.codes and len(errs) == 1 and words_ok:
        return "clear"
    if case.expect in ("handled", "either") and res.rc in case.hrc:
        try:
            ok = case.check(res, ctx) if case.check else True
        except Exception as e:  # a check that cannot even read the output: the output is wrong
            res.note = f"check failed: {type(e).__name__}: {e}"
            ok = False
        return "handled" if ok else "silent"
    if res.rc == 0:
        return "silent"
    return "other"


def first_line(res: Result) -> str:
    for src in (res.err, res.out, res.note):
        lines = [ln for ln in src.splitlines() if ln.strip()]
        if lines:
            errs = error_lines(src)
            return (errs[0] if errs else lines[0])[:160]
    return ""


def run_case(case: Case, ctx: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{case.id}-", dir=ctx["TMP"]))
    c2 = dict(ctx, W=str(work))
    write_files(work, case.files, c2)
    inputs = [fmt(p, c2) for p in case.inputs]
    before = digest(inputs)
    t0 = time.time()
    try:
        if case.fn:
            res = case.fn(case, c2, work)
        else:
            env = base_env(c2)
            env.update({k: fmt(v, c2) for k, v in case.env.items()})
            res = run_proc(cli([fmt(a, c2) for a in case.argv]), env, str(work), case.timeout, not case.solo)
    except Exception as e:  # the probe's own failure is reported, never hidden
        res = Result(-999, "", f"probe failure: {type(e).__name__}: {e}")
    if isinstance(res, tuple):
        outcome, line = res
        res = Result(0, "", line)
    else:
        outcome = classify(case, res, digest(inputs) != before, c2)
        line = first_line(res)
    cmd = case.label or ("fastembed_tune " + " ".join(str(a) for a in (case.argv or [])))
    return {"id": case.id, "area": case.area, "command": cmd, "outcome": outcome, "rc": res.rc,
            "line": line, "note": res.note, "seconds": round(time.time() - t0, 1),
            "stderr_head": "\n".join(res.err.splitlines()[:6])[:800]}


# ----------------------------------------------------------------------------- fixtures

TOPICS = ["network", "memory", "compiler", "database", "kernel", "graphics", "security", "storage",
          "protocol", "language"]


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def data_fixtures(d: Path) -> dict:
    pairs = [{"query": f"what is {TOPICS[i % 10]} thing {i}",
              "positive": f"{TOPICS[i % 10]} thing {i} is a concept in {TOPICS[i % 10]} number {i}"}
             for i in range(40)]
    docs = [{"_id": f"d{i}", "text": p["positive"]} for i, p in enumerate(pairs)]
    docs += [{"_id": f"d{i}", "text": f"filler document {i} on {TOPICS[i % 10]}"} for i in range(40, 80)]
    write_jsonl(d / "pairs.jsonl", pairs)
    write_jsonl(d / "corpus.jsonl", docs)
    write_jsonl(d / "test.jsonl", pairs[:12])
    mined = [dict(p, negatives=[docs[40 + (i % 39)]["text"], docs[41 + (i % 39)]["text"]]) for i, p in enumerate(pairs)]
    write_jsonl(d / "mined.jsonl", mined)
    (d / "texts.txt").write_text("".join(x["text"] + "\n" for x in docs[:20]), encoding="utf-8")
    import numpy as np
    vecs = np.random.default_rng(0).standard_normal((len(docs), 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.save(d / "vecs.npy", vecs)
    write_jsonl(d / "vecs.jsonl", docs)
    return {"P": str(d / "pairs.jsonl"), "C": str(d / "corpus.jsonl"), "E": str(d / "test.jsonl"),
            "M": str(d / "mined.jsonl"), "TXT": str(d / "texts.txt"), "NPY": str(d / "vecs.npy")}


MODEL_SCRIPT = """
import sys; sys.path.insert(0, {tests!r})
from conftest import make_tiny_model
make_tiny_model({path!r})
from fastembed_tune import Adapter
Adapter.identity("linear", 32).save({a32!r}); Adapter.identity("linear", 64).save({a64!r})
"""


def build_fixtures(tmp: Path) -> dict:
    d = tmp / "fx"
    d.mkdir()
    ctx = {"TMP": str(tmp), "CACHE": str(tmp / "cache"), "STORE": str(tmp / "store"), "PY": PY,
           "T": str(d / "tiny"), "X": str(d / "export"), "A": str(d / "ad32"), "A64": str(d / "ad64")}
    ctx.update(data_fixtures(d))
    env = base_env(ctx)
    code = MODEL_SCRIPT.format(tests=str(ROOT / "tests"), path=ctx["T"], a32=ctx["A"], a64=ctx["A64"])
    r = run_proc([PY, "-c", code], env, str(d), 300, sem=False)
    if r.rc != 0:
        sys.exit(f"fixture model failed:\n{r.err[-2000:]}")
    r = run_proc(cli(["export", "--model", ctx["T"], "-o", ctx["X"], "--quantize", "int8"]), env, str(d), 300,
                 sem=False)
    if r.rc != 0:
        sys.exit(f"fixture export failed:\n{r.err[-2000:]}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ctx["CLOSED"] = str(s.getsockname()[1])   # closed once the block ends: nothing listens there
    return ctx


# ----------------------------------------------------------------------------- checks

def wpath(ctx: dict, name: str) -> Path:
    return Path(ctx["W"]) / name


def npy_ok(name: str, rows: int, dim: int = 32) -> Callable:
    def check(res: Result, ctx: dict) -> bool:
        import numpy as np
        a = np.load(wpath(ctx, name))
        norms = np.linalg.norm(a, axis=1) if a.size else np.ones(0)
        return a.shape == (rows, dim) and bool(np.isfinite(a).all()) and bool(np.allclose(norms, 1, atol=1e-3))
    return check


def jsonl_ok(name: str, rows: int, key: str = "") -> Callable:
    def check(res: Result, ctx: dict) -> bool:
        lines = [json.loads(x) for x in wpath(ctx, name).read_text(encoding="utf-8").splitlines() if x.strip()]
        return len(lines) == rows and all(key in x for x in lines if key)
    return check


def exists(name: str) -> Callable:
    return lambda res, ctx: wpath(ctx, name).exists()


def mined_ok(rows: int, negs: int) -> Callable:
    def check(res: Result, ctx: dict) -> bool:
        lines = [json.loads(x) for x in wpath(ctx, "m.jsonl").read_text(encoding="utf-8").splitlines()]
        return len(lines) == rows and all(len(x.get("negatives", [])) == negs and x["positive"] not in x["negatives"]
                                          for x in lines)
    return check


def BAD_JSONL(*lines: str) -> str:
    return "".join(ln + "\n" for ln in lines)


GOODQ = '{"query": "what is network thing 0", "positive": "network thing 0 is a concept in network number 0"}'
GOODQ2 = '{"query": "what is memory thing 1", "positive": "memory thing 1 is a concept in memory number 1"}'
DOC = '{"_id": "x1", "text": "network thing 0 is a concept in network number 0"}'
DOC2 = '{"_id": "x2", "text": "memory thing 1 is a concept in memory number 1"}'
DOC3 = '{"_id": "x3", "text": "a filler line"}'


def mine_args(*extra, pairs="{P}", corpus="{C}", out="{W}/m.jsonl") -> list:
    return ["mine", "--model", "{T}", "--quiet", "--pairs", pairs, "--corpus", corpus, "-o", out, *extra]


def cases_mine() -> list:
    M = mine_args
    C_ = lambda i, *a, **k: Case(f"mine-{i:02d}", "mine", *a, **k)  # noqa: E731
    ins = ("{P}", "{C}")
    return [
        C_(1, M("--num-negatives", "0"), words=("num-negatives",), inputs=ins),
        C_(2, M("--num-negatives", "-3"), words=("num-negatives",)),
        C_(3, M("--num-negatives", "1000000"), expect="either", words=("num-negatives", "corpus"),
           check=lambda r, c: wpath(c, "m.jsonl").exists()),
        C_(4, M("--skip-top", "-1"), words=("skip-top",)),
        C_(5, M("--max-ratio", "0"), words=("max-ratio",)),
        C_(6, M("--max-ratio", "1.5"), expect="either", words=("max-ratio",), check=mined_ok(40, 5)),
        C_(7, M("--max-ratio", "nan"), words=("max-ratio",)),
        C_(8, M("--batch-size", "0"), words=("batch-size",)),
        C_(9, M("--threads", "-2"), words=("threads",)),
        C_(10, M(pairs="{W}/missing.jsonl"), words=("missing.jsonl",)),
        C_(11, M(pairs="{W}/adir"), words=("adir",), files={"adir/x": "x"}),
        C_(12, M(pairs="{W}/empty.jsonl"), words=("empty.jsonl",), files={"empty.jsonl": ""}),
        C_(13, M(corpus="{W}/empty.jsonl"), words=("empty.jsonl",), files={"empty.jsonl": ""}),
        C_(14, M(pairs="{W}/p.jsonl"), words=("line 2",), files={"p.jsonl": BAD_JSONL(GOODQ, '{"query": "a",')}),
        C_(15, M(pairs="{W}/p.jsonl"), words=("p.jsonl",),
           files={"p.jsonl": BAD_JSONL('{"question": "a", "answer": "b"}')}),
        C_(16, M(pairs="{W}/p.jsonl"), words=("line 2", "query"),
           files={"p.jsonl": BAD_JSONL(GOODQ, '{"query": "", "positive": "x"}')}),
        C_(17, M(pairs="{W}/p.jsonl"), words=("line 1", "utf"),
           files={"p.jsonl": b'{"query": "caf\xe9", "positive": "x"}\n'}),
        C_(18, M(pairs="{W}/p.jsonl"), expect="handled", check=mined_ok(2, 5),
           files={"p.jsonl": "\ufeff" + BAD_JSONL(GOODQ, GOODQ2)}),
        C_(19, M(pairs="{W}/p.jsonl"), expect="handled", check=mined_ok(2, 5),
           files={"p.jsonl": GOODQ + "\r\n" + GOODQ2 + "\r\n"}),
        C_(20, M(pairs="{W}/p.jsonl"), words=("p.jsonl", "gzip", "utf", "line 1"),
           files={"p.jsonl": gzip.compress(BAD_JSONL(GOODQ, GOODQ2).encode())}),
        C_(21, M(pairs="{W}/p.jsonl"), words=("line 1", "query"),
           files={"p.jsonl": BAD_JSONL('{"query": 5, "positive": "x"}')}),
        C_(22, M(pairs="{W}/p.jsonl"), words=("line 1", "positive"),
           files={"p.jsonl": BAD_JSONL('{"query": "q", "positive": null}')}),
        C_(23, M(pairs="{W}/p.jsonl"), words=("line 1", "negatives"),
           files={"p.jsonl": BAD_JSONL('{"query": "q", "positive": "p", "negatives": "not a list"}')}),
        C_(24, M(pairs="{W}/p.jsonl"), words=("line 1", "item 1"),
           files={"p.jsonl": BAD_JSONL('["query", "positive"]')}),
    ]


def cases_mine2() -> list:
    M = mine_args
    C_ = lambda i, *a, **k: Case(f"mine-{i:02d}", "mine", *a, **k)  # noqa: E731
    return [
        C_(25, M(corpus="{W}/c.jsonl"), expect="either", words=("x1", "duplicate", "line 2"),
           files={"c.jsonl": BAD_JSONL(DOC, DOC.replace("network thing 0", "other")), },
           check=lambda r, c: wpath(c, "m.jsonl").exists()),
        C_(26, M(corpus="{W}/c.jsonl"), words=("line 2", "text"),
           files={"c.jsonl": BAD_JSONL(DOC, '{"_id": "x9", "text": ""}')}),
        C_(27, M(corpus="{W}/c.txt"), expect="either", words=("line 2", "blank", "empty"),
           files={"c.txt": "doc one\n\ndoc three\n"}, check=lambda r, c: wpath(c, "m.jsonl").exists()),
        C_(28, M(pairs="{W}/p.csv"), words=("p.csv", "query", "column"),
           files={"p.csv": "question,answer\na,b\n"}),
        C_(29, M(pairs="{W}/p.npy"), words=("p.npy", "format", "extension"), files={"p.npy": b"\x93NUMPY"}),
        C_(30, M(pairs="{W}/dir ü space/p.jsonl"), expect="handled", check=mined_ok(2, 5),
           files={"dir ü space/p.jsonl": BAD_JSONL(GOODQ, GOODQ2)}),
        C_(31, M(out="{W}/outdir"), words=("outdir", "directory"), files={"outdir/keep": "k"}),
        C_(32, M(out="{W}/nosuch/deeper/m.jsonl"), expect="either", words=("nosuch",),
           check=lambda r, c: wpath(c, "nosuch/deeper/m.jsonl").exists()),
        C_(33, M(out="{W}/afile/m.jsonl"), codes=(1, 2), words=("afile",), files={"afile": "x"}),
        C_(34, M("--summary", "{W}/sdir"), words=("sdir", "summary"), files={"sdir/x": "x"}),
        C_(35, M("--stream", "--stream-window", "0"), words=("stream-window",)),
        C_(36, M("--stream", "--stream-window", "-5"), words=("stream-window",)),
        C_(37, M("--stream", "--stream-window", "1"), expect="handled", check=mined_ok(40, 5)),
        C_(38, M("--stream", "--stream-window", "7", "--num-negatives", "3"), expect="handled", check=mined_ok(40, 3)),
        C_(39, M("--stream", pairs="{W}/p.csv"), words=("stream", "csv"),
           files={"p.csv": "query,positive\na,b\n"}),
        C_(40, M("--scan", "int8", "--num-negatives", "2"), expect="either", words=("int8", "scan"),
           check=mined_ok(40, 2)),
        C_(41, M("--nproc", "0"), words=("nproc",)),
        C_(42, M("--model", "{X}"), expect="either", words=("model",),
           check=lambda r, c: wpath(c, "m.jsonl").exists()),
        C_(43, M("--model", "{W}/nomodel"), words=("nomodel",)),
        C_(44, M(pairs="{W}/p.jsonl"), expect="handled", check=mined_ok(1, 5),
           files={"p.jsonl": BAD_JSONL('{"query": "' + "word " * 50000 + '", "positive": "x y"}')}),
        C_(45, M(pairs="{W}/p.json"), words=("p.json",), files={"p.json": '{"query": "q", "positive": "p"'}),
        C_(46, M(pairs="{W}/p.jsonl"), words=("line 2", "nan", "json"),
           files={"p.jsonl": BAD_JSONL(GOODQ, '{"query": NaN, "positive": "x"}')}),
        C_(47, M(pairs=""), words=("pairs",)),
        C_(48, M(pairs="{W}/p.jsonl"), words=("line 1", "query", "positive"),
           files={"p.jsonl": BAD_JSONL('{"query": "same", "positive": "same"}')}, expect="either",
           check=lambda r, c: wpath(c, "m.jsonl").exists()),
    ]


def train_args(*extra, pairs="{M}", out="{W}/tr") -> list:
    return ["train", "--model", "{T}", "--quiet", "--pairs", pairs, "-o", out, "--max-steps", "2",
            "--batch-size", "4", *extra]


def trained(res: Result, ctx: dict) -> bool:
    return (wpath(ctx, "tr/model/model.safetensors").exists()
            and json.loads(wpath(ctx, "tr/train_summary.json").read_text())["steps"] >= 1)


def cases_train() -> list:
    T = train_args
    C_ = lambda i, *a, **k: Case(f"train-{i:02d}", "train", *a, **k)  # noqa: E731
    return [
        C_(1, T("--epochs", "0"), words=("epochs",), inputs=("{M}",)),
        C_(2, T("--lr", "0"), expect="either", words=("lr",), check=trained),
        C_(3, T("--lr", "-1e-5"), words=("lr",)),
        C_(4, T("--lr", "nan"), words=("lr",)),
        C_(5, T("--lr", "inf"), words=("lr",)),
        C_(6, T("--batch-size", "0"), words=("batch-size",)),
        C_(7, T("--batch-size", "1"), expect="either", words=("batch-size",), check=trained),
        C_(8, T("--validation-share", "1.0"), words=("validation-share",)),
        C_(9, T("--validation-share", "-0.1"), words=("validation-share",)),
        C_(10, T("--patience", "-1"), words=("patience",)),
        C_(11, T("--scale", "0"), words=("scale",)),
        C_(12, T("--warmup-ratio", "2"), words=("warmup-ratio",)),
        C_(13, T("--mini-batch-size", "0", "--loss", "cached_mnrl"), words=("mini-batch-size",)),
        C_(14, T("--checkpoint-every", "0"), words=("checkpoint-every",)),
        C_(15, T("--keep-checkpoints", "-1"), words=("keep-checkpoints",)),
        C_(16, T("--replay", "{W}/none.jsonl"), words=("none.jsonl",)),
        C_(17, T("--replay-ratio", "0.5"), words=("replay",)),
        C_(18, T("--replay", "{P}", "--replay-ratio", "1.5"), expect="either", words=("replay-ratio",), check=trained),
        C_(19, T("--max-seq-length", "0"), words=("max-seq-length",)),
        C_(20, T("--max-seq-length", "100000"), expect="either", words=("max-seq-length",), check=trained),
        C_(21, T("--max-steps", "0"), words=("max-steps",)),
        C_(22, T("--stream", "--stream-window", "0"), words=("stream-window",)),
        C_(23, T("--resume"), words=("resume", "checkpoint")),
        C_(24, T("--loss", "triplet", pairs="{P}"), words=("triplet", "negative")),
        C_(25, T("--symmetric", "--loss", "triplet"), words=("symmetric",)),
        C_(26, T("--model", "{P}"), words=("model",)),
        C_(27, T("--model", "{X}"), expect="either", words=("model", "onnx"), check=trained),
        C_(28, T("--model", "{W}/emptydir"), words=("emptydir",), files={"emptydir/.keep": ""}),
        C_(29, T(pairs="{W}/p.jsonl"), expect="either", words=("pair", "p.jsonl"), check=trained,
           files={"p.jsonl": BAD_JSONL(GOODQ)}),
        C_(30, T("--eval-every", "0", "--validation-share", "0.2"), words=("eval-every",)),
        C_(31, T(out="{W}/afile"), words=("afile",), files={"afile": "data"}, inputs=("{W}/afile",)),
        C_(32, T("--num-negatives", "-1"), words=("num-negatives",)),
        C_(33, T("--stream", pairs="{W}/p.tsv"), words=("stream", "tsv"),
           files={"p.tsv": "query\tpositive\na\tb\n"}),
        C_(34, T(pairs="{W}/p.jsonl"), words=("line 2", "negative"),
           files={"p.jsonl": BAD_JSONL(GOODQ, '{"query": "q", "positive": "p", "negatives": [1, 2]}')}),
        C_(35, T("--stream", "--stream-window", "3"), expect="handled", check=trained),
        C_(36, T("--seed", "-1"), expect="either", words=("seed",), check=trained),
        C_(37, T("--precision", "bf16", "--scale", "-20"), words=("scale",)),
    ]


def eval_args(*extra, data="{E}", corpus="{C}", model="{X}") -> list:
    args = ["eval", "--quiet", "--data", data, "--model", model, *extra]
    return args + (["--corpus", corpus] if corpus else [])


def metrics_ok(res: Result, ctx: dict) -> bool:
    m = json.loads(wpath(ctx, "rep/metrics.json").read_text())
    return "ndcg@10" in json.dumps(m)


def cases_eval() -> list:
    E = eval_args
    C_ = lambda i, *a, **k: Case(f"eval-{i:02d}", "eval", *a, **k)  # noqa: E731
    beir = {"b/corpus.jsonl": BAD_JSONL(DOC, DOC2), "b/queries.jsonl": BAD_JSONL('{"_id": "q1", "text": "x"}')}
    return [
        C_(1, E(data="{W}/none.jsonl"), words=("none.jsonl",)),
        C_(2, E(corpus=None), expect="handled", check=lambda r, c: "ndcg" in (r.out + r.err).lower()),
        C_(3, E(data="{W}/t.jsonl"), words=("t.jsonl", "corpus", "positive"),
           files={"t.jsonl": BAD_JSONL('{"query": "q", "positive": "a text that is nowhere"}')}),
        C_(4, E("--batch-size", "0"), words=("batch-size",)),
        C_(5, E(model="{W}/nomodel"), words=("nomodel",)),
        C_(6, E(model="{TXT}"), words=("texts.txt", "model")),
        C_(7, E(data="{W}/b", corpus=None), words=("qrels", "b"), files=beir),
        C_(8, E(data="{W}/b", corpus=None), words=("qrels", "nope", "test.tsv"),
           files=dict(beir, **{"b/qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\tnope\t1\n"})),
        C_(9, E("--precision", "int8", model="{T}"), expect="either", words=("int8", "precision"),
           check=lambda r, c: "ndcg" in (r.out + r.err).lower()),
        C_(10, E("-o", "{W}/afile"), words=("afile",), files={"afile": "x"}, inputs=("{W}/afile",)),
        C_(11, E("--model", "{X}", "-o", "{W}/rep"), expect="handled", check=metrics_ok),
        C_(12, E(data="{W}/empty.jsonl"), words=("empty.jsonl",), files={"empty.jsonl": ""}),
        C_(13, E(data="{W}/t.jsonl"), words=("line 1",), files={"t.jsonl": BAD_JSONL("{not json")}),
        C_(14, E(model="{X}/model.onnx", corpus="{W}/c.csv"), words=("c.csv", "text", "column"),
           files={"c.csv": "identifier,body\n1,a\n"}),
        C_(15, E(model="{X}/model_int8.onnx", data="{W}/b", corpus=None), words=("qrels", "test.tsv", "quer"),
           files=dict(beir, **{"b/qrels/test.tsv": "query-id\tcorpus-id\tscore\n"})),
        C_(16, E("-o", "{W}/rep", model="{W}/x.onnx"), words=("x.onnx",), files={"x.onnx": b"not onnx"}),
    ]


def distill_args(*extra, out="{W}/st") -> list:
    return ["distill", "--teacher", "{T}", "--pairs", "{P}", "--quiet", "-o", out, "--epochs", "1", *extra]


def cases_distill() -> list:
    D = distill_args
    C_ = lambda i, *a, **k: Case(f"distill-{i:02d}", "distill", *a, **k)  # noqa: E731
    return [
        C_(1, D("--layers", "0,0"), words=("layers",)),
        C_(2, D("--layers", "5"), words=("layers",)),
        C_(3, D("--layers", ""), words=("layers",)),
        C_(4, D("--layers", "a,b"), words=("layers",)),
        C_(5, D("--layers", "-1"), words=("layers",)),
        C_(6, D("--layers", "1,0"), expect="either", words=("layers",), check=exists("st/model/model.safetensors")),
        C_(7, D("--student", "{T}", "--layers", "0"), words=("student", "layers")),
        C_(8, D("--epochs", "0"), words=("epochs",)),
        C_(9, D("--kl-weight", "-1"), words=("kl-weight",)),
        C_(10, D("--hidden-weight", "nan"), words=("hidden-weight",)),
        C_(11, ["distill", "--teacher", "{T}", "--quiet", "-o", "{W}/st"], words=("pairs", "corpus")),
        C_(12, D("--teacher", "{X}"), words=("teacher", "onnx", "export")),
        C_(13, D("--max-seq-length", "0"), words=("max-seq-length",)),
        C_(14, D("--lr", "0"), expect="either", words=("lr",), check=exists("st/model/model.safetensors")),
        C_(15, D("--batch-size", "0"), words=("batch-size",)),
        C_(16, D("--corpus", "{W}/c.txt"), words=("c.txt",), files={"c.txt": b"\xff\xfe\x00bad"}),
        C_(17, D("--student", "{W}/nostudent"), words=("nostudent",)),
        C_(18, D("--layers", "0,1"), expect="either", words=("layers", "all"), check=exists("st/model/model.safetensors")),
    ]


def cases_export() -> list:
    C_ = lambda i, *a, **k: Case(f"export-{i:02d}", "export", *a, **k)  # noqa: E731
    X = lambda *a, model="{T}", out="{W}/ex": ["export", "--model", model, "-o", out, *a]  # noqa: E731
    return [
        C_(1, X(model="{W}/nomodel"), words=("nomodel",)),
        C_(2, X(model="{X}"), words=("model", "onnx", "export")),
        C_(3, X("--opset", "5"), words=("opset",)),
        C_(4, X("--opset", "99"), words=("opset",)),
        C_(5, X("--quantize", "int8", "--calibration-texts", "{W}/none.jsonl"), words=("none.jsonl",)),
        C_(6, X("--calibration-texts", "{C}"), words=("calibration", "quantize")),
        C_(7, X(out="{W}/afile"), words=("afile",), files={"afile": "x"}, inputs=("{W}/afile",)),
        C_(8, X(model="{W}/emptydir"), words=("emptydir",), files={"emptydir/.keep": ""}),
        C_(9, X("--quantize", "int8", "--calibration-texts", "{W}/e.jsonl"), words=("e.jsonl",),
           files={"e.jsonl": ""}),
        C_(10, X("--opset", "-1"), words=("opset",)),
        C_(11, X(model="{W}/broken"), words=("broken", "config"),
           files={"broken/config.json": "{not json", "broken/modules.json": "[]"}),
        C_(12, X("--allow-fp32-int8"), words=("allow-fp32-int8", "quantize")),
        C_(13, X("--openvino-int8", "--no-optimize", out="{W}/ü dir/ex"), expect="either",
           words=("openvino", "nncf"), check=exists("ü dir/ex/model.onnx"), timeout=240),
    ]


def embed_args(*extra, inp="{C}", out="{W}/e.npy", model="{X}") -> list:
    return ["embed", "--model", model, "-i", inp, "-o", out, "--quiet", "--precision", "fp32", *extra]


def cases_embed() -> list:
    B = embed_args
    C_ = lambda i, *a, **k: Case(f"embed-{i:02d}", "embed", *a, **k)  # noqa: E731
    return [
        C_(1, B(inp="{W}/e.jsonl"), words=("e.jsonl",), files={"e.jsonl": ""}),
        C_(2, B(inp="{W}/t.txt"), words=("t.txt", "line 2"), files={"t.txt": "one\n\nthree\n"}),
        C_(3, B(inp="{NPY}"), words=("vecs.npy",)),
        C_(4, B("--batch-size", "0"), words=("batch-size",)),
        C_(5, B("--threads", "-1"), words=("threads",)),
        C_(6, ["embed", "--model", "{T}", "-i", "{C}", "-o", "{W}/e.npy", "--int8", "--quiet"],
           words=("int8",)),
        C_(7, B("--int8"), words=("int8", "precision")),
        C_(8, B("--adapter", "{W}/noad"), words=("noad",)),
        C_(9, B("--adapter", "{A64}"), words=("dim", "64", "32")),
        C_(10, B("--adapter", "{P}"), words=("adapter", "pairs.jsonl")),
        C_(11, B(out="{W}/e.txt"), words=("e.txt", ".npy", "jsonl")),
        C_(12, B(out="{W}/e.jsonl"), expect="handled", check=jsonl_ok("e.jsonl", 80, "embedding")),
        C_(13, B("--stream", "--stream-window", "1"), expect="handled", check=npy_ok("e.npy", 80)),
        C_(14, B("--stream", "--stream-window", "0"), words=("stream-window",)),
        C_(15, B("--stream", inp="{W}/c.csv"), words=("stream", "csv"), files={"c.csv": "id,text\n1,a\n"}),
        C_(16, B(inp="{W}/c.jsonl"), expect="either", words=("x1", "duplicate"), check=npy_ok("e.npy", 2),
           files={"c.jsonl": BAD_JSONL(DOC, DOC)}),
        C_(17, B(inp="{W}/c.jsonl"), expect="handled", check=npy_ok("e.npy", 3),
           files={"c.jsonl": "\ufeff" + DOC + "\r\n" + DOC2 + "\r\n" + DOC3 + "\r\n"}),
        C_(18, B(inp="{W}/ü é/c 1.txt", out="{W}/ü é/o ut.npy"), expect="handled", check=npy_ok("ü é/o ut.npy", 2),
           files={"ü é/c 1.txt": "alpha\nbeta\n"}),
        C_(19, B(inp="{W}/c.jsonl"), words=("line 1", "text"), files={"c.jsonl": BAD_JSONL('{"_id": "a", "text": 7}')}),
        C_(20, B(inp="{W}/c.txt"), expect="handled", check=npy_ok("e.npy", 2),
           files={"c.txt": "alpha\r\nbeta\r\n"}),
        C_(21, B(out="{W}/x/e.npy"), codes=(1, 2), words=("x",), files={"x": "file"}),
        C_(22, B("--adapter-side", "document", "--adapter", "{A}"), expect="handled", check=npy_ok("e.npy", 80)),
        C_(23, B(inp="{W}/c.txt"), expect="handled", check=npy_ok("e.npy", 1),
           files={"c.txt": "tok " * 100000 + "\n"}),
        C_(24, B(inp="{W}/c.txt.gz"), words=("c.txt.gz",), files={"c.txt.gz": gzip.compress(b"a\nb\n")}),
        C_(25, B(inp="{W}/c.txt"), expect="either", words=("line 2", "text"), check=npy_ok("e.npy", 3),
           files={"c.txt": "alpha\n   \nbeta\n"}),
        C_(26, B(inp="{W}/c.parquet"), words=("c.parquet",), files={"c.parquet": b"PAR1garbagePAR1"}),
        C_(27, B(model="{X}/model_int8.onnx"), expect="either", words=("int8", "precision"),
           check=npy_ok("e.npy", 80)),
        C_(28, B(inp="{W}/c.jsonl", out="{W}/e.jsonl"), expect="handled",
           check=lambda r, c: [str(json.loads(x)["id"]) for x in wpath(c, "e.jsonl").read_text().splitlines()] == ["5", "x"],
           files={"c.jsonl": BAD_JSONL('{"id": 5, "text": "a"}', '{"id": "x", "text": "b"}')}),
        C_(29, B(inp=""), words=("input", "-i")),
        C_(30, B(out=""), words=("output", "-o")),
    ]


def serve_args(*extra, model="{X}") -> list:
    return ["serve", "--model", model, "--precision", "fp32", "--host", "127.0.0.1", "--port", "0", *extra]


def cases_serve_flags() -> list:
    S = serve_args
    C_ = lambda i, *a, **k: Case(f"serveflag-{i:02d}", "serve", *a, timeout=40, **k)  # noqa: E731
    return [
        C_(1, S(model="{W}/nomodel"), words=("nomodel",)),
        C_(2, S("--max-batch-size", "0"), words=("max-batch-size",)),
        C_(3, S("--max-queue", "0"), words=("max-queue",)),
        C_(4, S("--threads", "-1"), words=("threads",)),
        C_(5, S("--host", "999.1.1.1"), codes=(1, 2), words=("999.1.1.1", "host")),
        C_(6, S("--name", ""), words=("name",)),
        C_(7, S("--drain-timeout", "-1"), words=("drain-timeout",)),
        C_(8, S("--cache-dir", "{W}/afile"), codes=(1, 2), words=("afile", "cache"), files={"afile": "x"}),
        C_(9, S("--adapter", "{A64}"), words=("dim", "64", "32")),
        C_(10, S("--max-batch-tokens", "0"), words=("max-batch-tokens",)),
        C_(11, S("--max-window-tokens", "-5"), words=("max-window-tokens",)),
        C_(12, S(model="{P}"), words=("pairs.jsonl", "model")),
        C_(13, S("--int8", "--precision", "bf16"), words=("int8", "precision")),
        C_(14, S("--drain-timeout", "nan"), words=("drain-timeout",)),
        C_(15, S("--adapter", "{W}/badad"), words=("badad", "adapter_config"),
           files={"badad/adapter_config.json": "{\"kind\": \"linear\""}),
    ]


def adapt_args(*extra, emb="{X}", out="{W}/ad") -> list:
    return ["adapt", "--pairs", "{P}", "--corpus", "{C}", "-o", out, "--embeddings", emb, "--quiet",
            "--epochs", "2", *extra]


def adapted(res: Result, ctx: dict) -> bool:
    return wpath(ctx, "ad/adapter_config.json").exists()


def cases_adapt() -> list:
    A = adapt_args
    API = lambda base, *a: A("--api-base", base, "--api-model", "m", *a, emb="api")  # noqa: E731
    C_ = lambda i, *a, **k: Case(f"adapt-{i:02d}", "adapt", *a, timeout=90, **k)  # noqa: E731
    npy_files = {"v.npy": lambda p, c: p.write_bytes(Path(c["NPY"]).read_bytes()),
                 "v.jsonl": lambda p, c: p.write_text(Path(c["C"]).read_text())}
    return [
        C_(1, API("http://127.0.0.1:{CLOSED}/v1"), codes=(1, 2), words=("127.0.0.1", "connect", "reach")),
        C_(2, API("not a url"), words=("api-base",)),
        C_(3, API("ftp://127.0.0.1/v1"), words=("api-base", "ftp")),
        C_(4, API("http://127.0.0.1:0/v1"), codes=(1, 2), words=("api-base", "port", "127.0.0.1")),
        C_(5, A("--api-base", "http://127.0.0.1:1/v1", emb="api"), words=("api-model",)),
        C_(6, A("--api-base", "http://127.0.0.1:{CLOSED}/v1"), words=("api-base",)),
        C_(7, API("http://127.0.0.1:{CLOSED}/v1", "--api-dimensions", "0"), words=("api-dimensions",)),
        C_(8, API("http://127.0.0.1:{CLOSED}/v1", "--api-batch-size", "0"), words=("api-batch-size",)),
        C_(9, API("http://127.0.0.1:{CLOSED}/v1", "--api-concurrency", "0"), words=("api-concurrency",)),
        C_(10, API("http://127.0.0.1:{CLOSED}/v1", "--api-max-retries", "-1"), words=("api-max-retries",)),
        C_(11, API("http://127.0.0.1:{CLOSED}/v1", "--api-tpm", "0"), words=("api-tpm",)),
        C_(12, A("--kind", "lowrank", "--rank", "0"), words=("rank",)),
        C_(13, A("--kind", "mlp", "--hidden", "0"), words=("hidden",)),
        C_(14, A("--epochs", "0"), words=("epochs",)),
        C_(15, A("--lr", "-1"), words=("lr",)),
        C_(16, A("--num-negatives", "0"), words=("num-negatives",)),
        C_(17, A("--max-ratio", "2"), words=("max-ratio",)),
        C_(18, A("--validation-share", "1"), words=("validation-share",)),
        C_(19, A("--kind", "linear", "--rank", "8"), words=("rank",)),
        C_(20, A(emb="{W}/lonely.npy"), words=("lonely",), files={"lonely.npy": lambda p, c: p.write_bytes(
            Path(c["NPY"]).read_bytes())}),
        C_(21, A(emb="{W}/v.npy"), words=("v.npy", "rows"), files={
            "v.npy": lambda p, c: p.write_bytes(Path(c["NPY"]).read_bytes()),
            "v.jsonl": BAD_JSONL(DOC, DOC2)}),
        C_(22, A(emb="{W}/v.npy"), words=("v.npy", "nan", "finite"), files=dict(npy_files, **{
            "v.npy": lambda p, c: nan_npy(p, c)})),
        C_(23, A(emb="{W}/v.parquet"), words=("v.parquet", "embedding", "column"), files={
            "v.parquet": lambda p, c: write_parquet(p, {"text": ["a"], "vec": [[0.1, 0.2]]})}),
        C_(24, A("--store", "{W}/afile"), codes=(1, 2), words=("afile", "store"), files={"afile": "x"}),
        C_(25, A(), codes=(1, 2), words=("store", "sfile"), env={"FASTEMBED_TUNE_STORE": "{W}/sfile"},
           files={"sfile": "x"}),
        C_(26, A(emb="{W}/nothing"), words=("nothing", "embeddings")),
        C_(27, A(emb="{W}/v.npy"), expect="either", words=("v.npy",), hrc=(0, 3), check=adapted, files=npy_files),
        C_(28, A("--kind", "lowrank", "--rank", "1000"), words=("rank",)),
        C_(29, A("--remine-every", "-1"), words=("remine-every",)),
        C_(30, A("--sides", "both", "--kind", "mlp", "--hidden", "8"), expect="handled", hrc=(0, 3), check=adapted),
        C_(31, A("--scale", "0"), words=("scale",)),
        C_(32, A("--test", "{W}/t.jsonl"), words=("t.jsonl", "positive", "corpus"),
           files={"t.jsonl": BAD_JSONL('{"query": "q", "positive": "absent from corpus"}')}),
        C_(33, A("--api-dimensions", "16"), words=("api-dimensions",)),
    ]


def nan_npy(path: Path, ctx: dict) -> None:
    import numpy as np
    a = np.load(ctx["NPY"])
    a[3, 5] = np.nan
    np.save(path, a)


def write_parquet(path: Path, cols: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(cols), path)


def cases_env() -> list:
    B = embed_args
    C_ = lambda i, *a, **k: Case(f"env-{i:02d}", "cache", *a, **k)  # noqa: E731
    auto = lambda: ["embed", "--model", "{X}", "-i", "{TXT}", "-o", "{W}/e.npy", "--quiet"]  # noqa: E731
    return [
        C_(1, auto(), expect="either", codes=(1, 2), words=("cache", "cfile"), check=npy_ok("e.npy", 20),
           env={"FASTEMBED_TUNE_CACHE": "{W}/cfile"}, files={"cfile": "x"}, inputs=("{W}/cfile",)),
        C_(2, auto(), expect="either", codes=(1, 2), words=("cache", "cfile"), check=npy_ok("e.npy", 20),
           env={"FASTEMBED_TUNE_CACHE": "{W}/cfile/sub"}, files={"cfile": "x"}, inputs=("{W}/cfile",)),
        C_(3, auto(), expect="either", codes=(1, 2), words=("cache", "/proc"), check=npy_ok("e.npy", 20),
           env={"FASTEMBED_TUNE_CACHE": "/proc/self/nope"}),
        C_(4, auto(), expect="handled", check=npy_ok("e.npy", 20), env={"FASTEMBED_TUNE_CACHE": ""}),
        C_(5, auto(), expect="handled", check=npy_ok("e.npy", 20), env={"FASTEMBED_TUNE_CACHE": "{W}/ü cache dir"}),
        C_(6, mine_args("--scan", "int8"), words=("fastembed_tune_lowp", "bogus"), env={"FASTEMBED_TUNE_LOWP": "bogus"}),
        C_(7, B(), expect="either", words=("fastembed_tune_ort_spin",), check=npy_ok("e.npy", 80),
           env={"FASTEMBED_TUNE_ORT_SPIN": "bogus"}),
        C_(8, adapt_args(), expect="either", codes=(1, 2), words=("store",), hrc=(0, 3), check=adapted,
           env={"FASTEMBED_TUNE_STORE": ""}),
        C_(9, mine_args("--scan", "int8", "--num-negatives", "2"), expect="either", words=("fastembed_tune_lowp",),
           check=mined_ok(40, 2), env={"FASTEMBED_TUNE_LOWP": "0"}),
        C_(10, B(), expect="handled", check=npy_ok("e.npy", 80), env={"FASTEMBED_TUNE_DEBUG": "1"}),
    ]


def cases_inputs() -> list:
    C_ = lambda i, *a, **k: Case(f"input-{i:02d}", "inputs", *a, **k)  # noqa: E731
    M = mine_args
    pq = lambda cols: (lambda p, c: write_parquet(p, cols))  # noqa: E731
    return [
        C_(1, M(pairs="{W}/p.parquet"), words=("p.parquet", "query"), files={"p.parquet": pq({"q": ["a"], "p": ["b"]})}),
        C_(2, M(pairs="{W}/p.parquet"), words=("p.parquet", "row", "positive"),
           files={"p.parquet": pq({"query": ["a", "b"], "positive": ["x", None]})}),
        C_(3, M(pairs="{W}/p.parquet"), words=("p.parquet", "query"),
           files={"p.parquet": pq({"query": [1, 2], "positive": ["x", "y"]})}),
        C_(4, M(corpus="{W}/c.parquet"), words=("c.parquet", "text", "column"),
           files={"c.parquet": pq({"id": ["a"], "body": ["x"]})}),
        C_(5, M(pairs="{W}/p.tsv"), words=("p.tsv", "line 3", "row 3", "field", "column"),
           files={"p.tsv": "query\tpositive\na\tb\nc\n"}),
        C_(6, M(pairs="{W}/p.csv"), expect="handled", check=mined_ok(1, 5),
           files={"p.csv": '\ufeffquery,positive\r\n"a, with comma","b ""quoted"""\r\n'}),
        C_(7, M(pairs="{W}/p.jsonl"), words=("line 1", "messages", "p.jsonl"),
           files={"p.jsonl": BAD_JSONL('{"messages": [{"role": "user", "content": "q"}]}')}),
        C_(8, M(pairs="{W}/p.json"), expect="handled", check=mined_ok(2, 5),
           files={"p.json": "[" + GOODQ + "," + GOODQ2 + "]"}),
        C_(9, M(pairs="{W}/p.json"), words=("p.json",), files={"p.json": '{"query": "q", "positive": "p"}'},
           expect="either", check=mined_ok(1, 5)),
        C_(10, M(pairs="{W}/p.jsonl"), words=("line 1", "utf"),
           files={"p.jsonl": GOODQ.encode("utf-16")}),
        C_(11, M(pairs="{W}/p.jsonl"), expect="handled", check=mined_ok(2, 5),
           files={"p.jsonl": "\n" + GOODQ + "\n\n" + GOODQ2 + "\n\n"}),
        C_(12, M(pairs="{W}/p.jsonl"), words=("line 1", "query"),
           files={"p.jsonl": BAD_JSONL('{"query": "\\u0000\\u0000", "positive": "x"}')}, expect="either",
           check=mined_ok(1, 5)),
        C_(13, M(corpus="{W}/c.jsonl"), words=("line 1", "_id", "id"),
           files={"c.jsonl": BAD_JSONL('{"_id": null, "text": "a"}')}),
        C_(14, M(corpus="{W}/c.jsonl"), words=("line 1", "text"),
           files={"c.jsonl": BAD_JSONL('{"_id": "a", "text": ["list", "of", "str"]}')}),
        C_(15, M(pairs="{W}/b"), words=("b", "qrels", "queries"), files={"b/corpus.jsonl": BAD_JSONL(DOC)}),
        C_(16, M(pairs="{W}/p.jsonl"), words=("line 1", "negative"),
           files={"p.jsonl": BAD_JSONL('{"query": "q", "positive": "p", "negative_1": 3}')}),
        C_(17, M(pairs="{W}/p.jsonl"), expect="handled", check=mined_ok(1, 5),
           files={"p.jsonl": BAD_JSONL('{"anchor": "q \\ud83d\\ude00 emoji", "output": "p \\u4e2d\\u6587"}')}),
        C_(18, M(pairs="{W}/p.jsonl"), words=("line 1",), files={"p.jsonl": "\x00\x01\x02binary\n"}),
    ]


# ----------------------------------------------------------------------------- locks and resume

def two_at_once(case: Case, ctx: dict, work: Path) -> Result:
    """Start the same command twice on one output: one must win, the other refuse clearly (or wait)."""
    env = base_env(ctx)
    cmd = cli([fmt(a, ctx) for a in case.argv])
    box: list = []
    ts = [threading.Thread(target=lambda: box.append(run_proc(cmd, env, str(work), case.timeout, sem=False)))
          for _ in range(2)]
    for t in ts:
        t.start()
        time.sleep(0.3)
    for t in ts:
        t.join()
    rcs = sorted(r.rc if r.rc is not None else 999 for r in box)
    loser = next((r for r in box if r.rc != 0), None)
    if any(r.rc is None for r in box):
        return Result(None, "", "".join(r.err for r in box), "timeout")
    if loser is None:  # both succeeded: acceptable only if they ran one after the other and output is whole
        ok = case.check(box[0], ctx) if case.check else True
        return Result(0, "", box[0].err, "both exited 0" + ("" if ok else "; output damaged"))
    res = Result(loser.rc, loser.out, loser.err, f"exit codes {rcs}")
    if rcs[0] != 0:
        res.rc = -1000  # neither finished: other
        res.note = f"neither finished, exit codes {rcs}"
    return res


def resume_after_kill(case: Case, ctx: dict, work: Path) -> Result:
    """Kill a checkpointing run once a checkpoint exists, optionally damage it, then --resume."""
    env = base_env(ctx)
    args = [fmt(a, ctx) for a in case.argv]
    p = subprocess.Popen(cli(args), cwd=str(work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         process_group=0)
    deadline = time.time() + 150
    out = work / "tr"
    while time.time() < deadline and p.poll() is None:
        if any(d.is_dir() and "checkpoint" in d.name for d in out.glob("*")) or list(out.glob("checkpoints/*")):
            time.sleep(1.0)
            break
        time.sleep(0.2)
    if p.poll() is not None:
        p.communicate()
        return Result(-1000, "", "", "run ended before a checkpoint appeared")
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    if case.env.get("DAMAGE"):
        for f in out.rglob("*"):
            if f.is_file() and f.suffix in (".safetensors", ".pt", ".bin", ".json") and "checkpoint" in str(f):
                f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    return run_proc(cli(args + ["--resume"]), env, str(work), case.timeout, sem=False)


def resumed_ok(steps: int) -> Callable:
    def check(res: Result, ctx: dict) -> bool:
        s = json.loads(wpath(ctx, "tr/train_summary.json").read_text())
        return s["steps"] == steps and s.get("resumed_from") is not None
    return check


def cases_locks() -> list:
    C_ = lambda i, *a, expect="either", **k: Case(f"lock-{i:02d}", "locks", *a, expect=expect, solo=True, **k)  # noqa: E731
    long_train = train_args("--max-steps", "60", "--checkpoint-every", "5", pairs="{M}")
    return [
        C_(1, train_args("--max-steps", "20"), fn=two_at_once, words=("lock", "in use", "running", "tr"),
           check=trained, label="2x train -o same/"),
        C_(2, embed_args(), fn=two_at_once, words=("lock", "in use", "running", "e.npy"), check=npy_ok("e.npy", 80),
           label="2x embed -o same.npy"),
        C_(3, mine_args(), fn=two_at_once, words=("lock", "in use", "running", "m.jsonl"), check=mined_ok(40, 5),
           label="2x mine -o same.jsonl"),
        C_(4, adapt_args(), fn=two_at_once, words=("lock", "in use", "running", "ad", "store"), check=adapted,
           label="2x adapt -o same/ (one store)"),
        C_(5, long_train, fn=resume_after_kill, expect="handled", check=resumed_ok(60), timeout=240,
           label="train killed (SIGKILL) after a checkpoint, then --resume"),
        C_(6, long_train, fn=resume_after_kill, expect="either", codes=(1, 2), words=("checkpoint",),
           check=resumed_ok(60), timeout=240, env={"DAMAGE": "1"},
           label="train killed, checkpoint truncated, then --resume"),
        C_(7, embed_args("--stream", "--stream-window", "2", out="{W}/e.npy"), fn=kill_then_rerun, expect="handled",
           check=npy_ok("e.npy", 80), label="embed --stream killed mid-way, then rerun"),
    ]


def kill_then_rerun(case: Case, ctx: dict, work: Path) -> Result:
    env = base_env(ctx)
    cmd = cli([fmt(a, ctx) for a in case.argv])
    p = subprocess.Popen(cmd, cwd=str(work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         process_group=0)
    time.sleep(2.5)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    left = sorted(f.name for f in work.iterdir())
    res = run_proc(cmd, env, str(work), case.timeout, sem=False)
    res.note = f"left after kill: {left}"
    return res


# ----------------------------------------------------------------------------- Python API

API_PRELUDE = """
import sys, json
import numpy as np
import fastembed_tune as ft
from fastembed_tune import *
from fastembed_tune.data.readers import Pair, read_pairs, load_eval
rng = np.random.default_rng(0)
def unit(n, d=8):
    a = rng.standard_normal((n, d)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)
T, X, P, C, E, A = {T!r}, {X!r}, {P!r}, {C!r}, {E!r}, {A!r}
def _body():
{body}
try:
    r = _body()
except (ValueError, TypeError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print("error: " + type(e).__name__ + ": " + msg, file=sys.stderr)
    sys.exit(2 if msg else 5)
print("RESULT " + json.dumps(r, default=str)[:300])
"""


def api_case(i: int, body: str, expect: str = "clear", words: tuple = (), timeout: float = 120) -> Case:
    def fn(case: Case, ctx: dict, work: Path) -> Result:
        code = API_PRELUDE.format(body="\n".join("    " + ln for ln in body.strip().splitlines()),
                                  **{k: ctx[k] for k in ("T", "X", "P", "C", "E", "A")})
        return run_proc([PY, "-c", code], base_env(ctx), str(work), case.timeout)
    first = body.strip().splitlines()[-1].replace("return ", "")
    return Case(f"api-{i:02d}", "api", fn=fn, expect=expect, words=words, timeout=timeout,
                check=lambda r, c: "RESULT true" in r.out, label=first[:90])


def cases_api_kernels() -> list:
    A = api_case
    return [
        A(1, "return topk_cosine(unit(3), unit(10), 0)", words=("k",)),
        A(2, "return topk_cosine(unit(3), unit(10), 11)", words=("k",)),
        A(3, "return topk_cosine(unit(3), unit(10), -1)", words=("k",)),
        A(4, "return topk_cosine(unit(3, 8), unit(10, 16), 2)", words=("dim", "shape", "8", "16")),
        A(5, "return topk_cosine(unit(3)[0], unit(10), 2)", words=("2-d", "2d", "shape", "dim")),
        A(6, "c = unit(10); c[4, 2] = np.nan\nreturn topk_cosine(unit(3), c, 2)", words=("nan", "finite")),
        A(7, "return topk_cosine(unit(2), unit(10), 2, exclude=[[100], [1]])", words=("exclude", "100", "range")),
        A(8, "return topk_cosine(unit(3), unit(10), 2, exclude=[[1]])", words=("exclude",)),
        A(9, "return topk_cosine(unit(3), unit(10), 2, skip_top=-1)", words=("skip_top",)),
        A(10, "return topk_cosine(unit(3), unit(10), 2, max_ratio=0.9)", words=("positive_scores", "max_ratio")),
        A(11, "return topk_cosine(unit(3), unit(10), 2, max_ratio=0.9, positive_scores=np.ones(5, np.float32))",
          words=("positive_scores", "shape", "3")),
        A(12, "return topk_cosine(unit(3), unit(10), 2, threads=-4)", words=("threads",)),
        A(13, "return topk_cosine(unit(3), unit(10), 2, simd='bogus')", words=("simd", "bogus")),
        A(14, "q = unit(4, 16); c = unit(20, 16)\ns, i = topk_cosine(q[:, ::2].copy(order='K')[:, :], c[:, ::2], 3)\n"
              "ref = np.argsort(-(q[:, ::2] @ c[:, ::2].T), axis=1)[:, :3]\nreturn bool((np.asarray(i) == ref).all())",
          expect="either", words=("contiguous", "normal")),
        A(15, "import torch\nc = unit(10)\nq = torch.tensor(c[:3], requires_grad=True)\ns, i = topk_cosine(q, c, 1)\n"
              "return np.asarray(i)[:, 0].tolist() == [0, 1, 2]", expect="either", words=("grad",)),
        A(16, "return topk_cosine(unit(3), np.zeros((0, 8), np.float32), 1)", words=("empty", "corpus", "k", "0")),
        A(17, "s, i = topk_cosine(np.zeros((0, 8), np.float32), unit(10), 2)\nreturn np.asarray(i).shape == (0, 2)",
          expect="either", words=("empty", "quer")),
        A(18, "c = unit(10)\ns, i = topk_cosine(c.astype(np.float64), c.astype(np.float64), 1)\n"
              "return bool((np.asarray(i)[:, 0] == np.arange(10)).all())", expect="either", words=("float32", "dtype")),
        A(19, "return topk_cosine(unit(3), (unit(10) * 100).astype(np.int32), 2)", words=("dtype", "float", "int")),
        A(20, "return topk_cosine('abc', unit(10), 2)", words=("array", "queries", "str")),
        A(21, "return topk_cosine(unit(3), unit(10), 2.5)", words=("k", "int")),
        A(22, "return topk_cosine_lowp(unit(3), unit(10), 2, precision='bogus')", words=("precision", "bogus")),
        A(23, "return topk_cosine_lowp(unit(3), unit(10), 11)", words=("k",)),
        A(24, "c = unit(10); c[0, 0] = np.inf\nreturn topk_cosine_lowp(unit(3), c, 2)", words=("nan", "inf", "finite")),
        A(25, "q = unit(3); c = unit(10) * 5\ns, i = topk_cosine(q, c, 2, normalized=False)\n"
              "ref = np.sort(q @ c.T, axis=1)[:, ::-1][:, :2]\nreturn bool(np.allclose(np.asarray(s), ref, atol=1e-4))",
          expect="handled"),
        A(26, "c = unit(50, 16)\ns, i = topk_cosine_lowp(c[:5], c, 1)\nreturn np.asarray(i)[:, 0].tolist() == list(range(5))",
          expect="handled"),
    ]


def cases_api_rest() -> list:
    A = api_case
    return [
        A(30, "import torch\nq = torch.randn(4, 8); d = torch.randn(6, 8)\nreturn float(contrastive(q, d, torch.tensor([0, 1, 2, 9])))",
          words=("pos", "range", "9")),
        A(31, "import torch\nreturn float(contrastive(torch.randn(4, 8), torch.randn(6, 16), torch.arange(4)))",
          words=("dim", "shape", "8", "16")),
        A(32, "import torch\nreturn float(contrastive(torch.randn(4, 8), torch.randn(6, 8), torch.arange(3)))",
          words=("pos", "shape", "4", "3")),
        A(33, "import torch\nreturn float(contrastive(torch.randn(4, 8), torch.randn(6, 8), torch.arange(4), scale=0.0))",
          words=("scale",)),
        A(34, "import torch\nreturn float(contrastive(torch.randn(4, 8), torch.randn(6, 8), torch.arange(4), scale=float('nan')))",
          words=("scale", "nan")),
        A(35, "import torch\nreturn float(contrastive(torch.randn(4, 8), torch.randn(6, 8), torch.arange(4), doc_keys=torch.arange(2)))",
          words=("doc_keys", "shape", "6")),
        A(36, "import torch\nq = torch.randn(4, 8); q[0, 0] = float('nan')\nreturn float(contrastive(q, torch.randn(6, 8), torch.arange(4)))",
          words=("nan", "finite")),
        A(37, "return evaluate(None, load_eval(E, C))", words=("model",)),
        A(38, "return evaluate(load_embedder(X, precision='fp32'), [('q', 'd')])", words=("eval",)),
        A(39, "return load_embedder('/nonexistent/model')", words=("nonexistent",)),
        A(40, "return load_embedder(X, precision='bogus')", words=("precision", "bogus")),
        A(41, "return load_embedder(123)", words=("path", "int", "123")),
        A(42, "return load_embedder(C)", words=("corpus.jsonl",)),
        A(43, "return mine_hard_negatives([], corpus=['a', 'b'], model=T, show_progress_bar=False)",
          expect="either", words=("pairs", "empty")),
        A(44, "return mine_hard_negatives([{'query': 'q', 'positive': 'p'}], corpus=['a', 'b', 'p'], model=T,"
              " show_progress_bar=False)", expect="either", words=("pair",)),
        A(45, "return mine_hard_negatives(read_pairs(P), corpus=['a', 'b'], model=T, num_negatives=0)",
          words=("num_negatives",)),
        A(46, "return mine_hard_negatives(read_pairs(P), corpus=['a', 'b'], model=T, scan='bogus')", words=("scan",)),
        A(47, "ps = read_pairs(P)\nreturn mine_hard_negatives(ps, corpus=['a', 'b'], embeddings=(unit(3), unit(2)))",
          words=("embeddings", "shape", "rows")),
        A(48, "return train(read_pairs(P), TrainConfig(output_dir='o', model=T, lr=-1.0, max_steps=1))", words=("lr",)),
        A(49, "return train(read_pairs(P), TrainConfig(output_dir='o', model=T, batch_size=0, max_steps=1))",
          words=("batch_size",)),
        A(50, "return train(read_pairs(P), TrainConfig(output_dir='o', model=T, loss='bogus', max_steps=1))",
          words=("loss", "bogus")),
        A(51, "return train(read_pairs(P), TrainConfig(output_dir='o', model=T, validation_share=2.0, max_steps=1))",
          words=("validation_share",)),
        A(52, "return train(read_pairs(P), TrainConfig(output_dir=None, model=T, max_steps=1))", words=("output_dir",)),
    ] + cases_api_more()


def cases_api_more() -> list:
    A = api_case
    return [
        A(53, "return train('not pairs', TrainConfig(output_dir='o', model=T, max_steps=1))", words=("pairs",)),
        A(54, "return distill(T, ['a b', 'c d'], 's', DistillConfig(layers='9'))",
          words=("layers", "9")),
        A(55, "return DistillConfig(epochs=-1)", words=("epochs",)),
        A(56, "return export_onnx('/nonexistent', 'o')", words=("nonexistent",)),
        A(57, "return export_onnx(T, 'o', quantize='int4')", words=("quantize", "int4")),
        A(58, "return export_onnx(T, 'o', opset=1)", words=("opset",)),
        A(59, "return Adapter('/nonexistent/adapter')", words=("nonexistent",)),
        A(60, "return Adapter.identity('bogus', 4)", words=("kind", "bogus")),
        A(61, "return Adapter.identity('linear', 0)", words=("dim",)),
        A(62, "return Adapter(A).apply(unit(3, 16)).shape", words=("dim", "16", "32")),
        A(63, "return Adapter(A).apply(unit(3, 32), 'sideways').shape", words=("side", "sideways")),
        A(64, "x = unit(3, 32); x[1, 1] = np.nan\nreturn Adapter(A).apply(x).tolist()", words=("nan", "finite")),
        A(65, "return Adapter(A).apply(np.zeros((0, 32), np.float32)).shape == (0, 32)", expect="either",
          words=("empty",)),
        A(66, "return Adapter(A).apply(unit(1, 32)[0]).shape", expect="either", words=("2-d", "shape", "dim")),
        A(67, "return Adapter(config={'kind': 'linear', 'dim': 4, 'sides': 'query'}, params={})",
          words=("params", "query")),
        A(68, "return train(read_pairs(P), TrainConfig(output_dir='o', model=T, epochs='three'))", words=("epochs",)),
        A(69, "return distill(T, ['a b', 'c d'], 's', DistillConfig(layers=[0, 0]))", words=("layers",)),
    ]


# ----------------------------------------------------------------------------- the server

def http_outcome(resp, want: tuple, words: tuple, check: Optional[Callable]) -> tuple:
    text = resp.text
    if "Traceback" in text or "internal error" in text.lower():
        return "traceback", f"{resp.status_code} {text[:140]}"
    try:
        msg = str(resp.json().get("error", {}).get("message", "")) if resp.status_code != 200 else ""
    except Exception:
        msg = ""
    line = f"HTTP {resp.status_code} {msg or text[:100]}".replace("\n", " ")[:160]
    if resp.status_code == 200 and 200 in want:
        try:
            ok = check(resp) if check else True
        except Exception as e:
            ok, line = False, f"{line} (check: {type(e).__name__}: {e})"[:160]
        return ("handled" if ok else "silent"), line
    plain = resp.status_code in (404, 405) and not words
    if resp.status_code in want and (msg or plain) and (not words or any(w in msg.lower() for w in words)):
        return "clear", line
    if resp.status_code == 200:
        return "silent", line
    return "other", line


def srv(i: int, method: str, path: str, body=None, raw: Optional[bytes] = None, want: tuple = (400, 422),
        words: tuple = (), check: Optional[Callable] = None, headers: Optional[dict] = None) -> Case:
    def fn(case: Case, ctx: dict, work: Path):
        import httpx
        try:
            r = httpx.request(method, ctx["URL"] + path, json=body if raw is None else None, content=raw,
                              headers=headers, timeout=30)
        except httpx.TimeoutException as e:
            return "hang", f"timeout: {e}"
        except Exception as e:
            return "other", f"{type(e).__name__}: {e}"[:160]
        return http_outcome(r, want, words, check)
    shown = (raw[:60].decode("utf-8", "replace") if raw is not None else json.dumps(body)[:70])
    return Case(f"http-{i:02d}", "server", fn=fn, label=f"httpx {method} {path} {shown}")


def emb_check(n: int, dim: int = 32) -> Callable:
    def check(resp) -> bool:
        import numpy as np
        data = resp.json()["data"]
        vs = [np.asarray(d["embedding"], np.float32) for d in data]
        return (len(vs) == n and all(v.shape == (dim,) for v in vs) and all(np.isfinite(v).all() for v in vs)
                and [d["index"] for d in data] == list(range(n)))
    return check


def b64_check(resp) -> bool:
    import numpy as np
    v = np.frombuffer(base64.b64decode(resp.json()["data"][0]["embedding"]), np.float32)
    return v.shape == (32,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3


def dims_check(resp) -> bool:
    import numpy as np
    v = np.asarray(resp.json()["data"][0]["embedding"])
    return v.shape == (16,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3


def cases_http() -> list:
    E = "/v1/embeddings"
    ok = (200,)
    deep = ("[" * 100000 + "]" * 100000).encode()
    return [
        srv(1, "POST", E, raw=b"{not json", headers={"content-type": "application/json"}, words=("json",)),
        srv(2, "POST", E, body=["a list", "not an object"]),
        srv(3, "POST", E, body={"model": "wrong-model", "input": ["a"]}, want=(404, 400), words=("wrong-model", "model")),
        srv(4, "POST", E, body={"model": "tiny"}, words=("input",)),
        srv(5, "POST", E, body={"model": "tiny", "input": []}, words=("input", "empty")),
        srv(6, "POST", E, body={"model": "tiny", "input": ""}, want=(400, 422, 200), words=("input", "empty"),
            check=emb_check(1)),
        srv(7, "POST", E, body={"model": "tiny", "input": ["text %d" % i for i in range(3000)]},
            want=(200, 400, 413), words=("input", "too many", "2048", "limit"), check=emb_check(3000)),
        srv(8, "POST", E, body={"model": "tiny", "input": ["long " * 200000]}, want=(200, 400, 413),
            words=("token", "long", "input"), check=emb_check(1)),
        srv(9, "POST", E, body={"model": "tiny", "input": [[999999999]]}, words=("token", "999999999", "range")),
        srv(10, "POST", E, body={"model": "tiny", "input": [[-1, 5]]}, words=("token", "-1", "range")),
        srv(11, "POST", E, body={"model": "tiny", "input": [[]]}, words=("token", "empty", "input")),
        srv(12, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": 0}, words=("dimensions",)),
        srv(13, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": -1}, words=("dimensions",)),
        srv(14, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": 1000}, words=("dimensions", "32")),
        srv(15, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": 16}, want=ok, check=dims_check),
        srv(16, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": "16"}, words=("dimensions",)),
        srv(17, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": 16.5}, words=("dimensions",)),
        srv(18, "POST", E, body={"model": "tiny", "input": ["a"], "encoding_format": "bogus"},
            words=("encoding_format", "bogus")),
        srv(19, "POST", E, body={"model": "tiny", "input": ["a"], "encoding_format": "base64"}, want=ok,
            check=b64_check),
        srv(20, "POST", E, body={"model": "tiny", "input": 5}, words=("input",)),
        srv(21, "POST", E, body={"model": "tiny", "input": ["a", 1]}, words=("input",)),
        srv(22, "POST", E, body={"model": "tiny", "input": None}, words=("input",)),
        srv(23, "GET", E, want=(405,), words=()),
        srv(24, "GET", "/v1/models", want=ok, check=lambda r: any(m["id"] == "tiny" for m in r.json()["data"])),
        srv(25, "GET", "/health", want=ok),
        srv(26, "GET", "/metrics", want=ok, check=lambda r: "# TYPE" in r.text or "# HELP" in r.text),
        srv(27, "GET", "/v1/nothing", want=(404,)),
        srv(28, "POST", E, raw=deep, headers={"content-type": "application/json"}, want=(400, 413, 422)),
        srv(29, "POST", E, body={"model": "tiny", "input": ["nul \u0000 byte", "tab\tand\u200bzero-width"]}, want=ok,
            check=emb_check(2)),
        srv(30, "POST", E, body={"model": "tiny", "input": ["a"], "user": "x", "extra_field": {"k": 1}},
            want=ok, check=emb_check(1)),
        srv(31, "POST", E, body={"model": "tiny", "input": [[101, 2054, 102]] * 3}, want=ok, check=emb_check(3)),
        srv(32, "POST", E, body={"model": "tiny", "input": [["a"]]}, words=("input",)),
        srv(33, "POST", E, raw=b"\xff\xfe\x00garbage", headers={"content-type": "application/json"}),
        srv(34, "POST", E, body={"model": "tiny", "input": ["a"], "dimensions": True}, words=("dimensions",)),
        srv(35, "POST", E, body={"model": "tiny", "input": ["a"] * 5, "encoding_format": None}, want=(200, 400, 422),
            words=("encoding_format",), check=emb_check(5)),
    ]


def oai(i: int, label: str, call: Callable, want_exc: tuple = (), words: tuple = (),
        check: Optional[Callable] = None) -> Case:
    """A case through the real `openai` client; want_exc empty means it must work (then check)."""
    def fn(case: Case, ctx: dict, work: Path):
        import openai
        client = openai.OpenAI(base_url=ctx["URL"] + "/v1", api_key="sk-probe", timeout=30, max_retries=0)
        try:
            r = call(client)
        except openai.APITimeoutError as e:
            return "hang", f"timeout: {e}"
        except openai.APIStatusError as e:
            text = str(e)
            if "Traceback" in text:
                return "traceback", text[:160]
            kind = type(e).__name__
            ok = any(kind == w for w in want_exc) and (not words or any(w in text.lower() for w in words))
            return ("clear" if ok else "other"), f"{kind}: {text}"[:160]
        except Exception as e:
            return "other", f"{type(e).__name__}: {e}"[:160]
        if want_exc:
            return "silent", f"worked: {str(r)[:120]}"
        try:
            return ("handled" if (check(r) if check else True) else "silent"), f"ok: {str(r)[:100]}"
        except Exception as e:
            return "silent", f"check: {type(e).__name__}: {e}"[:160]
    return Case(f"openai-{i:02d}", "server", fn=fn, label=f"openai {label}")


def cases_openai() -> list:
    import numpy as np
    unit = lambda v: abs(float(np.linalg.norm(v)) - 1) < 1e-3  # noqa: E731
    return [
        oai(1, "embeddings.create(model='tiny', input=['a','b'])  (base64 by default)",
            lambda c: c.embeddings.create(model="tiny", input=["a", "b"]),
            check=lambda r: len(r.data) == 2 and len(r.data[0].embedding) == 32 and unit(r.data[1].embedding)),
        oai(2, "model='nope'", lambda c: c.embeddings.create(model="nope", input=["a"]),
            want_exc=("NotFoundError", "BadRequestError"), words=("nope", "model")),
        oai(3, "dimensions=8", lambda c: c.embeddings.create(model="tiny", input=["a"], dimensions=8),
            check=lambda r: len(r.data[0].embedding) == 8 and unit(r.data[0].embedding)),
        oai(4, "input=[]", lambda c: c.embeddings.create(model="tiny", input=[]),
            want_exc=("BadRequestError", "UnprocessableEntityError"), words=("input", "empty")),
        oai(5, "encoding_format='float'", lambda c: c.embeddings.create(model="tiny", input="x", encoding_format="float"),
            check=lambda r: len(r.data) == 1 and unit(r.data[0].embedding) and r.usage.prompt_tokens > 0),
        oai(6, "dimensions=64 (> 32)", lambda c: c.embeddings.create(model="tiny", input=["a"], dimensions=64),
            want_exc=("BadRequestError", "UnprocessableEntityError"), words=("dimensions",)),
        oai(7, "input=[[1,2,3]] token ids", lambda c: c.embeddings.create(model="tiny", input=[[101, 7592, 102]]),
            check=lambda r: len(r.data[0].embedding) == 32),
        oai(8, "models.list()", lambda c: c.models.list(), check=lambda r: any(m.id == "tiny" for m in r.data)),
        oai(9, "models.retrieve('tiny')", lambda c: c.models.retrieve("tiny"), check=lambda r: r.id == "tiny"),
    ]


def concurrent_case(case: Case, ctx: dict, work: Path):
    """16 threads, 4 requests each, mixed batch sizes: every vector equals the one sent alone."""
    import httpx
    import numpy as np
    url = ctx["URL"] + "/v1/embeddings"
    texts = [f"concurrent text number {i} " + "pad " * (i % 13) for i in range(64)]
    alone = {t: np.asarray(httpx.post(url, json={"model": "tiny", "input": [t]}, timeout=30).json()["data"][0]
                           ["embedding"]) for t in texts[:16]}
    bad: list = []

    def worker(k: int) -> None:
        for j in range(4):
            batch = texts[(k * 4 + j) % 16: (k * 4 + j) % 16 + 1 + (k % 4)]
            r = httpx.post(url, json={"model": "tiny", "input": batch}, timeout=60)
            if r.status_code != 200:
                bad.append(f"HTTP {r.status_code} {r.text[:80]}")
                continue
            for t, d in zip(batch, r.json()["data"]):
                if t in alone and float(np.max(np.abs(np.asarray(d["embedding"]) - alone[t]))) > 1e-4:
                    bad.append(f"vector of {t!r} differs in a batch")
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    if any(t.is_alive() for t in ts):
        return "hang", "a request thread did not finish in 120 s"
    return ("handled", "64 concurrent requests, vectors batch-invariant") if not bad else ("silent", bad[0])


def disconnect_storm(case: Case, ctx: dict, work: Path):
    """Clients that send half a request body and vanish; the server must still answer /health."""
    host, port = ctx["URL"].split("//")[1].split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"model\": \"tiny\", \"input\": [\"a")
    import httpx
    try:
        r = httpx.get(ctx["URL"] + "/health", timeout=15)
    except Exception as e:
        return "hang", f"/health after truncated bodies: {type(e).__name__}"
    return ("handled" if r.status_code == 200 else "other"), f"/health {r.status_code} after 20 truncated bodies"


def cases_server_misc() -> list:
    S = lambda i, fn, label: Case(f"srvmisc-{i:02d}", "server", fn=fn, label=label)  # noqa: E731
    adapt_api = adapt_args("--api-base", "{URL}/v1", "--api-model", "tiny", emb="api")
    adapt_bad = adapt_args("--api-base", "{URL}/v1", "--api-model", "nope", emb="api")
    adapt_dim = adapt_args("--api-base", "{URL}/v1", "--api-model", "tiny", "--api-dimensions", "999", emb="api")
    return [
        S(1, concurrent_case, "16 threads x 4 POST /v1/embeddings, batch invariance"),
        S(2, disconnect_storm, "20 truncated request bodies then GET /health"),
        Case("srvmisc-03", "adapt", adapt_api, expect="handled", hrc=(0, 3), check=adapted, timeout=120),
        Case("srvmisc-04", "adapt", adapt_bad, codes=(1, 2), words=("nope", "model"), timeout=120),
        Case("srvmisc-05", "adapt", adapt_dim, codes=(1, 2), words=("dimensions", "999"), timeout=120),
    ]


def start_server(ctx: dict) -> subprocess.Popen:
    cmd = cli(serve_args("--name", "tiny", "--max-queue", "256"))
    p = subprocess.Popen([fmt(a, ctx) for a in cmd], env=base_env(ctx), cwd=ctx["TMP"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, process_group=0)
    box: list = []
    threading.Thread(target=lambda: box.extend(iter(p.stdout.readline, "")), daemon=True).start()
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        m = next((re.search(r"http://127\.0\.0\.1:(\d+)", ln) for ln in box if "http://127.0.0.1:" in ln), None)
        if m:
            ctx["URL"] = f"http://127.0.0.1:{m.group(1)}"
            return p
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    sys.exit(f"serve did not start: {''.join(box)[-500:]} {p.stderr.read()[-1500:] if p.poll() is not None else ''}")


def stop_server(p: subprocess.Popen) -> dict:
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(30)
        err = p.stderr.read()
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return {"id": "srvmisc-99", "area": "server", "command": "SIGTERM the server", "outcome": "hang",
                "rc": None, "line": "did not exit 30 s after SIGTERM", "note": "", "seconds": 30, "stderr_head": ""}
    outcome = "traceback" if "Traceback" in err else ("handled" if rc == 0 else "other")
    return {"id": "srvmisc-99", "area": "server", "command": "SIGTERM the server after every case", "outcome": outcome,
            "rc": rc, "line": (err.strip().splitlines() or [""])[-1][:160], "note": "", "seconds": 0,
            "stderr_head": err[-800:]}


def all_cases() -> tuple:
    plain = (cases_mine() + cases_mine2() + cases_train() + cases_eval() + cases_distill() + cases_export() + cases_embed()
             + cases_serve_flags() + cases_adapt() + cases_env() + cases_inputs() + cases_api_kernels()
             + cases_api_rest())
    return plain, cases_locks(), cases_http() + cases_openai() + cases_server_misc()


def run_all(only: Optional[str], ctx: dict, jobs: int) -> list:
    plain, solo, server = all_cases()
    keys = [k for k in (only or "").split(",") if k]
    pick = lambda cs: [c for c in cs if not keys or any(c.area == k or c.id.startswith(k) for k in keys)]  # noqa: E731
    results = []
    with cf.ThreadPoolExecutor(jobs) as pool:
        for r in pool.map(lambda c: run_case(c, ctx), pick(plain)):
            results.append(r)
            print(f"  {r['id']:<14} {r['outcome']:<9} {r['seconds']:>5}s {r['line'][:90]}", flush=True)
    for c in pick(solo):
        results.append(run_case(c, ctx))
        print(f"  {c.id:<14} {results[-1]['outcome']:<9} {results[-1]['line'][:90]}", flush=True)
    if pick(server):
        p = start_server(ctx)
        try:
            for c in pick(server):
                results.append(run_case(c, ctx))
                print(f"  {c.id:<14} {results[-1]['outcome']:<9} {results[-1]['line'][:90]}", flush=True)
        finally:
            results.append(stop_server(p))
    return results


def report(results: list) -> None:
    print(f"\n{'id':<14} {'area':<8} {'outcome':<9} {'command':<70} first line of stderr")
    for r in results:
        cmd = r["command"].replace(r.get("_tmp", "~"), "")
        print(f"{r['id']:<14} {r['area']:<8} {r['outcome']:<9} {cmd[:70]:<70} {r['line'][:120]}")
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    print("\ncounts: " + "  ".join(f"{k} {v}" for k, v in counts.items()) + f"  total {len(results)}")
    bad = [r for r in results if r["outcome"] not in ("clear", "handled")]
    if bad:
        print("\nnot clear / handled:")
        for r in bad:
            print(f"- {r['id']} [{r['outcome']}] rc={r['rc']} {r['command']}\n    {r['line']}"
                  + (f"\n    note: {r['note']}" if r["note"] else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated areas (mine, train, eval, distill, export, embed, serve, adapt, "
                                   "cache, inputs, locks, api, server) or ids starting with this")
    ap.add_argument("--out", help="write every result as JSON here")
    ap.add_argument("--jobs", type=int, default=2, help="concurrent subprocesses (default 2)")
    args = ap.parse_args()
    global SEM
    SEM = threading.Semaphore(max(1, args.jobs))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="probe-misuse-") as tmp:
        ctx = build_fixtures(Path(tmp))
        print(f"fixtures ready in {time.time() - t0:.0f} s under {tmp}", flush=True)
        results = run_all(args.only, ctx, max(1, args.jobs))
        for r in results:
            r["command"] = r["command"].replace(tmp, "$TMP")
    report(results)
    print(f"\nwall time {time.time() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
