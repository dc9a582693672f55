"""Outputs never replace inputs, inputs that are not regular files never hang, flags never go unused.

Every case runs ``python -m fastembed_tune`` in a subprocess (``HF_HUB_OFFLINE=1``, a timeout, so a
hang fails the test instead of the suite) and asserts the contract:

- an output that is one of the command's inputs (the same path, a hard link or a symlink to it), or
  a folder the command replaces that holds an input, is refused before any work: exit 2, one
  ``error:`` line naming the output's flag and path and the input's flag and path, the input's bytes
  untouched, nothing written;
- an input that must be read twice (``--stream``, ``run --test``) and is a FIFO or a device is
  refused naming it, exit 2, without opening it (so without blocking); an input read once is read
  once, so a FIFO works there;
- ``embed --adapter-side`` without ``--adapter`` is refused naming the flag.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds: far above a refusal's time, so only a hang reaches it
HANG = 45  # where a hang is the failure looked for (a FIFO opened with no writer)


def cli(*args, cwd=None, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("FASTEMBED_TUNE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "fastembed_tune", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr must be one 'error: ' line: {err!r}"
    return lines[0]


def refused(res, *needles) -> str:
    rc, _out, err = res
    assert rc == 2, f"exit {rc}, expected 2; stderr: {err!r}"
    line = error_line(err)
    for n in needles:
        assert str(n) in line, f"{n!r} is not in the error line {line!r}"
    return line


def pairs_text(n: int = 6) -> str:
    return "".join(json.dumps({"query": f"what is thing {i}", "positive": f"thing {i} is a gadget number {i}"}) + "\n"
                   for i in range(n))


def corpus_text(n: int = 8) -> str:
    return "".join(json.dumps({"_id": f"d{i}", "text": f"document about gadget number {i}"}) + "\n" for i in range(n))


@pytest.fixture
def data(tmp_path: Path) -> dict:
    """Small valid inputs: pairs, a corpus, texts; their bytes are compared after every refusal."""
    files = {"pairs": tmp_path / "train.jsonl", "corpus": tmp_path / "corpus.jsonl", "docs": tmp_path / "docs.jsonl",
             "texts": tmp_path / "texts.txt"}
    files["pairs"].write_text(pairs_text())
    files["corpus"].write_text(corpus_text())
    files["docs"].write_text(corpus_text(3))
    files["texts"].write_text("a gadget\nanother gadget\n")
    return files


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.read_bytes() if not p.is_symlink() else os.readlink(p)
    return out


def link(kind: str, target: Path, name: Path) -> Path:
    """``name`` as the same file as ``target``: the same path, a hard link or a symlink."""
    if kind == "same":
        return target
    if kind == "hardlink":
        os.link(target, name)
    else:
        os.symlink(target, name)
    return name


# ---------------------------------------------------------------------------------------------------
# 1. an output that is an input


@pytest.mark.parametrize("kind", ["same", "hardlink", "symlink"])
def test_embed_output_is_its_input(tmp_path, data, kind):
    out = link(kind, data["docs"], tmp_path / "out.jsonl")
    before = snapshot(tmp_path)
    line = refused(cli("embed", "--model", tmp_path / "no-model", "-i", data["docs"], "-o", out, "--quiet"),
                   "--output", out, "-i", data["docs"])
    assert "input" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["same", "hardlink", "symlink"])
def test_mine_output_is_its_pairs(tmp_path, data, kind, stream):
    out = link(kind, data["pairs"], tmp_path / "mined.jsonl")
    before = snapshot(tmp_path)
    res = cli("mine", "--pairs", data["pairs"], "--corpus", data["corpus"], "--model", tmp_path / "no-model",
              "-o", out, "--quiet", *(["--stream"] if stream else []))
    refused(res, "--output", out, "--pairs", data["pairs"])
    assert snapshot(tmp_path) == before


def test_mine_output_or_summary_is_its_corpus(tmp_path, data):
    before = snapshot(tmp_path)
    refused(cli("mine", "--pairs", data["pairs"], "--corpus", data["corpus"], "-o", data["corpus"], "--quiet"),
            "--output", "--corpus", data["corpus"])
    refused(cli("mine", "--pairs", data["pairs"], "-o", tmp_path / "m.jsonl", "--summary", data["pairs"], "--quiet"),
            "--summary", "--pairs", data["pairs"])
    assert snapshot(tmp_path) == before


def test_mine_output_in_a_beir_folder_it_reads(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(corpus_text(3))
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "gadget"}\n')
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    before = snapshot(tmp_path)
    refused(cli("mine", "--pairs", beir, "-o", beir / "corpus.jsonl", "--quiet"), "--output", "--pairs", beir)
    assert snapshot(tmp_path) == before


def test_eval_report_would_replace_its_data(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    test = out / "metrics.json"  # a pairs file that happens to be named like the report's JSON
    test.write_text(json.dumps([{"query": "what is a gadget", "positive": "a gadget is a device"}]))
    before = snapshot(tmp_path)
    refused(cli("eval", "--data", test, "--model", tmp_path / "no-model", "-o", out, "--quiet"),
            "--output", "--data", test)
    assert snapshot(tmp_path) == before


def test_export_folder_holds_its_calibration_texts(tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    texts = out / "texts.txt"
    texts.write_text("a gadget\n")
    before = snapshot(tmp_path)
    refused(cli("export", "--model", tmp_path / "no-model", "-o", out, "--quantize", "int8",
                "--calibration-texts", texts), "--output", out, "--calibration-texts", texts)
    assert snapshot(tmp_path) == before


def test_distill_would_replace_its_teacher(tmp_path, data):
    out = tmp_path / "student"
    teacher = out / "model"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    refused(cli("distill", "--teacher", teacher, "--pairs", data["pairs"], "-o", out, "--quiet"),
            "--output", out, "--teacher", teacher)
    assert snapshot(tmp_path) == before


def test_train_would_replace_its_warm_start_model_or_pairs(tmp_path, data):
    out = tmp_path / "out"
    model = out / "model"  # train writes OUT/model: a warm start from it would be replaced
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    refused(cli("train", "--model", model, "--pairs", data["pairs"], "-o", out, "--quiet"),
            "--output", out, "--model", model)
    assert snapshot(tmp_path) == before
    pairs = out / "train_log.jsonl"
    pairs.write_text(Path(data["pairs"]).read_text())
    before = snapshot(tmp_path)
    refused(cli("train", "--pairs", pairs, "-o", out, "--quiet"), "--output", out, "--pairs", pairs)
    assert snapshot(tmp_path) == before


def test_adapt_folder_holds_its_pairs(tmp_path, data):
    out = tmp_path / "adapter"
    out.mkdir()
    pairs = out / "pairs.jsonl"
    pairs.write_text(pairs_text())
    before = snapshot(tmp_path)
    refused(cli("adapt", "--pairs", pairs, "--embeddings", "builtin", "-o", out, "--quiet"),
            "--output", out, "--pairs", pairs)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--train", "--test"])
def test_run_would_replace_its_data(tmp_path, data, flag):
    out = tmp_path / "run"
    out.mkdir()
    mined = out / "mined.jsonl"  # run writes OUTPUT/mined.jsonl
    mined.write_text(pairs_text())
    paths = {"--train": data["pairs"], "--test": data["pairs"], flag: mined}
    before = snapshot(tmp_path)
    refused(cli("run", "--train", paths["--train"], "--test", paths["--test"], "--corpus", data["corpus"], "-o", out,
                "--quiet"), "--output", out, flag, mined)
    assert snapshot(tmp_path) == before


def test_run_output_beside_its_inputs_is_fine(tmp_path, data):
    """Inputs in the output folder that the run does not write stay allowed (refused later for another reason)."""
    out = tmp_path / "run"
    out.mkdir()
    train = out / "train.jsonl"
    train.write_text(pairs_text())
    rc, _o, err = cli("run", "--train", train, "--test", tmp_path / "missing.jsonl", "-o", out, "--quiet")
    assert rc == 2 and "missing.jsonl" in error_line(err)


# ---------------------------------------------------------------------------------------------------
# 2. inputs that are not regular files


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def feed(path: Path, text: str) -> threading.Thread:
    """Write ``text`` into the FIFO ``path`` once a reader opens it (a daemon thread)."""
    def run():
        with open(path, "w") as f:
            f.write(text)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def unblock(path: Path, t: threading.Thread) -> None:
    """Release a feeder still waiting for a reader (the command never opened the FIFO)."""
    if t.is_alive():
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        t.join(5)
        os.close(fd)


@pytest.mark.parametrize("which", ["fifo", "device"])
def test_embed_stream_refuses_a_fifo_or_device(tmp_path, which):
    src = fifo(tmp_path / "texts.txt") if which == "fifo" else link("symlink", Path("/dev/null"), tmp_path / "null.txt")
    out = tmp_path / "e.npy"
    refused(cli("embed", "--model", tmp_path / "no-model", "-i", src, "-o", out, "--stream", "--quiet", timeout=HANG),
            "-i", src, "not a regular file")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--pairs", "--corpus"])
def test_mine_stream_refuses_a_fifo(tmp_path, data, flag):
    paths = {"--pairs": data["pairs"], "--corpus": data["corpus"], flag: fifo(tmp_path / "pipe.jsonl")}
    refused(cli("mine", "--pairs", paths["--pairs"], "--corpus", paths["--corpus"], "-o", tmp_path / "m.jsonl",
                "--stream", "--quiet", timeout=HANG), paths[flag], "not a regular file")


def test_train_stream_refuses_a_fifo(tmp_path):
    src = fifo(tmp_path / "pairs.jsonl")
    refused(cli("train", "--pairs", src, "-o", tmp_path / "out", "--stream", "--quiet", timeout=HANG),
            src, "not a regular file")


def test_run_refuses_a_fifo_test_set(tmp_path, data):
    """``run`` reads the test file twice (the evaluation set, the data report)."""
    src = fifo(tmp_path / "test.jsonl")
    refused(cli("run", "--train", data["pairs"], "--test", src, "--corpus", data["corpus"], "-o", tmp_path / "r",
                "--quiet", timeout=HANG), "--test", src, "not a regular file")


def test_a_directory_where_a_stream_file_is_meant(tmp_path, data):
    d = tmp_path / "pairs.jsonl"
    d.mkdir()
    refused(cli("mine", "--pairs", d, "-o", tmp_path / "m.jsonl", "--stream", "--quiet", timeout=HANG), d, "directory")


def test_embed_reads_a_fifo_once(tmp_path, tiny_model_dir):
    src = fifo(tmp_path / "texts.txt")
    t = feed(src, "a gadget\nanother gadget\na third one\n")
    out = tmp_path / "e.npy"
    try:
        rc, _o, err = cli("embed", "--model", tiny_model_dir, "-i", src, "-o", out, "--quiet", timeout=TIMEOUT)
    finally:
        unblock(src, t)
    assert rc == 0, err
    import numpy as np

    assert np.load(out).shape[0] == 3


def test_export_reads_fifo_calibration_texts_once(tmp_path):
    """The reader itself: ``read_texts`` on a FIFO reads it once and returns its rows."""
    from fastembed_tune.data.readers import read_texts

    src = fifo(tmp_path / "calib.txt")
    t = feed(src, "one\ntwo\n")
    result: dict = {}
    r = threading.Thread(target=lambda: result.update(rows=read_texts(src)), daemon=True)
    r.start()
    r.join(30)
    alive = r.is_alive()
    if alive:  # the second open blocks for ever: release it with a writer that writes nothing
        fd = os.open(src, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        r.join(5)
    unblock(src, t)
    assert not alive, "read_texts blocked on a FIFO (it opened it twice)"
    assert result["rows"] == {"0": "one", "1": "two"}


# ---------------------------------------------------------------------------------------------------
# 3. a flag that would be ignored


@pytest.mark.parametrize("side", ["document", "query"])
def test_embed_adapter_side_without_adapter(tmp_path, data, side):
    out = tmp_path / "e.npy"
    refused(cli("embed", "--model", tmp_path / "no-model", "-i", data["texts"], "-o", out, "--adapter-side", side,
                "--quiet"), "--adapter-side", "--adapter")
    assert not out.exists()
