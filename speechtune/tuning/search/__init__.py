"""Multi-fidelity search: the fidelity ladder and an ask/tell engine (Hyperband, ASHA, BOHB, speechtune).

The engine is storage-free and deterministic and imports neither torch nor a study: callers who
run trials themselves drive :class:`MultiFidelitySearch` with ``ask()``/``tell()``;
:mod:`speechtune.tuning.backends` runs it as a stored Optuna study.
"""

from speechtune.tuning.search._engine import STRATEGIES, MultiFidelitySearch
from speechtune.tuning.search._fidelity import Fidelity, Rung
from speechtune.tuning.search._jobs import Job
from speechtune.tuning.search._ladder import (
    RESUME_KEY,
    default_ladder,
    estimate_cost,
    estimate_train_utterances,
    ladder_costs,
    schedule_horizon,
)

__all__ = [
    "RESUME_KEY",
    "STRATEGIES",
    "Fidelity",
    "Job",
    "MultiFidelitySearch",
    "Rung",
    "default_ladder",
    "estimate_cost",
    "estimate_train_utterances",
    "ladder_costs",
    "schedule_horizon",
]
