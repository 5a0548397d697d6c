"""The search-space model: params, conditions, derived values, constraints and priors.

One model serves every backend: :meth:`SearchSpace.sample` suggests a config define-by-run on
any Optuna trial, and the functions of :mod:`._sampling` draw configs without Optuna's samplers
(uniformly, from the priors, or near an incumbent) for the multi-fidelity engine.
"""

from speechtune.tuning.space._expr import (
    ExprError,
    evaluate_expression,
    expression_names,
    parse_expression,
)
from speechtune.tuning.space._fit import fit_params
from speechtune.tuning.space._moves import sample_near, sample_neighbour
from speechtune.tuning.space._params import (
    MAX_PRIOR_WIDTH,
    CategoricalParam,
    ConstraintViolation,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    Prior,
    check_width,
    dependency_cycle,
    optuna_choice,
    prior_problems,
    same_value,
)
from speechtune.tuning.space._parse import (
    is_param_spec,
    param_spec,
    parse_param,
    parse_space,
    space_spec,
)
from speechtune.tuning.space._sampling import (
    Params,
    prior_log_density,
    prior_mode,
    sample_prior,
    sample_uniform,
    uniform_log_density,
    with_priors,
)
from speechtune.tuning.space._space import SearchSpace

__all__ = [
    "MAX_PRIOR_WIDTH",
    "CategoricalParam",
    "ConstraintViolation",
    "DerivedParam",
    "ExprError",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "Params",
    "Prior",
    "SearchSpace",
    "check_width",
    "dependency_cycle",
    "evaluate_expression",
    "expression_names",
    "fit_params",
    "is_param_spec",
    "optuna_choice",
    "param_spec",
    "parse_expression",
    "parse_param",
    "parse_space",
    "prior_log_density",
    "prior_mode",
    "prior_problems",
    "sample_near",
    "sample_neighbour",
    "sample_prior",
    "same_value",
    "sample_uniform",
    "space_spec",
    "uniform_log_density",
    "with_priors",
]
