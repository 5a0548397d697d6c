"""Where a study's trials run. One :class:`Backend` protocol, one :func:`run_study` loop around it.

* :class:`LocalBackend`: threads of this process (Optuna's ``study.optimize``).
* :class:`MultiFidelityBackend`: the multi-fidelity search's jobs, in this process.
* :class:`PackedBackend`: ``speechtune worker`` processes on this machine, packed onto its GPUs.
* ``speechtune worker`` processes on many machines share a study on PostgreSQL
  (:func:`run_worker`).
* :class:`~speechtune.tuning.backends.ray.RayBackend`: Ray Tune.
"""

from speechtune.tuning.backends._base import Backend
from speechtune.tuning.backends._gpu_slots import (
    DEFAULT_SLOTS_PER_GPU,
    GpuSlots,
    SlottedObjective,
)
from speechtune.tuning.backends._local import LocalBackend
from speechtune.tuning.backends._multifidelity import MultiFidelityBackend
from speechtune.tuning.backends._packed import PackedBackend, packed_storage_url
from speechtune.tuning.backends._run import default_backend, run_study
from speechtune.tuning.backends._worker import (
    SQLITE_REFUSAL,
    is_sqlite,
    load_worker_spec,
    run_worker,
    slotted,
    storage_failure,
    stored_spec_file,
    worker_seed,
)

__all__ = [
    "DEFAULT_SLOTS_PER_GPU",
    "SQLITE_REFUSAL",
    "Backend",
    "GpuSlots",
    "LocalBackend",
    "MultiFidelityBackend",
    "PackedBackend",
    "SlottedObjective",
    "default_backend",
    "is_sqlite",
    "load_worker_spec",
    "packed_storage_url",
    "run_study",
    "run_worker",
    "slotted",
    "storage_failure",
    "stored_spec_file",
    "worker_seed",
]
