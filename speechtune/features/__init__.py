"""Front end: log-mel features, global CMVN, SpecAugment, speed perturbation, the feature cache."""

from speechtune.features._cache import FeatureCache
from speechtune.features._cmvn import GlobalCMVN
from speechtune.features._logmel import LogMel
from speechtune.features._specaugment import SpecAugment
from speechtune.features._speed import speed_perturb

__all__ = ["FeatureCache", "GlobalCMVN", "LogMel", "SpecAugment", "speed_perturb"]
