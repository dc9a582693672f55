"""``fastembed-tune train``: fine-tune a model on (query, positive[, negatives]) pairs."""
from __future__ import annotations

import argparse
import json
import os

from fastembed_tune.cli.common import PRECISIONS, add_training_args, positive_int, ratio
from fastembed_tune.core.atomic import check_inputs_kept, check_output
from fastembed_tune.core.errors import UserError


def add_parser(sub) -> None:
    """The ``train`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["train", "--pairs", "p.jsonl", "-o", "out"]); a.lr, a.loss, a.num_negatives
    (5e-05, 'mnrl', None)
    """
    t = sub.add_parser("train", help="fine-tune a model on (query, positive[, negatives]) pairs")
    t.add_argument("--pairs", required=True, help="training pairs (JSONL/CSV/Parquet/OpenAI JSONL/BEIR folder)")
    t.add_argument("--model", help="base or previously fine-tuned model directory (warm start)")
    t.add_argument("--output", "-o", required=True, help="output folder (model in OUTPUT/model, checkpoints beside)")
    add_training_args(t, lr=5e-5, num_negatives=None)
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--loss", choices=["mnrl", "cached_mnrl", "triplet"], default="mnrl")
    t.add_argument("--scale", type=ratio, default=20.0, help="logit scale (1 / temperature)")
    t.add_argument("--mini-batch-size", type=positive_int, default=32, help="for cached_mnrl (GradCache)")
    t.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints")
    t.add_argument("--keep-checkpoints", type=positive_int, default=2)
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUTPUT, with the same "
                   "settings (a changed --lr, --batch-size, --max-seq-length, --precision, ... is refused; "
                   "--quiet, --checkpoint-every, --keep-checkpoints may change)")
    t.add_argument("--replay", help="old training data mixed in so the old domain is not forgotten")
    t.add_argument("--replay-ratio", type=float, default=0.0)
    t.add_argument("--stream", action="store_true",
                   help="read --pairs (.jsonl or .parquet) window by window, never the whole file in memory: an "
                        "epoch visits the windows in a seeded order and shuffles within each; resume stays exact")
    t.add_argument("--stream-window", type=positive_int, default=100_000,
                   help="pairs per window with --stream (in-batch negatives come from the same window)")
    t.add_argument("--max-seq-length", type=positive_int, default=None)
    t.add_argument("--nproc", type=positive_int, default=None, help="shortcut: run under torchrun with N processes")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train on ``--pairs`` into ``--output``; print the training summary as JSON.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["train", "--pairs", "p.jsonl", "-o", ""]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output is empty; give a path
    """
    from fastembed_tune.data.readers import read_pairs
    from fastembed_tune.training.train import TrainConfig, train

    if args.replay and not args.replay_ratio > 0:
        raise UserError(f"--replay {args.replay}: mixed in only with --replay-ratio > 0 (e.g. 0.2); give one or drop it")
    check_output(args.output, "dir")
    written = [os.path.join(args.output, n) for n in ("model", "best", "train_summary.json", "train_log.jsonl")]
    check_inputs_kept([("--pairs", args.pairs), ("--model", args.model), ("--replay", args.replay)],
                      [("--output", args.output, written)])
    if args.stream:
        from fastembed_tune.data.stream import PairStream

        pairs = PairStream(args.pairs, window=args.stream_window, validation_share=args.validation_share,
                           seed=args.seed, show_progress_bar=not args.quiet)
    else:
        pairs = read_pairs(args.pairs)
    cfg = TrainConfig(output_dir=args.output, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
                      batch_size=args.batch_size, lr=args.lr, warmup_ratio=args.warmup_ratio, seed=args.seed,
                      loss=args.loss, scale=args.scale, symmetric=args.symmetric,
                      mini_batch_size=args.mini_batch_size, num_negatives=args.num_negatives,
                      checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                      resume=args.resume, replay=args.replay, replay_ratio=args.replay_ratio,
                      max_seq_length=args.max_seq_length, bf16=PRECISIONS[args.precision],
                      show_progress_bar=not args.quiet, validation_share=args.validation_share,
                      eval_every=args.eval_every, patience=args.patience)
    summary = train(pairs, cfg)
    print(json.dumps(summary, indent=2))
    return 0
