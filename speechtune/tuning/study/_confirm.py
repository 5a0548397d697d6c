"""Confirming a study's pick on new seeds: its top configs trained again, chosen by their mean.

A single-seed search returns the config whose one training scored best. Near sensible defaults
the spread between seeds is as large as the spread between configs (on AN4 the defaults alone
score dev WER 0.381 / 0.350 / 0.315 / 0.292 with four seeds, docs/benchmarks.md), so that pick is
partly the luckiest seed: the winner's curse. Confirmation trains the study's ``top`` best
configs again, together with the baseline (the recipe's defaults) when the study has one, on
seeds the search never saw, and picks the config with the best mean over those seeds. The
study's own values are left out of that mean: they are the ones the selection was made on.

Every run is recorded in the study (the user attr ``confirmation``) as soon as it ends, so an
interrupted confirmation resumes where it stopped, and :func:`~speechtune.tuning.study.select_best`
(``best.yaml``, the report, ``speechtune rerun``/``export``, the workflow) follows the confirmed
pick. A failed run leaves its config out of the pick; it never stops the others.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from speechtune._jsonable import _jsonable
from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import ObjectiveSpec, TuningSpec
from speechtune.tuning.study._baseline import is_baseline
from speechtune.tuning.study._confirmed import CONFIRMATION_ATTR, ConfirmRow, confirmation_rows
from speechtune.tuning.study._records import (
    _feasible,
    comparable_trials,
    is_multi_objective,
    ranked_trials,
    trial_config,
)
from speechtune.tuning.study._trial import call_objective, device_slots
from speechtune.tuning.study._values import complete_metrics

log = logging.getLogger(__name__)


class _Quiet:
    """A reporter that records nothing and never stops a run: confirmation runs go the distance."""

    def report(self, epoch: int, **metrics: float) -> bool:
        return False


def confirm_seeds_for(spec: TuningSpec) -> list[int]:
    """The confirmation seeds of ``spec``: ``study.confirm_seeds``, or the two after its own.

    The default, ``max(objective.seeds) + 1`` and ``+ 2``, is never one the search used.
    """
    if spec.study.confirm_seeds:
        return [int(s) for s in spec.study.confirm_seeds]
    start = max(spec.objective.seeds or [0]) + 1
    return [start, start + 1]


def _config_key(trial: FrozenTrial) -> str:
    return json.dumps(trial_config(trial), sort_keys=True, default=str)


def confirm_candidates(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` best comparable trials with distinct configs, plus the baseline trial.

    Infeasible trials (a violated metric constraint) are not candidates. The baseline (the
    recipe's defaults, when the study trained them at the top rung) is always one: a tuned
    config is worth shipping only if it beats the defaults on seeds neither was chosen on.
    """
    seen: set[str] = set()
    out: list[FrozenTrial] = []
    for trial in ranked_trials(study):
        if not _feasible(trial):
            continue
        if len(out) == top:
            break
        key = _config_key(trial)
        if key not in seen:
            seen.add(key)
            out.append(trial)
    baseline = next((t for t in comparable_trials(study) if is_baseline(t)), None)
    if baseline is not None and _config_key(baseline) not in seen:
        out.append(baseline)
    return out


def _write_run(
    study: optuna.Study, lock: threading.Lock, number: int, seed: int, run: dict[str, Any]
) -> None:
    # Read-modify-write of one attr under a lock: parallel runs of this process must not drop
    # each other's records (one process runs a confirmation; see run_confirmation).
    with lock:
        record = dict(study.user_attrs.get(CONFIRMATION_ATTR) or {})
        runs = {k: dict(v) for k, v in (record.get("runs") or {}).items()}
        runs.setdefault(str(number), {})[str(seed)] = _jsonable(run)
        record["runs"] = runs
        study.set_user_attr(CONFIRMATION_ATTR, record)


