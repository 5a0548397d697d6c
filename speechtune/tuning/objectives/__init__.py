"""One objective interface for what a study tunes: the built-in recipe, a Python function, a command.

An objective takes a trial's flat config, a :class:`~speechtune.training.Reporter`, the trial's
directory and a seed, and returns a :class:`TrialOutcome`; it never raises for a bad trial.
"""

from speechtune.tuning.objectives._base import (
    CONTINUE_MARKER,
    ERROR,
    Objective,
    TrialOutcome,
    merge_config,
)
from speechtune.tuning.objectives._command import CommandObjective
from speechtune.tuning.objectives._factory import (
    OBJECTIVES,
    build_objective,
    scale_default_ladder,
)
from speechtune.tuning.objectives._function import FunctionObjective, import_function
from speechtune.tuning.objectives._recipe import RecipeObjective

__all__ = [
    "CONTINUE_MARKER",
    "ERROR",
    "OBJECTIVES",
    "CommandObjective",
    "FunctionObjective",
    "Objective",
    "RecipeObjective",
    "TrialOutcome",
    "build_objective",
    "import_function",
    "merge_config",
    "scale_default_ladder",
]
