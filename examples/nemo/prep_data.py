"""Prepare NeMo ASR manifests from speechtune's synthetic corpus.

Writes, under ``--out`` (default ``data/``)::

    corpus/                 the synthetic WAV files (16 kHz, 16-bit) and speechtune's manifest
    train_manifest.json     NeMo's JSON-lines manifest: one
    dev_manifest.json       {"audio_filepath": ..., "duration": ..., "text": ...} per utterance

Transcripts are lower-cased, as NeMo's character models (``model.labels``) expect. Run it with
the speechtune environment (it needs speechtune and its ``synth`` extra).

Usage::

    python prep_data.py --out data --num-utterances 160 --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechtune.data import Manifest, split_dev, synthesize_corpus, validate_manifest


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write one NeMo manifest (utterances sorted by id, audio paths absolute)."""
    with open(path, "w", encoding="utf-8") as fh:
        for utt in sorted(manifest, key=lambda u: u.id):
            audio = manifest.resolve(utt)
            if audio is None:
                raise ValueError(f"utterance {utt.id} has no audio file")
            record = {
                "audio_filepath": str(audio.resolve()),
                "duration": round(float(utt.duration), 4),
                "text": utt.text.lower(),
            }
            fh.write(json.dumps(record) + "\n")


def write_data(corpus: Manifest, out: Path, seed: int) -> dict[str, int]:
    """Split ``corpus`` (speaker-disjoint, 20 % dev) and write the two manifests under ``out``.

    Returns:
        The number of utterances per split.
    """
    manifest, _ = validate_manifest(corpus.with_split("train"))
    train, dev = split_dev(manifest, 0.2, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(train, out / "train_manifest.json")
    write_manifest(dev, out / "dev_manifest.json")
    return {"train": len(train), "dev": len(dev)}


def prepare(out: Path, num_utterances: int, seed: int) -> dict[str, int]:
    """Synthesise the corpus (two accents, four voices each) under ``out/corpus`` and write the data."""
    corpus = synthesize_corpus(
        out / "corpus",
        num_utterances=num_utterances,
        seed=seed,
        accents=("en-us", "en-gb-scotland"),
        num_voices=4,
    )
    return write_data(corpus, out, seed)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--num-utterances", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = prepare(args.out, args.num_utterances, args.seed)
    print(
        f"wrote {args.out}/train_manifest.json ({counts['train']} utts), "
        f"{args.out}/dev_manifest.json ({counts['dev']} utts)"
    )


if __name__ == "__main__":
    main()
