"""``fastembed-tune run``: the whole pipeline, base eval -> mining -> training -> eval -> report."""
from __future__ import annotations

import argparse
import os

from fastembed_tune.cli.common import PRECISIONS, add_training_args, forgetting, positive_int, ratio
from fastembed_tune.core.atomic import check_inputs_kept
from fastembed_tune.core.errors import EXIT_NO_GAIN

# what run writes in --output (files, and folders its stages own: training's checkpoints, the student's)
WRITTEN = ("mined.jsonl", "train", "interpolated", "onnx", "student", "report.md", "metrics.json", "metrics.png")


def add_parser(sub) -> None:
    """The ``run`` subcommand's flags.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> a = p.parse_args(["run", "--max-forgetting", "off"]); a.output, a.lr, a.max_forgetting
    ('runs/sample', 0.0002, None)
    """
    r = sub.add_parser("run", help="base eval -> mining -> training -> eval -> report (default: built-in sample)")
    r.add_argument("--output", "-o", default="runs/sample")
    r.add_argument("--model", help="base model directory (default: built-in all-MiniLM-L6-v2)")
    r.add_argument("--train", help="training pairs (default: the built-in sample)")
    r.add_argument("--test", help="held-out test pairs or BEIR folder")
    r.add_argument("--corpus", help="corpus file")
    add_training_args(r, lr=2e-4, num_negatives=1)
    r.add_argument("--max-ratio", type=ratio, default=0.95)
    r.add_argument("--max-seq-length", type=positive_int, default=128, help="for embedding (eval, mining)")
    r.add_argument("--train-max-seq-length", type=positive_int, default=64, help="for training steps")
    r.add_argument("--distill-layers",
                   help="teacher layers the student keeps (default: half of them, first to last: 0,2,5 of 6)")
    r.add_argument("--distill-epochs", type=positive_int, default=1)
    r.add_argument("--distill-lr", type=float, default=1e-3)
    r.add_argument("--distill-kl-weight", type=float, default=0.0)
    r.add_argument("--no-distill", action="store_true",
                   help="no distilled student (the fine-tuned model is still exported)")
    r.add_argument("--no-export", action="store_true", help="no ONNX export (of the fine-tuned model or the student)")
    r.add_argument("--no-openvino-int8", action="store_true",
                   help="no OpenVINO int8 IR beside the ONNX graphs (by default written where the CPU has VNNI/AMX "
                        "and openvino + nncf are installed, and kept where it keeps the gain on validation)")
    r.add_argument("--no-guard", action="store_true",
                   help="skip the general-domain forgetting guard (base vs fine-tuned on WordNet definitions)")
    r.add_argument("--max-forgetting", type=forgetting, default=0.03, metavar="X|off",
                   help="largest relative loss of the guard's nDCG@10 allowed (default 0.03 = 3%%); beyond it the "
                        "fine-tuned weights are interpolated with the base model's (ratio chosen on the validation "
                        "split); 'off' ships the fine-tuned model as it is")
    r.add_argument("--allow-no-gain", action="store_true",
                   help=f"exit 0 even when the fine-tuned model is not significantly better than the base on the "
                        f"test set (default: exit {EXIT_NO_GAIN})")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`~fastembed_tune.run.pipeline.run_pipeline` with the flags; it prints and writes the report.

    >>> p = argparse.ArgumentParser(); add_parser(p.add_subparsers())
    >>> run(p.parse_args(["run", "--train", "p.jsonl"]))
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: give both --train and --test (or neither, for the built-in sample)
    """
    from fastembed_tune.data.readers import require_regular_file
    from fastembed_tune.run.pipeline import run_pipeline

    check_inputs_kept([("--model", args.model), ("--train", args.train), ("--test", args.test),
                       ("--corpus", args.corpus)],
                      [("--output", args.output, [os.path.join(args.output, n) for n in WRITTEN])])
    if args.test:
        require_regular_file(args.test, "--test", "run reads the test set twice (the evaluation set, the data report)")
    run_pipeline(args.output, model=args.model, train_path=args.train, test_path=args.test,
                 corpus_path=args.corpus, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                 lr=args.lr, num_negatives=args.num_negatives, max_ratio=args.max_ratio, seed=args.seed,
                 max_seq_length=args.max_seq_length, train_max_seq_length=args.train_max_seq_length,
                 symmetric=args.symmetric, distill=not args.no_distill, distill_layers=args.distill_layers,
                 distill_epochs=args.distill_epochs, distill_lr=args.distill_lr,
                 distill_kl_weight=args.distill_kl_weight, export=not args.no_export,
                 openvino_int8=False if args.no_openvino_int8 else None, bf16=PRECISIONS[args.precision],
                 show_progress_bar=not args.quiet, gate=not args.allow_no_gain,
                 validation_share=args.validation_share, eval_every=args.eval_every, patience=args.patience,
                 guard=not args.no_guard, max_forgetting=args.max_forgetting)
    return 0
