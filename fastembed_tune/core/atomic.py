"""Outputs that are never half-written: atomic writes, output checks, output locks, leftovers.

- :func:`atomic_write` / :func:`write_json`: a temporary file beside the target, fsync, rename into
  place. A killed run leaves either the old file or the new one, never half of one.
- :func:`temp_dir` / :func:`replace_dir`: the same for a folder (a model, an export, a checkpoint).
- :func:`check_output`: an output path is checked before any work starts (a file where a folder is
  expected, a folder where a file is expected, a parent that cannot be written).
- :func:`output_lock`: an exclusive lock on an output path, so two commands never write one output.
- :func:`clean_stale`: what an earlier killed run left beside an output (temp files and folders).
- :func:`reserve`: a file's blocks allocated up front, so a memory map over it never dies of SIGBUS.

Every temporary name is ``.{name}.tmp*`` (or ``.{name}.old*`` / ``.{name}.trash*`` for a folder being
swapped out or deleted), so the next run of the same command knows what to clean. Files and folders
are created with the modes the umask gives (0644 / 0755 under umask 022), like any Unix tool.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from fastembed_tune.core.errors import DISK_ERRNOS, UserError, disk_error, naming

PathLike = Union[str, "os.PathLike[str]"]
# every leftover name this module creates beside an output NAME, and nothing else (never a ``.lock``):
# mkdtemp ``.NAME.tmpXXXXXXXX`` / temp_path ``.NAME.tmp{pid}``, replace_dir ``.NAME.old{pid}``,
# remove_dir ``.NAME.trash{pid}``, mkstemp ``.NAME.XXXXXXXX.tmp`` (atomic_write, check_output's probe)
_STALE_SUFFIX = r"\.(?:tmp[a-z0-9_]+|old[0-9]+|trash[0-9]+|[a-z0-9_]{8}\.tmp)"
_ANY_STALE = re.compile(rf"\.(?P<name>.+){_STALE_SUFFIX}")


def umask() -> int:
    """The process umask (read without changing it for longer than two system calls).

    >>> 0 <= umask() <= 0o777
    True
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_file(directory: Path, name: str) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600
    return fd, tmp


