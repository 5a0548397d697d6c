"""``speechtune worker`` and ``speechtune tune`` on PostgreSQL; a retried trial resuming a checkpoint.

The PostgreSQL tests start a private cluster (``tests/pg_server.py``): they skip when the server
binaries are missing, and fail instead under ``SPEECHTUNE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from speechtune._urls import mask_url
from speechtune.cli import main
from speechtune.config import config_to_dict
from speechtune.data import Manifest, PreparedData
from speechtune.training import CallbackReporter
from speechtune.tuning.backends import PackedBackend, run_study, stored_spec_file, worker_seed
from speechtune.tuning.objectives import (
    CONTINUE_MARKER,
    RecipeObjective,
    import_function,
)
from speechtune.tuning.spec import build_spec, load_tuning
from speechtune.tuning.study import open_study
from tests.helpers.pg_server import PgServer
from tests.helpers.recipes import tiny_config
from tests.helpers.workers import Procs, command_spec, python_spec, speechtune_argv, trials

pytestmark = pytest.mark.services


# ---------------------------------------------------------------------------------------------
# refusals and flags (no database needed)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["sqlite:///study.db", "sqlite:////tmp/x.db", "memory"])
def test_worker_refuses_sqlite_and_unshared_storage(
    url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(["worker", "--study", "s", "--storage", url, "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "postgresql+psycopg://user@host:5432/dbname" in err
    assert "journal:///path/to/study.log" in err
    if url.startswith("sqlite"):
        assert "SQLite cannot be shared" in err


def test_worker_flag_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = "postgresql+psycopg://u@127.0.0.1:1/db"
    assert (
        main(
            [
                "worker",
                "--study",
                "s",
                "--storage",
                url,
                "--n-trials",
                "0",
                "--run-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--n-trials must be >= 1" in capsys.readouterr().err
    assert (
        main(
            [
                "worker",
                "--study",
                "s",
                "--storage",
                url,
                "--heartbeat-s",
                "0",
                "--run-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--heartbeat-s must be >= 1" in capsys.readouterr().err


def test_worker_on_an_unreachable_server_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.helpers.pg_server import free_port

    url = f"postgresql+psycopg://me:secret@127.0.0.1:{free_port()}/db"
    rc = main(
        [
            "worker",
            "--study",
            "s",
            "--storage",
            url,
            "--run-dir",
            str(tmp_path),
            "--no-tracking",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3
    assert "cannot connect to the study storage postgresql+psycopg://me:***@127.0.0.1" in err
    assert "secret" not in err
    assert "warning: --storage holds a password" in err  # visible in `ps`: use the environment


def test_worker_reads_the_storage_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.pg_server import free_port

    url = f"postgresql+psycopg://me:s3cr#t/pw@127.0.0.1:{free_port()}/db"
    monkeypatch.setenv("SPEECHTUNE_STORAGE", url)
    rc = main(["worker", "--study", "s", "--run-dir", str(tmp_path), "--no-tracking", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "cannot connect to the study storage postgresql+psycopg://me:***@127.0.0.1" in err
    assert "s3cr" not in err and "warning" not in err
    # Taken out of the environment: the trials' processes do not inherit the password.
    assert "SPEECHTUNE_STORAGE" not in os.environ


def test_worker_without_a_storage_names_both_ways_to_give_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPEECHTUNE_STORAGE", raising=False)
    assert main(["worker", "--study", "s", "--run-dir", str(tmp_path)]) == 2
    assert "--storage (or $SPEECHTUNE_STORAGE) is required" in capsys.readouterr().err


def test_import_function() -> None:
    assert import_function("tests.helpers.workers:quick_objective").__name__ == "quick_objective"
    assert import_function("os.path:join") is os.path.join
    for bad, message in [
        ("no_colon", "must look like MODULE:ATTR"),
        ("no_such_module_x:f", "cannot import module"),
        ("os:no_such_attr", "has no attribute"),
        ("os:sep", "not a function"),
    ]:
        with pytest.raises(ValueError, match=message):
            import_function(bad)


def test_worker_seed_differs_per_worker_and_keeps_none() -> None:
    assert worker_seed(None) is None
    assert worker_seed(0) != worker_seed(1)
    assert worker_seed(0) == worker_seed(0)


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
def test_tune_on_postgres_then_a_worker_joins_from_the_stored_spec(
    pg: PgServer, procs: Procs, tmp_path: Path
) -> None:
    url = pg.create_database("tune_then_worker")
    cfg = command_spec(tmp_path / "study.yaml", name="tw", n_trials=3, epochs=2, sleep_s=0.05)
    # Tracked (MLflow's store in the run dir): its params must not hold the password either.
    driver = procs.start(
        "driver",
        speechtune_argv(
            "tune", "--config", str(cfg), "--storage", url, "--run-dir", str(tmp_path / "driver"), "--quiet"
        ),
    )  # fmt: skip
    assert procs.wait(driver, 120) == 0, procs.log(driver)[-3000:]
    assert (tmp_path / "driver" / "best.yaml").is_file()
    # A worker elsewhere (another cwd, no copy of study.yaml) takes the study to 5 trials.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worker = procs.start(
        "worker",
        speechtune_argv(
            "worker", "--study", "tw", "--run-dir", str(elsewhere / "run"), "--n-trials", "5",
            "--no-tracking", "--quiet",
        ),
        env={"SPEECHTUNE_STORAGE": url},
        cwd=elsewhere,
    )  # fmt: skip
    assert procs.wait(worker, 120) == 0, procs.log(worker)[-3000:]
    done = trials(url, "tw")
    assert [t.number for t in done] == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in done)
    workers = [t.user_attrs["worker"] for t in done]
    assert workers[:3] == [f"{os.uname().nodename}:{driver.pid}"] * 3
    assert workers[3:] == [f"{os.uname().nodename}:{worker.pid}"] * 2
    assert all(Path(t.user_attrs["trial_dir"]).is_relative_to(elsewhere) for t in done[3:])
    assert (elsewhere / "run" / "stored_spec.yaml").is_file() and (
        elsewhere / "run" / "best.yaml"
    ).is_file()
    # Nothing either process wrote (spec.yaml, stored_spec.yaml, trials.csv, report.html, the
    # MLflow store, their output) holds the password, nor does the study's recorded spec.
    token = pg.password_token.encode()
    assert [p for p in tmp_path.rglob("*") if p.is_file() and token in p.read_bytes()] == []
    storage = optuna.storages.RDBStorage(url)
    try:
        attrs = optuna.load_study(study_name="tw", storage=storage).user_attrs
    finally:
        storage.engine.dispose()
    assert attrs["spec"]["study"]["storage"] == mask_url(url)


def test_packed_workers_get_the_password_outside_their_command_line(
    pg: PgServer, tmp_path: Path
) -> None:
    url = pg.create_database("packed_secret")
    spec = load_tuning(python_spec(tmp_path / "tuning.yaml", name="ps", n_trials=4))
    backend = PackedBackend(
        2,
        storage=url,
        device="cpu",
        extra_argv=[
            "--function",
            "tests.tuning.backends.test_gpu_packing:packed_objective",
            "--no-tracking",
            "--no-report",
            "--quiet",
        ],
        timeout_s=120,
        env={"SPEECHTUNE_TEST_THREADS": "1"},
    )
    study = run_study(spec, None, tmp_path / "run", backend=backend, n_trials=4, progress=False)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(done) >= 4, study.user_attrs.get("worker_exit_codes")
    # Each trial recorded its worker's /proc/self/cmdline (what `ps` shows) and environment.
    for t in done:
        span = json.loads((Path(t.user_attrs["trial_dir"]) / "span.json").read_text())
        assert pg.password_token not in "\0".join(span["cmdline"]), span["cmdline"]
        assert "--storage" not in span["cmdline"] and not span["storage_env"]
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "workers").iterdir())
    assert pg.password_token not in logs and "warning: --storage" not in logs


def test_worker_without_config_needs_an_existing_study(
    pg: PgServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = pg.create_database("no_study")
    rc = main(
        [
            "worker",
            "--study",
            "missing",
            "--storage",
            url,
            "--run-dir",
            str(tmp_path),
            "--no-tracking",
            "--quiet",
        ]
    )
    assert rc == 2
    assert "--study 'missing': no such study" in capsys.readouterr().err


def test_stored_recipe_spec_rebuilds_without_the_drivers_files(
    pg: PgServer, tmp_path: Path
) -> None:
    url = pg.create_database("stored_recipe")
    recipe = tmp_path / "driver" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({"train": {"epochs": 2}, "model": {"d_model": 64}}))
    tuning = tmp_path / "driver" / "tuning.yaml"
    tuning.write_text(
        yaml.safe_dump(
            {
                "recipe": "recipe.yaml",
                "overrides": {"train.batch_size": 8},
                "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                "study": {"name": "sr", "storage": url},
            }
        )
    )
    spec = load_tuning(tuning)
    open_study(spec, tmp_path / "driver")
    recipe.unlink()  # the worker must not need it
    path = stored_spec_file(url, "sr", tmp_path / "worker", heartbeat_s=30, reconnect_s=5)
    rebuilt = load_tuning(path)
    assert rebuilt.base_recipe == spec.base_recipe
    assert Path(rebuilt.raw["recipe"]) == (tmp_path / "worker" / "stored_recipe.yaml").resolve()
    assert rebuilt.space.params.keys() == spec.space.params.keys()
    # The file stays in the run directory: it names the storage with the password masked.
    assert rebuilt.study.storage == mask_url(url) and pg.password_token not in path.read_text()


# ---------------------------------------------------------------------------------------------
# a retried trial resumes from the dead trial's checkpoint (real recipe, in process)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    dev = [
        u
        for g in synth_data.dev.groups
        for u in synth_data.dev.filter(lambda u, g=g: u.group == g)[:4]
    ]
    return PreparedData(
        train=synth_data.train[:48],
        dev=Manifest(dev, "dev", synth_data.dev.root),
        report=synth_data.report,
    )


def test_retried_recipe_trial_resumes_from_the_dead_trials_checkpoint(
    small_data: PreparedData, tmp_path: Path, one_torch_thread: None
) -> None:
    lr = 0.003
    base = config_to_dict(tiny_config(train={"epochs": 2, "batch_size": 16}))
    objective = RecipeObjective(
        base, device="cpu", cache_dir=tmp_path / "cache", num_threads=1, data=small_data
    )
    run_dir = tmp_path / "run"
    dead_dir = run_dir / "trials" / "0000"
    # The "dead" trial: epoch 1 done and checkpointed (last.pt), then its worker is gone.
    first = objective(
        {"optim.lr": lr}, CallbackReporter(lambda epoch, metrics: True), dead_dir, 42
    )
    assert first.status == "stopped" and (dead_dir / "last.pt").is_file()

    space = {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    spec = build_spec(
        space, study_name="retry", n_trials=1, sampler="random", pruner="none", seeds=(42,)
    )
    study = open_study(spec, run_dir)
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"optim.lr": lr},
            distributions={"optim.lr": dist},
            user_attrs={"trial_dir": str(dead_dir), "config": {"optim.lr": lr}},
        )
    )
    # What the heartbeat's stale-trial callback does for a dead worker's trial.
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])

    run_study(spec, objective, run_dir, n_trials=1, resume=True, progress=False)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("reason")
    assert retry.params == {"optim.lr": lr}
    assert retry.user_attrs["resumed_from_trial"] == 0
    assert list(retry.intermediate_values) == [2], (
        "the retry re-trained epoch 1 instead of resuming"
    )
    assert [row["epoch"] for row in retry.user_attrs["history"]] == [1, 2]
    new_dir = Path(retry.user_attrs["trial_dir"])
    assert new_dir == run_dir / "trials" / "0001"
    assert json.loads((new_dir / CONTINUE_MARKER).read_text())["from_trial"] == 0
