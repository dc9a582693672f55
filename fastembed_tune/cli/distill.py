"""``fastembed-tune distill``: distil a (fine-tuned) teacher into a smaller student on the user's texts."""
from __future__ import annotations

import argparse
import json
import os

from fastembed_tune.cli.common import PRECISIONS, add_precision_arg, positive_int
from fastembed_tune.core.atomic import check_inputs_kept, check_output
from fastembed_tune.core.errors import UserError


def add_parser(sub) -> None:
    """The ``distill`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> p.parse_args(["distill", "--pairs", "a.jsonl", "--pairs", "b.jsonl", "-o", "s"]).pairs
    ['a.jsonl', 'b.jsonl']
    """
    d = sub.add_parser("distill", help="distil a (fine-tuned) teacher into a smaller student")
    d.add_argument("--teacher", help="teacher model directory (default: built-in all-MiniLM-L6-v2)")
    d.add_argument("--student", help="student model directory (default: a layer-pruned copy of the teacher)")
    d.add_argument("--layers", help="teacher layers the student keeps, e.g. 0,2,4")
    d.add_argument("--pairs", action="append", help="pairs file whose texts are distilled on (repeatable)")
    d.add_argument("--corpus", action="append", help="corpus file whose texts are distilled on (repeatable)")
    d.add_argument("--output", "-o", required=True)
    d.add_argument("--epochs", type=positive_int, default=2)
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--lr", type=float, default=5e-4)
    d.add_argument("--kl-weight", type=float, default=0.0, help="weight of the in-batch similarity KL term")
    d.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of the layer-to-layer term (a layer-pruned student's token states against the "
                        "teacher layers it was copied from; the teacher runs beside it, ~1.4x the time)")
    d.add_argument("--max-seq-length", type=positive_int, default=128)
    add_precision_arg(d)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Distil ``--teacher`` on the texts of ``--pairs``/``--corpus`` into ``--output``; print the summary as JSON.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["distill", "-o", ""]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --output is empty; give a path
    """
    from fastembed_tune.data.readers import read_corpus, read_pairs
    from fastembed_tune.training.distill import CACHE_FILE, DistillConfig, distill

    check_output(args.output, "dir")
    written = ("model", "distill_log.jsonl", "distill_summary.json", CACHE_FILE)  # what distill writes in --output
    check_inputs_kept([("--teacher", args.teacher), ("--student", args.student),
                       *(("--pairs", p) for p in args.pairs or []), *(("--corpus", p) for p in args.corpus or [])],
                      [("--output", args.output, [os.path.join(args.output, n) for n in written])])
    texts: list[str] = []
    for path in args.pairs or []:
        for p in read_pairs(path):
            texts += [p.query, p.positive, *p.negatives]
    for path in args.corpus or []:
        texts += list(read_corpus(path).values())
    if not texts:
        raise UserError("give the texts to distil on: --pairs FILE and/or --corpus FILE")
    summary = distill(args.teacher, texts, args.output, DistillConfig(
        student_dir=args.student, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        kl_weight=args.kl_weight, hidden_weight=args.hidden_weight, seed=args.seed, max_seq_length=args.max_seq_length,
        bf16=PRECISIONS[args.precision], show_progress_bar=not args.quiet))
    print(json.dumps(summary, indent=2))
    return 0
