"""The server process of ``fastembed-tune serve``: the listening socket, uvicorn with our signal
handling, and :func:`serve`, which loads (or exports, then loads) the model and serves it.

SIGTERM / Ctrl-C: stop accepting connections, answer the requests in flight, exit 0.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
from typing import Any, Optional, Union

from fastembed_tune.core.errors import UserError
from fastembed_tune.serve.app import AdaptedEngine, create_app
from fastembed_tune.serve.batching import MAX_WINDOW_TOKENS
from fastembed_tune.serve.extra import require_extra
from fastembed_tune.serve.models import default_name, load_engine, log, resolve_model

MAX_PORT = 65535


def bind(host: str, port: int, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one) and listening (``listen=False``: bound
    only, the port reserved; :func:`start_listening` opens it later), or one clear UserError.

    >>> s = bind("127.0.0.1", 0); s.getsockname()[1] > 0; s.close()
    True
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_PORT:
        raise UserError(f"--port {port}: a TCP port is an integer from 0 to {MAX_PORT} (0: any free port)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host}: not an address this machine can listen on") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise _bind_error(e, host, port) from None
    sock.set_inheritable(True)
    if listen:
        start_listening(sock, host, port)
    return sock


def _bind_error(e: OSError, host: str, port: int) -> UserError:
    if e.errno == errno.EADDRINUSE:
        return UserError(f"{host}:{port} is already in use; choose another --port")
    return UserError(f"cannot listen on {host}:{port} ({e.strerror or e})")


def start_listening(sock: socket.socket, host: str, port: int) -> None:
    """Open the bound ``sock`` to connections (called once the model answers: until then a client is
    refused at once instead of waiting on a port that does not answer); closes it on failure.

    >>> s = bind("127.0.0.1", 0, listen=False); start_listening(s, "127.0.0.1", 0); s.close()
    """
    try:
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise _bind_error(e, host, port) from None


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with our signal handling: SIGTERM/SIGINT stop new work, let the requests in
        flight finish and exit 0 (uvicorn itself re-raises the signal after shutting down)."""

        def __init__(self, config, service: Any, banner: str):
            super().__init__(config)
            self.service, self.banner = service, banner

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print(f"{signal.Signals(sig).name}: draining {self.service.inflight} request(s) in flight "
                      f"({self.service.batcher.queued} texts queued), then exiting", file=sys.stderr, flush=True)
            self.service.batcher.begin_drain()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                print(self.banner, flush=True)

    return DrainingServer


def run_server(app: Any, sock: socket.socket, banner: str, drain_timeout: float = 30.0) -> int:
    """Serve ``app`` (from :func:`create_app`) on the bound ``sock`` until SIGTERM/SIGINT; print ``banner``
    once the server accepts requests; drain for at most ``drain_timeout`` s; return 0.

    >>> run_server(create_app(engine, "m"), bind("127.0.0.1", 0), "ready")  # doctest: +SKIP
    0
    """
    require_extra()
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=drain_timeout, timeout_keep_alive=30)
    server = _server_class()(config, app.state.service, banner)
    server.run(sockets=[sock])
    return 0


def serve(model: Union[str, os.PathLike], int8: bool = False, host: str = "127.0.0.1", port: int = 8080,
          name: Optional[str] = None, threads: Optional[int] = None, max_batch_tokens: int = 1024,
          max_batch_size: int = 128, max_queue: int = 4096, drain_timeout: float = 30.0,
          cache_dir: Union[str, os.PathLike, None] = None, adapter: Union[str, os.PathLike, None] = None,
          adapter_side: str = "query", precision: Optional[str] = "auto",
          max_window_tokens: int = MAX_WINDOW_TOKENS) -> int:
    """``fastembed-tune serve``: load (or export, then load) ``model`` and serve it until SIGTERM;
    ``precision`` (``auto``: measured on this CPU, see :mod:`fastembed_tune.embed.precision`; or ``fp32``,
    ``int8``, ``bf16``) picks the graph and engine, and the choice is logged;
    with ``adapter`` (a folder written by ``fastembed-tune adapt``) every vector served is adapted
    on ``adapter_side`` (``query``: the default, for a query-side adapter).

    >>> serve("runs/sample/onnx", port=8080)  # doctest: +SKIP
    0
    """
    require_extra(say_which=True)
    export_dir = resolve_model(model, int8=int8, cache_dir=cache_dir, export_int8=int8 or precision in ("auto", "int8"))
    # a busy port is said before the precision is measured, not after; it accepts connections once served
    sock = bind(host, port, listen=False)
    try:
        engine = load_engine(export_dir, int8=int8, threads=threads, precision=precision, log=log)
        if adapter is not None:
            from fastembed_tune.adapt.adapter import Adapter

            fitted = Adapter(adapter)
            if fitted.dim != engine.dim:
                raise UserError(f"--adapter {adapter}: it maps {fitted.dim}-d vectors, the model serves "
                                f"{engine.dim}-d; give the adapter trained on this model's vectors")
            engine = AdaptedEngine(engine, lambda rows: fitted.apply(rows, adapter_side))
        name = name or default_name(model)
        app = create_app(engine, name, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                         max_queue=max_queue, drain_timeout=drain_timeout, max_window_tokens=max_window_tokens)
        start_listening(sock, host, port)
    except BaseException:
        sock.close()
        raise
    h, p = sock.getsockname()[:2]
    shown = f"[{h}]" if ":" in h else h
    adapted = f", adapted by {adapter} ({adapter_side} side)" if adapter is not None else ""
    prec = f", {engine.precision}" if engine.precision else ""
    banner = (f"serving '{name}' ({engine.file}{prec}{adapted}, {engine.dim}-d, up to {engine.max_seq_length} tokens a text) "
              f"on http://{shown}:{p}/v1  (SIGTERM or Ctrl-C: finish the requests in flight, then exit)")
    return run_server(app, sock, banner, drain_timeout)
