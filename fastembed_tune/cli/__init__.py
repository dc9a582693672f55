"""The ``fastembed-tune`` command line: one parser, one module per subcommand."""
from fastembed_tune.cli.app import main

__all__ = ["main"]
