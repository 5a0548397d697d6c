"""A trained TTS model (acoustic model + vocoder + token table + speakers) saved as one file.

``model.pt`` holds tensors and plain values only: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechtune.tts._config import TTSConfig, tts_config_from_dict, tts_config_to_dict
from speechtune.tts._data import frontend_of
from speechtune.tts._model import FastSpeech
from speechtune.tts._text import TokenTable, text_symbols
from speechtune.tts._vocoder import GriffinLim, NeuralVocoder

FORMAT = "speechtune-tts"
FORMAT_VERSION = 1
#: Log-mel power of silence (the front end's floor, 1e-10, before its log).
_SILENT = math.log(1e-10)


def build_acoustic(cfg: TTSConfig, tokens: TokenTable, num_speakers: int) -> FastSpeech:
    """The acoustic model of ``cfg`` for a token table and a number of speakers."""
    return FastSpeech(cfg.model, cfg.aligner, tokens.size, num_speakers, cfg.features.n_mels)


class Synthesizer:
    """Text (+ speaker) -> waveform.

    Args:
        cfg: the recipe the model was trained with.
        tokens: the text front end's token table.
        speakers: speaker ids, by embedding index.
        acoustic: the trained acoustic model.
        mel_mean, mel_std: ``[n_mels]`` statistics the acoustic model's mels are normalised by.
        vocoder: the trained neural vocoder, or None for Griffin-Lim (``cfg.vocoder.kind``).
    """

    def __init__(
        self,
        cfg: TTSConfig,
        tokens: TokenTable,
        speakers: Sequence[str],
        acoustic: FastSpeech,
        mel_mean: Tensor,
        mel_std: Tensor,
        vocoder: NeuralVocoder | None = None,
    ):
        self.cfg = cfg
        self.tokens = tokens
        self.speakers = tuple(speakers)
        self.acoustic = acoustic.eval()
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.frontend = frontend_of(cfg)
        if cfg.vocoder.kind == "neural" and vocoder is None:
            raise ValueError("vocoder.kind is neural but no trained neural vocoder was given")
        self.vocoder = (
            vocoder.eval() if vocoder is not None and cfg.vocoder.kind == "neural" else None
        )
        self.griffin_lim = GriffinLim(self.frontend, cfg.vocoder.griffin_lim, seed=cfg.seed)

    @property
    def sample_rate(self) -> int:
        return self.cfg.features.sample_rate

    def speaker_index(self, speaker: str | None) -> int:
        """The embedding index of ``speaker`` (None: the first speaker)."""
        if speaker is None:
            return 0
        if speaker not in self.speakers:
            raise ValueError(
                f"unknown speaker {speaker!r}; this model knows {', '.join(self.speakers)}"
            )
        return self.speakers.index(speaker)

    @torch.no_grad()
    def log_mels(self, texts: Sequence[str], speakers: Sequence[str | None]) -> list[Tensor]:
        """Un-normalised ``[T, n_mels]`` log-mel power of each text, one by one (no padding)."""
        out = []
        for text, speaker in zip(texts, speakers):
            ids = self.tokens.encode(text_symbols(text, self.cfg.text))
            mel, lengths = self.acoustic.infer(
                torch.tensor([ids]),
                torch.tensor([len(ids)]),
                torch.tensor([self.speaker_index(speaker)]),
            )
            out.append(mel[0, : int(lengths[0])] * self.mel_std + self.mel_mean)
        return out

    @torch.no_grad()
    def vocode(self, log_mel: Tensor) -> np.ndarray:
        """``[T, n_mels]`` log-mel power -> float32 samples in [-1, 1].

        An utterance shorter than one STFT window (an under-trained model may say almost
        nothing) is padded with silent frames, so that it still becomes audio to be judged.
        """
        min_frames = self.frontend.n_fft // self.frontend.hop_length + 2
        if log_mel.shape[0] < min_frames:
            silence = log_mel.new_full((min_frames - log_mel.shape[0], log_mel.shape[1]), _SILENT)
            log_mel = torch.cat([log_mel, silence])
        if self.vocoder is not None:
            wave = self.vocoder(log_mel[None])[0]
        else:
            wave = self.griffin_lim(log_mel)
        return wave.clamp(-1.0, 1.0).numpy().astype(np.float32)

    def synthesize(self, text: str, speaker: str | None = None) -> np.ndarray:
        """Say ``text`` in ``speaker``'s voice (None: the first speaker)."""
        return self.vocode(self.log_mels([text], [speaker])[0])

    # -- persistence -------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": tts_config_to_dict(self.cfg),
            "tokens": list(self.tokens.symbols),
            "speakers": list(self.speakers),
            "acoustic": self.acoustic.state_dict(),
            "mel_mean": self.mel_mean,
            "mel_std": self.mel_std,
            "vocoder": self.vocoder.state_dict() if self.vocoder is not None else None,
        }

    def save(self, path: str | Path) -> None:
        torch.save(self.to_payload(), Path(path))

    @classmethod
    def load(cls, path: str | Path, cfg: TTSConfig | None = None) -> Synthesizer:
        """Load a TTS ``model.pt`` (or the run directory holding one) with ``weights_only=True``.

        Args:
            path: the file or its run directory.
            cfg: use this recipe's vocoder settings instead of the saved ones (stage 2 swaps
                the vocoder under a frozen acoustic model); None: the saved recipe.

        Raises:
            FileNotFoundError: nothing there.
            ValueError: not a speechtune TTS model (one line naming the file).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"TTS model file {path}: not found (expected a model.pt written by `speechtune tts train`)"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds on a foreign file
            raise ValueError(
                f"TTS model file {path}: not a torch file of tensors ({type(exc).__name__})"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(
                f"TTS model file {path}: not a speechtune TTS model (expected format {FORMAT!r})"
            )
        saved = tts_config_from_dict(payload["config"])
        # Only the vocoder may differ from the recipe the acoustic model was trained with.
        cfg = saved if cfg is None else dataclasses.replace(saved, vocoder=cfg.vocoder)
        tokens = TokenTable(tuple(payload["tokens"]))
        acoustic = build_acoustic(saved, tokens, len(payload["speakers"]))
        acoustic.load_state_dict(payload["acoustic"])
        vocoder = None
        if cfg.vocoder.kind == "neural" and payload.get("vocoder") is not None:
            vocoder = NeuralVocoder(frontend_of(cfg), cfg.vocoder.neural)
            vocoder.load_state_dict(payload["vocoder"])
        return cls(
            cfg,
            tokens,
            payload["speakers"],
            acoustic,
            payload["mel_mean"],
            payload["mel_std"],
            vocoder,
        )
