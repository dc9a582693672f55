"""Argument types and flags that several subcommands share: checked numbers, ``--precision``, the training flags."""
from __future__ import annotations

import argparse
from typing import Optional

PRECISIONS = {"auto": None, "fp32": False, "bf16": True}  # --precision -> the bf16 setting (None = auto)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16``; :data:`PRECISIONS` maps it to the trainer's and distiller's ``bf16``.

    >>> p = argparse.ArgumentParser(); add_precision_arg(p)
    >>> PRECISIONS[p.parse_args(["--precision", "fp32"]).precision], PRECISIONS[p.parse_args([]).precision]
    (False, None)
    """
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="auto: bf16 autocast where the hardware has it (CUDA, AVX512-BF16/AMX CPUs), else fp32; "
                        "for the training steps and for the PyTorch models' embeddings (validation, and run's "
                        "evaluations); ONNX graphs always run as exported")


def add_export_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|int8|bf16`` for what runs an ONNX export (``embed``, ``eval``, ``serve``).

    >>> p = argparse.ArgumentParser(); add_export_precision_arg(p); p.parse_args([]).precision
    'auto'
    """
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16"], default="auto",
                   help="an ONNX export directory runs at: auto (the fastest that passes its parity gate on this "
                        "CPU, measured once and cached; the choice is printed), fp32 (model.onnx, or "
                        "onnx/model.onnx on OpenVINO where that is faster and the CPU has no bf16), int8 "
                        "(model_int8.onnx) or bf16 (onnx/model.onnx on OpenVINO; AMX/AVX512-BF16 CPUs, the "
                        "openvino extra); a PyTorch model directory ignores auto")


def positive_int(s: str) -> int:
    """Argument type: an integer >= 1 (counts, sizes), so a zero or negative value is refused while parsing.

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be >= 1, got 0
    """
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(s: str) -> int:
    """Argument type: an integer >= 0 (0 often means "all" or "none", e.g. ``--threads 0``).

    >>> nonneg_int("0")
    0
    >>> nonneg_int("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be >= 0, got -1
    """
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def ratio(s: str) -> float:
    """Argument type: a finite number > 0 (scales, rates, seconds), refusing 0, negatives, NaN and inf.

    >>> ratio("0.95")
    0.95
    >>> ratio("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a number > 0, got nan
    """
    v = float(s)
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {s}")
    return v


def share(s: str) -> float:
    """Argument type: a share in [0, 1), e.g. the part of the data held out for validation.

    >>> share("0.1")
    0.1
    >>> share("1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be in [0, 1), got 1
    """
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def forgetting(s: str) -> Optional[float]:
    """Argument type of ``--max-forgetting``: a number in [0, 1), or ``off`` (``None``: no limit).

    >>> forgetting("0.03"), forgetting("off")
    (0.03, None)
    """
    if s.strip().lower() in ("off", "none"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) or 'off', got {s}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) or 'off', got {s}")
    return v


def add_training_args(p: argparse.ArgumentParser, lr: float, num_negatives: Optional[int]) -> None:
    """The training flags ``train`` and ``run`` share (``lr`` and ``num_negatives``: the command's defaults).

    >>> p = argparse.ArgumentParser(); add_training_args(p, lr=5e-5, num_negatives=None)
    >>> a = p.parse_args(["--epochs", "2"]); a.epochs, a.lr, a.batch_size, a.validation_share
    (2, 5e-05, 32, 0.1)
    """
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--max-steps", type=positive_int, default=None, help="overrides --epochs")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--num-negatives", type=nonneg_int, default=num_negatives,
                   help="hard-negative columns used per pair" + (
                       " (default: 1 where the pairs have negatives; asking for more than they have warns)"
                       if num_negatives is None else ""))
    p.add_argument("--symmetric", action="store_true", help="add the document->query direction (CLIP/GTE)")
    p.add_argument("--validation-share", type=share, default=0.1,
                   help="share of the training queries held out to pick the best model and stop early "
                        "(at most 500 queries; 0 = no validation, train on everything)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="steps between validations (default: 4 a run)")
    p.add_argument("--patience", type=positive_int, default=2,
                   help="stop after this many validations without gain")
    add_precision_arg(p)
    p.add_argument("--seed", type=nonneg_int, default=42)
    p.add_argument("--quiet", action="store_true")

