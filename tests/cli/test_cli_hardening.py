"""CLI hardening (issue 10): bad input and machine faults end in one ``error:`` line, never a traceback.

Every case drives ``fastembed_tune.cli.app.main`` (in-process, ``capsys``) or ``python -m fastembed_tune``
(a subprocess: the lock, fail-fast timing and process exit codes) and asserts the contract:

- the exit code: 2 for the user's mistake, 1 for the machine's (full or read-only disk), 0 when valid;
- stderr is exactly one ``error: `` line, the last one, optionally preceded by ``warning: `` lines,
  and never holds ``Traceback``;
- the error line names the file and line/row and field of a data error, or the flag of an argument error;
- nothing is left behind: the output does not exist if it did not before, and no hidden temporary
  entries (``.*tmp*``, ``.*.old*``, ``.*.trash*``, ``*.lock``) remain;
- written files honour the umask (0644 files / 0755 folders under umask 022).

Everything runs on a 2-layer, 32-wide random BERT (``tiny_model_dir``) and its ONNX export, made once
per module, on <= 40 pairs and ``--max-steps 1``. ``--quiet`` is always passed where the subcommand
has it (``export`` may not).

Readings chosen where the contract is open (what a sentence-transformers / faiss user would expect):

- argparse's own usage errors (``--num-negatives 0``) are one ``error:`` line like every other refusal,
  exit 2, the flag named, no traceback.
- ``texts.txt`` for ``embed``: a blank line anywhere (also the first line) breaks the 1:1 row mapping
  and is refused; only the final newline(s) of the file are fine.
- a JSON-array file (``.json``) names the position as ``item N`` or ``line N``.
- Inf weights may be reported as ``Inf``, ``infinite``, ``non-finite`` or ``NaN``.
- a disk fault is simulated where an atomic write commits: renaming a temporary entry onto the
  output raises ``OSError(ENOSPC)`` / ``OSError(EROFS)`` (we run as root: chmod stops nothing).
- the lock file of :func:`fastembed_tune.core.atomic.output_lock` is gone once the lock is released.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastembed_tune.cli.app import build_parser, main
from fastembed_tune.embed.model import EmbeddingModel

# ---------------------------------------------------------------------------------------------------
# helpers


def _subcommands_with_quiet() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items() if any("--quiet" in a.option_strings for a in p._actions)}


QUIET = _subcommands_with_quiet()


def argv(*args) -> list[str]:
    out = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    return out + (["--quiet"] if out[0] in QUIET else [])


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``main`` in-process; returns (exit code, stdout, stderr). An exception escaping ``main``
    is a traceback the user would see, so it is not caught (the test fails with it)."""
    capsys.readouterr()
    try:
        rc = main(argv(*args))
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def cli_quiet(*args) -> tuple[int, str, str]:
    """``cli`` without capsys (for hypothesis, whose examples cannot use function-scoped fixtures)."""
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv(*args))
        except SystemExit as ex:
            rc = ex.code
    return rc, o.getvalue(), e.getvalue()


def error_line(err: str) -> str:
    """The one ``error: `` line of stderr; asserts the rest are ``warning: `` lines before it."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    stray = [ln for ln in lines if not ln.startswith(("error: ", "warning: "))]
    assert len(errors) == 1 and not stray, f"stderr must be one 'error: ' line (+ 'warning: ' lines): {err!r}"
    assert lines[-1] == errors[0], f"the error must be the last line: {err!r}"
    return errors[0]


def warnings_only(err: str) -> list[str]:
    """stderr of a successful command: only ``warning: `` lines (returned)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    bad = [ln for ln in lines if not ln.startswith("warning: ")]
    assert not bad, f"a successful command may only print 'warning: ' lines on stderr: {err!r}"
    return lines


def has(line: str, needle) -> bool:
    """``needle`` is a substring, or a tuple of alternatives."""
    return any(n in line for n in needle) if isinstance(needle, tuple) else needle in line


def is_temp(name: str) -> bool:
    return name.endswith(".lock") or (name.startswith(".") and ("tmp" in name or ".old" in name or ".trash" in name))


def temp_entries(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if is_temp(n)]
    return found


def refused(res, code: int, needles, tmp: Path, out_dir: Path, keep=()) -> str:
    """Assert a refusal: exit ``code``, one error line holding every needle, ``out_dir`` holding only
    ``keep`` (what was there before), no temporary entries anywhere under ``tmp``."""
    rc, _out, err = res
    assert "Traceback" not in err, err
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err!r}"
    line = error_line(err)
    for n in needles:
        assert has(line, n), f"{n!r} is not in the error line {line!r}"
    assert sorted(os.listdir(out_dir)) == sorted(keep), f"left behind in {out_dir}: {os.listdir(out_dir)}"
    assert not temp_entries(tmp), f"temporary entries left: {temp_entries(tmp)}"
    return line


def succeeded(res) -> list[str]:
    rc, _out, err = res
    assert rc == 0, f"exit {rc}; stderr: {err!r}"
    return warnings_only(err)


def jl(*rows) -> str:
    """JSONL text; ``json.dumps`` writes a lone surrogate as the escape ``\\ud800`` (valid JSON)."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def write_parquet(columns: dict):
    def w(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), str(path))
    return w


WORDS = ("kernel mutex thread heap stack queue lambda tuple graph vertex cache page disk byte socket "
         "parser lexer token buffer pointer monad closure index shard replica quorum ledger cipher hash "
         "router packet frame codec tensor vector matrix scalar gradient epoch batch").split()


def phrases(n: int, seed: int, prefix: str = "") -> list[str]:
    """``n`` distinct random-ish word sequences (distinct embeddings, so no ties in rankings)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        t = prefix + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        if t not in out:
            out.append(t)
    return out


QUERIES = phrases(40, 1, "what is ")
POSITIVES = phrases(40, 2, "it is a ")
EXTRA_DOCS = phrases(100, 3, "note: ")
GOOD = {"query": QUERIES[0], "positive": POSITIVES[0]}


class Data:
    """Paths of the shared, valid inputs (module scope; never written to by a test)."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def D(tiny_model_dir, tmp_path_factory) -> Data:
    from fastembed_tune.export.onnx import export_onnx

    base = tmp_path_factory.mktemp("hardening_data")
    d = Data()
    d.tiny = tiny_model_dir
    d.pairs = write(base / "pairs.jsonl", jl(*({"query": QUERIES[i], "positive": POSITIVES[i]} for i in range(12))))
    d.corpus_texts = POSITIVES[:16] + EXTRA_DOCS[:20]
    d.corpus = write(base / "corpus.jsonl", jl(*({"_id": f"d{i}", "text": t} for i, t in enumerate(d.corpus_texts))))
    d.test = write(base / "test.jsonl", jl(*({"query": QUERIES[i], "positive": POSITIVES[i]} for i in range(12, 16))))
    d.text_lines = EXTRA_DOCS[20:25]
    d.texts = write(base / "texts.txt", "".join(t + "\n" for t in d.text_lines))
    d.onnx = base / "onnx"
    export_onnx(tiny_model_dir, d.onnx, quantize="int8")
    d.base = base
    return d


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty output folder: after a refusal it must still be empty."""
    o = tmp_path / "out"
    o.mkdir()
    return o


