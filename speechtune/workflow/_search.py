"""Stages 3 and 4 of the workflow: the coarse search over the whole space, then the fine search
around its best configs (both on the proxy data, each a resumable study in its own directory)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from speechtune._jsonable import _jsonable
from speechtune.config import flatten
from speechtune.reports import write_study_outputs
from speechtune.tuning.backends import PackedBackend, packed_storage_url, run_study
from speechtune.tuning.space import SearchSpace, space_spec
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import (
    WEAK_RATE,
    make_storage,
    open_study,
    ranked_trials,
    storage_url,
    trial_config,
    weak_ranking_warnings,
)
from speechtune.workflow._context import Context, WorkflowError
from speechtune.workflow._golden import golden_paths, guard_env
from speechtune.workflow._narrow import distributions_for, encode_params, in_space, narrow_space
from speechtune.workflow._results import Narrowing, SearchResult, TrialSummary

#: A proxy whose best error rate is at least this cannot tell configs apart (the test lives in
#: the tuning layer, shared with ``speechtune tune``).
WEAK_PROXY_RATE = WEAK_RATE

#: What the workflow's weak-proxy warning suggests (its proxy is a workflow setting).
_WORKFLOW_HINT = (
    "Raise proxy.fraction or the tuning YAML's train.epochs, or check how well the proxy ranks "
    "configs with `speechtune correlate`."
)


def weak_proxy_warnings(values: list[float], metric: str = "wer") -> list[str]:
    """Warnings when a study's values cannot rank configs: all near chance, or all the same.

    See :func:`speechtune.tuning.study.weak_ranking_warnings`.
    """
    return weak_ranking_warnings(values, metric, hint=_WORKFLOW_HINT)


def stage_coarse(ctx: Context) -> SearchResult:
    """Random search (by default) over the whole space, on the proxy data."""
    c = ctx.spec.coarse
    spec = _search_spec(
        ctx,
        "coarse",
        ctx.tuning.space,
        sampler=c.sampler,
        pruner=c.pruner,
        n_trials=c.n_trials,
        seed_offset=0,
        fidelity=None,
    )
    study = _run_search(ctx, spec, ctx.run_dir / "coarse")
    result = _summarise_study(
        study, spec, ctx.run_dir / "coarse", max(c.top_k, ctx.spec.validation.top_k)
    )
    return dataclasses.replace(result, sampler=c.sampler, pruner=c.pruner)


def stage_fine(ctx: Context) -> SearchResult:
    """Bayesian optimisation in the region around the coarse top-k (bounds shrunk, log scales kept)."""

    f = ctx.spec.fine
    coarse = ctx.state.result("coarse", SearchResult)
    space, changes = narrow_space(
        ctx.tuning.space, [t.params for t in coarse.top[: ctx.spec.coarse.top_k]], expand=f.expand
    )
    # "auto" (the default): the multi-fidelity strategy whenever the tuning YAML has a ladder.
    fidelity = ctx.tuning.fidelity if f.multi_fidelity else None
    if f.multi_fidelity is True and fidelity is None:
        raise WorkflowError(
            f"fine.multi_fidelity is true but {ctx.spec.tuning} has no fidelity: section"
        )
    if fidelity is not None:
        # The workflow's own baseline stage measures the defaults already, on the full data;
        # in the narrowed space they may not even be representable.
        fidelity = dataclasses.replace(fidelity, baseline=False)
    spec = _search_spec(
        ctx,
        "fine",
        space,
        sampler=f.sampler,
        pruner=f.pruner,
        n_trials=f.n_trials,
        seed_offset=1,
        fidelity=fidelity,
    )
    stage_dir = ctx.run_dir / "fine"
    added = _warm_start(ctx, spec, stage_dir, coarse) if f.warm_start and fidelity is None else 0
    # Warm-start trials count towards the study's total; the stage still runs n_trials new ones.
    study = _run_search(ctx, spec, stage_dir, n_trials=f.n_trials + added)
    result = _summarise_study(study, spec, stage_dir, ctx.spec.validation.top_k)
    return dataclasses.replace(
        result,
        sampler=f.sampler,
        pruner=f.pruner,
        narrowed={k: Narrowing.from_dict(v) for k, v in changes.items()},
        warm_started=added,
        multi_fidelity=fidelity is not None,
    )


def _search_spec(
    ctx: Context,
    stage: str,
    space: SearchSpace,
    *,
    sampler: str,
    pruner: str,
    n_trials: int,
    seed_offset: int,
    fidelity: Any,
) -> TuningSpec:
    base = ctx.proxy_recipe()
    study = dataclasses.replace(
        ctx.tuning.study,
        name=f"{ctx.spec.name}-{ctx.run_uid}-{stage}",
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        storage=None,  # SQLite in the stage's own directory
        seed=None if ctx.tuning.study.seed is None else ctx.tuning.study.seed + seed_offset,
        # The workflow trains the defaults in its own baseline stage; a search stage repeating
        # them would spend a trial on a known result.
        baseline=False,
    )
    if ctx.workers > 1 and fidelity is None:
        # Several processes cannot share SQLite: the stage's study lives in a journal file.
        study = dataclasses.replace(
            study, storage=packed_storage_url(None, (ctx.run_dir / stage).resolve())
        )
    raw = dict(ctx.tuning.raw)
    searched = {
        k: getattr(study, k)
        for k in ("name", "sampler", "pruner", "n_trials", "storage", "seed", "baseline")
    }
    raw["study"] = {**(raw.get("study") or {}), **searched}
    raw["overrides"] = {**(raw.get("overrides") or {}), **ctx.proxy_overrides()}
    # The space actually searched (presets folded in, narrowed for the fine stage), stored with the
    # study: its records say what was searched, and worker processes rebuild the spec from it.
    raw.pop("presets", None)
    raw["space"] = space_spec(space)
    raw["constraints"] = list(space.constraints)
    if fidelity is None:
        raw.pop("fidelity", None)
    return dataclasses.replace(
        ctx.tuning,
        base_recipe=base,
        space=SearchSpace(space.params, space.constraints, base=flatten(base)),
        study=study,
        fidelity=fidelity,
        raw=raw,
    )


def _summarise_study(study: Any, spec: TuningSpec, stage_dir: Path, top_k: int) -> SearchResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study)
    if not ranked:
        raise WorkflowError(
            f"no trial of study {study.study_name!r} completed ({len(trials)} ran); "
            f"see {stage_dir}/trials.csv and report.html"
        )
    top = tuple(
        TrialSummary(
            trial=t.number,
            value=float(t.values[0]),
            params=_jsonable(trial_config(t)),
            trial_dir=t.user_attrs.get("trial_dir"),
        )
        for t in ranked[:top_k]
    )
    names = study.user_attrs.get("objective_names") or ["wer"]
    return SearchResult(
        run_dir=str(stage_dir),
        study=study.study_name,
        storage=storage_url(spec.study.storage, stage_dir.resolve()),
        n_trials=len(trials),
        n_complete=sum(t.state == TrialState.COMPLETE for t in trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        best=top[0],
        top=top,
        warnings=tuple(weak_proxy_warnings([float(t.values[0]) for t in ranked], str(names[0]))),
    )


def _run_search(
    ctx: Context, spec: TuningSpec, stage_dir: Path, n_trials: int | None = None
) -> Any:
    """The stage's study: in this process, or in ``ctx.workers`` worker processes on this machine."""

    backend = None
    objective = None
    if ctx.workers > 1 and spec.fidelity is None:
        # The workers neither track nor report (N processes on one MLflow store); this process
        # logs the finished study once. They inherit the golden-set guard through the environment.
        extra = [
            "--cache-dir",
            str(Path(ctx.cache_dir).resolve()),
            "--no-report",
            "--quiet",
            "--no-tracking",
        ]
        slots = (
            ctx.gpu_slots
            if ctx.gpu_slots is not None
            else (ctx.workers if ctx.device != "cpu" else None)
        )
        backend = PackedBackend(
            ctx.workers,
            device=ctx.device,
            gpu_slots=slots,
            extra_argv=extra,
            env=guard_env(golden_paths(ctx)),
        )
    else:
        objective = ctx.objective(spec.base_recipe)
    return run_study(
        spec,
        objective,
        stage_dir,
        backend=backend,
        n_trials=n_trials,
        resume=True,  # a rerun continues the stage's study; the first run creates it
        tracker=ctx.tracker(),
        outputs=write_study_outputs,
        progress=ctx.progress,
    )


