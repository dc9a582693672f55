"""Outputs that are never half-written: atomic writes, output checks, output locks, leftovers.

- :func:`atomic_write` / :func:`write_json`: a temporary file beside the target, fsync, rename into
  place. A killed run leaves either the old file or the new one, never half of one.
- :func:`temp_dir` / :func:`replace_dir`: the same for a folder (a model, an export, a checkpoint).
- :func:`check_output`: an output path is checked before any work starts (a file where a folder is
  expected, a folder where a file is expected, a parent that cannot be written).
- :func:`output_lock`: an exclusive lock on an output path, so two commands never write one output.
- :func:`clean_stale`: what an earlier killed run left beside an output (temp files and folders).

Every temporary name is ``.{name}.tmp*`` (or ``.{name}.old*`` / ``.{name}.trash*`` for a folder being
swapped out or deleted), so the next run of the same command knows what to clean. Files and folders
are created with the modes the umask gives (0644 / 0755 under umask 022), like any Unix tool.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from fastembed_tune.core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
_STALE_MARKERS = (".tmp", ".old", ".trash")


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
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
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
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    :class:`UserError` naming ``flag``; creates nothing.

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
        raise UserError(f"{flag} {p}: cannot write in {parent} (permission denied)")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{flag} {p}: is read-only (permission denied)")
    try:  # os.access says yes to root even on a read-only file system: try a real (empty) file
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {p}: cannot write in {parent} ({e.strerror})") from None
    return p


def clean_stale(path: PathLike) -> list[str]:
    """Remove what a killed run left beside ``path``: ``.{name}.tmp*``, ``.{name}.old*`` and
    ``.{name}.trash*`` entries of its folder. Call it while holding :func:`output_lock`
    (another live command's temporary files would look the same). Returns the names removed.

    >>> import tempfile; base = Path(tempfile.mkdtemp()); (base / ".m.tmp123").mkdir()
    >>> clean_stale(base / "m"), os.listdir(base)
    (['.m.tmp123'], [])
    """
    p = Path(path)
    if not p.parent.is_dir():
        return []
    removed = []
    prefixes = tuple(f".{p.name}{m}" for m in _STALE_MARKERS)
    for entry in p.parent.iterdir():
        if entry.name.startswith(prefixes):
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
    names = {e.name[1:].split(m)[0] for e in folder.iterdir() if e.name.startswith(".")
             for m in _STALE_MARKERS if m in e.name[1:]} if folder.is_dir() else set()
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
