"""The TTS recipe's typed configuration: text front end, acoustic model, aligner, training, vocoder.

The same machinery as the ASR recipe's (:func:`speechtune.config.dataclass_from_dict`): unknown
keys, wrong types, choices and bounds are all reported at once, each with its dotted key. The
mel front end is the ASR recipe's own ``features`` section, so that the ASR model that judges
intelligibility and the vocoder see mels computed the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    FeaturesConfig,
    SyntheticConfig,
    dataclass_from_dict,
    merge,
    parse_overrides,
    read_config_mapping,
)

TEXT_KINDS = ("char", "phoneme")
VOCODERS = ("griffin_lim", "neural")

#: The sections a stage-1 (acoustic) study may search; everything under ``vocoder`` is stage 2.
ACOUSTIC_SECTIONS = ("text", "model", "aligner", "train")
VOCODER_SECTIONS = ("vocoder",)


def _f(default: Any, **meta: Any) -> Any:
    """A dataclass field with validation metadata (``choices``, ``ge``/``gt``/``le``/``lt``)."""
    if isinstance(default, (list, dict)):
        kind = type(default)
        return field(default_factory=lambda: kind(default), metadata=meta)
    return field(default=default, metadata=meta)


def _synthetic_default() -> SyntheticConfig:
    # A smaller corpus than the ASR recipe's: a TTS model needs fewer voices to be judged.
    return SyntheticConfig(num_utterances=600, accents=["en-us"], num_voices=4)


@dataclass
class TTSDataConfig:
    """Which utterances train the TTS model and which are held out to judge it."""

    synthetic: SyntheticConfig = field(default_factory=_synthetic_default)
    # Held-out utterances (of speakers seen in training) for MCD and intelligibility.
    num_eval: int = _f(16, ge=1)
    # Cap on the training utterances (None: every utterance not held out).
    max_train: int | None = _f(None, ge=1)
    split_seed: int = _f(0)


@dataclass
class TextConfig:
    """The text front end: characters of the transcript or espeak-ng phonemes."""

    kind: str = _f("char", choices=TEXT_KINDS)
    # espeak-ng voice whose phonemiser turns text into phonemes (kind: phoneme).
    voice: str = _f("en-us")


@dataclass
class AcousticConfig:
    """FastSpeech (Ren et al., 2019): FFT blocks, a duration predictor and a length regulator."""

    d_model: int = _f(128, ge=8)
    num_heads: int = _f(2, ge=1)
    encoder_layers: int = _f(2, ge=1)
    decoder_layers: int = _f(2, ge=1)
    ff_dim: int = _f(256, ge=8)
    ff_kernel: int = _f(3, ge=1)
    dropout: float = _f(0.1, ge=0.0, lt=1.0)
    duration_channels: int = _f(128, ge=8)
    duration_kernel: int = _f(3, ge=1)


@dataclass
class AlignerConfig:
    """The learned soft alignment + monotonic alignment search (Badlani et al., 2021)."""

    channels: int = _f(64, ge=8)
    # Width of the beta-binomial alignment prior (its omega); larger is nearer the diagonal.
    prior_scale: float = _f(1.0, gt=0.0)
    # Weight of the forward-sum (CTC over tokens) loss that trains the soft alignment.
    weight: float = _f(1.0, ge=0.0)


@dataclass
class TTSTrainConfig:
    epochs: int = _f(30, ge=1)
    batch_size: int = _f(16, ge=1)
    lr: float = _f(1.0e-3, gt=0.0)
    weight_decay: float = _f(0.0, ge=0.0)
    warmup_steps: int = _f(50, ge=0)
    grad_clip: float = _f(1.0, gt=0.0)
    duration_weight: float = _f(1.0, ge=0.0)


@dataclass
class GriffinLimConfig:
    """Fast Griffin-Lim (Perraudin et al., 2013) after a non-negative least-squares mel inverse."""

    n_iter: int = _f(32, ge=1, le=1000)
    momentum: float = _f(0.99, ge=0.0, lt=2.0)
    # Multiplicative-update iterations of the NNLS mel -> linear power inverse.
    nnls_iter: int = _f(30, ge=0, le=1000)


@dataclass
class NeuralVocoderConfig:
    """A Vocos-style vocoder: ConvNeXt blocks at frame rate predict STFT magnitude and phase."""

    channels: int = _f(128, ge=8)
    num_blocks: int = _f(4, ge=1)
    kernel: int = _f(7, ge=1)
    steps: int = _f(1500, ge=1)
    batch_size: int = _f(8, ge=1)
    segment_frames: int = _f(32, ge=4)
    lr: float = _f(2.0e-3, gt=0.0)
    # Weight of the log-mel L1 loss beside the multi-resolution STFT loss.
    mel_weight: float = _f(1.0, ge=0.0)


@dataclass
class VocoderConfig:
    kind: str = _f("griffin_lim", choices=VOCODERS)
    griffin_lim: GriffinLimConfig = field(default_factory=GriffinLimConfig)
    neural: NeuralVocoderConfig = field(default_factory=NeuralVocoderConfig)


def _tts_features() -> FeaturesConfig:
    # The ASR recipe's front end (conf/synthetic.yaml): 16 kHz, 25/10 ms, 64 mels.
    return FeaturesConfig(sample_rate=16000, window_ms=25.0, hop_ms=10.0, n_mels=64)


@dataclass
class TTSConfig:
    """The whole TTS recipe (``conf/tts_synthetic.yaml``)."""

    seed: int = _f(0)
    data: TTSDataConfig = field(default_factory=TTSDataConfig)
    features: FeaturesConfig = field(default_factory=_tts_features)
    text: TextConfig = field(default_factory=TextConfig)
    model: AcousticConfig = field(default_factory=AcousticConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    train: TTSTrainConfig = field(default_factory=TTSTrainConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)


def _cross_checks(cfg: TTSConfig) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    m = cfg.model
    if m.d_model % m.num_heads:
        out.append(
            ConfigProblem(
                "model.d_model", f"must be divisible by model.num_heads={m.num_heads}", m.d_model
            )
        )
    for key in ("ff_kernel", "duration_kernel"):
        if getattr(m, key) % 2 == 0:
            out.append(
                ConfigProblem(
                    f"model.{key}", "must be odd (same-length convolution)", getattr(m, key)
                )
            )
    if cfg.vocoder.neural.kernel % 2 == 0:
        out.append(
            ConfigProblem(
                "vocoder.neural.kernel",
                "must be odd (same-length convolution)",
                cfg.vocoder.neural.kernel,
            )
        )
    fe = cfg.features
    if fe.hop_ms > fe.window_ms:
        out.append(
            ConfigProblem(
                "features.hop_ms", f"must be <= features.window_ms={fe.window_ms}", fe.hop_ms
            )
        )
    if fe.sample_rate != cfg.data.synthetic.sample_rate:
        out.append(
            ConfigProblem(
                "features.sample_rate",
                f"must equal data.synthetic.sample_rate={cfg.data.synthetic.sample_rate} (the "
                "vocoder speaks at the corpus' rate)",
                fe.sample_rate,
            )
        )
    if cfg.data.num_eval >= cfg.data.synthetic.num_utterances:
        out.append(
            ConfigProblem(
                "data.num_eval",
                f"must be < data.synthetic.num_utterances={cfg.data.synthetic.num_utterances}",
                cfg.data.num_eval,
            )
        )
    return out


def tts_config_from_dict(data: Mapping[str, Any] | None, source: str | None = None) -> TTSConfig:
    """Build and validate a :class:`TTSConfig` from a nested dict.

    Raises:
        ConfigError: every problem at once, each with its dotted key, the rule and the value.
    """
    cfg = dataclass_from_dict(TTSConfig, dict(data or {}), source)
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_tts_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TTSConfig:
    """Load a TTS recipe YAML (or the defaults when ``path`` is None) with dotted overrides.

    Args:
        path: the YAML file (read with ``yaml.safe_load``).
        overrides: ``["model.d_model=64", ...]``.

    Raises:
        ConfigError: a file that cannot be read or parsed, or any invalid key or value.
    """
    data = read_config_mapping(path) if path is not None else {}
    if overrides:
        data = merge(data, parse_overrides(overrides))
    source = None if path is None else str(path)
    return tts_config_from_dict(data, source)


def tts_config_to_dict(cfg: TTSConfig) -> dict[str, Any]:
    """The plain nested dict of ``cfg`` (round-trips through :func:`tts_config_from_dict`)."""
    return dataclasses.asdict(cfg)


def dump_tts_config(cfg: TTSConfig, path: str | Path) -> None:
    """Write a complete, reloadable YAML of ``cfg``."""
    Path(path).write_text(yaml.safe_dump(tts_config_to_dict(cfg), sort_keys=False))