@pytest.fixture(scope="module")
def damaged(tiny_model_dir, tmp_path_factory):
    """kind -> a copy of the tiny model whose model.safetensors is damaged (nan, inf, truncated, empty)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind in made:
            return made[kind]
        dst = tmp_path_factory.mktemp(f"damaged_{kind}") / "model"
        shutil.copytree(tiny_model_dir, dst)
        f = dst / "model.safetensors"
        if kind in ("nan", "inf"):
            from safetensors import safe_open
            from safetensors.numpy import load_file, save_file

            with safe_open(str(f), "np") as h:
                meta = h.metadata()
            tensors = load_file(str(f))
            # a weight every token passes through, so the outputs are damaged too
            key = next(k for k in sorted(tensors) if "layer.0" in k and k.endswith("output.dense.weight"))
            t = tensors[key].copy()
            t[0, 0] = np.nan if kind == "nan" else np.inf
            tensors[key] = t
            save_file(tensors, str(f), metadata=meta)
        elif kind == "truncated":
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            f.write_bytes(b"")
        else:
            raise AssertionError(kind)
        made[kind] = dst
        return dst

    return get


@pytest.fixture
def no_model_work(monkeypatch):
    """Loading a model now means work started before the output was checked."""
    def load(cls, *a, **k):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(EmbeddingModel, "load", classmethod(load))


def fail_commit(monkeypatch, under: Path, err: int = errno.ENOSPC, msg: str = "No space left on device"):
    """Make committing a temporary entry onto a visible name under ``under`` (the last step of every
    atomic write) raise ``OSError(err)``, as a full / read-only disk would; renames that clean up
    (to hidden ``.old`` / ``.trash`` names) still work."""
    under_s = os.path.realpath(under)

    def guard(real):
        def fake(src, dst, *a, **k):
            s, d = os.path.basename(os.fspath(src)), os.path.realpath(os.fspath(dst))
            if ((s.startswith(".") or "tmp" in s) and not os.path.basename(d).startswith(".")
                    and (d == under_s or d.startswith(under_s + os.sep))):
                raise OSError(err, msg, os.fspath(dst))
            return real(src, dst, *a, **k)
        return fake

    monkeypatch.setattr(os, "replace", guard(os.replace))
    monkeypatch.setattr(os, "rename", guard(os.rename))


def env() -> dict:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return e


def pairs_cmd(cmd: str, p, o: Path, D: Data) -> list:
    """A command that reads ``p`` as training/test pairs, writing under ``o``."""
    return {
        "train": ["train", "--pairs", p, "--model", D.tiny, "-o", o / "t", "--max-steps", "1", "--batch-size", "4"],
        "mine": ["mine", "--pairs", p, "--model", D.tiny, "-o", o / "m.jsonl", "--num-negatives", "2"],
        "eval": ["eval", "--data", p, "--model", D.tiny, "-o", o / "ev"],
        "distill": ["distill", "--teacher", D.tiny, "--pairs", p, "-o", o / "d", "--epochs", "1", "--batch-size", "16"],
        "run": ["run", "--train", p, "--test", D.test, "--corpus", D.corpus, "--model", D.tiny, "-o", o / "r",
                "--max-steps", "1", "--no-distill"],
    }[cmd]


def corpus_cmd(cmd: str, c, o: Path, D: Data) -> list:
    """A command that reads ``c`` as a corpus (id + text), writing under ``o``."""
    return {
        "mine": ["mine", "--pairs", D.pairs, "--corpus", c, "--model", D.tiny, "-o", o / "m.jsonl"],
        "embed": ["embed", "--model", D.onnx, "-i", c, "-o", o / "e.npy"],
        "eval": ["eval", "--data", D.test, "--corpus", c, "--model", D.tiny, "-o", o / "ev"],
        "distill": ["distill", "--teacher", D.tiny, "--corpus", c, "-o", o / "d", "--epochs", "1", "--batch-size", "16"],
    }[cmd]


def model_cmd(cmd: str, m, o: Path, D: Data) -> list:
    """A command that loads ``m`` as its (PyTorch) model, writing under ``o``."""
    return {
        "train": ["train", "--pairs", D.pairs, "--model", m, "-o", o / "t", "--max-steps", "1", "--batch-size", "4"],
        "mine": ["mine", "--pairs", D.pairs, "--model", m, "-o", o / "m.jsonl"],
        "export": ["export", "--model", m, "-o", o / "x"],
        "embed": ["embed", "--model", m, "-i", D.texts, "-o", o / "e.npy"],
        "eval": ["eval", "--data", D.test, "--corpus", D.corpus, "--model", m, "-o", o / "ev"],
    }[cmd]


# ---------------------------------------------------------------------------------------------------
# 1. output paths are checked before any work


@pytest.mark.parametrize("cmd", ["train", "distill", "export", "eval", "run"])
def test_folder_output_that_is_a_file(cmd, tmp_path, out, D, capsys, no_model_work):
    f = out / "existing"
    f.write_text("keep me\n")
    args = {
        "train": ["train", "--pairs", D.pairs, "--model", D.tiny, "-o", f, "--max-steps", "1"],
        "distill": ["distill", "--teacher", D.tiny, "--pairs", D.pairs, "-o", f, "--epochs", "1"],
        "export": ["export", "--model", D.tiny, "-o", f],
        "eval": ["eval", "--data", D.test, "--corpus", D.corpus, "--model", D.tiny, "-o", f],
        "run": ["run", "-o", f],  # the built-in sample: only an early check keeps this fast
    }[cmd]
    t0 = time.perf_counter()
    refused(cli(capsys, *args), 2, ["--output", "not a directory"], tmp_path, out, keep=["existing"])
    assert f.read_text() == "keep me\n"
    assert time.perf_counter() - t0 < 15


@pytest.mark.parametrize("cmd,flag", [("mine", "--output"), ("embed", "--output"), ("mine", "--summary")])
def test_file_output_that_is_a_directory(cmd, flag, tmp_path, out, D, capsys, no_model_work):
    d = out / "dir"
    d.mkdir()
    args = {
        ("mine", "--output"): ["mine", "--pairs", D.pairs, "--model", D.tiny, "-o", d],
        ("embed", "--output"): ["embed", "--model", D.tiny, "-i", D.texts, "-o", d],
        ("mine", "--summary"): ["mine", "--pairs", D.pairs, "--model", D.tiny, "-o", out / "m.jsonl", "--summary", d],
    }[(cmd, flag)]
    refused(cli(capsys, *args), 2, [flag, "is a directory"], tmp_path, out, keep=["dir"])
    assert d.is_dir() and not os.listdir(d)


@pytest.mark.parametrize("cmd", ["mine", "embed", "export"])
def test_output_in_missing_parent_is_created(cmd, tmp_path, out, D, capsys):
    deep = out / "a" / "b"
    args = {
        "mine": ["mine", "--pairs", D.pairs, "--model", D.tiny, "-o", deep / "m.jsonl", "--num-negatives", "2"],
        "embed": ["embed", "--model", D.onnx, "-i", D.texts, "-o", deep / "e.npy"],
        "export": ["export", "--model", D.tiny, "-o", deep / "x"],
    }[cmd]
    succeeded(cli(capsys, *args))
    if cmd == "mine":
        assert len((deep / "m.jsonl").read_text().splitlines()) == 12
    elif cmd == "embed":
        assert np.load(deep / "e.npy").shape == (5, 32)
    else:
        assert (deep / "x" / "model.onnx").is_file()
    assert not temp_entries(tmp_path)


def test_run_into_a_file_fails_fast_as_a_process(tmp_path):
    """``python -m fastembed_tune run`` with every default (built-in sample, MiniLM) refused in seconds."""
    f = tmp_path / "report"
    f.write_text("x")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "fastembed_tune", "run", "-o", str(f), "--quiet"],
                           capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("run -o FILE did not fail fast (still running after 60 s)")
    assert time.perf_counter() - t0 < 15
    assert r.returncode == 2, r.stderr
    line = error_line(r.stderr)
    assert "--output" in line and "not a directory" in line
    assert f.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["report"]


# ---------------------------------------------------------------------------------------------------
# 2. output lock


@pytest.mark.parametrize("cmd", ["mine", "train"])
def test_locked_output_is_refused_at_once(cmd, tmp_path, out, D, capsys):
    from fastembed_tune.core.atomic import output_lock

    target = out / ("m.jsonl" if cmd == "mine" else "t")
    args = (["mine", "--pairs", D.pairs, "--model", D.tiny, "-o", target, "--num-negatives", "2"] if cmd == "mine"
            else ["train", "--pairs", D.pairs, "--model", D.tiny, "-o", target, "--max-steps", "1", "--batch-size", "4"])
    with output_lock(target):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "fastembed_tune", *argv(*args)], capture_output=True, text=True,
                           env=env(), timeout=120)
        elapsed = time.perf_counter() - t0
        assert r.returncode == 2, r.stderr
        assert "another fastembed-tune command" in error_line(r.stderr)
        assert elapsed < 15
        assert not target.exists()
    assert not temp_entries(tmp_path), "the lock (or a temporary entry) outlived the command"
    assert os.listdir(out) == []
    succeeded(cli(capsys, *args))  # released: the same command now runs
    assert target.exists()


# ---------------------------------------------------------------------------------------------------
# 3. lone surrogates in text fields; Parquet rows count from the first data row


SURROGATE_CASES = [
    # (id, command, file kind, rows, needles)
    ("query-line3", "train", "pairs", [GOOD, GOOD, {"query": "x\ud800y", "positive": "p"}], ["p.jsonl line 3", "'query'"]),
    ("positive-line2", "mine", "pairs", [GOOD, {"query": "q", "positive": "\udfff"}], ["p.jsonl line 2", "'positive'"]),
    ("negatives-item", "train", "pairs", [{"query": "q", "positive": "p", "negatives": ["ok", "n\ud800"]}],
     ["p.jsonl line 1", "'negatives'"]),
    ("negative", "train", "pairs", [GOOD, {"query": "q", "positive": "p", "negative": "\udbff!"}],
     ["p.jsonl line 2", "'negative'"]),
    ("reversed-pair", "distill", "pairs", [{"query": "q", "positive": "a\udc00\ud800b"}], ["p.jsonl line 1", "'positive'"]),
    ("eval-data", "eval", "pairs", [GOOD, {"query": "\ud83d", "positive": "p"}], ["p.jsonl line 2", "'query'"]),
    ("run-train", "run", "pairs", [GOOD, GOOD, {"query": "q\ud800", "positive": "p"}], ["p.jsonl line 3", "'query'"]),
    ("corpus-text", "mine", "corpus", [{"_id": "a", "text": "t"}, {"_id": "b", "text": "u"}, {"_id": "c", "text": "\ud800"}],
     ["c.jsonl line 3", "'text'"]),
    ("corpus-title", "mine", "corpus", [{"_id": "a", "text": "t"}, {"_id": "b", "title": "T\udfff", "text": "u"}],
     ["c.jsonl line 2", "'title'"]),
    ("embed-input", "embed", "corpus", [{"id": "a", "text": "t"}, {"id": "b", "text": "x\udc80"}], ["c.jsonl line 2", "'text'"]),
    ("corpus-id", "eval", "corpus", [{"_id": "a\ud800", "text": "t"}], ["c.jsonl line 1", "'_id'"]),
]


@pytest.mark.parametrize("case", SURROGATE_CASES, ids=[c[0] for c in SURROGATE_CASES])
def test_lone_surrogate_in_a_text_field(case, tmp_path, out, D, capsys):
    _id, cmd, kind, rows, needles = case
    if kind == "pairs":
        args = pairs_cmd(cmd, write(tmp_path / "in" / "p.jsonl", jl(*rows)), out, D)
    else:
        args = corpus_cmd(cmd, write(tmp_path / "in" / "c.jsonl", jl(*rows)), out, D)
    refused(cli(capsys, *args), 2, [*needles, "surrogate"], tmp_path, out)


PARQUET_CASES = [
    ("empty-query-2nd-row", "pairs", {"query": ["a", ""], "positive": ["b", "c"]}, ["p.parquet row 2", "'query'"], "row 3"),
    ("null-positive-1st-row", "pairs", {"query": ["a", "b"], "positive": [None, "c"]}, ["p.parquet row 1", "'positive'"],
     "row 2"),
    ("corpus-empty-text-2nd-row", "corpus", {"id": ["a", "b", "c"], "text": ["x", "  ", "z"]},
     ["c.parquet row 2", "'text'"], "row 3"),
    ("missing-column", "pairs", {"query": ["a"], "answer": ["b"]}, ["p.parquet", "'positive'"], None),
]


@pytest.mark.parametrize("case", PARQUET_CASES, ids=[c[0] for c in PARQUET_CASES])
def test_parquet_rows_count_from_the_first_data_row(case, tmp_path, out, D, capsys):
    _id, kind, cols, needles, not_this = case
    if kind == "pairs":
        args = pairs_cmd("train", write(tmp_path / "in" / "p.parquet", write_parquet(cols)), out, D)
    else:
        args = corpus_cmd("mine", write(tmp_path / "in" / "c.parquet", write_parquet(cols)), out, D)
    line = refused(cli(capsys, *args), 2, needles, tmp_path, out)
    if not_this:
        assert not_this not in line


# ---------------------------------------------------------------------------------------------------
# 4. eval: every test positive must be in the given corpus


def test_eval_positive_not_in_corpus(tmp_path, out, D, capsys):
    t = write(tmp_path / "in" / "test.jsonl", jl({"query": QUERIES[12], "positive": POSITIVES[12]},
                                                  {"query": QUERIES[13], "positive": "a text that no corpus holds"},
                                                  {"query": QUERIES[14], "positive": POSITIVES[14]}))
    refused(cli(capsys, "eval", "--data", t, "--corpus", D.corpus, "--model", D.tiny, "-o", out / "ev"), 2,
            ["not in the corpus", "test.jsonl line 2"], tmp_path, out)


def test_eval_with_every_positive_in_corpus_succeeds(tmp_path, out, D, capsys):
    succeeded(cli(capsys, "eval", "--data", D.test, "--corpus", D.corpus, "--model", D.tiny, "-o", out / "ev"))
    assert (out / "ev" / "report.md").is_file()
    metrics = json.loads((out / "ev" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= next(iter(metrics.values()))["ndcg@10"] <= 1.0


# ---------------------------------------------------------------------------------------------------
# 5. distill --layers


@pytest.mark.parametrize("layers,needles", [
    # the spec's example; on the 2-layer tiny teacher 5 is also out of range, so either reason will do
    ("5,2,0", ["--layers", ("increasing", "does not exist", "between")]),
    ("1,0", ["--layers", "increasing"]),
    ("0,0", ["--layers"]),
    ("", ["--layers", "empty"]),
    (" ", ["--layers", "empty"]),
    ("0,x", ["--layers"]),
    ("0,9", ["--layers"]),  # the tiny teacher has 2 layers
])
def test_distill_layers(layers, needles, tmp_path, out, D, capsys):
    refused(cli(capsys, "distill", "--teacher", D.tiny, "--pairs", D.pairs, "-o", out / "d", "--epochs", "1",
                "--layers", layers), 2, needles, tmp_path, out)


# ---------------------------------------------------------------------------------------------------
# 6. embed: one row per line of texts.txt


@pytest.mark.parametrize("content,line", [
    ("alpha beta\n\ngamma delta\n", 2),
    ("alpha\nbeta\n   \ngamma\n", 3),
    ("\nalpha\nbeta\n", 1),
    ("alpha\r\n\r\nbeta\r\n", 2),
], ids=["middle", "whitespace-only", "first-line", "crlf"])
def test_embed_blank_line_is_refused(content, line, tmp_path, out, D, capsys):
    f = write(tmp_path / "in" / "texts.txt", content)
    refused(cli(capsys, "embed", "--model", D.onnx, "-i", f, "-o", out / "e.npy"), 2,
            [f"texts.txt line {line}", "blank"], tmp_path, out)


@pytest.mark.parametrize("content", [
    "kernel mutex heap\nsocket parser token\nvector tensor scalar\n",
    "kernel mutex heap\nsocket parser token\nvector tensor scalar",
    "kernel mutex heap\r\nsocket parser token\r\nvector tensor scalar\r\n",
], ids=["trailing-newline", "no-final-newline", "crlf"])
def test_embed_rows_match_lines(content, tmp_path, out, D, capsys):
    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    f = write(tmp_path / "in" / "texts.txt", content)
    succeeded(cli(capsys, "embed", "--model", D.onnx, "-i", f, "-o", out / "e.npy", "--precision", "fp32"))
    got = np.load(out / "e.npy")
    lines = ["kernel mutex heap", "socket parser token", "vector tensor scalar"]
    want = OnnxEmbedder(D.onnx).embed(lines)
    assert got.shape == want.shape == (3, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# 7. no negatives: warnings for mine/train, a refusal for run


def test_mine_skip_top_beyond_corpus_warns(tmp_path, out, D, capsys):
    c = write(tmp_path / "in" / "c.jsonl", jl(*({"_id": f"d{i}", "text": t}
                                                 for i, t in enumerate(POSITIVES[:6] + EXTRA_DOCS[:84]))))
    p = write(tmp_path / "in" / "p.jsonl", jl(*({"query": QUERIES[i], "positive": POSITIVES[i]} for i in range(6))))
    warns = succeeded(cli(capsys, "mine", "--pairs", p, "--corpus", c, "--model", D.tiny, "-o", out / "m.jsonl",
                          "--skip-top", "1000", "--num-negatives", "2"))
    assert any("no negative" in w for w in warns), warns
    rows = [json.loads(x) for x in (out / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["negatives"] == [] for r in rows)


def test_train_num_negatives_without_negatives_warns(tmp_path, out, D, capsys):
    warns = succeeded(cli(capsys, "train", "--pairs", D.pairs, "--model", D.tiny, "-o", out / "t", "--max-steps", "1",
                          "--batch-size", "4", "--num-negatives", "3"))
    assert any("no negatives" in w for w in warns), warns
    assert (out / "t" / "model" / "model.safetensors").is_file()


def test_run_where_mining_finds_no_negative_is_refused(tmp_path, out, D, capsys):
    # one query with three positives: every mining candidate is one of its own positives
    train = write(tmp_path / "in" / "train.jsonl", jl(*({"query": QUERIES[0], "positive": POSITIVES[i]} for i in range(3))))
    test = write(tmp_path / "in" / "test.jsonl", jl(*({"query": QUERIES[i], "positive": POSITIVES[i]} for i in (5, 6))))
    corpus = write(tmp_path / "in" / "c.jsonl", jl({"_id": "a", "text": POSITIVES[5]}, {"_id": "b", "text": POSITIVES[6]}))
    refused(cli(capsys, "run", "--train", train, "--test", test, "--corpus", corpus, "--model", D.tiny, "-o", out / "r",
                "--max-steps", "1", "--no-distill"), 2, ["no negative"], tmp_path, out)


# ---------------------------------------------------------------------------------------------------
# 8./9. damaged model weights


MODEL_CMDS = ["train", "mine", "export", "embed", "eval"]


@pytest.mark.parametrize("cmd", MODEL_CMDS)
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_weights(kind, cmd, tmp_path, out, D, damaged, capsys):
    what = ("NaN", "non-finite") if kind == "nan" else ("Inf", "inf", "non-finite", "NaN")
    refused(cli(capsys, *model_cmd(cmd, damaged(kind), out, D)), 2, [what, "model.safetensors"], tmp_path, out)


@pytest.mark.parametrize("cmd", MODEL_CMDS)
@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_truncated_or_empty_weights(kind, cmd, tmp_path, out, D, damaged, capsys):
    refused(cli(capsys, *model_cmd(cmd, damaged(kind), out, D)), 2, ["model.safetensors"], tmp_path, out)


# ---------------------------------------------------------------------------------------------------
# 10. int8 export where nothing can be quantised


@pytest.fixture
def int8_ruins_parity(monkeypatch):
    """Any graph holding quantised ops embeds garbage: only the graph with every weight node kept in
    fp32 passes parity, i.e. nothing could be quantised."""
    import onnx

    from fastembed_tune.embed.onnx_embedder import OnnxEmbedder

    real = OnnxEmbedder.embed

    def quantised(path) -> bool:
        m = onnx.load(str(path), load_external_data=False)
        return any("Integer" in n.op_type or "Quant" in n.op_type or n.op_type.startswith("QAttention")
                   for n in m.graph.node)

    def embed(self, texts, *a, **k):
        emb = real(self, texts, *a, **k)
        if Path(self.model_file).name == "model_int8.onnx" and quantised(self.model_file):
            noise = np.random.default_rng(0).standard_normal(np.shape(emb)).astype(np.float32)
            emb = noise / np.linalg.norm(noise, axis=1, keepdims=True)
        return emb

    monkeypatch.setattr(OnnxEmbedder, "embed", embed)


def test_int8_export_with_nothing_quantised_is_refused(tmp_path, out, D, capsys, int8_ruins_parity):
    refused(cli(capsys, "export", "--model", D.tiny, "-o", out / "x", "--quantize", "int8"), 2,
            ["int8", "--allow-fp32-int8"], tmp_path, out)


def test_int8_export_with_nothing_quantised_allowed(tmp_path, out, D, capsys, int8_ruins_parity):
    warns = succeeded(cli(capsys, "export", "--model", D.tiny, "-o", out / "x", "--quantize", "int8",
                          "--allow-fp32-int8"))
    assert any("int8" in w for w in warns), warns
    assert (out / "x" / "model_int8.onnx").is_file() and (out / "x" / "model.onnx").is_file()
    assert not temp_entries(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 11. bad files, fields, types, models (one case each)


GOOD_LINE = json.dumps(GOOD) + "\n"
BAD = []  # (id, builder(tmp, out, D) -> (args, needles))


def case(name):
    def reg(f):
        BAD.append((name, f))
        return f
    return reg


def pairs_file(name, content, needles, cmd="train"):
    @case(f"pairs-{name}-{cmd}")
    def _(t, o, D):
        fname = needles[0].split(" ")[0] if needles and isinstance(needles[0], str) and "." in needles[0] else "p.jsonl"
        return pairs_cmd(cmd, write(t / "in" / fname, content), o, D), needles


pairs_file("malformed-json", GOOD_LINE + '{"query": "a", "positive": "b"\n', ["p.jsonl line 2", "JSON"])
pairs_file("not-an-object", GOOD_LINE + GOOD_LINE + '["a", "b"]\n', ["p.jsonl line 3"], cmd="mine")
pairs_file("missing-positive", GOOD_LINE + GOOD_LINE + '{"query": "a"}\n', ["p.jsonl line 3", "'positive'"])
pairs_file("missing-query", '{"positive": "a"}\n', ["p.jsonl line 1", "'query'"], cmd="eval")
pairs_file("query-number", GOOD_LINE + '{"query": 7, "positive": "b"}\n', ["p.jsonl line 2", "'query'"])
pairs_file("positive-list", GOOD_LINE + '{"query": "a", "positive": ["b"]}\n', ["p.jsonl line 2", "'positive'"],
           cmd="distill")
pairs_file("query-null", '{"query": null, "positive": "b"}\n', ["p.jsonl line 1", "'query'"], cmd="run")
pairs_file("negatives-string", GOOD_LINE + '{"query": "a", "positive": "b", "negatives": "c"}\n',
           ["p.jsonl line 2", "'negatives'"], cmd="mine")
pairs_file("negatives-item-number", '{"query": "a", "positive": "b", "negatives": ["c", 3]}\n',
           ["p.jsonl line 1", "'negatives'"])
pairs_file("empty-positive", GOOD_LINE + '{"query": "a", "positive": ""}\n', ["p.jsonl line 2", "'positive'", "empty"])
pairs_file("whitespace-query", '{"query": " \\t ", "positive": "b"}\n', ["p.jsonl line 1", "'query'"])
pairs_file("zero-bytes", b"", ["p.jsonl", "empty"], cmd="mine")
pairs_file("only-blank-lines", "\n  \n\n", ["p.jsonl", "empty"])
pairs_file("bad-utf8", (GOOD_LINE * 2).encode() + b'{"query": "caf\xe9", "positive": "b"}\n',
           ["p.jsonl line 3", "UTF-8"], cmd="eval")
pairs_file("json-array-item", json.dumps([GOOD, "oops"]), ["p.json", ("item 2", "line 1")])
pairs_file("csv-missing-column", "query,answer\na,b\n", ["p.csv line 1", "'positive'"])
pairs_file("csv-field-count", "query,positive\na,b\nc,d,e\n", ["p.csv line 3"], cmd="mine")
pairs_file("csv-negatives-not-json", 'query,positive,negatives\na,b,"[not json"\n', ["p.csv line 2", "'negatives'"])
pairs_file("tsv-empty-query", "query\tpositive\na\tb\n \tc\n", ["p.tsv line 3", "'query'"])
pairs_file("parquet-garbage", b"PAR1 this is not parquet", ["p.parquet"])
pairs_file("bad-extension", GOOD_LINE, ["p.xml", ".xml"])


@case("pairs-missing-file")
def _(t, o, D):
    p = t / "in" / "nope.jsonl"
    return pairs_cmd("train", p, o, D), [str(p)]


@case("pairs-directory-not-beir")
def _(t, o, D):
    p = t / "in" / "folder.jsonl"
    p.mkdir(parents=True)
    return pairs_cmd("mine", p, o, D), [str(p)]


@case("replay-missing-file")
def _(t, o, D):
    r = t / "in" / "old.jsonl"
    return pairs_cmd("train", D.pairs, o, D) + ["--replay", r, "--replay-ratio", "0.5"], [str(r)]


def corpus_file(name, content, needles, cmd="mine"):
    @case(f"corpus-{name}-{cmd}")
    def _(t, o, D):
        fname = needles[0].split(" ")[0]
        return corpus_cmd(cmd, write(t / "in" / fname, content), o, D), needles


corpus_file("duplicate-id", jl({"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}),
            ["c.jsonl line 3", "'a'"])
corpus_file("missing-text", jl({"_id": "a", "text": "x"}, {"_id": "b"}), ["c.jsonl line 2", "'text'"], cmd="embed")
corpus_file("text-number", jl({"_id": "a", "text": 12}), ["c.jsonl line 1", "'text'"], cmd="distill")
corpus_file("missing-id", jl({"text": "x"}), ["c.jsonl line 1", "'id'"], cmd="eval")
corpus_file("txt-bad-utf8", b"one\ntw\xc3o\n", ["c.txt line 2", "UTF-8"], cmd="embed")
corpus_file("csv-missing-id-column", "name,text\na,b\n", ["c.csv line 1", "'id'"])
corpus_file("empty-txt", b"", ["c.txt", "empty"], cmd="embed")
corpus_file("bad-extension", "x\n", ["c.xml", ".xml"])


@case("corpus-missing-file")
def _(t, o, D):
    c = t / "in" / "nope.jsonl"
    return corpus_cmd("mine", c, o, D), [str(c)]


@case("corpus-directory-without-corpus-jsonl")
def _(t, o, D):
    c = t / "in" / "cdir"
    c.mkdir(parents=True)
    return corpus_cmd("eval", c, o, D), [str(c)]


@case("embed-input-is-a-directory")
def _(t, o, D):
    c = t / "in" / "texts_dir"
    c.mkdir(parents=True)
    return corpus_cmd("embed", c, o, D), [str(c)]


@case("model-missing-dir")
def _(t, o, D):
    m = t / "in" / "no_model"
    return model_cmd("mine", m, o, D), [str(m)]


@case("model-empty-dir")
def _(t, o, D):
    m = t / "in" / "empty_model"
    m.mkdir(parents=True)
    return model_cmd("train", m, o, D), [str(m)]


@case("model-is-a-file")
def _(t, o, D):
    m = write(t / "in" / "model.bin", b"\0" * 64)
    return model_cmd("export", m, o, D), [str(m)]


@case("teacher-missing-dir")
def _(t, o, D):
    m = t / "in" / "no_teacher"
    return ["distill", "--teacher", m, "--pairs", D.pairs, "-o", o / "d", "--epochs", "1"], [str(m)]


@case("eval-model-missing-dir")
def _(t, o, D):
    m = t / "in" / "no_model"
    return model_cmd("eval", m, o, D), [str(m)]


@case("onnx-dir-without-model-onnx")
def _(t, o, D):
    m = t / "in" / "onnx"
    shutil.copytree(D.onnx, m)
    (m / "model.onnx").unlink()
    (m / "model_int8.onnx").unlink()
    return ["embed", "--model", m, "-i", D.texts, "-o", o / "e.npy"], [str(m)]


@case("onnx-garbage-model-onnx")
def _(t, o, D):
    m = t / "in" / "onnx"
    shutil.copytree(D.onnx, m)
    (m / "model.onnx").write_bytes(b"not a protobuf at all")
    return ["embed", "--model", m, "-i", D.texts, "-o", o / "e.npy"], ["model.onnx"]


@case("int8-without-int8-export")
def _(t, o, D):
    m = t / "in" / "onnx"
    shutil.copytree(D.onnx, m)
    (m / "model_int8.onnx").unlink()
    return ["embed", "--model", m, "-i", D.texts, "-o", o / "e.npy", "--int8"], [str(m), "int8"]


@case("int8-with-one-onnx-file")
def _(t, o, D):
    return ["embed", "--model", D.onnx / "model.onnx", "-i", D.texts, "-o", o / "e.npy", "--int8"], ["--int8"]


@case("int8-with-a-pytorch-model")
def _(t, o, D):
    return ["embed", "--model", D.tiny, "-i", D.texts, "-o", o / "e.npy", "--int8"], ["--int8"]


@case("embed-output-extension")
def _(t, o, D):
    return ["embed", "--model", D.onnx, "-i", D.texts, "-o", o / "e.txt"], ["e.txt", ".npy"]


@case("eval-beir-folder-with-corpus")
def _(t, o, D):
    b = t / "in" / "beir"
    (b / "qrels").mkdir(parents=True)
    write(b / "corpus.jsonl", jl({"_id": "d1", "text": "a feline"}))
    write(b / "queries.jsonl", jl({"_id": "q1", "text": "cat"}))
    write(b / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return ["eval", "--data", b, "--corpus", D.corpus, "--model", D.tiny, "-o", o / "ev"], [str(b)]


@case("eval-beir-folder-without-qrels")
def _(t, o, D):
    b = t / "in" / "beir"
    b.mkdir(parents=True)
    write(b / "corpus.jsonl", jl({"_id": "d1", "text": "a feline"}))
    return ["eval", "--data", b, "--model", D.tiny, "-o", o / "ev"], [str(b)]


@case("beir-qrels-unknown-doc")
def _(t, o, D):
    b = t / "in" / "beir"
    (b / "qrels").mkdir(parents=True)
    write(b / "corpus.jsonl", jl({"_id": "d1", "text": "a feline"}))
    write(b / "queries.jsonl", jl({"_id": "q1", "text": "cat"}))
    write(b / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    return pairs_cmd("train", b, o, D), ["train.tsv line 3", "'d9'"]


@case("distill-without-texts")
def _(t, o, D):
    return ["distill", "--teacher", D.tiny, "-o", o / "d"], ["--pairs"]


@case("run-train-without-test")
def _(t, o, D):
    return ["run", "--train", D.pairs, "--model", D.tiny, "-o", o / "r", "--no-distill"], ["--test"]


@case("triplet-without-negatives")
def _(t, o, D):
    return pairs_cmd("train", D.pairs, o, D) + ["--loss", "triplet"], ["triplet", "negative"]


@pytest.mark.parametrize("name,build", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, build, tmp_path, out, D, capsys):
    args, needles = build(tmp_path, out, D)
    refused(cli(capsys, *args), 2, needles, tmp_path, out)


@pytest.mark.parametrize("args,flag", [
    (["mine", "--pairs", "p.jsonl", "-o", "OUT/m.jsonl", "--num-negatives", "0"], "--num-negatives"),
    (["mine", "--pairs", "p.jsonl", "-o", "OUT/m.jsonl", "--max-ratio", "nan"], "--max-ratio"),
    (["embed", "--model", "m", "-i", "t.txt", "-o", "OUT/e.npy", "--batch-size", "0"], "--batch-size"),
    (["train", "--pairs", "p.jsonl", "-o", "OUT/t", "--max-steps", "-1"], "--max-steps"),
    (["export", "-o", "OUT/x", "--quantize", "int4"], "--quantize"),
    (["distill", "--pairs", "p.jsonl", "-o", "OUT/d", "--epochs", "x"], "--epochs"),
])
def test_argparse_usage_errors(args, flag, tmp_path, out, capsys):
    # one "error: argument --flag: ..." line; held to exit 2 + the flag
    args = [a.replace("OUT", str(out)) for a in args]
    rc, _o, err = cli(capsys, *args)
    assert rc == 2 and "Traceback" not in err
    assert any("error:" in ln and flag in ln for ln in err.splitlines()), err
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------
# 12. full / read-only disk: exit 1, one line, nothing left behind


def _machine_case(cmd, out, D):
    return {
        "mine": ["mine", "--pairs", D.pairs, "--model", D.tiny, "-o", out / "m.jsonl", "--summary", out / "s.json",
                 "--num-negatives", "2"],
        "embed": ["embed", "--model", D.onnx, "-i", D.texts, "-o", out / "e.npy"],
        "embed-jsonl": ["embed", "--model", D.onnx, "-i", D.texts, "-o", out / "e.jsonl"],
        "train": ["train", "--pairs", D.pairs, "--model", D.tiny, "-o", out / "t", "--max-steps", "1", "--batch-size", "4"],
        "export": ["export", "--model", D.tiny, "-o", out / "x"],
        "eval": ["eval", "--data", D.test, "--corpus", D.corpus, "--model", D.tiny, "-o", out / "ev"],
        "distill": ["distill", "--teacher", D.tiny, "--pairs", D.pairs, "-o", out / "d", "--epochs", "1",
                    "--batch-size", "16"],
    }[cmd]


@pytest.mark.parametrize("cmd,err,needle", [
    ("mine", errno.ENOSPC, "No space left"),
    ("embed", errno.ENOSPC, "No space left"),
    ("train", errno.ENOSPC, "No space left"),
    ("export", errno.ENOSPC, "No space left"),
    ("eval", errno.ENOSPC, "No space left"),
    ("distill", errno.ENOSPC, "No space left"),
    ("mine", errno.EROFS, "Read-only"),
    ("embed-jsonl", errno.EROFS, "Read-only"),
])
def test_disk_fault_on_commit(cmd, err, needle, tmp_path, out, D, capsys, monkeypatch):
    fail_commit(monkeypatch, out, err, os.strerror(err))
    # a machine fault keeps what the command completed: train's log of the steps it did (and any
    # checkpoint, for --resume) stays; nothing half-written, no model, no temp entries
    keep = ["t"] if cmd == "train" else []
    line = refused(cli(capsys, *_machine_case(cmd, out, D)), 1, [needle], tmp_path, out, keep=keep)
    assert "cannot be exported" not in line
    if cmd == "train":
        assert os.listdir(out / "t") == ["train_log.jsonl"]


def test_export_disk_full_while_tracing_is_not_the_models_fault(tmp_path, out, D, capsys, monkeypatch):
    import torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    line = refused(cli(capsys, "export", "--model", D.tiny, "-o", out / "x"), 1, ["No space left"], tmp_path, out)
    assert "cannot be exported" not in line


def test_disk_full_exit_code_of_the_process(tmp_path, D):
    out = tmp_path / "out"
    out.mkdir()
    code = f"""