def temp_dir(path: PathLike) -> Path:
    """A new empty folder beside ``path`` (``.{name}.tmp*``, mode 0777 & ~umask) to build it in.

    >>> import tempfile; d = temp_dir(os.path.join(tempfile.mkdtemp(), "model")); d.name.startswith(".model.tmp")
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
    return tmp


def honour_umask(folder: PathLike) -> None:
    """Give everything under ``folder`` the modes the umask allows (files 0666 & ~umask, folders
    0777 & ~umask), as plain ``open``/``mkdir`` would: some writers (mkstemp, mkdtemp, libraries
    writing through them) create 0600/0700 entries.

    >>> import tempfile; d = temp_dir(os.path.join(tempfile.mkdtemp(), "x")); honour_umask(d)
    >>> oct(os.stat(d).st_mode & 0o777) == oct(0o777 & ~umask())
    True
    """
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def replace_dir(tmp: PathLike, path: PathLike) -> None:
    """Move the finished folder ``tmp`` to ``path``; an existing ``path`` is renamed aside
    (``.{name}.old*``) first and deleted after, so ``path`` is always whole.

    >>> import tempfile; base = Path(tempfile.mkdtemp())
    >>> t = temp_dir(base / "m"); _ = (t / "f").write_text("x"); replace_dir(t, base / "m")
    >>> sorted(os.listdir(base))
    ['m']
    """
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_dir(path: PathLike) -> None:
    """Delete a folder atomically: rename it to ``.{name}.trash*`` first, then remove that, so a
    run killed half-way leaves a hidden leftover (cleaned by :func:`clean_stale`), never a
    half-empty folder under the real name.

    >>> import tempfile; base = Path(tempfile.mkdtemp()); (base / "c").mkdir(); remove_dir(base / "c")
    >>> os.listdir(base)
    []
    """
    path = Path(path)
    trash = path.with_name(f".{path.name}.trash{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write(path: PathLike, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s directory (created if missing), then
    rename it to ``path``; on any error the temporary file is removed and ``path`` is untouched.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
    >>> atomic_write(p, lambda f: f.write("hi")); open(p).read()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with naming(path), os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def temp_path(path: PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.{name}.tmp{pid}``) for writers that need a path, not a
    file object (``np.lib.format.open_memmap``, ``onnx.save``): renamed to ``path`` when the block
    ends, with the umask's mode; removed when it raises.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "a.bin"
    >>> with temp_path(p) as t: _ = t.write_bytes(b"x")
    >>> p.read_bytes(), os.listdir(p.parent)
    (b'x', ['a.bin'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with naming(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reserve(path: PathLike, name: Optional[PathLike] = None) -> None:
    """Allocate every block of the existing file ``path`` now (``posix_fallocate``), so that a full
    disk is an ``OSError(ENOSPC)`` naming ``name`` (the output; default ``path``) here and never a
    SIGBUS when a page of a memory map over a sparse file is written. File systems that cannot
    allocate ahead (EINVAL, EOPNOTSUPP) keep the sparse file.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "m.bin"; _ = p.write_bytes(b"x" * 10)
    >>> reserve(p); p.stat().st_size
    10
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(e.errno, path if name is None else name) from None
    finally:
        os.close(fd)


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write`).

    >>> import tempfile, os, json
    >>> p = os.path.join(tempfile.mkdtemp(), "s.json")
    >>> write_json(p, {"a": 1}); json.load(open(p))
    {'a': 1}
    """
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"))


def check_output(path: PathLike, kind: str = "file", flag: str = "--output") -> Path:
    """Check, before any work starts, that ``path`` can be written as a ``kind`` ("file" or "dir"):
    it is not the other kind, and its nearest existing parent is a writable folder. Raises
    :class:`UserError` naming ``flag``, or ``OSError`` naming ``path`` for the machine's fault (a
    read-only file system, a full disk); creates nothing.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> check_output(d, "file")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output ...: is a directory, expected a file
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{flag} is empty; give a path")
    if p.is_dir() and kind == "file":
        raise UserError(f"{flag} {p}: is a directory, expected a file")
    if p.exists() and not p.is_dir() and kind == "dir":
        raise UserError(f"{flag} {p}: exists and is not a directory")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {p}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        _check_read_only_fs(parent, p)
        raise UserError(f"{flag} {p}: cannot write in {parent} (permission denied)")
    if p.exists() and not os.access(p, os.W_OK):
        _check_read_only_fs(p, p)
        raise UserError(f"{flag} {p}: is read-only (permission denied)")
    try:  # os.access says yes to root even on a read-only file system: try a real (empty) file
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in DISK_ERRNOS:  # a read-only file system, a full disk: the machine's fault (exit 1)
            raise disk_error(e.errno, p) from None
        raise UserError(f"{flag} {p}: cannot write in {parent} ({e.strerror})") from None
    return p


def _check_read_only_fs(where: Path, path: Path) -> None:
    """A read-only mount under ``where`` is the machine's fault, not a permission the user got wrong:
    ``OSError(EROFS)`` naming the output ``path``."""
    try:
        read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        return
    if read_only:
        raise disk_error(errno.EROFS, path)


def clean_stale(path: PathLike) -> list[str]:
    """Remove what a killed run left beside ``path``: the entries of its folder named exactly as this
    module names ``path``'s temporary files and folders (``.{name}.tmp{pid}``, ``.{name}.tmpXXXXXXXX``,
    ``.{name}.XXXXXXXX.tmp``, ``.{name}.old{pid}``, ``.{name}.trash{pid}``); another output's entries
    (``.{name}.old.npy.lock`` of output ``{name}.old.npy``, say) and every lock are left alone. Call it
    while holding :func:`output_lock` (another live command's temporary files would look the same).
    Returns the names removed.

    >>> import tempfile; base = Path(tempfile.mkdtemp()); (base / ".m.tmp123").mkdir()
    >>> _ = (base / ".m.tmp.lock").write_text("")  # the lock of output "m.tmp"
    >>> clean_stale(base / "m"), os.listdir(base)
    (['.m.tmp123'], ['.m.tmp.lock'])
    """
    p = Path(path)
    if not p.parent.is_dir():
        return []
    removed = []
    own = re.compile(rf"\.{re.escape(p.name)}{_STALE_SUFFIX}")
    for entry in p.parent.iterdir():
        if own.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


def clean_stale_inside(folder: PathLike) -> list[str]:
    """Remove what a killed run left INSIDE an output ``folder`` it owns (call it holding the
    folder's :func:`output_lock`): hidden ``.{name}.tmp*``/``.old*``/``.trash*`` entries.

    >>> import tempfile; base = Path(tempfile.mkdtemp()); (base / ".checkpoint-4.trash9").mkdir()
    >>> clean_stale_inside(base), os.listdir(base)
    (['.checkpoint-4.trash9'], [])
    """
    folder = Path(folder)
    found = (_ANY_STALE.fullmatch(e.name) for e in folder.iterdir()) if folder.is_dir() else ()
    names = {m.group("name") for m in found if m}
    return sorted(n for name in names for n in clean_stale(folder / name))


def _lock_path(path: Path) -> Path:
    return path.absolute().parent / f".{path.name}.lock"


@contextmanager
def output_lock(path: PathLike, flag: str = "--output") -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` (a hidden ``.{name}.lock`` file beside it,
    ``flock``-ed, removed on release). A second command on the same output fails at once with a
    :class:`UserError`; the kernel drops the lock when a process dies, so a killed run never
    leaves the output locked. Stale temporary entries beside ``path`` are cleaned once locked.
    When the command fails and ``path`` is an empty folder that did not exist before, it is
    removed: a refused command leaves nothing behind (what a failed command completed is kept).

    >>> import tempfile; out = os.path.join(tempfile.mkdtemp(), "model")
    >>> with output_lock(out):
    ...     with output_lock(out):
    ...         pass
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output ...: another fastembed-tune command (pid ...) is writing it; wait for it to finish or choose another output
    """
    p = Path(path)
    lock = _lock_path(p)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode().strip()
            except (OSError, UnicodeDecodeError):
                pass
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"{flag} {p}: another fastembed-tune command (pid {holder or '?'}) is writing it; "
                                f"wait for it to finish or choose another output") from None
            raise
        try:  # the file we locked must still be the one under the name (a releaser may have unlinked it)
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    existed = p.exists()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        clean_stale(p)
        yield p
    except BaseException:
        if not existed and p.is_dir() and not p.is_symlink():
            clean_stale_inside(p)
            try:
                p.rmdir()  # only when empty
            except OSError:
                pass
        raise
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def cache_dir(kind: str) -> Path:
    """The folder for cached ``kind`` (``"onnx"``: serve's exports, ``"precision"``: the precision
    measured per export and CPU): ``$FASTEMBED_TUNE_CACHE/kind``, else
    ``$XDG_CACHE_HOME/fastembed-tune/kind``, else ``~/.cache/fastembed-tune/kind``.

    >>> cache_dir("onnx").name
    'onnx'
    """
    if os.environ.get("FASTEMBED_TUNE_CACHE"):
        return Path(os.environ["FASTEMBED_TUNE_CACHE"]) / kind
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastembed-tune" / kind


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _within(child: str, folder: str) -> bool:
    """``child`` is ``folder`` or lies under it, by its written path or by the path its links resolve to."""
    for norm in (os.path.abspath, os.path.realpath):
        c, f = norm(child), norm(folder)
        if c == f or c.startswith(f.rstrip(os.sep) + os.sep):
            return True
    return False


def _hard_linked_under(path: str, folder: str) -> bool:
    """A regular file with several names (hard links), one of them under the existing ``folder``."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2 or not os.path.isdir(folder):
        return False
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                s = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _read_paths(path: str) -> list[str]:
    """What reading ``path`` reads: the file, or a folder and the BEIR files in it."""
    if not os.path.isdir(path):
        return [path]
    qrels = os.path.join(path, "qrels")
    inside = [os.path.join(path, n) for n in ("corpus.jsonl", "queries.jsonl")]
    inside += [os.path.join(qrels, n) for n in sorted(os.listdir(qrels))] if os.path.isdir(qrels) else []
    return [path] + [p for p in inside if os.path.exists(p)]


