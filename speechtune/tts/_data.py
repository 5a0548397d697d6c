"""The TTS training and held-out sets: the synthetic multi-speaker corpus as tokens, speaker ids,
log-mel frames and waveforms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechtune.data import DEFAULT_CHARSET, Manifest, load_audio, synthesize_configured
from speechtune.features import LogMel
from speechtune.tts._config import TTSConfig
from speechtune.tts._text import TokenTable, text_symbols


@dataclass(frozen=True)
class TTSItem:
    """One utterance: what is said, by whom, its log-mel power frames and its samples."""

    id: str
    text: str
    speaker: str
    symbols: tuple[str, ...]
    log_mel: Tensor  # [T, n_mels]
    wave: np.ndarray


@dataclass(frozen=True)
class TTSData:
    train: list[TTSItem]
    eval: list[TTSItem]
    speakers: tuple[str, ...]
    tokens: TokenTable


def frontend_of(cfg: TTSConfig) -> LogMel:
    """The log-mel front end of the recipe (the ASR recipe's features section)."""
    return LogMel.from_config(cfg.features)


def log_mel_of(wave: np.ndarray, frontend: LogMel) -> Tensor:
    """``[T, n_mels]`` log-mel power of one waveform."""
    w = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
    with torch.no_grad():
        feats, _ = frontend(w, torch.tensor([w.shape[1]]))
    return feats[0]


def split_ids(manifest: Manifest, cfg: TTSConfig) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out utterances.

    The held-out utterances are drawn with ``data.split_seed`` among speakers that keep at
    least one training utterance (a speaker embedding must have been trained to be judged).
    """
    rng = np.random.default_rng(cfg.data.split_seed)
    order = [int(i) for i in rng.permutation(len(manifest))]
    held: list[int] = []
    left = {spk: sum(1 for u in manifest if u.speaker == spk) for spk in manifest.speakers}
    for i in order:
        if len(held) == cfg.data.num_eval:
            break
        spk = manifest[i].speaker
        if left[spk] > 1:
            held.append(i)
            left[spk] -= 1
    held_set = set(held)
    train = [i for i in order if i not in held_set]
    if cfg.data.max_train is not None:
        train = train[: cfg.data.max_train]
    return sorted(train), sorted(held)


def prepare_tts_data(
    cfg: TTSConfig, cache_dir: str | Path, tokens: TokenTable | None = None
) -> TTSData:
    """Generate (or load) the corpus and compute every utterance's symbols and log-mels.

    Args:
        cfg: the recipe.
        cache_dir: the corpus cache (``CACHE/corpora``, shared with the ASR recipe).
        tokens: the token table of an existing model (stage 2 reuses the stage-1 winner's);
            None builds it from the training texts.
    """
    manifest = synthesize_configured(Path(cache_dir) / "corpora", cfg.data.synthetic)
    frontend = frontend_of(cfg)
    train_ids, eval_ids = split_ids(manifest, cfg)

    def item(i: int) -> TTSItem:
        utt = manifest[i]
        wave = load_audio(manifest, utt, cfg.features.sample_rate)
        return TTSItem(
            utt.id,
            utt.text,
            str(utt.speaker),
            tuple(text_symbols(utt.text, cfg.text)),
            log_mel_of(wave, frontend),
            wave,
        )

    train = [item(i) for i in train_ids]
    held = [item(i) for i in eval_ids]
    # Too few frames for the tokens: no monotonic alignment exists (never seen on this corpus).
    train = [it for it in train if len(it.symbols) <= it.log_mel.shape[0]]
    speakers = tuple(sorted({it.speaker for it in train}))
    # The table is the input alphabet, not something learned: the held-out texts' symbols and,
    # for characters, the whole English charset (a symbol never trained keeps its initial
    # embedding, but every text in the alphabet can be said).
    alphabet = [tuple(sorted(DEFAULT_CHARSET))] if cfg.text.kind == "char" else []
    table = (
        tokens
        if tokens is not None
        else TokenTable.build([*(it.symbols for it in train + held), *alphabet])
    )
    return TTSData(train, held, speakers, table)
