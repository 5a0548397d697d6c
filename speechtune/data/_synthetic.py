"""The built-in synthetic corpus: AN4-style alphanumeric utterances spoken by espeak-ng.

AN4 (CMU's alphanumeric census database) holds spelled words, digit strings, numbers and a
few commands. This module writes a corpus of the same kind, offline, with several English
accents (the manifest's groups) and several voices per accent (the speakers), so that the
whole tuning pipeline can be exercised and tested without downloading anything.

Generation is deterministic for a seed (same texts, same audio bytes) and cached on disk under
a directory named by a hash of every parameter; it is written to a temporary directory and
renamed into place, so an interrupted run never leaves a corpus that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechtune.data import _espeak
from speechtune.data._manifest import Manifest, Utterance

__all__ = [
    "SyntheticSpeaker",
    "add_noise",
    "an4_style_text",
    "draw_speakers",
    "spoken_form",
    "synthesize_corpus",
]

#: Bump when a change to this module changes the texts or audio, so old caches are not reused.
_CORPUS_VERSION = 2

_LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
_DIGITS = ("ZERO", "OH", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
_ONES = ("", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
_TEENS = (
    "TEN",
    "ELEVEN",
    "TWELVE",
    "THIRTEEN",
    "FOURTEEN",
    "FIFTEEN",
    "SIXTEEN",
    "SEVENTEEN",
    "EIGHTEEN",
    "NINETEEN",
)
_TENS = ("", "", "TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY", "EIGHTY", "NINETY")
_COMMANDS = ("ERASE", "RUBOUT", "ENTER", "STOP", "YES", "NO", "GO", "REPEAT", "HELP", "START")
#: Commands that AN4 follows with the item they act on ("ENTER SIX TWO", "RUBOUT G M").
_LEADING_COMMANDS = ("ENTER", "ERASE", "RUBOUT", "REPEAT")

#: What espeak is given for a transcript token when the token itself is misread. espeak says
#: a lone capital letter as its name ("H" -> aitch), except "A", which it reads as the
#: article (a schwa) inside a sequence; "eigh" gives the letter name /eI/. "RUBOUT" would be
#: read as "roo-bout". Checked with espeak's own phonemiser in tests/test_synthetic.py.
_SPOKEN_OVERRIDES = {"A": "eigh", "RUBOUT": "rub out"}

#: Voice variants speakers are drawn from (those present in the installed data are used).
_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "croak",
    "Andy", "Annie", "edward", "linda", "steph", "john", "max", "robert",
)  # fmt: skip
_RATE_WPM = (130, 200)
_PITCH = (30, 70)


# -- text ------------------------------------------------------------------------------------
def _number_words(n: int) -> list[str]:
    """US-style words for 1 <= n <= 9999 ("SEVEN HUNDRED TWELVE", no "AND")."""
    words: list[str] = []
    if n >= 1000:
        words += [_ONES[n // 1000], "THOUSAND"]
        n %= 1000
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
    if 10 <= n < 20:
        words.append(_TEENS[n - 10])
    else:
        if n >= 20:
            words.append(_TENS[n // 10])
        if n % 10:
            words.append(_ONES[n % 10])
    return words


def _letters(rng: np.random.Generator, lo: int = 2, hi: int = 8) -> list[str]:
    return [_LETTERS[i] for i in rng.integers(0, len(_LETTERS), int(rng.integers(lo, hi + 1)))]


def _digits(rng: np.random.Generator, lo: int = 2, hi: int = 7) -> list[str]:
    return [_DIGITS[i] for i in rng.integers(0, len(_DIGITS), int(rng.integers(lo, hi + 1)))]


def _number(rng: np.random.Generator) -> list[str]:
    # Mostly two-digit numbers, as in AN4's ages and years; some larger ones.
    hi = int(rng.choice([100, 1000, 10000], p=[0.6, 0.3, 0.1]))
    return _number_words(int(rng.integers(1, hi)))


def _command(rng: np.random.Generator) -> list[str]:
    return [_COMMANDS[int(rng.integers(0, len(_COMMANDS)))]]


def _combo(rng: np.random.Generator) -> list[str]:
    head = _LEADING_COMMANDS[int(rng.integers(0, len(_LEADING_COMMANDS)))]
    kind = int(rng.integers(0, 3))
    if kind == 0:
        tail = _digits(rng, 1, 4)
    elif kind == 1:
        tail = _letters(rng, 1, 4)
    else:  # letters then digits, like "RUBOUT G M E F THREE NINE"
        tail = _letters(rng, 1, 4) + _digits(rng, 1, 3)
    return [head, *tail]


_KINDS: tuple[tuple[Callable[[np.random.Generator], list[str]], float], ...] = (
    (_letters, 0.30),
    (_digits, 0.20),
    (_number, 0.15),
    (_command, 0.10),
    (_combo, 0.25),
)


def an4_style_text(rng: np.random.Generator) -> str:
    """One AN4-style transcript: spelled letters, digits, a number, a command, or a combo.

    Args:
        rng: the source of randomness (the same generator state gives the same text).

    Returns:
        Upper-case words separated by single spaces, e.g. ``"H I N I C H"``,
        ``"ONE FIVE OH"``, ``"SEVEN HUNDRED TWELVE"``, ``"ENTER SIX TWO"``.
    """
    probs = np.array([w for _, w in _KINDS])
    make = _KINDS[int(rng.choice(len(_KINDS), p=probs / probs.sum()))][0]
    return " ".join(make(rng))


def spoken_form(text: str) -> str:
    """What espeak-ng is given to say ``text`` as AN4 speakers say it (letters as names)."""
    return " ".join(_SPOKEN_OVERRIDES.get(tok, tok) for tok in text.split())


# -- speakers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSpeaker:
    """One synthetic speaker: an accent, an espeak voice variant, a rate and a pitch.

    Attributes:
        id: speaker id, ``<accent>_s<NN>`` (e.g. ``en-us_s03``).
        accent: the espeak English accent (the manifest group), e.g. ``en-gb-scotland``.
        variant: espeak voice variant, e.g. ``f3``.
        rate: words per minute.
        pitch: espeak base pitch, 0-100.
    """

    id: str
    accent: str
    variant: str
    rate: int
    pitch: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def _stable_seed(*parts: object) -> list[int]:
    """A seed for ``np.random.default_rng`` from strings/ints that is stable across runs
    (Python's ``hash`` of a string is salted per process)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def draw_speakers(
    accents: Sequence[str], num_voices: int, seed: int, variants: Sequence[str] = _VARIANTS
) -> list[SyntheticSpeaker]:
    """Draw ``num_voices`` distinct speakers per accent, deterministically from ``seed``.

    Each accent draws its speakers from its own generator, so adding an accent does not
    change the speakers of the others. Variants are used without repetition until they run
    out; ``(variant, rate, pitch)`` is distinct within an accent.

    Args:
        accents: espeak English accents, e.g. ``("en-us", "en")``.
        num_voices: speakers per accent (>= 1).
        seed: the corpus seed.
        variants: the voice variants to draw from.

    Returns:
        Speakers ordered by accent, then index.
    """
    if not variants:
        raise ValueError("no espeak voice variants to draw speakers from")
    speakers: list[SyntheticSpeaker] = []
    for accent in accents:
        rng = np.random.default_rng(_stable_seed("speakers", seed, accent))
        order = list(rng.permutation(len(variants)))
        seen: set[tuple[str, int, int]] = set()
        while len(seen) < num_voices:
            if not order:
                order = list(rng.permutation(len(variants)))
            variant = variants[int(order.pop(0))]
            rate = int(rng.integers(_RATE_WPM[0], _RATE_WPM[1] + 1))
            pitch = int(rng.integers(_PITCH[0], _PITCH[1] + 1))
            if (variant, rate, pitch) in seen:
                continue
            seen.add((variant, rate, pitch))
            speakers.append(
                SyntheticSpeaker(f"{accent}_s{len(seen) - 1:02d}", accent, variant, rate, pitch)
            )
    return speakers