def check_inputs_kept(inputs: list[tuple[str, Union[PathLike, None]]],
                      outputs: list[tuple[str, Union[PathLike, None], list[PathLike]]]) -> None:
    """Refuse, before any work starts, outputs that would replace one of the command's inputs.

    ``inputs``: ``(flag, path)`` of every file or folder the command reads (``None`` and paths that do
    not exist are skipped: the readers report those). ``outputs``: ``(flag, path, replaced)``, where
    ``replaced`` lists what writing ``path`` replaces (``[]``: ``path`` itself, a file or a whole
    folder; else the files and folders the command writes under or beside it). An input is replaced
    when it is one of them (the same path, a hard link or a symlink: ``os.path.samefile``) or lies in
    a replaced folder. Raises :class:`UserError` naming both flags and paths.

    >>> import tempfile; d = tempfile.mkdtemp(); p = os.path.join(d, "docs.jsonl"); _ = open(p, "w").write("{}")
    >>> check_inputs_kept([("-i", p)], [("--output", os.path.join(d, "vectors.npy"), [])])
    >>> check_inputs_kept([("-i", p)], [("--output", p, [])])
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output .../docs.jsonl: is the input -i .../docs.jsonl (the same file); writing it would replace the input; choose another output
    """
    for out_flag, out, replaced in outputs:
        if out is None:
            continue
        for target in [os.fspath(t) for t in replaced] or [os.fspath(out)]:
            for in_flag, given in inputs:
                if given is None or not os.path.exists(given):
                    continue
                for path in _read_paths(os.fspath(given)):
                    if _same_file(path, target) or _within(path, target) or _hard_linked_under(path, target):
                        raise UserError(_replaces_input(out_flag, os.fspath(out), target, in_flag,
                                                        os.fspath(given), path))


def _replaces_input(out_flag: str, out: str, target: str, in_flag: str, given: str, path: str) -> str:
    """The one sentence of :func:`check_inputs_kept`."""
    what = "is" if _same_file(path, target) or os.path.abspath(path) == os.path.abspath(target) else "holds"
    read = "" if path == given else f" (it reads {path})"
    if target == out and what == "is":
        where = f"is the input {in_flag} {given}{read} (the same file); writing it would replace the input"
    elif target == out:
        where = f"the folder is replaced as a whole, and it holds the input {in_flag} {given}{read}"
    else:
        where = f"would replace {target}, which {what} the input {in_flag} {given}{read}"
    return f"{out_flag} {out}: {where}; choose another output"
