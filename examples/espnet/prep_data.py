"""Prepare ESPnet (Kaldi-style) data directories from speechtune's synthetic corpus.

Writes, under ``--out`` (default ``data/``, next to this script's working directory)::

    corpus/                      the synthetic WAV files (16 kHz, 16-bit) and manifest.jsonl
    train/ dev/                  one Kaldi data dir per split:
        wav.scp                  <utt> <absolute path of the WAV file>
        text                     <utt> <TRANSCRIPT>
        utt2spk, spk2utt         speaker maps (speaker-disjoint split)
        speech_shape             <utt> <number of samples>   (ESPnet's --*_shape_file)
        text_shape.char          <utt> <number of characters>,<vocabulary size>
    token_list/char/tokens.txt   ESPnet's char token list: <blank>, <unk>, the characters
                                 (space as <space>), <sos/eos>

This is what ESPnet's ``asr.sh`` stages 1-5 produce for a corpus of raw 16 kHz WAVs (no speed
perturbation, no feature extraction: ESPnet computes log-mels on the fly). Run it with the
speechtune environment (it needs speechtune and its ``synth`` extra); the training itself runs
in ESPnet's environment.

Usage::

    python prep_data.py --out data --num-utterances 160 --seed 0
"""

from __future__ import annotations

import argparse
import math
import string
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from speechtune.data import Manifest, split_dev, synthesize_corpus, validate_manifest

#: ESPnet's names for the blank, unknown, space and sos/eos tokens (``asr.sh`` defaults).
BLANK, UNK, SPACE, SOS_EOS = "<blank>", "<unk>", "<space>", "<sos/eos>"


def char_tokens(texts: Iterable[str]) -> list[str]:
    """ESPnet's char token list: blank first, sos/eos last.

    The characters of ``texts`` and every upper-case letter and the apostrophe, so that a letter
    seen only in dev is a token and not ``<unk>``.
    """
    letters = set(string.ascii_uppercase + "'")
    chars = sorted({SPACE if c == " " else c for text in texts for c in text} | letters)
    return [BLANK, UNK, *chars, SOS_EOS]


def write_kaldi_dir(manifest: Manifest, out_dir: Path, vocab_size: int) -> None:
    """Write one Kaldi data dir (files sorted by utterance id, as Kaldi and ESPnet require)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    utts = sorted(manifest, key=lambda u: u.id)
    spk2utt: dict[str, list[str]] = defaultdict(list)
    with (
        open(out_dir / "wav.scp", "w", encoding="utf-8") as wav_scp,
        open(out_dir / "text", "w", encoding="utf-8") as text,
        open(out_dir / "utt2spk", "w", encoding="utf-8") as utt2spk,
        open(out_dir / "speech_shape", "w", encoding="utf-8") as speech_shape,
        open(out_dir / "text_shape.char", "w", encoding="utf-8") as text_shape,
    ):
        for utt in utts:
            path = manifest.resolve(utt)
            if path is None:
                raise ValueError(f"utterance {utt.id} has no audio file")
            rate = utt.sample_rate or 16000
            wav_scp.write(f"{utt.id} {path.resolve()}\n")
            text.write(f"{utt.id} {utt.text}\n")
            utt2spk.write(f"{utt.id} {utt.speaker}\n")
            speech_shape.write(f"{utt.id} {math.ceil(utt.duration * rate)}\n")
            text_shape.write(f"{utt.id} {len(utt.text)},{vocab_size}\n")
            spk2utt[utt.speaker].append(utt.id)
    with open(out_dir / "spk2utt", "w", encoding="utf-8") as fh:
        for spk in sorted(spk2utt):
            fh.write(f"{spk} {' '.join(spk2utt[spk])}\n")


def write_data(corpus: Manifest, out: Path, seed: int) -> dict[str, int]:
    """Split ``corpus`` (speaker-disjoint, 20 % dev) and write ``train/``, ``dev/`` and the token list.

    Returns:
        The number of utterances per split and the vocabulary size.
    """
    manifest, _ = validate_manifest(corpus.with_split("train"))
    train, dev = split_dev(manifest, 0.2, seed=seed)
    tokens = char_tokens(u.text for u in train)
    token_dir = out / "token_list" / "char"
    token_dir.mkdir(parents=True, exist_ok=True)
    (token_dir / "tokens.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    write_kaldi_dir(train, out / "train", len(tokens))
    write_kaldi_dir(dev, out / "dev", len(tokens))
    return {"train": len(train), "dev": len(dev), "vocab_size": len(tokens)}


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
        f"wrote {args.out}/train ({counts['train']} utts), {args.out}/dev ({counts['dev']} utts), "
        f"{args.out}/token_list/char/tokens.txt ({counts['vocab_size']} tokens)"
    )


if __name__ == "__main__":
    main()
