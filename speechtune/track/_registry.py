"""The MLflow model registry: register a trained model with its lineage, move aliases, export.

A model is a directory (``model.pt``, ``config.yaml``, ``metrics.json``). It is logged as plain
artifacts under ``model/`` of one MLflow run, and the model version points at that folder. No
MLflow flavour (``mlflow.pytorch``/``pyfunc``) is used: they are slow, pickle the model and tie
the registry to MLflow's loader, while ``Recognizer.load`` already reads the checkpoint.

As in :mod:`speechtune.track._mlflow`, only ``MlflowClient`` calls with explicit ids are used,
and the default store is ``sqlite:///<store_dir>/mlflow.db`` with artifacts in
``<store_dir>/mlruns`` (MLflow 3.17 refuses the plain file store without an opt-in).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from speechtune._urls import mask_url as mask_uri
from speechtune._urls import scrub
from speechtune._version import __version__
from speechtune.config import flatten
from speechtune.track._mlflow import _key, _param_value, default_tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
EXPORT_TAG = "speechtune.export"
MODEL_ARTIFACT_PATH = "model"
LINEAGE_FILE = "lineage.json"
_MAX_TAG_CHARS = 5000  # MLflow's limit for a model version tag value (run tags allow more)
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
_PROBE_TIMEOUT_S = 5.0
_GIT_TIMEOUT_S = 10.0
_READY_TIMEOUT_S = 300.0


class RegistryError(RuntimeError):
    """The registry cannot do what was asked: server unreachable, model directory unusable, ..."""


@dataclass(frozen=True)
class RegisteredModel:
    """One version of a registered model.

    Attributes:
        name: Registered model name.
        version: Version number, as MLflow's string.
        run_id: The MLflow run that holds the model's files and lineage.
        source: Where the version's files are (the run's ``model/`` artifact URI).
        aliases: Aliases pointing at this version (e.g. ``("champion",)``).
        tags: The version's tags.
        metrics: The latest value of each metric of its run.
    """

    name: str
    version: str
    run_id: str
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # git missing, hung, cwd gone
        return None
    return done.stdout if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The version of the speechtune code that is running, for lineage.

    Returns:
        ``{"package": speechtune.__version__, "git_commit": sha | None, "git_dirty": bool | None}``.
        The git fields are None when the package is not a git checkout or git is unavailable.
        ``git_dirty`` counts changes to tracked files only (untracked scratch files do not
        change what runs).
    """
    package_dir = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {"package": __version__, "git_commit": None, "git_dirty": None}
    # An installed copy can sit inside some unrelated repository (a venv within a checkout):
    # only trust git when the package's own file is tracked there.
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return out
    commit = _git(["rev-parse", "HEAD"], package_dir)
    if commit is None:
        return out
    out["git_commit"] = commit.strip()
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    out["git_dirty"] = None if status is None else bool(status.strip())
    return out


def _probe(uri: str) -> None:
    """Fail fast when an HTTP tracking server does not accept connections.

    MLflow's own client retries a refused connection for minutes before giving up.
    """
    try:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # e.g. an unencoded "/" in a password reads as a bad port: MLflow decides
        return
    try:
        socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RegistryError(
            f"cannot reach the MLflow tracking server {mask_uri(uri)}: {scrub(exc, [uri])}"
        ) from exc


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {_key(k): str(v)[:_MAX_TAG_CHARS] for k, v in tags.items()}


