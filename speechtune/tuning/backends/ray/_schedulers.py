"""Ray schedulers of ``ray.scheduler`` (fifo, asha, hyperband, pbt, pb2), with the epoch as time unit."""

from __future__ import annotations

from typing import Any

from speechtune.tuning.backends.ray._trainable import OBJECTIVE_KEY
from speechtune.tuning.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from speechtune.tuning.spec import RaySpec, TuningSpec


# ---------------------------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------------------------
def _mutation_domains(rspec: RaySpec, space: SearchSpace) -> dict[str, Any]:
    """Ray domains for the keys PBT perturbs: the param's own range in ``space``, or the listed values."""
    from ray import tune

    out: dict[str, Any] = {}
    explicit = rspec.pbt.hyperparam_mutations or {}
    for name in rspec.mutation_keys(space.params):
        how = explicit.get(name, "space")
        if how != "space":
            out[name] = list(how)
            continue
        p = space.params[name]
        if isinstance(p, FloatParam):
            out[name] = tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        elif isinstance(p, IntParam):
            out[name] = (
                tune.lograndint(p.low, p.high + 1) if p.log else tune.randint(p.low, p.high + 1)
            )
        elif isinstance(p, CategoricalParam):
            out[name] = list(p.choices)
    return out


def _clip_to_space(space: SearchSpace) -> Any:
    """PBT's explore step multiplies a value by 0.8/1.2: keep the result inside the space's range."""

    def explore(config: dict) -> dict:
        for name, p in space.params.items():
            if isinstance(p, (FloatParam, IntParam)) and isinstance(
                config.get(name), (int, float)
            ):
                value = min(max(config[name], p.low), p.high)
                config[name] = int(round(value)) if isinstance(p, IntParam) else float(value)
        return config

    return explore


def _make_scheduler(rspec: RaySpec, spec: TuningSpec, max_t: int) -> Any:
    """The Ray scheduler of ``ray.scheduler``; its time unit is the epoch (one report per epoch).

    ASHA/HyperBand get ``max_t + 1``: a trial's last report is its final result after
    ``max_t`` epochs, which must not be cut off at ``max_t``.
    """
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        PopulationBasedTraining,
    )

    common: dict[str, Any] = {
        "time_attr": "training_iteration",
        "metric": OBJECTIVE_KEY,
        "mode": "min",
    }
    name = rspec.scheduler
    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        return ASHAScheduler(
            max_t=max_t + 1,
            grace_period=rspec.grace_period,
            reduction_factor=rspec.reduction_factor,
            **common,
        )
    if name == "hyperband":
        return HyperBandScheduler(
            max_t=max_t + 1, reduction_factor=rspec.reduction_factor, **common
        )
    pbt = rspec.pbt
    if name == "pbt":
        return PopulationBasedTraining(
            perturbation_interval=pbt.perturbation_interval,
            hyperparam_mutations=_mutation_domains(rspec, spec.space),
            quantile_fraction=pbt.quantile_fraction,
            resample_probability=pbt.resample_probability,
            synch=pbt.synch,
            custom_explore_fn=_clip_to_space(spec.space),
            **common,
        )
    try:
        import GPy  # noqa: F401  (PB2's Gaussian process)
        import sklearn  # noqa: F401
        from ray.tune.schedulers.pb2 import PB2
    except ImportError as exc:
        raise RuntimeError(
            f"ray.scheduler: pb2 needs GPy and scikit-learn ({exc}); install them with `pip install GPy scikit-learn`, "
            "or use scheduler: pbt"
        ) from None
    bounds: dict[str, Any] = {}
    for name in rspec.mutation_keys(spec.space.params):
        param = spec.space.params[name]
        if isinstance(param, (FloatParam, IntParam)):  # PB2 perturbs numbers within bounds
            bounds[name] = [param.low, param.high]
    return PB2(
        perturbation_interval=pbt.perturbation_interval,
        hyperparam_bounds=bounds,
        quantile_fraction=pbt.quantile_fraction,
        synch=pbt.synch,
        **common,
    )


def _max_t(rspec: RaySpec, spec: TuningSpec) -> int:
    if rspec.max_t is not None:
        return rspec.max_t
    return spec.max_epochs or 100
