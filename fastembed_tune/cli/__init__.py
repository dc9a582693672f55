"""The ``fastembed-tune`` command line: one parser, one function per subcommand."""
from fastembed_tune.cli.commands import main

__all__ = ["main"]
