"""The names the command line had when it was one module, kept so older imports and
``python -m fastembed_tune.cli.commands`` keep working; the code lives in :mod:`fastembed_tune.cli.app`,
:mod:`fastembed_tune.cli.common` and one module per subcommand.

>>> from fastembed_tune.cli.commands import main
>>> main(["mine", "--pairs", "/nonexistent.jsonl", "-o", "/tmp/x.jsonl"])
2
"""
from __future__ import annotations

import sys

from fastembed_tune.cli.app import build_parser, main
from fastembed_tune.cli.common import PRECISIONS, add_export_precision_arg, add_precision_arg

__all__ = ["PRECISIONS", "add_export_precision_arg", "add_precision_arg", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
