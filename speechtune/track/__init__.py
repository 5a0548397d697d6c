"""MLflow tracking of studies (a parent run per study, a nested run per trial)."""

from ._mlflow import StudyTracker, default_tracking_uri

__all__ = ["StudyTracker", "default_tracking_uri"]
