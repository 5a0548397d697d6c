"""The ``speechtune`` command line: one module per subcommand."""

from speechtune.cli._main import SUBCOMMANDS, build_parser, main

__all__ = ["SUBCOMMANDS", "build_parser", "main"]
