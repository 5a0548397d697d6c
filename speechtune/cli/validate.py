"""``speechtune validate``: check a recipe or a tuning YAML and report every problem at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "check a recipe or tuning config and report every problem"

#: Top-level sections that make a YAML a tuning file rather than a recipe.
TUNING_SECTIONS = {"space", "study", "objective", "presets", "recipe", "command", "constraints"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune validate``."""
    p.add_argument("config")
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")


def is_tuning_file(path: str) -> bool:
    """True when ``path`` holds a tuning YAML (it has one of :data:`TUNING_SECTIONS`)."""
    from speechtune.config import read_yaml

    try:
        data = read_yaml(path)
    except (OSError, ValueError):
        return False  # load_config reports the problem
    return isinstance(data, dict) and bool(TUNING_SECTIONS & set(data))


def run(args: argparse.Namespace) -> int:
    """0 when the file is valid; 2 (every problem listed) when it is not."""
    if is_tuning_file(args.config):
        from speechtune.tuning.spec import validate_tuning

        problems = validate_tuning(args.config, args.set or ())
        if len(problems) == 1:
            # One problem, one line; a problem keyed by the file itself names it already.
            where = "" if problems[0].key == str(Path(args.config)) else f"{args.config}: "
            print(f"error: {where}{problems[0]}", file=sys.stderr)
            return 2
        if problems:
            print(f"error: {len(problems)} problem(s) in {args.config}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 2
    else:
        from speechtune.config import load_config

        load_config(args.config, args.set or ())
    print(f"{args.config}: OK")
    return 0