class ModelRegistry:
    """A registered model in an MLflow model registry, with the operations a release gate needs.

    Args:
        tracking_uri: MLflow tracking (and registry) URI; None means a local SQLite store in
            ``store_dir``.
        model_name: The registered model's name (quotes are not allowed: it goes into filters).
        store_dir: Directory of the local store (required when ``tracking_uri`` is None). With
            an explicit ``sqlite:`` URI it also holds the artifacts (``<store_dir>/mlruns``).
        experiment: MLflow experiment of the registration runs (created when missing).

    Raises:
        RegistryError: The server is unreachable, the store cannot be opened, or the
            arguments are inconsistent.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        model_name: str,
        *,
        store_dir: Path | None = None,
        experiment: str = "speechtune-registry",
    ) -> None:
        if tracking_uri is None and store_dir is None:
            raise RegistryError(
                "ModelRegistry needs a tracking_uri or a store_dir for a local store"
            )
        if not model_name or any(c in model_name for c in "'`\""):
            raise RegistryError(f"invalid registered model name {model_name!r} (empty or quoted)")
        self.model_name = model_name
        self.store_dir = Path(store_dir).resolve() if store_dir is not None else None
        if tracking_uri is None:
            assert self.store_dir is not None
            self.store_dir.mkdir(parents=True, exist_ok=True)
            tracking_uri = default_tracking_uri(self.store_dir)
        self.tracking_uri = tracking_uri
        _probe(tracking_uri)
        # The registry URI is pinned to the tracking URI: MLFLOW_REGISTRY_URI in the
        # environment must not split a model's runs and its versions across two stores.
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment)
        except Exception as exc:  # MLflow, SQLAlchemy or OS errors alike: say which store failed
            masked = mask_uri(tracking_uri)
            # Driver messages may quote the URI, credentials included.
            detail = scrub(exc, [tracking_uri])
            raise RegistryError(
                f"cannot open the MLflow store {masked}: {type(exc).__name__}: {detail}"
            ) from exc

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # A local database would put artifacts in ./mlruns of the *current* directory; keep them
        # next to the store instead. A server decides for itself.
        local = self.store_dir is not None and urlsplit(self.tracking_uri).scheme == "sqlite"
        location = (self.store_dir / "mlruns").as_uri() if local and self.store_dir else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = self.client.get_experiment_by_name(name)  # created concurrently
            if existing is None:
                raise
            return str(existing.experiment_id)

    # -- reading -------------------------------------------------------------------------
    def _alias_map(self) -> dict[str, tuple[str, ...]]:
        """Version -> its aliases, from the registered model (the one place that is complete:
        ``search_model_versions`` returns versions without their aliases)."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if _not_found(exc):
                return {}
            raise
        out: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            out.setdefault(str(version), []).append(alias)
        return {version: tuple(sorted(names)) for version, names in out.items()}

    def _model(
        self, version: Any, aliases: Mapping[str, tuple[str, ...]] | None = None
    ) -> RegisteredModel:
        if aliases is None:
            aliases = self._alias_map()
        try:
            metrics = (
                dict(self.client.get_run(version.run_id).data.metrics) if version.run_id else {}
            )
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            metrics = {}  # the run was deleted; the version still exists
        return RegisteredModel(
            name=version.name,
            version=str(version.version),
            run_id=version.run_id or "",
            source=version.source,
            aliases=aliases.get(str(version.version), ()),
            tags=dict(version.tags or {}),
            metrics=metrics,
        )

    def version_by_alias(self, alias: str) -> RegisteredModel | None:
        """The version ``alias`` points at; None when the model or the alias does not exist."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise
        # Reading the alias map avoids telling "no such alias" apart by error code, which
        # MLflow reports as a generic INVALID_PARAMETER_VALUE.
        version = (registered.aliases or {}).get(alias)
        if version is None:
            return None
        return self._model(self.client.get_model_version(self.model_name, str(version)))

    def champion(self) -> RegisteredModel | None:
        """The production version (alias ``champion``), or None before the first promotion."""
        return self.version_by_alias(CHAMPION)

    def find_version(self, tag: str, value: str) -> RegisteredModel | None:
        """The newest version whose tag ``tag`` equals ``value`` (or None).

        Lets a re-run of the same workflow find the version it already registered instead of
        registering a duplicate.
        """
        matches = [v for v in self._versions() if v.tags.get(tag) == value]
        if not matches:
            return None
        return self._model(max(matches, key=lambda v: int(v.version)))

    def _versions(self) -> list[Any]:
        # Filter client-side on tags: a value with a quote cannot be put in a filter string,
        # and a registered model has a few hundred versions at most.
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_model_versions(f"name='{self.model_name}'", page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def versions(self) -> list[RegisteredModel]:
        """All versions of the model, oldest first (empty when it is not registered yet)."""
        aliases = self._alias_map()
        return [
            self._model(v, aliases) for v in sorted(self._versions(), key=lambda v: int(v.version))
        ]

    # -- writing -------------------------------------------------------------------------
    def register(
        self,
        model_dir: Path,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        lineage: Mapping[str, Any],
        run_name: str,
        description: str = "",
    ) -> RegisteredModel:
        """Log ``model_dir`` in a new run and register it as a new version of the model.

        Args:
            model_dir: Directory with ``model.pt`` (and usually ``config.yaml``, ``metrics.json``),
                logged under artifact path ``model/``.
            params: Run params; nested mappings are flattened to dotted keys, values
                JSON-encoded and truncated as in :class:`~speechtune.track.StudyTracker`.
            metrics: Run metrics; non-numeric values are skipped.
            tags: Tags of both the run and the model version.
            lineage: Where the model came from (data fingerprints, study, code version, ...),
                logged as ``lineage.json`` in the run.
            run_name: Name of the MLflow run.
            description: The model version's description.

        Returns:
            The new version (no aliases yet).

        Raises:
            RegistryError: ``model_dir`` has no ``model.pt``.
        """
        model_dir = Path(model_dir)
        if not (model_dir / "model.pt").is_file():
            raise RegistryError(f"cannot register {model_dir}: no model.pt in that directory")
        run_tags = _tags(tags)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        run_id = run.info.run_id
        try:
            flat = {_key(k): _param_value(v) for k, v in flatten(params).items()}
            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), _PARAM_BATCH):
                self.client.log_batch(run_id, params=items[i : i + _PARAM_BATCH])
            now = int(time.time() * 1000)
            values = [
                Metric(_key(k), float(v), now, 0)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            if values:
                self.client.log_batch(run_id, metrics=values)
            self.client.log_text(
                run_id, json.dumps(lineage, indent=2, sort_keys=True, default=str), LINEAGE_FILE
            )
            self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        self._ensure_registered_model()
        # The concrete artifact URI (not runs:/...) so that the version names its files even
        # for readers that do not resolve run URIs.
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
        version = self.client.create_model_version(
            self.model_name,
            source=source,
            run_id=run_id,
            tags=run_tags,
            description=description or None,
        )
        self._await_ready(str(version.version))
        return self._model(self.client.get_model_version(self.model_name, str(version.version)))

    def _ensure_registered_model(self) -> None:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            try:
                self.client.create_registered_model(self.model_name)
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":  # another process won the race
                    raise

    def _await_ready(self, version: str) -> None:
        # Local stores create versions READY; a server with async registration may not.
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            status = self.client.get_model_version(self.model_name, version).status
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(
                    f"model version {self.model_name}/{version} did not become ready: {status}"
                )
            time.sleep(1.0)

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (moving it from whichever version held it)."""
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def download(self, model: RegisteredModel, dst: Path) -> Path:
        """Download the version's files into ``dst``; returns the directory that holds ``model.pt``."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        run_root = (
            self.client.get_run(model.run_id).info.artifact_uri.rstrip("/") if model.run_id else ""
        )
        if run_root and model.source.startswith(run_root + "/"):
            # Through the client: works for proxied server artifacts (mlflow-artifacts:/) too.
            local = self.client.download_artifacts(
                model.run_id, model.source[len(run_root) + 1 :], str(dst)
            )
        else:  # a version registered by someone else, from elsewhere
            from mlflow.artifacts import download_artifacts

            uri = self.client.get_model_version_download_uri(model.name, model.version)
            local = download_artifacts(
                artifact_uri=uri, dst_path=str(dst), tracking_uri=self.tracking_uri
            )
        path = Path(local)
        if not (path / "model.pt").is_file():
            raise RegistryError(
                f"model version {model.name}/{model.version} ({model.source}) has no model.pt"
            )
        return path

    def attach(
        self,
        model: RegisteredModel,
        path: Path,
        artifact_path: str = "export",
        *,
        tag: bool = True,
    ) -> str:
        """Log a file or directory to the version's run and record it on the version.

        The artifact lands at ``<artifact_path>/<path.name>``; with ``tag`` the version's tag
        ``speechtune.export`` (and the run's) is set to its URI (a second artefact of the same
        version, e.g. a streaming model's chunk step, is logged with ``tag=False``).

        Returns:
            The artifact URI of the attached file or directory.
        """
        path = Path(path)
        if not path.exists():
            raise RegistryError(f"cannot attach {path}: no such file or directory")
        target = f"{artifact_path.strip('/')}/{path.name}"
        if path.is_dir():
            self.client.log_artifacts(model.run_id, str(path), target)
        else:
            self.client.log_artifact(model.run_id, str(path), artifact_path.strip("/"))
        uri = f"{self.client.get_run(model.run_id).info.artifact_uri.rstrip('/')}/{target}"
        if tag:
            self.client.set_model_version_tag(model.name, model.version, EXPORT_TAG, uri)
            self.client.set_tag(model.run_id, EXPORT_TAG, uri)
        return uri


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EXPORT_TAG",
    "ModelRegistry",
    "RegisteredModel",
    "RegistryError",
    "code_version",
    "mask_uri",
]
