"""Warm start: the best configs of an earlier study, tried first, and their region as a prior.

An earlier run directory (its study storage) or a ``best.yaml`` gives up to ``top_k`` configs;
each becomes a config to evaluate first and, together, a :class:`~speechtune.tuning.space.Prior`
per param centred on where they lie, so the new search starts where the old one ended.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechtune.config import flatten, split_block_ops
from speechtune.tuning.space import (
    CategoricalParam,
    Params,
    Prior,
    SearchSpace,
    check_width,
    fit_params,
)
from speechtune.tuning.study._load import load_study
from speechtune.tuning.study._records import ranked_trials, trial_config

log = logging.getLogger(__name__)


@dataclass
class WarmStart:
    """Configs and priors taken from an earlier run.

    Args:
        configs: raw params of the best earlier configs, best first, restricted to the active
            tunable params of the new space (params the earlier run did not have are absent:
            see :func:`complete_params`); duplicates removed.
        priors: a prior centred on the best config's value for each of its params.
        source: where they came from, for logs and records.
    """

    configs: list[Params] = field(default_factory=list)
    priors: dict[str, Prior] = field(default_factory=dict)
    source: str = ""


class _Warnings:
    """Log each (key, message) once: the same clipped key recurs in each of the top-k configs."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, key: str, message: str) -> None:
        if (key, message) not in self.seen:
            self.seen.add((key, message))
            log.warning("warm start from %s: %s %s", self.where, key, message)


def _read_best_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"warm start: cannot read {path}: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"warm start: {path} must hold a mapping (a best.yaml config), got {type(loaded).__name__}"
        )
    return flatten(loaded)


def _study_configs(path: Path, top_k: int) -> tuple[list[dict[str, Any]], str]:
    """Flat configs of the top-k complete trials (top rung only, for a multi-fidelity study)."""

    try:
        study = load_study(path)
        ranked = ranked_trials(study)
    except Exception as exc:  # missing storage, several studies, a corrupt database, ...
        raise ValueError(f"warm start: cannot read a study from {path}: {exc}") from exc
    fidelity = study.user_attrs.get("fidelity")
    where = ""
    if (
        isinstance(fidelity, Mapping)
        and isinstance(fidelity.get("rungs"), list)
        and fidelity["rungs"]
    ):
        # Values at a lower rung are not comparable with full-fidelity ones (see the contract).
        top = len(fidelity["rungs"]) - 1
        ranked = [t for t in ranked if t.user_attrs.get("rung") == top]
        where = f" at the top rung {top}"
    if not ranked:
        raise ValueError(
            f"warm start: study {study.study_name!r} in {path} has no complete trial{where}"
        )
    chosen = ranked[:top_k]
    # The recorded config holds what was trained (repairs included); params fill any gap.
    configs = [{**t.params, **trial_config(t)} for t in chosen]
    source = f"{path} (study {study.study_name!r}: best {len(chosen)} of {len(ranked)} complete trials{where})"
    return configs, source


def load_warm_start(
    path: str | Path, space: SearchSpace, top_k: int = 3, width: float = 0.1
) -> WarmStart:
    """Configs and priors for ``space`` from an earlier run.

    Args:
        path: a run directory (its ``study.db`` / ``journal.log``, as ``speechtune report``
            finds it) or a ``best.yaml`` (a nested recipe or a flat config). A study file
            (``.db``, ``.log``) works too.
        space: the new search space. Only keys that are its tunable params are kept; a numeric
            value outside the new range is clipped into it (and snapped to its grid), a
            categorical value that is not a choice is skipped; each with a logged warning naming
            the key. Params their ``when`` switches off are dropped.
        top_k: how many of the best complete trials to take from a run directory (in a
            multi-fidelity study, only trials at the top rung count).
        width: the width of the priors centred on the best config.

    Returns:
        The :class:`WarmStart`.

    Raises:
        ValueError: a missing or unreadable path, a study with no complete trial, a bad
            ``top_k``/``width``, or nothing in the source that the new space tunes.
    """
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise ValueError(f"load_warm_start: top_k must be an int >= 1 (got {top_k!r})")
    check_width("load_warm_start: width", width)
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"warm start: {path} does not exist; expected a run directory or a best.yaml file"
        )
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        sources, source = [_read_best_yaml(path)], str(path)
    else:
        sources, source = _study_configs(path, top_k)
    warn = _Warnings(str(path))
    configs: list[Params] = []
    for values in sources:
        # a searched encoder's joined ops, for a space of per-block keys
        params = fit_params(space, split_block_ops(values), warn)
        if params and params not in configs:
            configs.append(params)
    if not configs:
        tunable = ", ".join(space.tunable_names()) or "none"
        raise ValueError(
            f"warm start: nothing in {path} is a tunable param of the search space (tunable: {tunable})"
        )
    best = configs[0]
    priors: dict[str, Prior] = {}
    for name, raw in best.items():
        param = space.params[name]
        default = param.decode(raw) if isinstance(param, CategoricalParam) else raw
        priors[name] = Prior(default, float(width))
    return WarmStart(configs=configs, priors=priors, source=source)
