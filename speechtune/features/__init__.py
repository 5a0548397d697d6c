"""Front end: log-mel features, global CMVN, SpecAugment, and the feature cache."""

from speechtune.features._cache import FeatureCache
from speechtune.features._cmvn import GlobalCMVN
from speechtune.features._logmel import LogMel
from speechtune.features._specaugment import SpecAugment

__all__ = ["FeatureCache", "GlobalCMVN", "LogMel", "SpecAugment"]
