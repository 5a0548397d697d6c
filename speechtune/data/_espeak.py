"""A small ctypes binding to libespeak-ng, used only to generate the synthetic corpus.

espeak-ng is GPL-3, so it is an optional extra (``pip install speechtune[synth]``) and the
``espeakng_loader`` wheel that ships the library is imported lazily, inside functions: the
training and tuning code never loads it.

The library keeps global state (the current voice, parameters and the synth callback), so
every call into it goes through one process-wide lock. Some of that state can never be reset
through the API (e.g. a static pitch-flutter phase in the wave generator), so the audio of an
utterance would depend on everything synthesised before it in the process. To make each call a
pure function of its arguments, every call loads a *fresh* instance of the library and unloads
it afterwards (a few milliseconds). The instance is loaded from a private copy of the ``.so`` so
that no other user of libespeak-ng in the process can keep it (and its state) alive. espeak-ng
also seeds its noise generator (breathy voices) from the clock; every call seeds it explicitly.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import ctypes.util
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EspeakUnavailableError",
    "english_accents",
    "english_voice_names",
    "synthesize",
    "text_to_phonemes",
    "variant_names",
]

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() on a bad data path
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_RATE, _PITCH, _RANGE = 1, 3, 4
_BUFLENGTH_MS = 200

#: Seconds of silence kept before and after the speech when trimming.
KEEP_SILENCE_S = 0.05
#: Amplitude (of full scale) below which a sample counts as silence when trimming.
_SILENCE_THRESHOLD = 0.01

_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakUnavailableError(ImportError):
    """Raised when the optional espeak-ng dependency (the ``synth`` extra) is missing."""


class _Voice(ctypes.Structure):
    # espeak_VOICE, as returned by espeak_ListVoices.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


@dataclass
class _Engine:
    """One loaded, initialised instance of libespeak-ng."""

    lib: ctypes.CDLL
    libc: ctypes.CDLL
    data_path: Path
    sample_rate: int
    chunks: list[np.ndarray]
    callback: object  # keeps the ctypes callback alive for as long as the library holds it


_LOCK = threading.RLock()
# POSIX has dlclose; Windows has FreeLibrary.
_unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")  # noqa: B009 (Windows only)
_PRIVATE_LIB: Path | None = None


def _loader_paths() -> tuple[str, Path]:
    try:
        import espeakng_loader  # GPL-3 optional extra: imported lazily on purpose
    except ImportError as exc:
        raise EspeakUnavailableError(
            "the synthetic corpus needs espeak-ng, which is an optional extra: "
            "install it with `pip install speechtune[synth]` (it provides the espeakng-loader wheel)"
        ) from exc
    return espeakng_loader.get_library_path(), Path(espeakng_loader.get_data_path())


def _private_library(lib_path: str) -> Path:
    """A copy of the library that only this module dlopens (caller holds ``_LOCK``)."""
    global _PRIVATE_LIB
    if _PRIVATE_LIB is None or not _PRIVATE_LIB.exists():
        tmp = Path(tempfile.mkdtemp(prefix="speechtune-espeak-"))
        atexit.register(shutil.rmtree, tmp, True)
        _PRIVATE_LIB = tmp / Path(lib_path).name
        shutil.copy2(lib_path, _PRIVATE_LIB)
    return _PRIVATE_LIB


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None


@contextmanager
def _fresh_engine() -> Iterator[_Engine]:
    """Load, initialise, yield, then terminate and unload one library instance.

    Holds ``_LOCK`` throughout: the library's state is global to the instance.
    """
    with _LOCK:
        lib_path, data_path = _loader_paths()
        private = _private_library(lib_path)
        try:
            lib = ctypes.CDLL(str(private))
        except OSError as exc:
            raise EspeakUnavailableError(
                f"could not load libespeak-ng from {lib_path}: {exc}"
            ) from exc
        try:
            _declare(lib)
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS,
                _BUFLENGTH_MS,
                str(data_path).encode(),
                _INITIALIZE_DONT_EXIT,
            )
            if rate <= 0:
                raise RuntimeError(
                    f"espeak_Initialize failed (returned {rate}) with data path {data_path}"
                )
            chunks: list[np.ndarray] = []

            def _on_audio(wav: Any, n: int, _events: Any) -> int:
                if n > 0 and wav:
                    chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
                return 0  # 0 = carry on synthesising

            callback = _CALLBACK_TYPE(_on_audio)
            lib.espeak_SetSynthCallback(callback)
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            try:
                yield _Engine(lib, libc, data_path, rate, chunks, callback)
            finally:
                lib.espeak_Terminate()  # frees what espeak allocated before we unload it
        finally:
            # Unloading resets the library's static variables for the next call.
            _unload(lib._handle)


def _english_lang_files(data_path: Path) -> list[Path]:
    return sorted(p for p in (data_path / "lang").rglob("en*") if p.is_file())


def english_accents() -> list[str]:
    """English accent (language) names found in the installed espeak-ng data.

    Returns:
        Sorted names such as ``en``, ``en-us``, ``en-gb-scotland``, ``en-029``: each file's
        name, lower-cased, and the first language code it declares. The Shavian-alphabet
        "accent" is left out: it is a script, not a pronunciation.

    Raises:
        EspeakUnavailableError: when the ``synth`` extra is not installed.
    """
    _, data_path = _loader_paths()
    names: set[str] = set()
    for path in _english_lang_files(data_path):
        if "shaw" in path.name.lower():
            continue
        names.add(path.name.lower())
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "language":
                names.add(parts[1].lower())
                break
    return sorted(names)


def variant_names() -> list[str]:
    """Voice variants (``m1``, ``f3``, ``klatt``, ``croak``, ...) in the espeak-ng data."""
    _, data_path = _loader_paths()
    return sorted(p.name for p in (data_path / "voices" / "!v").iterdir() if p.is_file())


def english_voice_names() -> list[str]:
    """Voice names espeak-ng itself lists for English (as ``espeak_ListVoices`` reports them)."""
    with _fresh_engine() as eng:
        voices = eng.lib.espeak_ListVoices(None)
        out: list[str] = []
        i = 0
        while voices[i]:
            v = voices[i].contents
            # ``languages`` is a list of (priority byte, name, NUL) ending in an empty name;
            # the first name is the voice's own language.
            lang = (v.languages or b"")[1:].decode(errors="replace")
            if lang.startswith("en"):
                out.append(lang)
            i += 1
    return sorted(set(out))


def _trim(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``KEEP_SILENCE_S`` of it on each side."""
    loud = np.flatnonzero(np.abs(samples) > _SILENCE_THRESHOLD)
    if loud.size == 0:
        return samples
    keep = int(round(KEEP_SILENCE_S * sample_rate))
    start = max(0, int(loud[0]) - keep)
    end = min(samples.size, int(loud[-1]) + 1 + keep)
    return samples[start:end]


