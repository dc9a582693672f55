"""``fastembed-tune eval``: retrieval metrics of one or more models on a test set, side by side."""
from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

from fastembed_tune.cli.common import add_export_precision_arg, positive_int
from fastembed_tune.core.atomic import check_inputs_kept, check_output, output_lock
from fastembed_tune.core.errors import UserError

REPORT_FILES = ("report.md", "metrics.json", "metrics.png")  # what --output receives


def add_parser(sub) -> None:
    """The ``eval`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> p.parse_args(["eval", "--data", "t.jsonl", "--model", "a", "--model", "b"]).model
    ['a', 'b']
    """
    e = sub.add_parser("eval", help="nDCG@10, recall@k, MRR@10, MAP@100 of one or more models")
    e.add_argument("--data", required=True, help="test pairs file or BEIR folder")
    e.add_argument("--corpus", help="corpus file (for a pairs file)")
    e.add_argument("--model", action="append",
                   help="sentence-transformers directory, ONNX export directory or .onnx file (e.g. "
                        "onnx/model_int8.onnx); repeat to compare; default: the built-in MiniLM")
    e.add_argument("--output", "-o", help="write report.md, metrics.json and metrics.png here")
    e.add_argument("--batch-size", type=positive_int, default=64)
    add_export_precision_arg(e)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate every ``--model`` on ``--data``; print the table, and write the report to ``--output``.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["eval", "--data", "/nonexistent/t.jsonl"]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: /nonexistent/t.jsonl: file not found
    """
    from fastembed_tune.data.readers import load_eval
    from fastembed_tune.embed.loader import load_embedder

    repeated = next((m for i, m in enumerate(args.model or []) if m in args.model[:i]), None)
    if repeated is not None:
        raise UserError(f"--model {repeated} is given twice; each --model is one row of the table")
    if args.output:
        check_output(args.output, "dir")
        check_inputs_kept([("--data", args.data), ("--corpus", args.corpus), *(("--model", m) for m in args.model or [])],
                          [("--output", args.output, [os.path.join(args.output, n) for n in REPORT_FILES])])
    evalset = load_eval(args.data, args.corpus)
    models = [load_embedder(path, precision=args.precision) for path in args.model or [None]]  # all checked first
    for m in models:
        if getattr(m, "choice", None) is not None:
            print(f"{m.choice.file}: {m.choice.description}")
    with output_lock(args.output) if args.output else nullcontext():
        return _eval_locked(args, evalset, models)


def _eval_locked(args: argparse.Namespace, evalset, models) -> int:
    """Evaluate the loaded ``models`` (``--output`` is locked when given) and print/write the results."""
    from fastembed_tune.evaluation.metrics import evaluate
    from fastembed_tune.evaluation.report import format_table, write_report

    rows = []
    for path, m in zip(args.model or [None], models):
        res = evaluate(m, evalset, batch_size=args.batch_size, show_progress_bar=not args.quiet)
        rows.append((path or "built-in all-MiniLM-L6-v2", res["metrics"]))
    print(format_table(rows))
    if args.output:
        write_report(args.output, rows, "fastembed-tune evaluation")
        print(f"report: {os.path.join(args.output, 'report.md')}")
    return 0
