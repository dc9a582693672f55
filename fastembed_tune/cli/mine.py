"""``fastembed-tune mine``: hard negatives for (query, positive) pairs, in memory or window by window."""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

from fastembed_tune.cli.common import nonneg_int, positive_int, ratio
from fastembed_tune.core.atomic import check_inputs_kept, check_output, output_lock


def add_parser(sub) -> None:
    """The ``mine`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> p.parse_args(["mine", "--pairs", "p.jsonl", "-o", "m.jsonl"]).num_negatives
    5
    """
    m = sub.add_parser("mine", help="mine hard negatives for (query, positive) pairs")
    m.add_argument("--pairs", required=True, help="training pairs: JSONL/CSV/Parquet/OpenAI JSONL or a BEIR folder")
    m.add_argument("--corpus", help="candidate documents (JSONL id/text, TXT, CSV, Parquet); default: all positives")
    m.add_argument("--model", help="sentence-transformers model directory (default: built-in all-MiniLM-L6-v2)")
    m.add_argument("--output", "-o", required=True, help="output JSONL with a 'negatives' list per row")
    m.add_argument("--num-negatives", type=positive_int, default=5)
    m.add_argument("--skip-top", type=nonneg_int, default=0, help="skip the closest N candidates")
    m.add_argument("--max-ratio", type=ratio, default=None,
                   help="drop candidates scoring above RATIO x the positive's score p (p - (1 - RATIO) x |p| when p < 0: "
                        "never above the positive; e.g. 0.95)")
    m.add_argument("--batch-size", type=positive_int, default=64)
    m.add_argument("--threads", type=nonneg_int, default=0)
    m.add_argument("--scan", choices=["auto", "fp32", "int8"], default="auto",
                   help="the top-k scan: int8 candidates + exact fp32 rescoring (the same negatives, faster on "
                        "VNNI/AVX2 CPUs), fp32, or auto (int8 on VNNI or AVX2 CPUs from 20,000 corpus rows)")
    m.add_argument("--stream", action="store_true",
                   help="read --pairs (.jsonl/.parquet) and --corpus (.jsonl/.txt/.parquet) window by window, "
                        "never as lists in memory; candidates are embedded into OUTPUT.work/ (memory-mapped; a "
                        "killed run resumes there) and the same negatives are mined")
    m.add_argument("--stream-window", type=positive_int, default=100_000,
                   help="pairs (and texts embedded) per window with --stream")
    m.add_argument("--summary", help="also write the summary as JSON to this path")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("--nproc", type=positive_int, default=None, help="shortcut: run under torchrun with N processes")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Mine ``--pairs`` against ``--corpus`` into ``--output``; print the summary (rank 0 of a torchrun job).

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["mine", "--pairs", "p.jsonl", "-o", ""]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output is empty; give a path
    """
    from fastembed_tune.core.distributed import init_from_env, launch_rank
    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.mining.common import format_summary
    from fastembed_tune.mining.exact import mine_to_file, negatives_warning

    check_output(args.output, "file")
    if args.summary:
        check_output(args.summary, "file", "--summary")
    check_inputs_kept([("--pairs", args.pairs), ("--corpus", args.corpus), ("--model", args.model)],
                      [("--output", args.output, [args.output, *([f"{args.output}.work"] if args.stream else [])]),
                       ("--summary", args.summary, [])])
    if args.stream:
        from fastembed_tune.data.readers import require_regular_file

        for flag, path in (("--pairs", args.pairs), ("--corpus", args.corpus)):
            if path:
                require_regular_file(path, flag, "--stream reads it more than once",
                                     "write it to a file first, or mine without --stream")
        summary = _mine_streamed(args)
    else:
        with output_lock(args.output) if launch_rank() == 0 else nullcontext():
            pairs = read_pairs(args.pairs)
            corpus = list(read_corpus(args.corpus).values()) if args.corpus else None
            model = EmbeddingModel.load(args.model)
            init_from_env()
            summary = mine_to_file(pairs, args.output, model, corpus, summary_path=args.summary,
                                   num_negatives=args.num_negatives, skip_top=args.skip_top,
                                   max_ratio=args.max_ratio, batch_size=args.batch_size, threads=args.threads,
                                   show_progress_bar=not args.quiet, scan=args.scan)
        if summary is None:  # another rank of a torchrun job: rank 0 reports
            return 0
    print(format_summary(summary))
    warning = negatives_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    print(f"wrote {summary['pairs']} rows to {args.output}")
    return 0


def _mine_streamed(args: argparse.Namespace) -> dict:
    """``mine --stream``: :func:`~fastembed_tune.mining.stream.mine_stream`; returns its summary."""
    from fastembed_tune.core.atomic import write_json
    from fastembed_tune.embed.model import EmbeddingModel
    from fastembed_tune.mining.stream import mine_stream

    with output_lock(args.output):
        summary = mine_stream(args.pairs, args.output, EmbeddingModel.load(args.model), args.corpus,
                              num_negatives=args.num_negatives, skip_top=args.skip_top, max_ratio=args.max_ratio,
                              batch_size=args.batch_size, threads=args.threads, window=args.stream_window,
                              scan=args.scan, show_progress_bar=not args.quiet)
        if args.summary:
            write_json(args.summary, summary)
    return summary
