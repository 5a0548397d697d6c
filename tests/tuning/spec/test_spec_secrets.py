"""A storage password never reaches a tuning spec's record (``raw``: spec.yaml, the study's
``spec`` attribute, MLflow params), while the spec itself keeps the URL it connects with."""

from __future__ import annotations

from pathlib import Path

import yaml

from speechtune.tuning.spec import build_spec, load_tuning

URL = "postgresql+psycopg://tuner:p#ss/w?rd-77@db:5432/st?sslpassword=kp-991"
MASKED = "postgresql+psycopg://tuner:***@db:5432/st?sslpassword=***"


def _yaml(tmp_path: Path, storage: str | None) -> Path:
    study = {"name": "s", "n_trials": 2, **({"storage": storage} if storage else {})}
    path = tmp_path / "tuning.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
                "study": study,
                "objective": {"kind": "python", "metric": "wer"},
            }
        )
    )
    return path


def test_a_password_in_the_yaml_is_masked_in_the_record_only(tmp_path: Path) -> None:
    spec = load_tuning(_yaml(tmp_path, URL))
    assert spec.study.storage == URL  # what the study connects with
    assert spec.raw["study"]["storage"] == MASKED
    assert "w?rd-77" not in yaml.safe_dump(spec.raw) and "kp-991" not in yaml.safe_dump(spec.raw)


def test_with_storage_records_the_url_masked(tmp_path: Path) -> None:
    spec = load_tuning(_yaml(tmp_path, "journal")).with_storage(URL)
    assert spec.study.storage == URL and spec.raw["study"]["storage"] == MASKED
    plain = "postgresql+psycopg://tuner@db:5432/st"
    assert load_tuning(_yaml(tmp_path, None)).with_storage(plain).raw["study"]["storage"] == plain


def test_build_spec_records_the_url_masked() -> None:
    spec = build_spec({"x": {"type": "float", "low": 0.0, "high": 1.0}}, storage=URL)
    assert spec.study.storage == URL and spec.raw["study"]["storage"] == MASKED
