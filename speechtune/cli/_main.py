"""The ``speechtune`` command: the parser (one module per subcommand) and the error handling.

Building the parser imports no subcommand's dependencies (torch, Optuna, MLflow...): each
subcommand's :func:`run` imports what it needs, so ``speechtune --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from speechtune._version import __version__
from speechtune.cli import (
    confirm,
    correlate,
    dashboard,
    data,
    evaluate,
    export,
    nas,
    report,
    rerun,
    train,
    transcribe,
    tts,
    tune,
    validate,
    worker,
    workflow,
)

log = logging.getLogger("speechtune")

#: ``speechtune <name>`` -> the module that implements it (``HELP``, ``add_arguments``, ``run``).
SUBCOMMANDS: dict[str, ModuleType] = {
    "train": train,
    "tune": tune,
    "worker": worker,
    "workflow": workflow,
    "validate": validate,
    "report": report,
    "rerun": rerun,
    "confirm": confirm,
    "correlate": correlate,
    "dashboard": dashboard,
    "evaluate": evaluate,
    "transcribe": transcribe,
    "export": export,
    "data": data,
    "nas": nas,
    "tts": tts,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``speechtune`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="speechtune", description="Find strong hyperparameters for speech models."
    )
    parser.add_argument("--version", action="version", version=f"speechtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", None)
        )
        module.add_arguments(p)
        p.set_defaults(fn=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``speechtune`` console script."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from speechtune._urls import ScrubFilter

    for handler in logging.getLogger().handlers:  # no password in a log line, whoever logs it
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        # Ctrl-C where a command has no handler of its own (loading, set-up, a second Ctrl-C
        # while outputs are written): a clean end with the shell's code for SIGINT.
        if args.debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from speechtune._urls import scrub
        from speechtune.config import ConfigError

        if args.debug:
            traceback.print_exc()
        if isinstance(exc, ConfigError):
            if len(exc.problems) == 1:  # one problem, one line
                key, source = exc.problems[0].key, exc.source
                where = f"{source}: " if source and source != key else ""
                print(f"error: {scrub(where + str(exc.problems[0]))}", file=sys.stderr)
            else:
                print(f"error: {scrub(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, (ValueError, OSError, RuntimeError, ImportError)):
            # Bad input (manifests, audio, test-split refusals, a path that is a directory or
            # unreadable: OSError names it) ends with its message, not a traceback;
            # a URL in it (a driver's message may quote the storage URL) loses its password.
            print(f"error: {type(exc).__name__}: {scrub(exc)}", file=sys.stderr)
            return 1
        raise
