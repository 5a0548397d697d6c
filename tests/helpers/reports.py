"""Build realistic finished studies in real SQLite storage, following the tuning contract.

The studies look like what the study engine writes: flat configs (fixed and derived keys
included) in ``user_attrs["config"]``, per-epoch intermediate values, pruned trials with reason
``pruned-by-median``, a failed (diverged) trial, group WER, seed values, and the study-level
``objective_names`` / ``directions`` / ``spec`` / ``base_recipe`` attributes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

BASE_RECIPE: dict[str, Any] = {
    "seed": 42,
    "features": {"n_mels": 40},
    "specaugment": {"enabled": False},
    "model": {"encoder": "lstm", "d_model": 64, "num_layers": 1, "num_heads": 4, "dropout": 0.0},
    "optim": {"name": "adamw", "lr": 0.003},
    "schedule": {"name": "constant", "warmup_steps": 10},
    "train": {"epochs": 4, "batch_size": 16, "flatline_patience": 0},
}
EPOCHS = 4
SEEDS = [42, 43]
GROUPS = ["en-us", "en-gb-scotland", "en-029"]
PRUNED = {3, 6, 9}
FAILED = {5}


def _spec(name: str, extra: list[str]) -> dict[str, Any]:
    return {
        "recipe": "synthetic.yaml",
        "overrides": {"train.epochs": EPOCHS},
        "space": {
            "model.num_layers": [1, 2, 3],
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "model.encoder": ["lstm", "conformer"],
            "model.conv_kernel": {
                "type": "int",
                "low": 7,
                "high": 15,
                "step": 2,
                "when": {"model.encoder": "conformer"},
            },
            "schedule.warmup_steps": {"derive": "4 * model.d_model"},
            "model.dropout": 0.1,
        },
        "study": {
            "name": name,
            "sampler": "random",
            "pruner": "median",
            "n_trials": 12,
            "seed": 0,
        },
        "objective": {
            "kind": "recipe",
            "metric": "wer",
            "group": "mean",
            "seeds": SEEDS,
            "extra_objectives": extra,
        },
    }


def _sample(trial: optuna.Trial) -> dict[str, Any]:
    """Define-by-run sampling like SearchSpace.sample: conditional, fixed and derived keys."""
    config: dict[str, Any] = {
        "model.num_layers": trial.suggest_categorical("model.num_layers", [1, 2, 3]),
        "optim.lr": trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True),
        "model.encoder": trial.suggest_categorical("model.encoder", ["lstm", "conformer"]),
    }
    if config["model.encoder"] == "conformer":
        config["model.conv_kernel"] = trial.suggest_int("model.conv_kernel", 7, 15, step=2)
    config["model.dropout"] = 0.1
    config["schedule.warmup_steps"] = 4 * BASE_RECIPE["model"]["d_model"]
    return config


def _final_wer(config: dict[str, Any], rng: np.random.Generator) -> float:
    """A smooth synthetic response: lr near 3e-3 and more layers are better."""
    lr_term = 0.08 * (math.log10(config["optim.lr"]) - math.log10(3e-3)) ** 2
    layer_term = 0.05 * (3 - config["model.num_layers"])
    enc_term = -0.03 if config["model.encoder"] == "conformer" else 0.0
    return float(np.clip(0.15 + lr_term + layer_term + enc_term + rng.normal(0, 0.005), 0.01, 1.0))


def _curve(final: float) -> list[float]:
    """Per-epoch WER that decays towards ``final``."""
    return [final + (1.0 - final) * 0.5 ** (epoch * 1.5) for epoch in range(1, EPOCHS + 1)]


def _record(
    trial: optuna.Trial, config: dict[str, Any], curve: list[float], status: str, reason: str
) -> None:
    history = [{"epoch": e, "wer": w, "loss": 2.0 * w} for e, w in enumerate(curve, start=1)]
    trial.set_user_attr("status", status)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("config", config)
    trial.set_user_attr("history", history)
    trial.set_user_attr("trial_dir", f"trials/{trial.number}")


def _report(trial: optuna.Trial, curve: list[float], multi: bool) -> None:
    # Optuna keeps intermediate values for single-objective studies only; a multi-objective
    # study's curves live in the `history` user attr alone.
    if not multi:
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, step=epoch)


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    config: dict[str, Any],
    rng: np.random.Generator,
    multi: bool,
) -> None:
    final = _final_wer(config, rng)
    curve = _curve(final)
    number = trial.number
    if number in FAILED:
        # Diverged after two epochs: attributes are set before the trial fails.
        _record(trial, config, curve[:2], "diverged", "loss is nan at epoch 2")
        _report(trial, curve[:2], multi)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    if number in PRUNED:
        _record(trial, config, curve[:2], "stopped", "pruned-by-median")
        _report(trial, curve[:2], multi)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    _report(trial, curve, multi)
    seed_values = [final, final + float(rng.normal(0, 0.01))]
    mean = float(np.mean(seed_values))
    group_wer = {g: mean * (1.0 + 0.2 * i) for i, g in enumerate(GROUPS)}
    latency = (
        5.0
        + 6.0 * config["model.num_layers"]
        + (4.0 if config["model.encoder"] == "conformer" else 0.0)
    )
    metrics = {
        "wer": mean,
        "cer": mean / 2,
        "worst_group_wer": max(group_wer.values()),
        "latency_ms_per_audio_s": latency,
        "num_parameters": 1000.0 * config["model.num_layers"],
    }
    _record(trial, config, curve, "complete", "completed all epochs")
    trial.set_user_attr("metrics", metrics)
    if multi:
        # As the engine stores them: objective vectors per seed, one std per objective.
        trial.set_user_attr("seed_values", [[v, latency] for v in seed_values])
        trial.set_user_attr("objective_std", [float(np.std(seed_values)), 0.0])
    else:
        trial.set_user_attr("seed_values", seed_values)
        trial.set_user_attr("objective_std", float(np.std(seed_values)))
    trial.set_user_attr("group_wer", group_wer)
    study.tell(trial, [mean, latency] if multi else mean)


def make_study(
    storage: str,
    name: str = "fixture-study",
    *,
    multi: bool = False,
    n_trials: int = 12,
    seed: int = 0,
    recipe: bool = True,
) -> optuna.Study:
    """Create and fill a finished study in ``storage`` (e.g. ``sqlite:///<dir>/study.db``).

    Args:
        storage: An Optuna storage URL.
        name: The study name.
        multi: Two objectives (wer, latency_ms_per_audio_s) instead of wer alone.
        n_trials: Number of trials; numbers 3, 6, 9 are pruned and 5 fails.
        seed: Seeds both the sampler and the synthetic noise.
        recipe: Store ``base_recipe`` (a recipe objective); False looks like a command objective.

    Returns:
        The loaded study.
    """
    names = ["wer", "latency_ms_per_audio_s"] if multi else ["wer"]
    directions = ["minimize"] * len(names)
    # Trials are run in memory and copied to `storage` in one go: SQLite commits every
    # attribute write, which made building the fixture take seconds. The stored records are
    # the same as if the study had run against `storage` directly.
    memory = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=memory,
        study_name=name,
        directions=directions,
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    study.set_user_attr("objective_names", names)
    study.set_user_attr("directions", directions)
    study.set_user_attr("spec", _spec(name, names[1:]))
    if recipe:
        study.set_user_attr("base_recipe", BASE_RECIPE)
    rng = np.random.default_rng(seed)
    for _ in range(n_trials):
        trial = study.ask()
        config = _sample(trial)
        _finish(study, trial, config, rng, multi)
    optuna.copy_study(from_study_name=name, from_storage=memory, to_storage=storage)
    return optuna.load_study(study_name=name, storage=storage)


def make_run_dir(
    root: Path, name: str = "fixture-study", *, multi: bool = False, n_trials: int = 12
) -> Path:
    """A run directory ``root/<name>`` holding ``study.db`` as the study engine lays it out."""
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    make_study(f"sqlite:///{run_dir / 'study.db'}", name, multi=multi, n_trials=n_trials)
    return run_dir


#: The 16-parameter space of the study a new user reported on (issue 14): floats (log and
#: linear), ints, categoricals (one with a ``null`` choice) and two conditional parameters.
WIDE_SPACE: dict[str, optuna.distributions.BaseDistribution] = {
    "optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
    "optim.weight_decay": optuna.distributions.FloatDistribution(0.0, 0.1),
    "optim.beta2": optuna.distributions.FloatDistribution(0.9, 0.999),
    "model.num_layers": optuna.distributions.IntDistribution(1, 6),
    "model.d_model": optuna.distributions.CategoricalDistribution([64, 128, 256]),
    "model.num_heads": optuna.distributions.CategoricalDistribution([2, 4, 8]),
    "model.dropout": optuna.distributions.FloatDistribution(0.0, 0.3),
    "model.encoder": optuna.distributions.CategoricalDistribution(["lstm", "conformer"]),
    "model.conv_kernel": optuna.distributions.IntDistribution(7, 15, step=2),
    "model.ff_mult": optuna.distributions.IntDistribution(2, 4),
    "schedule.name": optuna.distributions.CategoricalDistribution(["constant", "cosine"]),
    "schedule.warmup_steps": optuna.distributions.IntDistribution(0, 1000, step=50),
    "specaugment.freq_masks": optuna.distributions.IntDistribution(0, 3),
    "specaugment.time_masks": optuna.distributions.IntDistribution(0, 4),
    "features.n_mels": optuna.distributions.CategoricalDistribution([40, 80]),
    "train.grad_clip": optuna.distributions.CategoricalDistribution([None, 1.0, 5.0]),
}
#: Active only when ``model.encoder`` is ``conformer`` (the "when" of a conditional parameter).
CONDITIONAL = {"model.conv_kernel", "model.ff_mult"}


def make_wide_study(
    n_complete: int = 4,
    *,
    tied: bool = True,
    seeds: list[int] | None = None,
    seed: int = 0,
    name: str = "wide",
) -> optuna.Study:
    """An in-memory study over :data:`WIDE_SPACE` like the one issue 14 reported on.

    ``n_complete`` complete trials (all with WER 1.0 when ``tied``, else distinct values), then
    one pruned and one failed trial. Every trial has per-epoch values and a ``cost`` record, and
    conditional parameters are absent where the encoder is an LSTM.

    Args:
        n_complete: Number of complete trials.
        tied: Give every complete trial the same WER (a diverged-everywhere study).
        seeds: ``objective.seeds`` of the stored spec ([42], a single seed, by default); with
            more than one, complete trials also hold ``seed_values`` and ``objective_std``.
        seed: Seeds the random parameter values.
        name: The study name.
    """
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, direction="minimize")
    study.set_user_attr("objective_names", ["wer"])
    study.set_user_attr("directions", ["minimize"])
    study.set_user_attr(
        "spec", {"study": {"name": name}, "objective": {"metric": "wer", "seeds": seeds or [42]}}
    )
    states = [optuna.trial.TrialState.COMPLETE] * n_complete + [
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    ]
    for i, state in enumerate(states):
        encoder = ["lstm", "conformer"][i % 2]
        params: dict[str, Any] = {}
        for key, dist in WIDE_SPACE.items():
            if key in CONDITIONAL and encoder != "conformer":
                continue
            if key == "model.encoder":
                params[key] = encoder
            elif isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[key] = dist.choices[int(rng.integers(len(dist.choices)))]
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[key] = dist.low + dist.step * int(
                    rng.integers((dist.high - dist.low) // dist.step + 1)
                )
            else:
                assert isinstance(dist, optuna.distributions.FloatDistribution)
                low, high = (
                    (math.log(dist.low), math.log(dist.high))
                    if dist.log
                    else (dist.low, dist.high)
                )
                value = float(rng.uniform(low, high))
                params[key] = math.exp(value) if dist.log else value
        final = 1.0 if tied else 0.2 + 0.05 * i
        epochs = EPOCHS if state == optuna.trial.TrialState.COMPLETE else 2
        curve = _curve(final)[:epochs]
        cost = {"wall_s": 60.0 * epochs, "cpu_core_hours": 0.01 * epochs, "co2e_g": 2.0 * epochs}
        per_seed: dict[str, Any] = {}
        if len(seeds or []) > 1 and state == optuna.trial.TrialState.COMPLETE:
            # As the engine stores a multi-seed trial: its value is the mean over seeds.
            values = [final - 0.01, final + 0.01]
            per_seed = {"seed_values": values, "objective_std": float(np.std(values))}
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=final if state == optuna.trial.TrialState.COMPLETE else None,
                params=params,
                distributions={k: WIDE_SPACE[k] for k in params},
                intermediate_values=dict(enumerate(curve, start=1)),
                user_attrs={
                    **per_seed,
                    "config": dict(params),
                    "cost": cost,
                    "status": {"COMPLETE": "complete", "PRUNED": "stopped", "FAIL": "diverged"}[
                        state.name
                    ],
                    "reason": {
                        "COMPLETE": "completed all epochs",
                        "PRUNED": "pruned-by-median",
                        "FAIL": "loss is nan at epoch 2",
                    }[state.name],
                },
            )
        )
    return study