def _warm_start(
    ctx: Context, spec: TuningSpec, stage_dir: Path, coarse_result: SearchResult
) -> int:
    """Add the coarse trials inside the fine region to the (new) fine study as finished evidence."""
    import optuna

    fine = open_study(spec, stage_dir, resume=True)
    if fine.get_trials(deepcopy=False):
        return int(fine.user_attrs.get("warm_started", 0))  # added when the stage first ran
    storage = make_storage(coarse_result.storage, ctx.run_dir / "coarse")
    coarse = optuna.load_study(study_name=coarse_result.study, storage=storage)
    added = 0
    for t in ranked_trials(coarse):
        params = trial_config(t)
        tunable = {k: v for k, v in params.items() if k in spec.space.tunable_names()}
        if not in_space(spec.space, tunable):
            continue
        kept = ("config", "metrics", "group_wer", "history", "trial_dir")
        attrs: dict[str, Any] = {k: t.user_attrs[k] for k in kept if k in t.user_attrs}
        attrs.update(
            status="complete",
            reason=f"warm start: coarse trial {t.number}",
            warm_start_from=t.number,
        )
        fine.add_trial(
            optuna.trial.create_trial(
                params=encode_params(spec.space, tunable),
                distributions=distributions_for(spec.space, tunable),
                values=list(t.values),
                user_attrs=_jsonable(attrs),
                intermediate_values=dict(t.intermediate_values),
            )
        )
        added += 1
    fine.set_user_attr("warm_started", added)
    return added