import errno, os, runpy, sys
real = os.replace
def fake(src, dst, *a, **k):
    if os.path.realpath(os.fspath(dst)).startswith({str(os.path.realpath(out)) + os.sep!r}) \\
            and not os.path.basename(os.fspath(dst)).startswith("."):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))
    return real(src, dst, *a, **k)
os.replace = fake
sys.argv = ["fastembed-tune"] + {argv("embed", "--model", D.onnx, "-i", D.texts, "-o", out / "e.npy")!r}
runpy.run_module("fastembed_tune", run_name="__main__", alter_sys=True)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert r.returncode == 1, r.stderr
    assert "No space left" in error_line(r.stderr)
    assert os.listdir(out) == [] and not temp_entries(tmp_path)


# ---------------------------------------------------------------------------------------------------
# umask


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(old)


def modes(root: Path) -> tuple[set, set]:
    dirs, files = {stat_mode(root)}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirs |= {stat_mode(Path(dirpath) / d) for d in dirnames}
        files |= {stat_mode(Path(dirpath) / f) for f in filenames}
    return dirs, files


def stat_mode(p: Path) -> int:
    return os.stat(p).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["022", "027"])
def test_umask_mine(mask, umask, tmp_path, out, D, capsys):
    umask(mask)
    deep = out / "new" / "sub"
    succeeded(cli(capsys, "mine", "--pairs", D.pairs, "--model", D.tiny, "-o", deep / "m.jsonl",
                  "--summary", deep / "s.json", "--num-negatives", "2"))
    assert stat_mode(deep / "m.jsonl") == 0o666 & ~mask
    assert stat_mode(deep / "s.json") == 0o666 & ~mask
    assert stat_mode(out / "new") == stat_mode(deep) == 0o777 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["022", "027"])
