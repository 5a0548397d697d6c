"""The tuning engine: search spaces, the tuning YAML, objectives, studies and their backends.

Subpackages, lowest first (a lower one never imports a higher one):

* :mod:`~speechtune.tuning.space`: the search-space model (params, conditions, priors).
* :mod:`~speechtune.tuning.search`: fidelity ladders and the multi-fidelity ask/tell engine.
* :mod:`~speechtune.tuning.spec`: the tuning YAML as a typed :class:`TuningSpec`.
* :mod:`~speechtune.tuning.objectives`: the recipe, Python-function and command objectives.
* :mod:`~speechtune.tuning.study`: one study over Optuna storage: lifecycle, trials, records.
* :mod:`~speechtune.tuning.backends`: where trials run: this process, worker processes,
  workers on a shared database, Ray Tune.
"""

from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import (
    CommandObjective,
    FunctionObjective,
    Objective,
    RecipeObjective,
    TrialOutcome,
)
from speechtune.tuning.search import Fidelity, MultiFidelitySearch, Rung
from speechtune.tuning.space import SearchSpace, parse_space
from speechtune.tuning.spec import TuningSpec, load_tuning, validate_tuning
from speechtune.tuning.study import StudyExistsError

__all__ = [
    "CommandObjective",
    "Fidelity",
    "FunctionObjective",
    "MultiFidelitySearch",
    "Objective",
    "RecipeObjective",
    "Rung",
    "SearchSpace",
    "StudyExistsError",
    "TrialOutcome",
    "TuningSpec",
    "load_tuning",
    "parse_space",
    "run_study",
    "validate_tuning",
]
