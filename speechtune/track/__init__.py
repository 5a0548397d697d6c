"""MLflow tracking of studies (a parent run per study, a nested run per trial) and the model registry."""

from speechtune.track._mlflow import StudyTracker, default_tracking_uri
from speechtune.track._registry import (
    ModelRegistry,
    RegisteredModel,
    RegistryError,
    code_version,
    mask_uri,
)

__all__ = [
    "ModelRegistry",
    "RegisteredModel",
    "RegistryError",
    "StudyTracker",
    "code_version",
    "default_tracking_uri",
    "mask_uri",
]
