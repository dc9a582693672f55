"""``fastembed-tune serve``: an ONNX export as an OpenAI-compatible ``/v1/embeddings`` server."""
from __future__ import annotations

import argparse

from fastembed_tune.cli.common import add_export_precision_arg, nonneg_int, positive_int, ratio


def port_number(s: str) -> int:
    """Argument type of ``--port``: a TCP port, 0 to 65535 (0: any free port); anything else is refused
    while parsing, never wrapped around (70000 is not 4464).

    >>> port_number("8080")
    8080
    >>> port_number("70000")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: a TCP port is an integer from 0 to 65535 (0: any free port), got 70000
    """
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a TCP port is an integer from 0 to 65535, got {s!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is an integer from 0 to 65535 (0: any free port), got {v}")
    return v


def add_parser(sub) -> None:
    """The ``serve`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["serve", "--model", "onnx"]); a.host, a.port, a.max_queue
    ('127.0.0.1', 8080, 4096)
    """
    from fastembed_tune.serve.batching import MAX_WINDOW_TOKENS
    s = sub.add_parser("serve", help="serve an ONNX export as an OpenAI-compatible /v1/embeddings server "
                                     "(needs the serve extra)")
    s.add_argument("--model", required=True, help="ONNX export directory (e.g. runs/sample/onnx), or a "
                   "sentence-transformers directory (exported first, parity-checked, into --cache-dir)")
    s.add_argument("--int8", action="store_true", help="serve model_int8.onnx of the export (= --precision int8)")
    add_export_precision_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=port_number, default=8080, help="TCP port (0: any free port)")
    s.add_argument("--name", help="model id clients send as 'model' (default: the directory's name)")
    s.add_argument("--threads", type=nonneg_int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    s.add_argument("--max-batch-tokens", type=positive_int, default=1024,
                   help="padded tokens per onnxruntime batch (texts x longest); small batches are fastest on CPUs")
    s.add_argument("--max-batch-size", type=positive_int, default=128, help="texts per onnxruntime batch")
    s.add_argument("--max-window-tokens", type=positive_int, default=MAX_WINDOW_TOKENS,
                   help="real tokens taken from the queue at once and cut into batches of one length bucket "
                        "each (wider: fuller batches, a later start for requests that arrive meanwhile)")
    s.add_argument("--max-queue", type=positive_int, default=4096,
                   help="texts admitted and unanswered at once; beyond it requests get 429")
    s.add_argument("--drain-timeout", type=ratio, default=30.0,
                   help="seconds SIGTERM waits for the requests in flight")
    s.add_argument("--cache-dir", help="where sentence-transformers directories are exported "
                                       "(default: ~/.cache/fastembed-tune/onnx)")
    s.add_argument("--adapter", metavar="DIR", help="serve vectors adapted by an adapter from `fastembed-tune adapt`")
    s.add_argument("--adapter-side", choices=("query", "document"), default="query",
                   help="which side of the adapter the served vectors take (default: query)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve ``--model`` until SIGTERM; returns :func:`~fastembed_tune.serve.server.serve`'s exit code.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["serve", "--model", "runs/sample/onnx"]))  # doctest: +SKIP
    0
    """
    from fastembed_tune.core.errors import UserError
    from fastembed_tune.serve.server import serve

    if args.int8 and args.precision not in (None, "auto", "int8"):
        raise UserError(f"give either --int8 or --precision {args.precision}, not both")
    if args.name is not None and not args.name.strip():
        raise UserError("--name is empty; give the model name clients will send, or leave the flag out")
    return serve(args.model, int8=args.int8, host=args.host, port=args.port, name=args.name,
                 threads=args.threads or None, max_batch_tokens=args.max_batch_tokens,
                 max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                 max_window_tokens=args.max_window_tokens, drain_timeout=args.drain_timeout,
                 cache_dir=args.cache_dir, adapter=args.adapter, adapter_side=args.adapter_side,
                 precision=args.precision)
