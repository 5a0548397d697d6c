"""Storage errors name the storage without its password; a run directory whose spec.yaml records
a masked URL says so instead of trying to log in with ``***``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechtune.tuning.study import make_storage, resolve_storage
from speechtune.tuning.study._storage import journal_file


def test_an_unknown_scheme_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot open 'redis://u:\*\*\*@cache/0'") as err:
        make_storage("redis://u:r3d!s-pw@cache/0", tmp_path)
    assert "r3d!s-pw" not in str(err.value)


def test_a_bad_journal_url_is_named_without_its_secret() -> None:
    with pytest.raises(ValueError, match=r"token=\*\*\*") as err:
        journal_file("journal://host/x.log?token=tk-31337")
    assert "tk-31337" not in str(err.value)


def test_a_run_dir_recording_a_masked_storage_takes_the_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    masked = "postgresql+psycopg://tuner:***@db:5432/st"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"study": {"storage": masked}}))
    monkeypatch.delenv("SPEECHTUNE_STORAGE", raising=False)
    with pytest.raises(ValueError, match=r"password hidden; set \$SPEECHTUNE_STORAGE"):
        resolve_storage(tmp_path)
    # Another database in the environment is not taken for this one.
    monkeypatch.setenv("SPEECHTUNE_STORAGE", "postgresql+psycopg://tuner:pw-1@other:5432/st")
    with pytest.raises(ValueError, match="password hidden"):
        resolve_storage(tmp_path)
    real = "postgresql+psycopg://tuner:pw-1@db:5432/st"
    monkeypatch.setenv("SPEECHTUNE_STORAGE", real)
    assert resolve_storage(tmp_path) == real