def test_umask_embed(mask, umask, tmp_path, out, D, capsys):
    umask(mask)
    succeeded(cli(capsys, "embed", "--model", D.onnx, "-i", D.texts, "-o", out / "e.npy"))
    assert stat_mode(out / "e.npy") == 0o666 & ~mask


def test_umask_train(umask, tmp_path, out, D, capsys):
    umask(0o022)
    succeeded(cli(capsys, "train", "--pairs", D.pairs, "--model", D.tiny, "-o", out / "t", "--max-steps", "1",
                  "--batch-size", "4"))
    assert (out / "t" / "model" / "model.safetensors").is_file()
    dirs, files = modes(out / "t")
    assert dirs == {0o755} and files == {0o644}, (sorted(map(oct, dirs)), sorted(map(oct, files)))


def test_umask_export(umask, tmp_path, out, D, capsys):
    umask(0o022)
    succeeded(cli(capsys, "export", "--model", D.tiny, "-o", out / "x"))
    assert stat_mode(out / "x" / "model.onnx") == 0o644
    dirs, files = modes(out / "x")
    assert dirs == {0o755} and files == {0o644}, (sorted(map(oct, dirs)), sorted(map(oct, files)))


# ---------------------------------------------------------------------------------------------------
# duplicate texts in a mining corpus


