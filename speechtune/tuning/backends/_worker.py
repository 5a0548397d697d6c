"""Workers on a shared database: any number of processes, on any number of machines, join one study.

Any number of workers, on any number of machines, point at one study in PostgreSQL (or a
journal file on a shared file system)::

    speechtune tune --config conf/tuning.yaml --storage postgresql+psycopg://user@db:5432/tuning   # or:
    speechtune worker --study NAME --storage postgresql+psycopg://user@db:5432/tuning [--config YAML]

Each worker pulls the next trial from the study (Optuna's sampler reads every worker's results)
and stops once the study-wide count of complete + pruned trials reaches ``--n-trials`` (default
``study.n_trials``), the rule of Optuna's ``MaxTrialsCallback``: every worker checks the count
after each of its trials, so trials already running elsewhere when the target is reached still
finish, and the study may end with up to ``workers - 1`` trials more than the target.

Without ``--config`` the worker rebuilds the tuning spec the study was created with (stored in
the study's user attrs ``spec`` and ``base_recipe``): the stored base recipe is written into the
worker's run directory and the spec points at it, so a worker on another machine needs none of
the driver's files. A command objective then runs in the worker's current directory. With
``--config`` the worker creates the study when it does not exist yet, or joins it.

Fault tolerance: every running trial beats a heartbeat (``--heartbeat-s``); when a worker dies,
its trial goes stale after two intervals, another worker fails it and re-queues its params once,
and the retry resumes from the dead trial's checkpoint when that trial's directory is reachable
(shared file system): the recipe continues from ``last.pt``; a command finds the dead trial's
files copied into its output dir (``$SPEECHTUNE_TRIAL_DIR``) and can resume from its own
checkpoint there. The storage rides out a database restart (see :mod:`._optuna`).

SQLite is refused: concurrent processes on one SQLite file lock each other out (and NFS breaks
its locking); use PostgreSQL or the journal storage.

``--function MODULE:ATTR`` runs a study whose ``objective.kind`` is ``python``: the worker imports
``ATTR`` from ``MODULE`` (importable on the worker's ``PYTHONPATH``) and calls it as a
:class:`~speechtune.tuning.FunctionObjective`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import zlib
from pathlib import Path

import optuna
import yaml

from speechtune._urls import mask_url
from speechtune.tuning.backends._gpu_slots import GpuSlots, SlottedObjective
from speechtune.tuning.backends._local import LocalBackend
from speechtune.tuning.backends._run import run_study
from speechtune.tuning.objectives import Objective, RecipeObjective
from speechtune.tuning.spec import TuningSpec, load_tuning
from speechtune.tuning.study import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_RECONNECT_S,
    WORKER_ID,
    StorageUnavailableError,
    StudyOutputs,
    Tracker,
    make_storage,
)

log = logging.getLogger("speechtune.tuning")


#: The message a worker gives for a SQLite URL.
SQLITE_REFUSAL = (
    "speechtune worker: SQLite cannot be shared by several worker processes (its file locks make "
    "concurrent workers fail with 'database is locked', and they do not work over NFS). Put the study in "
    "PostgreSQL, e.g. --storage postgresql+psycopg://user@host:5432/dbname, or, for workers on one "
    "machine or a shared file system, in the journal storage: --storage journal:///path/to/study.log"
)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def is_sqlite(url: str | None) -> bool:
    """True for a SQLite storage (a ``sqlite:`` URL, or no URL: the default SQLite file)."""
    return url is None or url.strip().lower().startswith("sqlite")


# ---------------------------------------------------------------------------------------------
# the spec: from --config, or rebuilt from the study's records
# ---------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    # Workers sharing a run dir write the same content; a rename never shows a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def stored_spec_file(
    storage_url: str, study_name: str, run_dir: Path, *, heartbeat_s: int, reconnect_s: float
) -> Path:
    """Write the tuning YAML a study was created with into ``run_dir`` and return its path.

    The stored ``base_recipe`` goes to ``run_dir/stored_recipe.yaml`` and the spec's ``recipe``
    points at it; presets are dropped (the stored ``space`` already has them folded in). Its
    ``study.storage`` is ``storage_url`` with the password masked.

    Raises:
        ValueError: no such study, or a study created without a stored spec.
    """
    storage = make_storage(storage_url, run_dir, heartbeat_s=heartbeat_s, reconnect_s=reconnect_s)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise ValueError(
            f"--study {study_name!r}: no such study in {mask_url(storage_url)} "
            f"(studies there: {', '.join(names) or 'none'}); "
            "create it with `speechtune tune --storage URL ...` or give the worker --config"
        ) from None
    attrs = storage.get_study_user_attrs(study_id)
    spec = attrs.get("spec")
    if not isinstance(spec, dict) or not spec:
        raise ValueError(
            f"study {study_name!r} in {mask_url(storage_url)} has no stored tuning spec (user attr 'spec'); "
            "it was not created by speechtune: give the worker --config"
        )
    spec = dict(spec)
    spec.pop("presets", None)
    # Masked: this file stays in the run directory; load_worker_spec sets the real URL again.
    spec["study"] = {
        **(spec.get("study") or {}),
        "name": study_name,
        "storage": mask_url(storage_url),
    }
    if (spec.get("objective") or {}).get("kind", "recipe") == "recipe":
        recipe_path = run_dir / "stored_recipe.yaml"
        _write_atomic(recipe_path, yaml.safe_dump(attrs.get("base_recipe") or {}, sort_keys=False))
        spec["recipe"] = str(recipe_path.resolve())
    path = run_dir / "stored_spec.yaml"
    _write_atomic(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def load_worker_spec(
    study_name: str,
    storage: str,
    run_dir: Path,
    *,
    config: str | Path | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    reconnect_s: float = DEFAULT_RECONNECT_S,
) -> tuple[TuningSpec, Path]:
    """A worker's tuning spec (study name and storage given), and where its command runs.

    Args:
        study_name: the study to join.
        storage: its storage URL.
        run_dir: this worker's run directory (a rebuilt spec is written there).
        config: the tuning YAML; None: rebuild the spec the study was created with.
        heartbeat_s: heartbeat interval of the storage.
        reconnect_s: how long storage calls retry through an outage.

    Raises:
        ValueError: no such study, no stored spec, or a multi-fidelity study (one driver runs it).
    """
    if config:
        spec = load_tuning(config)
        cwd = Path(config).resolve().parent
    else:
        path = stored_spec_file(
            storage, study_name, run_dir, heartbeat_s=heartbeat_s, reconnect_s=reconnect_s
        )
        spec = load_tuning(path)
        cwd = Path.cwd()
    if spec.fidelity is not None:
        # A multi-fidelity study is one ask/tell driver (brackets, promotions, the budget):
        # independent workers would each run their own brackets over the same trials.
        raise ValueError(
            f"study {study_name!r} is multi-fidelity (a fidelity: section); workers cannot join it. Run it with "
            "`speechtune tune --n-jobs N` in one driver, or with `--backend ray` and ray.scheduler asha/hyperband"
        )
    spec = spec.with_storage(storage)
    study = dataclasses.replace(spec.study, name=study_name, seed=worker_seed(spec.study.seed))
    # The stored spec keeps the study's own seed; only this process's sampler gets its own.
    raw = {**spec.raw, "study": {**(spec.raw.get("study") or {}), "name": study_name}}
    return dataclasses.replace(spec, study=study, raw=raw), cwd


def worker_seed(seed: int | None) -> int | None:
    """This worker's sampler seed: ``study.seed`` mixed with ``host:pid``.

    Workers sharing one seed would propose the very same configs in the same order (the random
    sampler, and TPE's random start-up trials); mixing in the worker's identity keeps each one
    reproducible given its host and pid while making the workers explore different points.
    """
    if seed is None:
        return None
    return zlib.crc32(f"{seed}:{WORKER_ID}".encode()) & 0x7FFFFFFF


def slotted(
    objective: Objective,
    *,
    device: str,
    run_dir: Path,
    gpu_slots: int | None = None,
    gpu_mem_per_trial_mb: float | None = None,
) -> Objective:
    """``objective`` leasing a GPU slot per trial (:class:`SlottedObjective`) when packing is asked.

    Packing applies on CUDA with device ``auto``/``cuda``; elsewhere ``objective`` is returned
    (logged).

    Raises:
        ValueError: packing asked for an objective without a device (a command, a function).
    """
    if gpu_slots is None and gpu_mem_per_trial_mb is None:
        return objective
    if str(device) not in ("auto", "cuda"):
        log.info("--gpu-slots/--gpu-mem-per-trial ignored: --device is %s", device)
        return objective
    if not isinstance(objective, RecipeObjective):
        raise ValueError(
            "--gpu-slots/--gpu-mem-per-trial need an objective with a device (objective.kind: recipe)"
        )
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        log.info("--gpu-slots/--gpu-mem-per-trial ignored: CUDA is not available")
        return objective
    slots = GpuSlots(
        run_dir / ".gpu-slots", slots_per_gpu=gpu_slots, mem_per_trial_mb=gpu_mem_per_trial_mb
    )
    return SlottedObjective(objective, slots)


def run_worker(
    spec: TuningSpec,
    objective: Objective,
    run_dir: str | Path,
    *,
    n_trials: int | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    tracker: Tracker | None = None,
    outputs: StudyOutputs | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Join the study of ``spec`` (on a shared storage) and run its trials until it has ``n_trials``.

    Trials of other workers are expected and stale ones are re-queued (the study is resumed);
    the sampler uses the constant liar so that concurrent workers spread out.
    """
    backend = LocalBackend(n_jobs=1, heartbeat_s=heartbeat_s, shared=True)
    return run_study(
        spec,
        objective,
        run_dir,
        backend=backend,
        n_trials=n_trials,
        resume=True,
        tracker=tracker,
        outputs=outputs,
        progress=progress,
    )


def storage_failure(exc: BaseException) -> StorageUnavailableError | None:
    """The :class:`StorageUnavailableError` behind ``exc``, if any.

    When the database is gone for good, Optuna's own bookkeeping after a failed write can raise
    a second error (e.g. an ``UnboundLocalError`` in its trial loop) whose context is ours: the
    whole chain is searched so that the user sees the storage message, not Optuna's.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailableError):
            return current
        current = current.__cause__ or current.__context__
    return None