# -- audio -----------------------------------------------------------------------------------
def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white-to-pink noise at exactly ``snr_db`` (before clipping to [-1, 1]).

    The noise colour is drawn from ``rng``: a spectral slope of ``1/f**alpha`` with alpha in
    [0, 1] (0 is white, 1 is pink). The SNR is measured over the whole signal.

    Args:
        samples: mono float audio.
        snr_db: signal-to-noise ratio in dB.
        rng: the source of the noise.

    Returns:
        float32 noisy audio, clipped to [-1, 1]. Silent input is returned unchanged.
    """
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB, got {snr_db!r}")
    x = np.asarray(samples, dtype=np.float64)
    signal_power = float(np.mean(x**2)) if x.size else 0.0
    if signal_power == 0.0:
        return np.asarray(samples, dtype=np.float32).copy()
    white = rng.standard_normal(x.size)
    alpha = float(rng.uniform(0.0, 1.0))
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(x.size)
    freqs[0] = freqs[1] if freqs.size > 1 else 1.0  # no infinite gain at DC
    noise = np.fft.irfft(spectrum / freqs ** (alpha / 2.0), n=x.size)
    noise -= noise.mean()
    noise *= math.sqrt(signal_power / (float(np.mean(noise**2)) * 10.0 ** (snr_db / 10.0)))
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32)


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return samples
    g = math.gcd(src, dst)
    return resample_poly(samples, dst // g, src // g).astype(np.float32)


# -- corpus ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    num_utterances: int
    seed: int
    accents: tuple[str, ...]
    num_voices: int
    noise_snr_db: float | None
    sample_rate: int
    version: int = _CORPUS_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _validate(params: _Params) -> None:
    """Check everything that needs no espeak; report every problem at once."""
    errors = []
    if not isinstance(params.num_utterances, int) or params.num_utterances < 1:
        errors.append(f"num_utterances must be an integer >= 1, got {params.num_utterances!r}")
    if not isinstance(params.num_voices, int) or params.num_voices < 1:
        errors.append(f"num_voices must be an integer >= 1, got {params.num_voices!r}")
    if not params.accents:
        errors.append("accents must name at least one espeak English accent, got none")
    dups = sorted({a for a in params.accents if params.accents.count(a) > 1})
    if dups:
        errors.append(f"accents must be distinct, got {dups} more than once")
    if not isinstance(params.sample_rate, int) or not 8000 <= params.sample_rate <= 48000:
        errors.append(
            f"sample_rate must be an integer in [8000, 48000] Hz, got {params.sample_rate!r}"
        )
    if params.noise_snr_db is not None and not math.isfinite(params.noise_snr_db):
        errors.append(
            f"noise_snr_db must be a finite number of dB or None, got {params.noise_snr_db!r}"
        )
    if errors:
        raise ValueError("invalid synthetic corpus parameters:\n  " + "\n  ".join(errors))


def _validate_accents(accents: Iterable[str]) -> None:
    valid = _espeak.english_accents()
    unknown = [a for a in accents if a not in valid]
    if unknown:
        raise ValueError(
            f"unknown accent(s) {unknown}: the English accents in the installed espeak-ng data are {valid}"
        )


def _load(corpus_dir: Path) -> Manifest:
    path = corpus_dir / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"synthetic corpus directory {corpus_dir} has no manifest.jsonl; it was not written by "
            "speechtune (which renames a finished corpus into place): delete it and generate again"
        )
    with path.open() as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return Manifest.from_records(records, split="all", root=corpus_dir)


def _synthesize_one(
    index: int, text: str, speaker: SyntheticSpeaker, params: _Params, wav_dir: Path
) -> Utterance:
    espeak_seed = _stable_seed("espeak", params.seed, index)[0]
    samples, native_rate = _espeak.synthesize(
        spoken_form(text), speaker.voice, speaker.rate, speaker.pitch, seed=espeak_seed
    )
    samples = _resample(samples, native_rate, params.sample_rate)
    if params.noise_snr_db is not None:
        rng = np.random.default_rng(_stable_seed("noise", params.seed, index))
        samples = add_noise(samples, params.noise_snr_db, rng)
    samples = np.clip(samples, -1.0, 1.0)
    utt_id = f"{speaker.id}_{index:05d}"
    sf.write(
        wav_dir / f"{utt_id}.wav", samples, params.sample_rate, subtype="PCM_16", format="WAV"
    )
    return Utterance(
        id=utt_id,
        audio=f"wav/{utt_id}.wav",
        duration=samples.size / params.sample_rate,
        text=text,
        speaker=speaker.id,
        group=speaker.accent,
        sample_rate=params.sample_rate,
    )


def _generate(params: _Params, tmp_dir: Path, progress: bool) -> None:
    variants = [v for v in _VARIANTS if v in set(_espeak.variant_names())]
    speakers = draw_speakers(params.accents, params.num_voices, params.seed, variants)
    text_rng = np.random.default_rng(_stable_seed("texts", params.seed))
    texts = [an4_style_text(text_rng) for _ in range(params.num_utterances)]
    wav_dir = tmp_dir / "wav"
    wav_dir.mkdir(parents=True)
    indices: Iterable[int] = range(params.num_utterances)
    if progress:
        from rich.progress import track

        indices = track(indices, description="synthesising", total=params.num_utterances)
    # Round-robin over speakers spreads the utterances evenly (sizes differ by at most one).
    utts = [
        _synthesize_one(i, texts[i], speakers[i % len(speakers)], params, wav_dir) for i in indices
    ]
    Manifest(utts, split="all", root=tmp_dir).to_jsonl(tmp_dir / "manifest.jsonl")
    meta = {"params": asdict(params), "speakers": [asdict(s) for s in speakers]}
    (tmp_dir / "params.json").write_text(json.dumps(meta, indent=2) + "\n")


def synthesize_corpus(
    out_dir: str | Path,
    *,
    num_utterances: int = 600,
    seed: int = 0,
    accents: Sequence[str] = ("en-us", "en", "en-gb-scotland", "en-029"),
    num_voices: int = 8,
    noise_snr_db: float | None = None,
    sample_rate: int = 16000,
    progress: bool = False,
) -> Manifest:
    """Generate (or load from the cache) the AN4-style synthetic corpus.

    Needs the ``synth`` extra (espeak-ng) to generate; a cached corpus loads without it.

    Args:
        out_dir: where corpora are cached; this one goes to
            ``out_dir/synthetic-<hash of the parameters>/`` (``wav/`` and ``manifest.jsonl``).
        num_utterances: how many utterances (>= 1).
        seed: seeds the texts, the speakers and the noise; the same seed gives the same
            texts and the same audio bytes.
        accents: espeak English accents, one manifest group each.
        num_voices: speakers per accent, each a distinct (variant, rate, pitch).
        noise_snr_db: add white-to-pink noise at this SNR; None for clean audio.
        sample_rate: sample rate of the written 16-bit WAV files.
        progress: show a progress bar while generating.

    Returns:
        The manifest (split ``all``), rooted at the corpus directory.

    Raises:
        ValueError: on a bad parameter (all are reported at once) or an unknown accent (the
            message lists the valid ones).
        EspeakUnavailableError: when generation is needed and the ``synth`` extra is missing.
    """
    params = _Params(
        num_utterances=num_utterances,
        seed=seed,
        accents=tuple(accents),
        num_voices=num_voices,
        noise_snr_db=None if noise_snr_db is None else float(noise_snr_db),
        sample_rate=sample_rate,
    )
    _validate(params)
    out_dir = Path(out_dir)
    final = out_dir / f"synthetic-{params.digest()}"
    if final.exists():
        return _load(final)
    _validate_accents(params.accents)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=out_dir))
    try:
        _generate(params, tmp, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.jsonl").is_file():
                raise
            # Another process finished the same corpus first: theirs is identical, keep it.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(final)
