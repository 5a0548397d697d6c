"""One study over Optuna storage: opening and resuming it, its trials, their records, its cost.

Every trial's record (config, metrics, history, per-seed values, cost, rung...) lives in the
trial's user attributes, so reports and trackers read the storage and nothing else; the
readers of that contract are in :mod:`._records`.
"""

from speechtune.tuning.study._baseline import (
    BASELINE_SOURCE,
    baseline_params,
    enqueue_baseline,
    is_baseline,
)
from speechtune.tuning.study._confirm import (
    confirm_candidates,
    confirm_seeds_for,
    run_confirmation,
)
from speechtune.tuning.study._confirmed import (
    CONFIRMATION_ATTR,
    ConfirmRow,
    confirmation_rows,
    confirmed_choice,
)
from speechtune.tuning.study._interrupt import (
    INTERRUPTED_REASON,
    interruptible_trials,
    pending_interrupted,
    requeue_interrupted,
)
from speechtune.tuning.study._load import load_study, resolve_storage
from speechtune.tuning.study._lock import RunDirBusyError, RunDirLock
from speechtune.tuning.study._open import (
    StudyExistsError,
    open_study,
    record_cost_total,
)
from speechtune.tuning.study._progress import StudyProgress
from speechtune.tuning.study._records import (
    TrialRecord,
    comparable_study,
    comparable_trials,
    complete_trials,
    duration_s,
    fidelity_record,
    is_multi_fidelity,
    is_multi_objective,
    learning_curve,
    minimises,
    objective_names,
    pareto_front,
    pareto_knee,
    primary_seed_stats,
    primary_value,
    ranked_trials,
    rung_names,
    select_best,
    top_rung,
    trial_config,
    trial_rung,
    trial_status,
)
from speechtune.tuning.study._retry import fail_killed_trials
from speechtune.tuning.study._samplers import make_pruner, make_sampler, resume_seed
from speechtune.tuning.study._session import (
    FailureGuard,
    OpenOptions,
    StudyOutputs,
    StudySession,
    Tracker,
)
from speechtune.tuning.study._storage import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_RECONNECT_S,
    RECONNECT_ENV,
    STORAGE_ENV,
    StorageUnavailableError,
    make_storage,
    reconnect_bound,
    storage_url,
)
from speechtune.tuning.study._trial import (
    COUNTED_STATES,
    EPOCH_LOGGER,
    FAILED_STATUSES,
    WORKER_ID,
    TrialFailed,
    TrialReporter,
    TrialRunner,
    call_objective,
    device_slots,
    quiet_trial_failures,
    sample_space,
)
from speechtune.tuning.study._values import complete_metrics
from speechtune.tuning.study._warm_start import load_warm_start
from speechtune.tuning.study._weak import (
    WEAK_RATE,
    study_ranking_warnings,
    weak_ranking_warnings,
)

__all__ = [
    "BASELINE_SOURCE",
    "CONFIRMATION_ATTR",
    "COUNTED_STATES",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_RECONNECT_S",
    "EPOCH_LOGGER",
    "INTERRUPTED_REASON",
    "FAILED_STATUSES",
    "RECONNECT_ENV",
    "STORAGE_ENV",
    "WEAK_RATE",
    "WORKER_ID",
    "ConfirmRow",
    "FailureGuard",
    "OpenOptions",
    "RunDirBusyError",
    "RunDirLock",
    "StorageUnavailableError",
    "StudyExistsError",
    "StudyOutputs",
    "StudyProgress",
    "StudySession",
    "Tracker",
    "TrialFailed",
    "TrialRecord",
    "TrialReporter",
    "TrialRunner",
    "baseline_params",
    "call_objective",
    "comparable_study",
    "comparable_trials",
    "complete_metrics",
    "complete_trials",
    "confirm_candidates",
    "confirm_seeds_for",
    "confirmation_rows",
    "confirmed_choice",
    "device_slots",
    "duration_s",
    "enqueue_baseline",
    "fail_killed_trials",
    "fidelity_record",
    "interruptible_trials",
    "is_baseline",
    "is_multi_fidelity",
    "is_multi_objective",
    "learning_curve",
    "load_study",
    "load_warm_start",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "minimises",
    "objective_names",
    "open_study",
    "pending_interrupted",
    "primary_seed_stats",
    "primary_value",
    "quiet_trial_failures",
    "ranked_trials",
    "reconnect_bound",
    "record_cost_total",
    "requeue_interrupted",
    "run_confirmation",
    "resolve_storage",
    "resume_seed",
    "rung_names",
    "sample_space",
    "pareto_front",
    "pareto_knee",
    "select_best",
    "storage_url",
    "study_ranking_warnings",
    "top_rung",
    "trial_config",
    "trial_rung",
    "trial_status",
    "weak_ranking_warnings",
]