def _set_voice(eng: _Engine, voice: str) -> None:
    # espeak silently ignores an unknown variant, so check it here.
    _, _, variant = voice.partition("+")
    rc = eng.lib.espeak_SetVoiceByName(voice.encode())
    if rc != _EE_OK or (variant and variant not in variant_names()):
        raise ValueError(
            f"espeak-ng has no voice {voice!r} (error {rc}); use '<accent>' or '<accent>+<variant>' "
            f"with an English accent from {english_accents()} and a variant from {variant_names()}"
        )


def text_to_phonemes(text: str, voice: str) -> str:
    """espeak-ng's phonemes (its ASCII mnemonics) for ``text``; clauses joined by ``" | "``.

    Used to check that the audio says what the transcript says (e.g. that a spelled letter
    is spoken as the letter's name).

    Args:
        text: plain text.
        voice: ``language`` or ``language+variant``, e.g. ``en-us``.

    Returns:
        The phoneme string, with stress marks, as ``espeak-ng -x`` prints it.
    """
    with _fresh_engine() as eng:
        _set_voice(eng, voice)
        buf = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        clauses: list[str] = []
        # espeak_TextToPhonemes converts one clause per call and advances the pointer.
        while ptr.value:
            out = eng.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)
            clauses.append((out or b"").decode(errors="replace").strip())
    return " | ".join(c for c in clauses if c)


def synthesize(
    text: str, voice: str, rate: int, pitch: int, *, pitch_range: int = 50, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng.

    Args:
        text: what to say (plain text, UTF-8).
        voice: ``language`` or ``language+variant``, e.g. ``en-us+f3``.
        rate: speaking rate in words per minute (espeak accepts 80-450).
        pitch: base pitch, 0-100 (espeak's default is 50).
        pitch_range: pitch range, 0-100 (0 is a monotone).
        seed: seeds espeak's noise generator (breathy variants such as ``f2``, Klatt voices),
            which espeak-ng otherwise seeds from the clock: the same arguments then always
            give the same samples.

    Returns:
        ``(samples, sample_rate)``: mono float32 audio in [-1, 1], trimmed to ~50 ms of
        silence at each end, and espeak's native sample rate (22050 Hz).

    Raises:
        EspeakUnavailableError: when the ``synth`` extra is not installed.
        ValueError: on an unknown voice or variant (the message lists the English accents and
            the variants) or a value out of range.
        RuntimeError: when espeak-ng reports a synthesis error or produces no audio.
    """
    for name, value, lo, hi in (
        ("rate", rate, 80, 450),
        ("pitch", pitch, 0, 100),
        ("pitch_range", pitch_range, 0, 100),
    ):
        if not lo <= value <= hi:
            raise ValueError(f"espeak {name} must be in [{lo}, {hi}], got {value!r}")
    if not text.strip():
        raise ValueError("espeak text must not be empty")
    with _fresh_engine() as eng:
        _set_voice(eng, voice)
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            rc = eng.lib.espeak_SetParameter(param, int(value), 0)
            if rc != _EE_OK:
                raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed with error {rc}")
        # espeak_Initialize seeds espeak's own generator with time(NULL); some of its code
        # also calls libc rand(). Seed both so the audio is a function of the arguments.
        eng.lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)
        eng.libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        eng.chunks.clear()
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        rc = eng.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if rc != _EE_OK:
            raise RuntimeError(
                f"espeak_Synth failed with error {rc} for text {text!r} and voice {voice!r}"
            )
        pcm = np.concatenate(eng.chunks) if eng.chunks else np.zeros(0, np.int16)
        eng.chunks.clear()
        sample_rate = eng.sample_rate
    if pcm.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for text {text!r} and voice {voice!r}")
    samples = pcm.astype(np.float32) / 32768.0
    return _trim(samples, sample_rate), sample_rate
