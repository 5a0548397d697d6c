"""The Ray Tune backend (Ray is imported only when a study runs on it)."""

from speechtune.tuning.backends.ray._backend import EXPERIMENT, RayBackend

__all__ = ["EXPERIMENT", "RayBackend"]