def run_confirmation(
    study: optuna.Study,
    objective: Objective,
    objective_spec: ObjectiveSpec,
    run_dir: Path,
    *,
    top: int,
    seeds: Sequence[int],
    n_jobs: int = 1,
    echo: Callable[[str], None] | None = None,
) -> list[ConfirmRow]:
    """Train the study's ``top`` configs (and its baseline) on ``seeds``; record and return them.

    Runs already recorded for the same seeds are kept (a resumed confirmation runs only what
    is missing); asking for other seeds starts a new record. Each run goes to
    ``run_dir/confirm/trial-NNNN/seedS``.

    Args:
        study: a finished single-objective study.
        objective: evaluates one config (the study's objective).
        objective_spec: the ``objective:`` section (how metrics become the objective value).
        run_dir: the study's run directory.
        top: how many of the best configs to confirm (>= 1).
        seeds: the confirmation seeds; none of the study's own.
        n_jobs: runs at once (threads; a recipe trains each in its own process).
        echo: called with one line per finished run (progress); None: logged only.

    Returns:
        The rows of :func:`confirmation_rows`.

    Raises:
        ValueError: a multi-objective study, ``top`` < 1, no seeds, a seed the study used, or
            no complete trial to confirm.
    """
    if is_multi_objective(study):
        raise ValueError(
            "confirmation picks by one value: a multi-objective study has a Pareto front instead"
        )
    if top < 1:
        raise ValueError(f"confirm top must be >= 1 (got {top})")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"confirm seeds must be distinct and at least one (got {seeds})")
    used = sorted(set(seeds) & set(objective_spec.seeds or []))
    if used:
        raise ValueError(
            f"confirm seeds {used} are among objective.seeds {objective_spec.seeds}: a confirmation "
            "needs seeds the search did not select on"
        )
    candidates = confirm_candidates(study, top)
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no complete trial to confirm")
    numbers = [t.number for t in candidates]
    previous = study.user_attrs.get(CONFIRMATION_ATTR) or {}
    # Runs are kept per trial and seed: a study resumed with more trials, or a larger ``top``,
    # re-confirms only the configs that have no run yet on these seeds.
    record = {
        "seeds": seeds,
        "candidates": numbers,
        "top": top,
        "metric": objective_spec.names[0],
        "runs": previous.get("runs", {}) if previous.get("seeds") == seeds else {},
    }
    study.set_user_attr(CONFIRMATION_ATTR, record)
    done = {(int(n), int(s)) for n, runs in record["runs"].items() for s, r in runs.items() if r}
    todo = [(t, s) for t in candidates for s in seeds if (t.number, s) not in done]
    lock = threading.Lock()
    slots = device_slots(objective, n_jobs) if n_jobs > 1 else None
    say = echo or (lambda line: log.info("%s", line))

    def one(index: int, trial: FrozenTrial, seed: int) -> None:
        obj = slots(index) if slots is not None else objective
        out = run_dir / "confirm" / f"trial-{trial.number:04d}" / f"seed{seed}"
        start = time.monotonic()
        outcome = call_objective(obj, trial_config(trial), _Quiet(), out, seed)  # type: ignore[arg-type]
        run: dict[str, Any] = {
            "status": outcome.status,
            "reason": outcome.reason.splitlines()[0] if outcome.reason else "",
            "seconds": round(time.monotonic() - start, 3),
            "dir": str(out),
            "value": None,
        }
        if outcome.ok:
            try:
                metrics = complete_metrics(outcome.metrics, outcome.extra)
                value = objective_spec.values(metrics)[0]
                run["value"] = value if math.isfinite(value) else None
                run["metrics"] = _jsonable(metrics)
            except KeyError as exc:
                run["status"], run["reason"] = "error", f"error: {exc.args[0]}"
        _write_run(study, lock, trial.number, seed, run)
        shown = (
            f"{run['value']:.4g}" if run["value"] is not None else run["reason"] or run["status"]
        )
        say(f"confirm trial {trial.number} seed {seed}: {record['metric']} {shown}")

    if n_jobs > 1 and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            for future in [pool.submit(one, i, t, s) for i, (t, s) in enumerate(todo)]:
                future.result()
    else:
        for i, (t, s) in enumerate(todo):
            one(i, t, s)
    return confirmation_rows(study)
