"""Front end: log-mel features (speechtune's or Whisper's) or normalised waveforms, global CMVN, SpecAugment, speed
perturbation, the feature cache."""

from speechtune.features._cache import FeatureCache
from speechtune.features._cmvn import GlobalCMVN
from speechtune.features._logmel import LogMel
from speechtune.features._specaugment import SpecAugment
from speechtune.features._speed import speed_perturb
from speechtune.features._waveform import FRONT_ENDS, Waveform, build_frontend
from speechtune.features._whisper import WhisperLogMel

__all__ = [
    "FRONT_ENDS",
    "FeatureCache",
    "GlobalCMVN",
    "LogMel",
    "SpecAugment",
    "Waveform",
    "WhisperLogMel",
    "build_frontend",
    "speed_perturb",
]
