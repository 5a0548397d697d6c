"""The raw-waveform front end (``features.kind: waveform``) and the one front-end mapping.

Encoders pretrained on audio (Wav2Vec2, HuBERT: ``model.encoder: hf_wav2vec2``) read samples,
not log-mels. Their "features" are the samples as ``[T, 1]``, each utterance normalised to zero
mean and unit variance over its own samples, as transformers' ``Wav2Vec2FeatureExtractor``
does (``do_normalize=True``), so that they flow through the same cache, batching and
:class:`~speechtune.inference.Recognizer` as log-mels do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from speechtune.config import FeaturesConfig
from speechtune.features._logmel import LogMel
from speechtune.features._whisper import WhisperLogMel

# Wav2Vec2FeatureExtractor's epsilon: silence stays silence instead of dividing by zero.
_EPS = 1e-7


class Waveform(nn.Module):
    """Normalised samples of a padded batch: ``[B, T]`` -> ``([B, T, 1], lengths)``.

    Padding stays zero and never enters an utterance's statistics, so a batch gives each
    utterance exactly what it gets alone.
    """

    #: Samples per output "frame": every sample is one (as LogMel's hop_length, for callers
    #: that turn frames into time).
    hop_length = 1

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise each utterance of ``waves [B, T]`` (``lengths [B]`` valid samples)."""
        lengths = lengths.to(waves.device)
        valid = torch.arange(waves.size(1), device=waves.device)[None, :] < lengths[:, None]
        x = waves.float() * valid
        n = lengths.clamp(min=1).unsqueeze(1).to(x.dtype)
        mean = x.sum(1, keepdim=True) / n
        var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
        out = (x - mean) / torch.sqrt(var + _EPS) * valid
        return out.unsqueeze(-1), lengths


def _waveform(cfg: FeaturesConfig) -> Waveform:
    return Waveform()


#: ``features.kind`` -> its front end (waves ``[B, T]``, lengths ``[B]``) -> (feats, frames).
FRONT_ENDS: dict[str, Callable[[FeaturesConfig], LogMel | Waveform | WhisperLogMel]] = {
    "logmel": LogMel.from_config,
    "waveform": _waveform,
    "whisper": WhisperLogMel.from_config,
}


def build_frontend(cfg: FeaturesConfig) -> LogMel | Waveform | WhisperLogMel:
    """The front end ``cfg.kind`` names.

    Raises:
        ValueError: an unknown kind (the valid ones are listed).
    """
    if cfg.kind not in FRONT_ENDS:
        raise ValueError(
            f"features.kind={cfg.kind!r} is not known; expected one of {list(FRONT_ENDS)}"
        )
    return FRONT_ENDS[cfg.kind](cfg)
