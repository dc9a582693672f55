"""Disk faults and output locks through the CLI: stale entries are matched by their exact names (a
live command's lock is never removed), a full disk ends in ``error: PATH: No space left on device``
(exit 1; never a SIGBUS), a read-only file system in ``error: PATH: Read-only file system`` (exit
1), and every argparse refusal is one ``error:`` line (exit 2).

Faults are injected in the command's own process by a wrapper (``python -c``) that patches the OS
calls and then calls ``fastembed_tune.cli.app.main``: a "full disk" under a folder sends every file
opened for writing there to ``/dev/full`` (the kernel's ENOSPC) and makes ``posix_fallocate`` fail
with ENOSPC; a "read-only file system" there answers ``access``, ``statvfs`` and every creating
``open``/``mkdir`` as a read-only mount would. No root, no mount, no particular CPU needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastembed_tune.core.atomic import clean_stale, output_lock

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

FAULTY = textwrap.dedent("""
    import builtins, errno, io, os, sys

    ROOT, FAULT = os.path.realpath(sys.argv[1]) + os.sep, sys.argv[2]
    real_open, real_fdopen, real_os_open, real_mkdir = builtins.open, os.fdopen, os.open, os.mkdir
    real_access, real_statvfs = os.access, os.statvfs

    def under(p):
        try:
            return (os.path.realpath(os.fspath(p)) + os.sep).startswith(ROOT)
        except TypeError:
            return False

    def fd_under(fd):
        return under(os.readlink(f"/proc/self/fd/{fd}"))

    def to_dev_full(fd):
        full = real_os_open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)

    def rofs(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def open_(file, mode="r", *a, **k):
        writing = any(c in mode for c in "wax+")
        if FAULT == "rofs" and writing and not isinstance(file, int) and under(file):
            raise rofs(file)
        f = real_open(file, mode, *a, **k)
        if FAULT == "full" and writing and not isinstance(file, int) and under(file):
            to_dev_full(f.fileno())
        return f

    def fdopen(fd, *a, **k):
        if FAULT == "full" and fd_under(fd):
            to_dev_full(fd)
        return real_fdopen(fd, *a, **k)

    real_fallocate = os.posix_fallocate

    def fallocate(fd, offset, length):
        if fd_under(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fallocate(fd, offset, length)

    def os_open(path, flags, *a, **k):
        if FAULT == "rofs" and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise rofs(path)
        return real_os_open(path, flags, *a, **k)

    def mkdir(path, *a, **k):
        if FAULT == "rofs" and under(path):
            if os.path.isdir(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            raise rofs(path)
        return real_mkdir(path, *a, **k)

    def access(path, mode, *a, **k):
        if FAULT == "rofs" and mode & os.W_OK and under(path):
            return False
        return real_access(path, mode, *a, **k)

    def statvfs(path):
        st = real_statvfs(path)
        if FAULT == "rofs" and under(path):
            return os.statvfs_result(tuple(st[:8]) + (st.f_flag | os.ST_RDONLY,) + tuple(st[9:]))
        return st

    if FAULT in ("full", "rofs"):
        builtins.open = io.open = open_
        os.fdopen = fdopen
    if FAULT in ("full", "fallocate"):
        os.posix_fallocate = fallocate
    if FAULT == "rofs":
        os.open, os.mkdir, os.access, os.statvfs = os_open, mkdir, access, statvfs

    from fastembed_tune.cli.app import main
    sys.exit(main(sys.argv[3:]))
""")


def faulty(root: Path, fault: str, *args) -> subprocess.CompletedProcess:
    """Run ``fastembed-tune ARGS`` in a process whose disk under ``root`` has ``fault``
    ("full", "fallocate": only ``posix_fallocate`` says ENOSPC, "rofs": read-only, "none")."""
    cmd = [sys.executable, "-c", FAULTY, str(root), fault, *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastembed_tune", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)


def one_error_line(stderr: str) -> str:
    """stderr holds exactly one line, ``error: ...`` (no usage block, no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one 'error:' line: {stderr!r}"
    return lines[0]


def hidden(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_dir):
    """A tiny ONNX export, texts and pairs (module scope; never written to)."""
    from fastembed_tune.export.onnx import export_onnx

    base = tmp_path_factory.mktemp("disk")
    export_onnx(tiny_model_dir, base / "onnx")
    texts = [f"sentence number {i} about kernels and disks" for i in range(24)]
    (base / "texts.txt").write_text("".join(t + "\n" for t in texts))
    (base / "texts.jsonl").write_text("".join(f'{{"id": "t{i}", "text": "{t}"}}\n' for i, t in enumerate(texts)))
    (base / "pairs.jsonl").write_text("".join(f'{{"query": "what is {i}", "positive": "{t}"}}\n'
                                              for i, t in enumerate(texts)))
    return {"onnx": base / "onnx", "texts": base / "texts.txt", "jsonl": base / "texts.jsonl",
            "pairs": base / "pairs.jsonl", "tiny": tiny_model_dir}


# ---------------------------------------------------------------------------------------------------
# 1. stale entries are matched by the exact names core/atomic creates; live locks are never removed

def test_clean_stale_removes_only_the_outputs_own_leftovers(tmp_path):
    col = tmp_path / "col"
    col.mkdir()
    own = [".y.npy.tmp4242", ".y.npy.tmpk2_x9qa0", ".y.npy.a1b2_c3d.tmp", ".y.npy.old77", ".y.npy.trash123"]
    others = [".y.npy.lock",                                    # the output's own lock
              ".y.npy.old.npy.lock", ".y.npy.old.npy.tmp99",    # output y.npy.old.npy: its lock and its temp file
              ".y.npy.tmp.lock", ".y.npy.trash.d.lock",         # outputs y.npy.tmp and y.npy.trash.d
              ".y.npy.oldies", ".y.npy.old77x", ".y.npy.tmp12.npy", ".y.npy.old.npy", "y.npy.old1"]
    for name in own + others:
        (col / name).write_text("x")
    (col / ".y.npy.old78").mkdir()
    (col / ".y.npy.old78" / "f").write_text("x")
    assert clean_stale(col / "y.npy") == sorted(own + [".y.npy.old78"])
    assert sorted(os.listdir(col)) == sorted(others)


HOLDER = textwrap.dedent("""
    import sys, time
    from fastembed_tune.core.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_cleaning_one_output_never_unlocks_another(tmp_path):
    col = tmp_path / "col"
    col.mkdir()
    (col / ".y.npy.old4242").mkdir()  # what a killed run on col/y.npy left
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(col / "y.npy.old.npy")], env=ENV,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        lock = col / ".y.npy.old.npy.lock"
        inode = lock.stat().st_ino
        # a second command on col/y.npy: it locks, cleans its leftovers, then refuses the missing pairs file
        r = cli("mine", "--pairs", tmp_path / "missing.jsonl", "-o", col / "y.npy", "--quiet")
        assert r.returncode == 2, r.stderr
        assert "missing.jsonl" in one_error_line(r.stderr)
        assert lock.stat().st_ino == inode  # the live command's lock is still there
        assert hidden(col) == [".y.npy.old.npy.lock"]
        # a third command on the first one's output is refused at once while the first still writes
        r = cli("mine", "--pairs", tmp_path / "missing.jsonl", "-o", col / "y.npy.old.npy", "--quiet")
        assert r.returncode == 2, r.stderr
        line = one_error_line(r.stderr)
        assert f"pid {first.pid}" in line and "is writing it" in line, line
    finally:
        first.communicate("\n", timeout=60)
    assert first.returncode == 0
    assert hidden(col) == []


def test_a_lock_held_by_a_live_process_survives_every_cleaning(tmp_path):
    with output_lock(tmp_path / "a.tmp1"):  # output "a.tmp1": its lock is .a.tmp1.lock
        assert clean_stale(tmp_path / "a") == []
        assert hidden(tmp_path) == [".a.tmp1.lock"]


# ---------------------------------------------------------------------------------------------------
# 2. a full disk: exit 1, ``error: PATH: No space left on device``, never a SIGBUS, nothing left

def _full(r: subprocess.CompletedProcess, path: Path) -> None:
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr!r}"
    assert one_error_line(r.stderr) == f"error: {path}: No space left on device"


@pytest.mark.parametrize("name,stream,fault", [
    ("e.npy", False, "full"), ("e.jsonl", False, "full"),
    ("e.npy", True, "fallocate"), ("e.npy", True, "full"), ("e.jsonl", True, "full"),
], ids=["npy", "jsonl", "stream-npy-fallocate", "stream-npy", "stream-jsonl"])
def test_embed_on_a_full_disk(name, stream, fault, tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    texts = data["jsonl"] if stream else data["texts"]
    r = faulty(out, fault, "embed", "--model", data["onnx"], "-i", texts, "-o", out / name, "--precision", "fp32",
               "--quiet", *(["--stream", "--stream-window", "8"] if stream else []))
    _full(r, out / name)
    assert os.listdir(out) == []


def test_embed_stream_reserves_its_space_before_filling_the_map(tmp_path, data):
    # with room on the disk the reserved .npy is whole and right
    import numpy as np

    out = tmp_path / "e.npy"
    r = faulty(tmp_path / "elsewhere", "fallocate", "embed", "--model", data["onnx"], "-i", data["jsonl"],
               "-o", out, "--precision", "fp32", "--quiet", "--stream", "--stream-window", "8")
    assert r.returncode == 0, r.stderr
    emb = np.load(out)
    assert emb.shape[0] == 24 and np.isfinite(emb).all()
    assert hidden(tmp_path) == []


def test_mine_stream_on_a_full_disk(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    r = faulty(out, "full", "mine", "--stream", "--pairs", data["pairs"], "--model", data["tiny"],
               "-o", out / "m.jsonl", "--num-negatives", "2", "--quiet")
    _full(r, out / "m.jsonl")
    assert not (out / "m.jsonl").exists()


def test_export_on_a_full_disk(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    r = faulty(out, "full", "export", "--model", data["tiny"], "-o", out / "x")
    _full(r, out / "x")
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------
# 3. a read-only file system is the machine's fault: exit 1, ``error: PATH: Read-only file system``

@pytest.mark.parametrize("name", ["e.npy", "sub/e.jsonl"])
def test_read_only_file_system(name, tmp_path, data):
    out = tmp_path / "ro"
    out.mkdir()
    r = faulty(out, "rofs", "embed", "--model", data["onnx"], "-i", data["texts"], "-o", out / name,
               "--precision", "fp32", "--quiet")
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr!r}"
    assert one_error_line(r.stderr) == f"error: {out / name}: Read-only file system"
    assert os.listdir(out) == []


def test_a_read_only_file_is_still_the_users_mistake(tmp_path, data):
    out = tmp_path / "e.npy"
    out.write_bytes(b"keep")
    os.chmod(out, 0o444)
    r = faulty(tmp_path / "elsewhere", "none", "embed", "--model", data["onnx"], "-i", data["texts"], "-o", out,
               "--precision", "fp32", "--quiet")
    if os.geteuid() == 0:  # root writes read-only files: the command succeeds
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and "permission denied" in one_error_line(r.stderr), r.stderr


# ---------------------------------------------------------------------------------------------------
# 4. every argparse refusal is one line, exit 2

@pytest.mark.parametrize("args,expected", [
    (["embed", "--model", "m", "-i", "t.txt", "-o", "e.npy", "--batch-size", "0"],
     "error: argument --batch-size: must be >= 1, got 0"),
    (["mine", "--pairs", "p.jsonl", "-o", "m.jsonl", "--num-negatives", "-3"], "error: argument --num-negatives:"),
    (["mine", "--pairs", "p.jsonl"], "error: the following arguments are required: --output/-o"),
    (["export", "-o", "x", "--quantize", "int4"], "error: argument --quantize: invalid choice: 'int4'"),
    (["nosuch"], "error: argument command: invalid choice: 'nosuch'"),
    ([], "error: the following arguments are required: command"),
    (["embed", "--model", "m", "-i", "t", "-o", "e.npy", "--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_argparse_errors_are_one_line(args, expected, tmp_path):
    start = time.time()
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert one_error_line(r.stderr).startswith(expected), r.stderr
    assert r.stdout == "" and os.listdir(tmp_path) == []
    assert time.time() - start < 60


def test_help_still_prints_the_usage(tmp_path):
    r = cli("embed", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: fastembed-tune embed") and "--batch-size" in r.stdout