def _dup_corpus():
    """Distinct docs; the corpus lists several twice (interleaved, under other ids), positives among
    them; two positives are missing from the corpus; two queries have two positives each."""
    docs = phrases(24, 11, "doc ")
    queries = phrases(6, 12, "ask ")
    pos = phrases(2, 13, "missing positive ")
    pairs = [(queries[0], docs[0]), (queries[1], docs[3]), (queries[1], docs[5]), (queries[2], pos[0]),
             (queries[3], docs[7]), (queries[4], pos[1]), (queries[4], docs[9]), (queries[5], docs[2])]
    order = [0, 1, 0, 2, 3, 1, 4, 5, 3, 6, 7, 5, 8, 9, 7, 10, 11, 12, 9, 13, 14, 2, 15, 16, 17, 18, 19, 20, 21,
             22, 23, 0]
    corpus = [docs[i] for i in order]
    assert len(set(corpus)) < len(corpus)
    return pairs, corpus


def _expected_topk(pairs, texts, score, k):
    """Top-k texts per pair by ``score[pair][text index]``, excluding every positive of the pair's query;
    returns (expected lists, k-th/(k+1)-th score gaps)."""
    positives = {}
    for q, p in pairs:
        positives.setdefault(q, set()).add(p)
    want, gaps, kth = [], [], []
    for i, (q, _p) in enumerate(pairs):
        cand = sorted((j for j, t in enumerate(texts) if t not in positives[q] and t != q),
                      key=lambda j: -score[i][j])
        want.append([texts[j] for j in cand[:k]])
        kth.append(score[i][cand[k - 1]])
        gaps.append(score[i][cand[k - 1]] - score[i][cand[k]])
    return want, gaps, kth, positives


