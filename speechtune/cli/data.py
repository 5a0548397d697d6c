"""``speechtune data``: build the synthetic corpus, or import AN4, FSDD or another corpus."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from speechtune.data import Manifest

HELP = "build or import corpora"

#: Longest utterance the importers accept by default (``speechtune.data``'s default too; a
#: literal here so that building the parser imports nothing).
DEFAULT_MAX_DURATION = 30.0


def _add_import_safety(p: argparse.ArgumentParser, root: str) -> None:
    """``--skip-bad``, ``--max-duration`` and ``--allow-outside-root`` of an importer."""
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad utterances: count them here, list them in OUT/skipped.tsv",
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=DEFAULT_MAX_DURATION,
        metavar="SECONDS",
        help="longer utterances are bad input (default: %(default)s)",
    )
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help=f"accept audio paths that resolve outside {root} (refused by default)",
    )


def _check_max_duration(args: argparse.Namespace) -> None:
    if not args.max_duration > 0:  # also refuses nan
        raise ValueError(f"--max-duration must be > 0 seconds, got {args.max_duration}")


def _print_skipped(count: int, out: Path) -> None:
    from speechtune.data import SKIPPED_FILE

    if count:
        print(f"skipped {count} bad utterance(s), listed in {out / SKIPPED_FILE}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``synth``, ``an4``, ``fsdd`` and ``import`` subcommands of ``speechtune data``."""
    data = p.add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="generate the synthetic AN4-style corpus with espeak-ng")
    s.add_argument("--out", default=".cache/speechtune/corpora")
    s.add_argument("--num-utterances", type=int, default=600)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--accents",
        default="en-us,en,en-gb-scotland,en-029",
        help="comma-separated espeak-ng accents",
    )
    s.add_argument("--num-voices", type=int, default=8)
    s.add_argument("--noise-snr-db", type=float, default=None)
    s.add_argument("--sample-rate", type=int, default=16000)
    s.set_defaults(fn=synth)

    s = data.add_parser("an4", help="import CMU AN4 from a local directory or a URL")
    s.add_argument(
        "--source", required=True, help="directory of the AN4 distribution, or a .tar.gz URL"
    )
    s.add_argument("--out", default=".cache/speechtune/corpora/an4")
    _add_import_safety(s, "the AN4 directory")
    s.set_defaults(fn=an4)

    s = data.add_parser("fsdd", help="import the Free Spoken Digit Dataset from a directory")
    s.add_argument(
        "--source", required=True, help="directory holding FSDD's recordings/ and metadata.py"
    )
    s.add_argument("--out", default=".cache/speechtune/corpora/fsdd")
    _add_import_safety(s, "the FSDD directory")
    s.set_defaults(fn=fsdd)

    s = data.add_parser("import", help="validate and import a JSONL/CSV/Kaldi/lhotse corpus")
    s.add_argument("manifest")
    s.add_argument("--out", required=True)
    s.add_argument("--sample-rate", type=int, default=None, help="flag audio below this rate")
    _add_import_safety(s, "the manifest's directory")
    s.set_defaults(fn=import_)


def synth(args: argparse.Namespace) -> int:
    """``speechtune data synth``."""
    from speechtune.data import synthesize_corpus

    m = synthesize_corpus(
        args.out,
        num_utterances=args.num_utterances,
        seed=args.seed,
        accents=tuple(args.accents.split(",")),
        num_voices=args.num_voices,
        noise_snr_db=args.noise_snr_db,
        sample_rate=args.sample_rate,
        progress=True,
    )
    print(
        f"{len(m)} utterances, {m.hours * 60:.1f} min, {len(m.speakers)} speakers, groups {m.groups}"
    )
    print(f"manifest: {m.root / 'manifest.jsonl' if m.root else args.out}")
    return 0


def an4(args: argparse.Namespace) -> int:
    """``speechtune data an4``."""
    from speechtune.data import import_an4

    return _import_corpus(import_an4, args)


def fsdd(args: argparse.Namespace) -> int:
    """``speechtune data fsdd``."""
    from speechtune.data import import_fsdd

    return _import_corpus(import_fsdd, args)


def _import_corpus(importer: Callable[..., dict[str, Manifest]], args: argparse.Namespace) -> int:
    """Run a corpus importer (AN4, FSDD) into ``args.out`` and print each split it wrote."""
    _check_max_duration(args)
    out = Path(args.out)
    splits = importer(
        args.source,
        out,
        skip_bad=args.skip_bad,
        max_duration=args.max_duration,
        allow_outside_root=args.allow_outside_root,
    )
    for name, m in splits.items():
        print(
            f"{name}: {len(m)} utterances, {m.hours * 60:.1f} min, {len(m.speakers)} speakers, "
            f"groups {', '.join(m.groups)} -> {out / (name + '.jsonl')}"
        )
    _print_listed(out)
    return 0


def _print_listed(out: Path) -> None:
    """How many utterances an importer skipped, from the list it wrote (a header + one per skip)."""
    from speechtune.data import SKIPPED_FILE

    listed = out / SKIPPED_FILE
    _print_skipped(len(listed.read_text().splitlines()) - 1 if listed.is_file() else 0, out)


def import_(args: argparse.Namespace) -> int:
    """``speechtune data import``."""
    from speechtune.data import import_corpus

    _check_max_duration(args)
    manifest, report = import_corpus(
        args.manifest,
        Path(args.out),
        sample_rate=args.sample_rate,
        max_duration=args.max_duration,
        skip_bad=args.skip_bad,
        allow_outside_root=args.allow_outside_root,
    )
    print(
        f"imported {len(manifest)} utterances ({manifest.hours:.3f} h) -> {Path(args.out) / 'manifest.jsonl'}"
    )
    if report.skipped:
        print(report.summary())
        _print_skipped(len(report.skipped), Path(args.out))
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the data subcommand."""
    return int(args.fn(args))
