"""``best.yaml``: the best trial as a config that reproduces it."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from speechtune.config import config_from_dict, config_to_dict, merge, unflatten
from speechtune.tuning.study import (
    objective_names,
    primary_seed_stats,
    rung_names,
    select_best,
    top_rung,
    trial_config,
)


def _first_seed(study: optuna.Study) -> int | None:
    # The recipe objective sets `seed` per run; the recorded history is of the first seed.
    spec = study.user_attrs.get("spec") or {}
    seeds = (spec.get("objective") or {}).get("seeds") if isinstance(spec, dict) else None
    if isinstance(seeds, list) and seeds and isinstance(seeds[0], int):
        return seeds[0]
    return None


def _command_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict | None:
    """The config file a command study's trial read (None for other objectives, or if gone)."""
    spec = study.user_attrs.get("spec") or {}
    kind = (spec.get("objective") or {}).get("kind") if isinstance(spec, dict) else None
    trial_dir = trial.user_attrs.get("trial_dir")
    if kind != "command" or not isinstance(trial_dir, str):
        return None
    # One seed: the trial dir; several: one dir per seed, all with the same config.
    for candidate in sorted(Path(trial_dir).glob("config.*")) + sorted(
        Path(trial_dir).glob("seed*/config.*")
    ):
        if candidate.suffix in (".yaml", ".json"):
            loaded = yaml.safe_load(candidate.read_text())  # JSON is YAML too
            return loaded if isinstance(loaded, dict) else None
    return None


def _header(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, note: str, seeds_note: str
) -> str:
    names = objective_names(study)
    values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, trial.values))
    lines = [
        f"# best trial of study {study.study_name!r}: trial {trial.number}, {values}",
        f"# chosen as: {note}",
    ]
    if seeds_note:
        lines.append(f"# {seeds_note}")
    return "\n".join(lines) + "\n"


def write_best_yaml(
    study: optuna.Study, path: str | Path, base_recipe: dict | None = None
) -> Path:
    """Write the best trial's config to ``path``.

    The best trial is the complete trial with the lowest primary objective; in a multi-objective
    study, the Pareto-optimal trial with the lowest primary objective (the header says so); in a
    multi-fidelity study, only trials at the top (full-fidelity) rung are candidates.
    For recipe objectives (``base_recipe`` given, or stored as the study's ``base_recipe``
    attribute) the file is the COMPLETE nested recipe, validated with ``config_from_dict``, so that
    ``speechtune train --config best.yaml`` reproduces the trial. Otherwise the flat trial config.

    Args:
        study: A loaded study following the tuning contract.
        path: Output YAML path.
        base_recipe: Nested base recipe dict; defaults to ``study.user_attrs["base_recipe"]``.

    Returns:
        The path written.

    Raises:
        ValueError: When no trial completed.
        ConfigError: When base recipe + trial config is not a valid recipe.
    """
    choice = select_best(study)
    if choice is None:
        top = top_rung(study)
        if top is not None:
            raise ValueError(
                f"multi-fidelity study {study.study_name!r} has no complete trial at its top rung "
                f"{rung_names(study)[top]!r}: no best.yaml to write (lower-rung values are not comparable)"
            )
        raise ValueError(
            f"study {study.study_name!r} has no complete trial: no best.yaml to write"
        )
    trial = choice.trial
    flat = trial_config(trial)
    if base_recipe is None:
        base_recipe = study.user_attrs.get("base_recipe")
    seeds_note = ""
    seeds, std = primary_seed_stats(trial)
    if len(seeds) > 1:
        spread = f" (std {std:.4g})" if std is not None else ""
        seeds_note = f"value is the mean over {len(seeds)} seeds{spread}"
    command_config = _command_config(study, trial)
    if command_config is not None:
        # What the command read: its config_file + overrides + this trial's values.
        seeds_note = "; ".join(
            x
            for x in (
                seeds_note,
                f"the config file trial {trial.number}'s command read; rerun the trial with: "
                f"speechtune rerun {path.parent if isinstance(path, Path) else Path(path).parent} "
                f"--trial {trial.number}",
            )
            if x
        )
        body = yaml.safe_dump(command_config, sort_keys=False)
    elif base_recipe is not None:
        nested = merge(base_recipe, unflatten(flat))
        first_seed = _first_seed(study)
        if "seed" not in flat and first_seed is not None:
            nested["seed"] = first_seed
        cfg = config_from_dict(nested, source=f"study {study.study_name!r} trial {trial.number}")
        body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    else:
        body = yaml.safe_dump(flat, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_header(study, trial, choice.note, seeds_note) + body)
    return path
