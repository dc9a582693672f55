"""Command line entry: the parser (one subparser per stage, each from its own module) and the error handling.

A user mistake (``UserError``) prints one line ``error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Optional, Sequence

from fastembed_tune.cli import adapt, distill, embed, export, mine, serve, train
from fastembed_tune.cli import eval as eval_cmd
from fastembed_tune.cli import run as run_cmd
from fastembed_tune.core.errors import DISK_ERRNOS, EXIT_NO_GAIN, NoSignificantGain, UserError

SUBCOMMANDS = (mine, train, eval_cmd, distill, export, embed, serve, run_cmd, adapt)  # in --help's order


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose refusals are one line, ``error: ...``, exit 2, like every other
    refusal of the CLI (no usage block: ``--help`` prints it). Its subparsers are of this class too.

    >>> Parser(prog="x").parse_args(["--bogus"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """

    def error(self, message: str) -> NoReturn:
        """Print ``error: message`` on one line and exit with 2."""
        self.exit(2, "error: " + " ".join(str(message).split()) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fastembed-tune`` parser: one subparser per stage, each built by its own module.

    >>> build_parser().parse_args(["mine", "--pairs", "p.jsonl", "-o", "m.jsonl"]).num_negatives
    5
    """
    p = Parser(prog="fastembed-tune", description="Fine-tune, distill and ship text-embedding models for one domain.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastembed-tune``; returns the exit code (2 for a user error).

    >>> main(["mine", "--pairs", "/nonexistent.jsonl", "-o", "/tmp/x.jsonl"])
    2
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "nproc", None) and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _relaunch_with_torchrun(argv, args.nproc)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _fail(str(e), 2)
    except NoSignificantGain as e:
        return _fail(str(e), EXIT_NO_GAIN)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's fault: a full or read-only disk, a missing device
        return _fail(_os_error_line(e, args), 1)
    except MemoryError:
        return _fail("out of memory; lower --batch-size (or give the machine more memory)", 1)
    except Exception as e:  # anything else is our bug: one line, the traceback on request
        if os.environ.get("FASTEMBED_TUNE_DEBUG"):
            raise
        return _fail(f"{type(e).__name__}: {e} (internal error; run with FASTEMBED_TUNE_DEBUG=1 for the "
                     f"traceback and report it)", 1)


def _os_error_line(e: OSError, args: argparse.Namespace) -> str:
    """``PATH: reason``; a disk fault that names no file (a failed write on an open file) is the
    output's: ``--output``'s path is named."""
    where = e.filename
    if where is None and e.errno in DISK_ERRNOS:
        where = getattr(args, "output", None)
    return f"{where}: {e.strerror or e}" if where else str(e.strerror or e)


def _fail(message: str, code: int) -> int:
    """Print ``error: message`` as one line on stderr and return the exit code."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def _relaunch_with_torchrun(argv: Sequence[str], nproc: int) -> int:
    """``--nproc N``: run this same command under PyTorch's launcher (torchrun), N processes."""
    import subprocess

    rest = []
    skip = False
    for x in argv:
        if skip:
            skip = False
            continue
        if x == "--nproc":
            skip = True
            continue
        if x.startswith("--nproc="):
            continue
        rest.append(x)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fastembed_tune", *rest]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
