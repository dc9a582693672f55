"""``fastembed-tune adapt``: learn an adapter on frozen embeddings (e.g. an API model that cannot be fine-tuned)."""
from __future__ import annotations

import argparse

from fastembed_tune.cli.common import nonneg_int, positive_int, ratio, share
from fastembed_tune.core.atomic import check_inputs_kept, check_output
from fastembed_tune.core.errors import EXIT_NO_GAIN, UserError


def add_parser(sub) -> None:
    """The ``adapt`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["adapt", "--pairs", "p.jsonl", "-o", "ad"]); a.kind, a.sides, a.epochs
    ('linear', 'query', 10)
    """
    d = sub.add_parser("adapt", help="learn an adapter on frozen embeddings (an API model you cannot fine-tune)")
    d.add_argument("--pairs", required=True, help="training pairs (JSONL/CSV/Parquet/OpenAI JSONL/BEIR folder)")
    d.add_argument("--corpus", help="documents: hard negatives (and, with --test, the test's retrieval corpus)")
    d.add_argument("--test", help="held-out test pairs or BEIR folder: the frozen vs adapted report")
    d.add_argument("--output", "-o", required=True, help="output folder (adapter.safetensors, adapter_config.json, "
                                                          "adapter.onnx, report.md)")
    _add_source_args(d)
    d.add_argument("--kind", choices=["linear", "lowrank", "mlp"], default="linear")
    d.add_argument("--sides", choices=["query", "both"], default="query",
                   help="query: documents keep their vectors (default); both: a document adapter too")
    d.add_argument("--rank", type=positive_int, default=None, help="lowrank: the rank (default 64)")
    d.add_argument("--hidden", type=positive_int, default=1024, help="mlp: hidden units")
    d.add_argument("--epochs", type=positive_int, default=10)
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--lr", type=ratio, default=1e-3)
    d.add_argument("--weight-decay", type=float, default=0.01, help="pulls the adapter towards the identity")
    d.add_argument("--num-negatives", type=nonneg_int, default=7, help="hard negatives a pair, mined by topk_cosine")
    d.add_argument("--max-ratio", type=ratio, default=0.95,
                   help="drop candidates scoring above RATIO x the positive's score (likely false negatives)")
    d.add_argument("--remine-every", type=nonneg_int, default=1,
                   help="epochs between re-mining negatives with the adapter (0: mine once)")
    d.add_argument("--scale", type=ratio, default=20.0, help="logit scale (1 / temperature)")
    d.add_argument("--no-average", action="store_true",
                   help="ship one epoch's weights, not their running mean (linear and mlp average by default)")
    d.add_argument("--validation-share", type=share, default=0.1,
                   help="share of the training queries held out to choose the epoch that ships (0: none)")
    d.add_argument("--patience", type=positive_int, default=3, help="stop after this many epochs without gain")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--allow-no-gain", action="store_true",
                   help=f"exit 0 even when the adapter is not significantly better than the frozen vectors on "
                        f"--test (default: exit {EXIT_NO_GAIN})")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run)


def _add_source_args(d: argparse.ArgumentParser) -> None:
    """The flags naming where the frozen embeddings come from (a hosted API, a local model, a file) and the store."""
    d.add_argument("--embeddings", metavar="SOURCE",
                   help="api (with --api-base/--api-model), builtin (MiniLM), a sentence-transformers or ONNX "
                        "directory, or FILE.npy (beside FILE.jsonl/.txt texts) / FILE.parquet (text, embedding)")
    d.add_argument("--api-base", metavar="URL", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 "
                                                     "(key from OPENAI_API_KEY)")
    d.add_argument("--api-model", metavar="NAME", help="the endpoint's embedding model, e.g. text-embedding-3-small")
    d.add_argument("--api-dimensions", type=positive_int, default=None, help="ask the endpoint for N dimensions")
    d.add_argument("--api-batch-size", type=positive_int, default=128, help="texts per request")
    d.add_argument("--api-concurrency", type=positive_int, default=4, help="requests in flight at most")
    d.add_argument("--api-max-retries", type=nonneg_int, default=6,
                   help="retries of a request answered 429/5xx (exponential backoff, Retry-After honoured)")
    d.add_argument("--api-tpm", type=ratio, default=None, metavar="TOKENS", help="tokens-per-minute budget")
    d.add_argument("--store", metavar="DIR", help="embedding store (default: $FASTEMBED_TUNE_STORE or "
                                                   "~/.cache/fastembed-tune/store): each text is embedded once, ever")
    d.add_argument("--max-seq-length", type=positive_int, default=128, help="local models: tokens embedded")


def run(args: argparse.Namespace) -> int:
    """Fit an adapter on ``--pairs`` with the ``--embeddings`` source and write it (and its report) to ``--output``.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["adapt", "--pairs", "p.jsonl", "-o", ""]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output is empty; give a path
    """
    from fastembed_tune.adapt.sources import open_source
    from fastembed_tune.adapt.training import AdapterConfig
    from fastembed_tune.adapt.workflow import adapt

    if args.rank is not None and args.kind != "lowrank":
        raise UserError(f"--rank applies only with --kind lowrank (this adapter is --kind {args.kind})")
    if args.api_dimensions is not None and not args.api_base:
        raise UserError("--api-dimensions applies only with --api-base (an API model); drop it for local embeddings")
    check_output(args.output, "dir")
    check_inputs_kept([("--pairs", args.pairs), ("--corpus", args.corpus), ("--test", args.test),
                       ("--embeddings", args.embeddings), ("--store", args.store)],
                      [("--output", args.output, [])])  # the folder is replaced as a whole
    source = open_source(args.embeddings, api_base=args.api_base, api_model=args.api_model,
                         api_dimensions=args.api_dimensions, api_batch_size=args.api_batch_size,
                         api_concurrency=args.api_concurrency, api_max_retries=args.api_max_retries,
                         api_tpm=args.api_tpm, store_dir=args.store, max_seq_length=args.max_seq_length)
    cfg = AdapterConfig(kind=args.kind, sides=args.sides, rank=args.rank or 64, hidden=args.hidden, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        num_negatives=args.num_negatives, max_ratio=args.max_ratio, remine_every=args.remine_every,
                        scale=args.scale, validation_share=args.validation_share, patience=args.patience,
                        seed=args.seed, average=not args.no_average)
    adapt(args.output, args.pairs, source, corpus_path=args.corpus, test_path=args.test, cfg=cfg,
          gate=not args.allow_no_gain, show_progress_bar=not args.quiet)
    return 0
