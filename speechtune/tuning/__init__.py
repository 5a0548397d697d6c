"""The tuning engine: search spaces, objectives, studies (Optuna), fidelity, trial records."""

from .._lazy import lazy_exports
from ._expr import ExprError
from ._fidelity import Fidelity, Rung
from ._space import (
    CategoricalParam,
    ConstraintViolation,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    parse_space,
)
from ._spec import CommandSpec, ObjectiveSpec, StudySpec, TuningSpec, load_tuning, validate_tuning

# name -> private module; exported lazily so that `import speechtune.tuning` stays light
_LAZY = {
    'CommandObjective': '._command',
    'FunctionObjective': '._objectives',
    'Objective': '._objectives',
    'RecipeObjective': '._objectives',
    'TrialOutcome': '._objectives',
    'make_pruner': '._optuna',
    'make_sampler': '._optuna',
    'make_storage': '._optuna',
    'StudyExistsError': '._study',
    'TrialReporter': '._study',
    'run_study': '._study',
    'tune': '._api',
    'fidelity_spec': '._api',
    'FidelitySpec': '._ladder',
    'Job': '._multifidelity',
    'MultiFidelitySearch': '._multifidelity',
    'STRATEGIES': '._multifidelity',
    'add_tune_arguments': '._cli',
    'tune_command': '._cli',
}

__all__ = [
    "CategoricalParam",
    "CommandSpec",
    "ConstraintViolation",
    "DerivedParam",
    "ExprError",
    "Fidelity",
    "FidelitySpec",
    "Job",
    "MultiFidelitySearch",
    "Rung",
    "STRATEGIES",
    "fidelity_spec",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "ObjectiveSpec",
    "SearchSpace",
    "StudySpec",
    "TuningSpec",
    "load_tuning",
    "parse_space",
    "validate_tuning",
    "CommandObjective",
    "FunctionObjective",
    "Objective",
    "RecipeObjective",
    "TrialOutcome",
    "StudyExistsError",
    "TrialReporter",
    "add_tune_arguments",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "run_study",
    "tune",
    "tune_command",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
