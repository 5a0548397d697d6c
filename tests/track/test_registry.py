"""The MLflow model registry against a real local SQLite MLflow store in a temp dir."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from speechtune.track import (
    ModelRegistry,
    RegisteredModel,
    RegistryError,
    code_version,
    mask_uri,
)
from speechtune.track._registry import EXPORT_TAG

MODEL = "speechtune-asr"
RUN_TAG = "speechtune.workflow_run"


def _model_dir(root: Path, seed: int) -> Path:
    """A model directory as training writes it; registry tests need no real checkpoint."""
    root.mkdir(parents=True)
    (root / "model.pt").write_bytes(os.urandom(64) + bytes([seed]) * 2000)
    (root / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  d_model: 64\n")
    (root / "metrics.json").write_text(json.dumps({"wer": 0.3 - seed / 100}))
    return root


def _register(registry: ModelRegistry, model_dir: Path, seed: int, wer: float) -> RegisteredModel:
    return registry.register(
        model_dir,
        params={
            "model": {"d_model": 64, "encoder": "lstm"},
            "optim.lr": 0.003,
            "text": "x" * 7000,
        },
        metrics={"golden_wer": wer, "golden_cer": wer / 2, "not_a_number": "n/a"},  # type: ignore[dict-item]
        tags={RUN_TAG: f"wf-{seed}", "speechtune.workflow": "synthetic"},
        lineage={
            "data": {"train_fingerprint": f"fp{seed}"},
            "study": "fine",
            "code": code_version(),
        },
        run_name=f"gate-{seed}",
        description=f"seed {seed}",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two registered versions; the first promoted to champion, then replaced by the second."""
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(None, MODEL, store_dir=root / "store")
    before = registry.champion()
    versions_before = registry.versions()
    first_dir = _model_dir(root / "m1", 1)
    second_dir = _model_dir(root / "m2", 2)
    first = _register(registry, first_dir, 1, 0.25)
    registry.set_alias("challenger", first.version)
    registry.set_alias("champion", first.version)
    second = _register(registry, second_dir, 2, 0.20)
    registry.set_alias("challenger", second.version)
    champion_while_challenged = registry.champion()
    registry.set_alias("champion", second.version)
    return {
        "root": root,
        "registry": registry,
        "before": before,
        "versions_before": versions_before,
        "first": first,
        "second": second,
        "first_dir": first_dir,
        "second_dir": second_dir,
        "champion_while_challenged": champion_while_challenged,
    }


def test_nothing_before_the_first_registration(store: dict) -> None:
    assert store["before"] is None
    assert store["versions_before"] == []
    assert store["registry"].version_by_alias("no-such-alias") is None


def test_store_lives_in_the_store_dir(store: dict) -> None:
    root = store["root"] / "store"
    assert (root / "mlflow.db").is_file()
    first = store["first"]
    assert first.source.startswith((root / "mlruns").as_uri())
    assert first.source.endswith("/model")
    assert not Path("mlruns").exists() or Path("mlruns").resolve().is_relative_to(root)


def test_two_versions_registered(store: dict) -> None:
    first, second = store["first"], store["second"]
    assert (first.name, first.version) == (MODEL, "1")
    assert (second.name, second.version) == (MODEL, "2")
    assert first.run_id != second.run_id
    assert first.aliases == ()  # returned as registered, before any alias
    assert first.tags[RUN_TAG] == "wf-1"
    assert first.metrics == {"golden_wer": 0.25, "golden_cer": 0.125}
    versions = store["registry"].versions()
    assert [v.version for v in versions] == ["1", "2"]


def test_aliases_move(store: dict) -> None:
    registry = store["registry"]
    # Challenger moved to version 2 while the champion stayed on version 1 ...
    during = store["champion_while_challenged"]
    assert during is not None and during.version == "1"
    assert set(during.aliases) == {"champion"}
    # ... until version 2 was promoted: both aliases now on 2, none left on 1.
    champion = registry.champion()
    assert champion is not None and champion.version == "2"
    assert set(champion.aliases) == {"champion", "challenger"}
    challenger = registry.version_by_alias("challenger")
    assert challenger is not None and challenger.version == "2"
    assert {v.version: v.aliases for v in registry.versions()} == {
        "1": (),
        "2": ("challenger", "champion"),
    }
    assert champion.metrics["golden_wer"] == pytest.approx(0.20)


def test_find_version_by_tag(store: dict) -> None:
    registry = store["registry"]
    found = registry.find_version(RUN_TAG, "wf-1")
    assert found is not None and found.version == "1"
    assert registry.find_version(RUN_TAG, "wf-2").version == "2"  # type: ignore[union-attr]
    assert registry.find_version(RUN_TAG, "wf-3") is None
    assert registry.find_version(RUN_TAG, "it's quoted") is None
    newest = registry.find_version("speechtune.workflow", "synthetic")
    assert newest is not None and newest.version == "2"


def test_reopened_registry_sees_the_same_versions(store: dict) -> None:
    again = ModelRegistry(None, MODEL, store_dir=store["root"] / "store")
    assert again.experiment_id == store["registry"].experiment_id
    assert [v.version for v in again.versions()] == ["1", "2"]
    assert again.champion().version == "2"  # type: ignore[union-attr]
    assert ModelRegistry(None, "other-model", store_dir=store["root"] / "store").champion() is None


