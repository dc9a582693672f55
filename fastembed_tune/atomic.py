"""Atomic file writes: write a temporary file beside the target, fsync, rename into place.

A killed run leaves either the old file or the new one, never half of one. Every module that writes
a small output file (reports, summaries, embeddings) goes through here.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write`).

    >>> import tempfile, os, json
    >>> p = os.path.join(tempfile.mkdtemp(), "s.json")
    >>> write_json(p, {"a": 1}); json.load(open(p))
    {'a': 1}
    """
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"))