def test_duplicate_text_corpus_mining(tmp_path, D, capsys):
    pairs, corpus = _dup_corpus()
    p = write(tmp_path / "p.jsonl", jl(*({"query": q, "positive": x} for q, x in pairs)))
    c = write(tmp_path / "c.jsonl", jl(*({"_id": f"c{i}", "text": t} for i, t in enumerate(corpus))))
    o = tmp_path / "out.jsonl"
    succeeded(cli(capsys, "mine", "--pairs", p, "--corpus", c, "--model", D.tiny, "-o", o, "--num-negatives", "3"))
    rows = [json.loads(x) for x in o.read_text().splitlines()]
    assert [(r["query"], r["positive"]) for r in rows] == pairs

    distinct = list(dict.fromkeys(corpus))
    distinct += list(dict.fromkeys(x for _q, x in pairs if x not in distinct))
    m = EmbeddingModel.load(D.tiny)
    e = m.encode(distinct).astype(np.float64)
    qe = m.encode([q for q, _ in pairs]).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    score = qe @ e.T
    want, gaps, kth, positives = _expected_topk(pairs, distinct, score, 3)
    for r, w, gap, s_k, (q, _x) in zip(rows, want, gaps, kth, pairs):
        negs = r["negatives"]
        assert len(negs) == 3 and len(set(negs)) == 3, negs
        assert r["positive"] not in negs and not set(negs) & positives[q]
        if gap > 1e-4:
            assert set(negs) == set(w), (q, negs, w)
        else:  # a near-tie at the k-th place: any of the tied texts will do
            assert all(score[pairs.index((q, _x))][distinct.index(n)] >= s_k - 1e-4 for n in negs)