def test_download_returns_the_same_bytes(store: dict, tmp_path: Path) -> None:
    registry = store["registry"]
    for model, original in (
        (store["first"], store["first_dir"]),
        (store["second"], store["second_dir"]),
    ):
        local = registry.download(model, tmp_path / model.version)
        assert (local / "model.pt").read_bytes() == (original / "model.pt").read_bytes()
        assert (local / "config.yaml").read_text() == (original / "config.yaml").read_text()
        assert sorted(p.name for p in local.iterdir()) == [
            "config.yaml",
            "metrics.json",
            "model.pt",
        ]


def test_run_holds_params_metrics_tags_and_lineage(store: dict, tmp_path: Path) -> None:
    registry = store["registry"]
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    run = client.get_run(store["first"].run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "gate-1"
    params = run.data.params
    assert params["model.d_model"] == "64"
    assert params["model.encoder"] == "lstm"
    assert params["optim.lr"] == "0.003"
    assert len(params["text"]) == 6000  # truncated, as StudyTracker does
    assert run.data.metrics == {"golden_wer": 0.25, "golden_cer": 0.125}
    assert run.data.tags[RUN_TAG] == "wf-1"
    lineage = json.loads(
        Path(client.download_artifacts(run.info.run_id, "lineage.json", str(tmp_path))).read_text()
    )
    assert lineage["data"] == {"train_fingerprint": "fp1"}
    assert lineage["code"]["package"] == code_version()["package"]
    version = client.get_model_version(MODEL, "1")
    assert version.description == "seed 1"
    assert version.tags[RUN_TAG] == "wf-1"
    assert version.run_id == run.info.run_id


def test_attach_file_and_directory(store: dict, tmp_path: Path) -> None:
    registry = store["registry"]
    second = store["second"]
    exported = tmp_path / "model.ts"
    exported.write_bytes(b"torchscript bytes")
    uri = registry.attach(second, exported)
    assert uri.endswith("/export/model.ts")
    assert registry.champion().tags[EXPORT_TAG] == uri  # type: ignore[union-attr]
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    assert client.get_run(second.run_id).data.tags[EXPORT_TAG] == uri
    fetched = Path(
        client.download_artifacts(second.run_id, "export/model.ts", str(tmp_path / "dl"))
    )
    assert fetched.read_bytes() == b"torchscript bytes"

    bundle = tmp_path / "onnx"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"onnx")
    uri = registry.attach(second, bundle, artifact_path="formats")
    assert uri.endswith("/formats/onnx")
    names = [a.path for a in client.list_artifacts(second.run_id, "formats/onnx")]
    assert names == ["formats/onnx/model.onnx"]
    assert registry.find_version(EXPORT_TAG, uri).version == second.version  # type: ignore[union-attr]
    # The first version was not touched.
    assert EXPORT_TAG not in registry.versions()[0].tags
    with pytest.raises(RegistryError, match="missing.onnx"):
        registry.attach(second, tmp_path / "missing.onnx")


def test_missing_model_pt_is_refused(store: dict, tmp_path: Path) -> None:
    registry = store["registry"]
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RegistryError, match=re.escape(str(empty))):
        registry.register(empty, params={}, metrics={}, tags={}, lineage={}, run_name="bad")
    assert [v.version for v in registry.versions()] == ["1", "2"]  # nothing registered


def test_unreachable_server_fails_fast_and_names_it() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    with pytest.raises(RegistryError) as info:
        ModelRegistry(uri, MODEL)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret" not in message and "alice:***@" in message


def test_store_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{blocker / 'sub' / 'mlflow.db'}"
    with pytest.raises(RegistryError, match=re.escape(uri)):
        ModelRegistry(uri, MODEL)


def test_constructor_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="store_dir"):
        ModelRegistry(None, MODEL)
    with pytest.raises(RegistryError, match="model name"):
        ModelRegistry(None, "it's", store_dir=tmp_path)


def test_explicit_sqlite_uri_keeps_artifacts_in_store_dir(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "registry.db"
    db.parent.mkdir()
    registry = ModelRegistry(f"sqlite:///{db}", MODEL, store_dir=tmp_path / "art")
    model = _register(registry, _model_dir(tmp_path / "m", 5), 5, 0.1)
    assert model.source.startswith((tmp_path / "art" / "mlruns").resolve().as_uri())
    assert db.is_file()


def test_mask_uri() -> None:
    masked = mask_uri("https://bob:pa:ss@mlflow.example.com:5000/x?y=1")
    assert masked == "https://bob:***@mlflow.example.com:5000/x?y=1"
    assert mask_uri("postgresql://u:p%40w@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert mask_uri("http://token@host") == "http://token@host"  # no password to hide
    assert mask_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    assert mask_uri("databricks") == "databricks"


def test_code_version_of_this_checkout() -> None:
    import speechtune

    version = code_version()
    assert version["package"] == speechtune.__version__
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert re.fullmatch(r"[0-9a-f]{40}", version["git_commit"] or "")
    assert isinstance(version["git_dirty"], bool)


def test_code_version_without_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import speechtune

    # No git on PATH: the package version still comes back, the git fields are unknown.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert code_version() == {
        "package": speechtune.__version__,
        "git_commit": None,
        "git_dirty": None,
    }
