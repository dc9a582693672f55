"""``fastembed-tune embed``: embed texts with an ONNX export (or a model directory) into .npy or .jsonl."""
from __future__ import annotations

import argparse
import os

from fastembed_tune.cli.common import add_export_precision_arg, nonneg_int, positive_int
from fastembed_tune.core.atomic import check_inputs_kept, check_output, output_lock
from fastembed_tune.core.errors import UserError


def add_parser(sub) -> None:
    """The ``embed`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["embed", "--model", "onnx", "-i", "c.txt", "-o", "e.npy"]); a.batch_size, a.adapter_side
    (64, None)
    """
    b = sub.add_parser("embed", help="embed texts with an ONNX export (or a sentence-transformers directory)")
    b.add_argument("--model", required=True, help="ONNX export directory, .onnx file, or model directory")
    b.add_argument("--input", "-i", required=True, help="texts: TXT (one a line), JSONL/CSV/TSV/Parquet id+text")
    b.add_argument("--output", "-o", required=True, help=".npy (matrix in input order) or .jsonl (id, embedding)")
    b.add_argument("--int8", action="store_true", help="use model_int8.onnx of the export directory "
                   "(the same as --precision int8)")
    add_export_precision_arg(b)
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--threads", type=nonneg_int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--adapter", metavar="DIR", help="apply an adapter written by `fastembed-tune adapt` to the vectors")
    b.add_argument("--stream", action="store_true",
                   help="read --input (.jsonl, .txt or .parquet) and write --output window by window, never the "
                        "whole corpus in memory (.npy is filled memory-mapped)")
    b.add_argument("--stream-window", type=positive_int, default=50_000, help="texts per window with --stream")
    b.add_argument("--adapter-side", choices=["query", "document"], default=None,
                   help="with --adapter: which side of the adapter: query (default) or document (unchanged "
                        "vectors, normalised, unless the adapter was trained with --sides both)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Embed ``--input`` with ``--model`` (and ``--adapter``) into ``--output``; print the matrix's shape.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["embed", "--model", "onnx", "-i", "c.txt", "-o", "vectors.csv"]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output vectors.csv: must end in .npy or .jsonl
    """
    from fastembed_tune.data.readers import read_texts, require_regular_file
    from fastembed_tune.data.stream import CorpusStream
    from fastembed_tune.embed.layout import OUTPUT_SUFFIXES
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.writers import write_embeddings

    if args.adapter_side is not None and not args.adapter:
        raise UserError(f"--adapter-side {args.adapter_side}: applies only with --adapter DIR; give the adapter "
                        f"or drop the flag")
    args.adapter_side = args.adapter_side or "query"
    check_output(args.output, "file")
    if os.path.splitext(args.output)[1] not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {args.output}: must end in {' or '.join(OUTPUT_SUFFIXES)}")
    check_inputs_kept([("-i", args.input), ("--model", args.model), ("--adapter", args.adapter)],
                      [("--output", args.output, [])])
    if args.stream:
        require_regular_file(args.input, "-i", "--stream reads it twice (an index pass, then the windows)",
                             "write it to a file first, or embed without --stream")
    docs = CorpusStream(args.input, window=args.stream_window, show_progress_bar=not args.quiet) if args.stream \
        else read_texts(args.input)
    adapter = None
    if args.adapter:
        from fastembed_tune.adapt.adapter import Adapter

        adapter = Adapter(args.adapter)  # checked before any embedding
    if args.stream:
        return _embed_streamed(args, docs, adapter)
    with output_lock(args.output):
        model = load_embedder(args.model, args.precision, int8=args.int8, threads=args.threads, log=print)
        emb = model.encode(list(docs.values()), batch_size=args.batch_size, show_progress_bar=not args.quiet)
        if adapter is not None:
            emb = adapter.apply(emb, args.adapter_side)
        write_embeddings(args.output, list(docs), emb)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.output}")
    return 0


def _embed_streamed(args: argparse.Namespace, docs, adapter) -> int:
    """``embed --stream``: the corpus window by window into ``--output`` (a .npy is filled memory-mapped)."""
    from fastembed_tune.embed.loader import load_embedder
    from fastembed_tune.embed.writers import embed_stream_to_file

    transform = (lambda e: adapter.apply(e, args.adapter_side)) if adapter else None
    with output_lock(args.output):
        model = load_embedder(args.model, args.precision, int8=args.int8, threads=args.threads, log=print)
        n, dim = embed_stream_to_file(model, docs.windows(), len(docs), args.output, batch_size=args.batch_size,
                                      transform=transform, show_progress_bar=not args.quiet)
    print(f"wrote {n} x {dim} embeddings to {args.output}")
    return 0
