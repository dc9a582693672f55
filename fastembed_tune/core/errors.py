"""The one error type a user sees: a clear sentence, exit code 2 from the CLI; and the refusal of
NaN/Inf embeddings, shared by the PyTorch and the ONNX paths."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator, Sequence, Union


class UserError(ValueError):
    """A mistake in the user's input: the CLI prints ``str(e)`` on one line and exits with 2.

    >>> str(UserError("pairs.jsonl line 3: field 'query' is missing"))
    "pairs.jsonl line 3: field 'query' is missing"
    """


class NoSignificantGain(Exception):
    """``run`` finished, but the fine-tuned model is not significantly better than the base on the
    test set (or is worse): the CLI says so in one line and exits with :data:`EXIT_NO_GAIN`.

    >>> EXIT_NO_GAIN
    3
    """


EXIT_NO_GAIN = 3
# the machine's fault while writing: a full disk or quota, a file too big, a read-only file system
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@contextmanager
def naming(path: Union[str, "os.PathLike[str]"]) -> Iterator[None]:
    """Give a disk fault (:data:`DISK_ERRNOS`) raised inside the block without a file name (a failed
    ``write``, ``flush`` or ``fsync`` on an open file) the name ``path``, the output being written,
    so the CLI prints ``error: PATH: No space left on device``. Other errors pass unchanged.

    >>> with naming("out/e.npy"):
    ...     raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] No space left on device: 'out/e.npy'
    """
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno not in DISK_ERRNOS:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path)) from e


def disk_error(code: int, path: Union[str, "os.PathLike[str]"]) -> OSError:
    """The ``OSError`` of errno ``code`` on ``path`` (``error: PATH: reason`` in the CLI, exit 1).

    >>> disk_error(errno.EROFS, "out/e.npy")
    OSError(30, 'Read-only file system')
    >>> str(disk_error(errno.EROFS, "out/e.npy"))
    "[Errno 30] Read-only file system: 'out/e.npy'"
    """
    return OSError(code, os.strerror(code), os.fspath(path))


def check_finite_rows(emb, texts: Sequence[str]) -> None:
    """Refuse embeddings holding NaN/Inf (a damaged model, or one that overflows): never write them.

    >>> import numpy as np
    >>> check_finite_rows(np.array([[1.0], [np.nan]]), ["a", "b"])
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: the model produced NaN/Inf embeddings for 1 of 2 texts (first: text #1, 'b'); the model is damaged or overflows on these texts
    """
    import numpy as np

    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"the model produced NaN/Inf embeddings for {int(bad.sum())} of {len(emb)} texts "
                        f"(first: text #{i}, {texts[i][:40]!r}); the model is damaged or overflows on these texts")
