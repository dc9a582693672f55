"""Command line: argument parsing and nothing else. Each subcommand calls one stage function.

A user mistake (``UserError``) prints one line ``error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .errors import UserError


def _cmd_mine(a: argparse.Namespace) -> int:
    from .data import read_corpus, read_pairs
    from .mining import format_summary, mine_hard_negatives, write_pairs_jsonl
    from .model import EmbeddingModel

    pairs = read_pairs(a.pairs)
    corpus = list(read_corpus(a.corpus).values()) if a.corpus else None
    model = EmbeddingModel.load(a.model)
    res = mine_hard_negatives(pairs, model, corpus, num_negatives=a.num_negatives, skip_top=a.skip_top,
                              max_ratio=a.max_ratio, batch_size=a.batch_size, threads=a.threads,
                              show_progress_bar=not a.quiet)
    write_pairs_jsonl(res.pairs, a.output)
    if a.summary:
        _write_json(a.summary, res.summary)
    print(format_summary(res.summary))
    print(f"wrote {len(res.pairs)} rows to {a.output}")
    return 0


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _ratio(s: str) -> float:
    v = float(s)
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastembed-tune",
                                description="Fine-tune, distill and ship text-embedding models for one domain.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mine", help="mine hard negatives for (query, positive) pairs")
    m.add_argument("--pairs", required=True, help="training pairs: JSONL/CSV/Parquet/OpenAI JSONL or a BEIR folder")
    m.add_argument("--corpus", help="candidate documents (JSONL id/text, TXT, CSV, Parquet); default: all positives")
    m.add_argument("--model", help="sentence-transformers model directory (default: built-in all-MiniLM-L6-v2)")
    m.add_argument("--output", "-o", required=True, help="output JSONL with a 'negatives' list per row")
    m.add_argument("--num-negatives", type=_positive_int, default=5)
    m.add_argument("--skip-top", type=_nonneg_int, default=0, help="skip the closest N candidates")
    m.add_argument("--max-ratio", type=_ratio, default=None,
                   help="drop candidates scoring above RATIO x the positive's score (e.g. 0.95)")
    m.add_argument("--batch-size", type=_positive_int, default=64)
    m.add_argument("--threads", type=_nonneg_int, default=0)
    m.add_argument("--summary", help="also write the summary as JSON to this path")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_cmd_mine)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastembed-tune``; returns the exit code (2 for a user error).

    >>> main(["mine", "--pairs", "/nonexistent.jsonl", "-o", "/tmp/x.jsonl"])
    2
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
