"""The one error type a user sees: a clear sentence, exit code 2 from the CLI; and the refusal of
NaN/Inf embeddings, shared by the PyTorch and the ONNX paths."""
from __future__ import annotations

from typing import Sequence


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
