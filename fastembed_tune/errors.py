"""The one error type a user sees: a clear sentence, exit code 2 from the CLI."""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: the CLI prints ``str(e)`` on one line and exits with 2.

    >>> str(UserError("pairs.jsonl line 3: field 'query' is missing"))
    "pairs.jsonl line 3: field 'query' is missing"
    """
