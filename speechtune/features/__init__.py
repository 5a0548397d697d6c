"""Front end: log-mel features, global CMVN, SpecAugment, and the feature cache."""

from ._cache import FeatureCache
from ._cmvn import GlobalCMVN
from ._logmel import LogMel
from ._specaugment import SpecAugment

__all__ = ["FeatureCache", "GlobalCMVN", "LogMel", "SpecAugment"]