def _dup_embeddings(pairs, corpus, dim=16, seed=5):
    rng = np.random.default_rng(seed)
    texts = list(dict.fromkeys(corpus + [x for _q, x in pairs] + [q for q, _ in pairs]))
    vec = {t: v / np.linalg.norm(v) for t, v in zip(texts, rng.standard_normal((len(texts), dim)))}
    missing = list(dict.fromkeys(x for _q, x in pairs if x not in set(corpus)))
    cemb = np.array([vec[t] for t in corpus + missing], dtype=np.float32)
    qemb = np.array([vec[q] for q, _ in pairs], dtype=np.float32)
    return qemb, cemb, missing, vec


def test_duplicate_text_corpus_mining_with_given_embeddings():
    from fastembed_tune.data.readers import Pair
    from fastembed_tune.mining.exact import mine_hard_negatives

    pairs, corpus = _dup_corpus()
    qemb, cemb, missing, vec = _dup_embeddings(pairs, corpus)
    res = mine_hard_negatives([Pair(q, x) for q, x in pairs], corpus=corpus, num_negatives=3,
                              embeddings=(qemb, cemb), show_progress_bar=False)
    distinct = list(dict.fromkeys(corpus)) + missing
    score = np.array([[float(vec[q].astype(np.float32) @ vec[t].astype(np.float32)) for t in distinct]
                      for q, _ in pairs])
    want, gaps, _kth, positives = _expected_topk(pairs, distinct, score, 3)
    assert min(gaps) > 1e-6
    for got, w, (q, x) in zip(res.pairs, want, pairs):
        assert (got.query, got.positive) == (q, x)
        assert got.negatives == w  # hardest first
        assert x not in got.negatives and not set(got.negatives) & positives[q]


