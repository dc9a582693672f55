"""Whether the ``serve`` extra (orjson, uvicorn, Starlette, prometheus_client) is installed.

The server's modules import without it, so that ``fastembed-tune serve`` can say which pip command to
run instead of failing on an import; :func:`require_extra` is that check.
"""
from __future__ import annotations

from typing import Optional

from fastembed_tune.core.errors import UserError

INSTALL_HINT = 'the server needs the serve extra: pip install "fastembed-tune[serve]"'
try:
    import orjson  # noqa: F401
    import uvicorn  # noqa: F401
    from starlette import applications, exceptions, requests, responses, routing  # noqa: F401

    from fastembed_tune.serve import metrics  # noqa: F401
    _MISSING: Optional[str] = None
except ImportError as _e:  # pragma: no cover - exercised by a test that hides the extra
    _MISSING = _e.name or "starlette"


def require_extra(say_which: bool = False) -> None:
    """Raise :class:`~fastembed_tune.core.errors.UserError` with the pip command when the serve extra is
    missing; ``say_which`` adds the name of the missing package.

    >>> require_extra()  # the extra is installed: nothing to say
    """
    if _MISSING:
        raise UserError(f"{INSTALL_HINT} (missing: {_MISSING})" if say_which else INSTALL_HINT)
