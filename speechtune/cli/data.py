"""``speechtune data``: build the synthetic corpus, or import AN4 or another corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build or import corpora"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``synth``, ``an4`` and ``import`` subcommands of ``speechtune data``."""
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
    s.add_argument("--skip-bad", action="store_true")
    s.set_defaults(fn=an4)

    s = data.add_parser("import", help="validate and import a JSONL/CSV/Kaldi/lhotse corpus")
    s.add_argument("manifest")
    s.add_argument("--out", required=True)
    s.add_argument("--sample-rate", type=int, default=None, help="flag audio below this rate")
    s.add_argument("--skip-bad", action="store_true", help="skip bad utterances and report them")
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

    splits = import_an4(args.source, Path(args.out), skip_bad=args.skip_bad)
    for name, m in splits.items():
        print(
            f"{name}: {len(m)} utterances, {m.hours:.2f} h, {len(m.speakers)} speakers "
            f"-> {Path(args.out) / (name + '.jsonl')}"
        )
    return 0


def import_(args: argparse.Namespace) -> int:
    """``speechtune data import``."""
    from speechtune.data import import_corpus

    manifest, report = import_corpus(
        args.manifest, Path(args.out), sample_rate=args.sample_rate, skip_bad=args.skip_bad
    )
    print(
        f"imported {len(manifest)} utterances ({manifest.hours:.3f} h) -> {Path(args.out) / 'manifest.jsonl'}"
    )
    if report.skipped:
        print(report.summary())
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the data subcommand."""
    return int(args.fn(args))