@pytest.mark.parametrize("wrong", ["deduplicated", "without-missing-positives", "one-extra", "query-rows"])
def test_given_embeddings_with_wrong_row_count(wrong):
    from fastembed_tune.data.readers import Pair
    from fastembed_tune.mining.exact import mine_hard_negatives

    pairs, corpus = _dup_corpus()
    qemb, cemb, missing, vec = _dup_embeddings(pairs, corpus)
    if wrong == "deduplicated":
        cemb = np.array([vec[t] for t in list(dict.fromkeys(corpus)) + missing], dtype=np.float32)
    elif wrong == "without-missing-positives":
        cemb = cemb[: len(corpus)]
    elif wrong == "one-extra":
        cemb = np.concatenate([cemb, cemb[:1]])
    else:
        qemb = qemb[:-1]
    with pytest.raises(ValueError):
        mine_hard_negatives([Pair(q, x) for q, x in pairs], corpus=corpus, num_negatives=3,
                            embeddings=(qemb, cemb), show_progress_bar=False)


# ---------------------------------------------------------------------------------------------------
# generated bad input (hypothesis)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-9, 9), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=6))
_json = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                  st.dictionaries(st.text(max_size=5), c, max_size=3)), max_leaves=6)
_KEYS = ["query", "positive", "negative", "negatives", "anchor", "input", "output", "negative_1", "x"]
_BOM = b"\xef\xbb\xbf"
_junk = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff"), max_size=25)
    .map(lambda s: s.encode("utf-8")),
    st.binary(max_size=16).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(_BOM, b"")),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(_KEYS), st.one_of(_json, st.sampled_from(QUERIES)), max_size=4)
    .map(lambda d: json.dumps(d).encode()),
)
_good = st.tuples(st.sampled_from(QUERIES[:10]), st.sampled_from(POSITIVES[:10])).map(
    lambda qp: json.dumps({"query": qp[0], "positive": qp[1]}).encode())
_lines = st.lists(st.one_of(_good.map(lambda b: (True, b)), _junk.map(lambda b: (False, b))), min_size=1, max_size=7)


def _blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(lines=_lines)
def test_generated_junk_lines_in_a_pairs_file(lines, tiny_model_dir):
    import tempfile

    data = b"".join(b + b"\n" for _good_line, b in lines)
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        (t / "out").mkdir()
        p = write(t / "p.jsonl", data)
        rc, _o, err = cli_quiet("mine", "--pairs", p, "--model", tiny_model_dir, "-o", t / "out" / "m.jsonl",
                                "--num-negatives", "1")
        assert rc in (0, 2), err
        event(f"exit {rc}")
        nonblank = [b for _g, b in lines if not _blank(b)]
        array_mode = data.lstrip().startswith(b"[")  # a .jsonl holding one JSON array is read as such
        if rc == 0:
            warnings_only(err)
            if not array_mode:
                rows = (t / "out" / "m.jsonl").read_text().splitlines()
                assert len(rows) == len(nonblank)
        else:
            line = error_line(err)
            assert "p.jsonl" in line
            assert os.listdir(t / "out") == [] and not temp_entries(t)
            m = re.search(r"p\.jsonl line (\d+)", line)
            if not nonblank:
                assert "empty" in line
            elif not array_mode:
                assert m, f"the error names no line: {line!r}"
                k = int(m.group(1))
                assert 1 <= k <= len(lines) and not lines[k - 1][0], f"line {k} is a valid pair: {line!r}"


_non_string = st.one_of(st.booleans(), st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_field_value = st.one_of(
    st.tuples(st.sampled_from(["query", "positive"]), st.one_of(st.none(), _non_string)),
    st.tuples(st.just("negative"), _non_string),
    st.tuples(st.just("negatives"), st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
                                              st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))),
    st.tuples(st.just("negatives"), st.lists(st.one_of(st.none(), _non_string), min_size=1, max_size=3)
              .map(lambda xs: ["fine"] + xs)),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(fv=_field_value)
def test_generated_non_string_field_types(fv, tiny_model_dir):
    import tempfile

    field, value = fv
    row = {"query": "q", "positive": "p", field: value}
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        (t / "out").mkdir()
        p = write(t / "p.jsonl", jl(GOOD, row))
        rc, _o, err = cli_quiet("train", "--pairs", p, "--model", tiny_model_dir, "-o", t / "out" / "t",
                                "--max-steps", "1")
        assert rc == 2, err
        line = error_line(err)
        assert "p.jsonl line 2" in line and f"'{field}'" in line, line
        assert os.listdir(t / "out") == [] and not temp_entries(t)
