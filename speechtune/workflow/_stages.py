"""The eight stages of the production workflow, each a function of a :class:`Context`.

Every stage returns its result (a JSON-ready dict, recorded in ``state.json``) and is safe to
run again after an interruption: studies resume from their storage, trainings continue from
``last.pt`` and a finished training is read back from its record (:data:`RUN_RECORD`) instead of rerun.
Stages 1 to 6 never see the golden set (the runner guards it); stage 7 is the first to read it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from speechtune._jsonable import _jsonable
from speechtune.config import config_from_dict, config_to_dict, flatten
from speechtune.data import Manifest, PreparedData, replace_utt
from speechtune.metrics import CostModel
from speechtune.tuning.space import SearchSpace, space_spec
from speechtune.tuning.spec import TuningSpec
from speechtune.workflow._config import WorkflowSpec
from speechtune.workflow._gate import file_sha256
from speechtune.workflow._state import WorkflowState

log = logging.getLogger(__name__)

#: A finished training's record in its run directory (the recipe's own result.json is beside it).
RUN_RECORD = "workflow_run.json"

#: Per-group metrics kept in results and the registry.
_DEV_KEYS = ("wer", "cer", "worst_group_wer", "worst_group", "group_wer", "dev_loss")


class WorkflowError(RuntimeError):
    """A stage cannot go on (bad data, no trial completed, a failed final training, ...)."""


@dataclass
class Context:
    """What every stage needs: the specs, where to write, how to run, and the shared data."""

    spec: WorkflowSpec
    tuning: TuningSpec
    run_dir: Path
    state: WorkflowState
    device: str = "auto"
    cache_dir: Path = Path(".cache/speechtune")
    num_threads: int | None = None
    progress: bool = False
    #: Registry/tracking override from the command line (else ``gating.tracking_uri``).
    tracking_uri: str | None = None
    #: Log the coarse and fine studies to MLflow (the registry of stage 7 is used regardless).
    track_studies: bool = True
    #: Worker processes for the coarse and fine studies (1: trials in this process). On a GPU
    #: they pack several trials onto it (``speechtune tune --workers``).
    workers: int = 1
    #: Concurrent trials per GPU with ``workers`` > 1 (None: ``workers`` on a GPU).
    gpu_slots: int | None = None
    _data: PreparedData | None = field(default=None, repr=False)

    @property
    def cost_model(self) -> CostModel:
        return self.tuning.cost

    @property
    def run_uid(self) -> str:
        return str(self.state.data["run_uid"])

    # -- recipes -------------------------------------------------------------------------------
    def proxy_overrides(self) -> dict[str, Any]:
        """The recipe keys that put a run on the proxy subset (stages 2 to 5)."""
        p = self.spec.proxy
        if p.hours is not None:
            return {"data.proxy_fraction": 1.0, "data.proxy_hours": float(p.hours)}
        return {"data.proxy_fraction": float(p.fraction or 1.0), "data.proxy_hours": None}

    def proxy_recipe(self) -> dict[str, Any]:
        """The tuning YAML's base recipe (its overrides applied) on the proxy subset."""
        from speechtune.tuning.objectives import merge_config

        return merge_config(self.tuning.base_recipe, self.proxy_overrides())

    def full_recipe(self) -> dict[str, Any]:
        """The base recipe at the top fidelity on all the training data, with ``full.overrides``."""
        from speechtune.tuning.objectives import merge_config

        top: dict[str, Any] = {}
        fidelity = getattr(self.tuning, "fidelity", None)
        if fidelity is not None:
            top = dict(fidelity.fidelity.rungs[-1].overrides)
        overrides = {**top, **self.spec.full.overrides, "data.proxy_fraction": 1.0, "data.proxy_hours": None}
        return merge_config(self.tuning.base_recipe, overrides)

    # -- data ----------------------------------------------------------------------------------
    def data(self) -> PreparedData:
        """Train (all of it) and dev, prepared once per process (corpus caches make it cheap)."""
        if self._data is None:
            from speechtune.data import prepare_data

            cfg = config_from_dict(self.full_recipe(), "the workflow's recipe")
            self._data = prepare_data(cfg.data, cfg.features.sample_rate, self.cache_dir, self.progress)
        return self._data

    def objective(self, recipe: Mapping[str, Any]) -> Any:
        from speechtune.tuning.objectives import RecipeObjective

        return RecipeObjective(recipe, device=self.device, cache_dir=self.cache_dir, num_threads=self.num_threads, data=self.data())

    def tracker(self) -> Any:
        """MLflow tracking of a stage's study, in the registry's store (experiment = workflow name); None when off."""
        if not self.track_studies:
            return None
        from speechtune.track import StudyTracker

        uri = self.tracking_uri or self.spec.gating.tracking_uri
        return StudyTracker(uri, self.spec.name, self.spec.gating.registry_dir)

    def value(self, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> float:
        """The tuned objective (e.g. dev WER, or worst-group WER) of one run's final metrics."""
        from speechtune.tuning.study import complete_metrics

        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return self.tuning.objective.values(complete_metrics(numeric, extra or metrics))[0]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _describe(manifest: Manifest) -> dict[str, Any]:
    return {
        "utterances": len(manifest),
        "hours": round(manifest.hours, 4),
        "speakers": len(manifest.speakers),
        "groups": manifest.groups,
        "fingerprint": manifest.fingerprint(),
    }


def _dev_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _DEV_KEYS if k in metrics}


def train_once(ctx: Context, recipe: Mapping[str, Any], config: Mapping[str, Any], out_dir: Path, seed: int) -> dict[str, Any]:
    """Train one config once, or read back the run it already finished (:data:`RUN_RECORD`).

    A run that died part-way continues from its ``last.pt``. Returns the recorded result:
    ``{"status", "reason", "metrics", "value", "seed", "run_dir"}`` (``value`` None when the
    run failed).
    """
    from speechtune.training import NullReporter
    from speechtune.tuning.objectives import CONTINUE_MARKER

    out_dir = Path(out_dir)
    done = out_dir / RUN_RECORD
    if done.is_file():
        return json.loads(done.read_text())
    if (out_dir / "last.pt").is_file():
        (out_dir / CONTINUE_MARKER).write_text(json.dumps({"reason": "workflow resumed an interrupted training"}))
    outcome = ctx.objective(recipe)(dict(config), NullReporter(), out_dir, seed)
    value = None
    if outcome.ok:
        try:
            value = ctx.value(outcome.metrics, outcome.extra)
        except KeyError as exc:
            log.warning("run in %s: %s", out_dir, exc)
    metrics = {**outcome.metrics, **{k: outcome.extra[k] for k in ("group_wer", "worst_group") if k in outcome.extra}}
    result = {
        "status": outcome.status,
        "reason": outcome.reason,
        "metrics": _jsonable(metrics),
        "value": value,
        "seed": seed,
        "run_dir": str(out_dir),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------------------------
# 1 proxy data
# ---------------------------------------------------------------------------------------------
def stage_proxy(ctx: Context) -> dict[str, Any]:
    """Carve dev (speaker-disjoint) and the stratified proxy subset; write the three manifests."""
    from speechtune.data import proxy_subset

    data = ctx.data()
    p = ctx.spec.proxy
    seed = config_from_dict(ctx.proxy_recipe(), "the workflow's recipe").data.split_seed
    if p.hours is not None:
        proxy = proxy_subset(data.train, hours=p.hours, seed=seed)
    else:
        proxy = proxy_subset(data.train, fraction=p.fraction or 1.0, seed=seed)
    if len(proxy) == 0:
        raise WorkflowError(f"the proxy subset is empty (proxy: {dataclasses.asdict(p)}); raise proxy.fraction or proxy.hours")
    out = ctx.run_dir / "data"
    paths = {"train_full": out / "train_full.jsonl", "proxy": out / "train_proxy.jsonl", "dev": out / "dev.jsonl"}
    for key, manifest in (("train_full", data.train), ("proxy", proxy), ("dev", data.dev)):
        manifest.to_jsonl(paths[key])
    return {
        "fraction": p.fraction if p.hours is None else None,
        "hours": p.hours,
        "seed": seed,
        "train_full": _describe(data.train),
        "proxy": _describe(proxy),
        "dev": _describe(data.dev),
        "manifests": {k: str(v) for k, v in paths.items()},
        "manifest_sha256": {k: file_sha256(v) for k, v in paths.items()},
        "skipped_utterances": [b.id for b in data.report.skipped],
    }


def check_data_unchanged(ctx: Context) -> None:
    """A resumed workflow must see the data stage 1 recorded (same train and dev utterances)."""
    recorded = ctx.state.result("proxy")
    data = ctx.data()
    for key, manifest in (("train_full", data.train), ("dev", data.dev)):
        if manifest.fingerprint() != recorded[key]["fingerprint"]:
            raise WorkflowError(
                f"the {key} data changed since stage 1 ran (fingerprint {manifest.fingerprint()} != "
                f"{recorded[key]['fingerprint']}); rerun with --from-stage proxy, or use a new --run-dir"
            )


# ---------------------------------------------------------------------------------------------
# 2 baseline
# ---------------------------------------------------------------------------------------------
def stage_baseline(ctx: Context) -> dict[str, Any]:
    """The recipe defaults (the tuning YAML's base recipe) on the proxy data, first validation seed."""
    seed = ctx.spec.validation.seeds[0]
    run = train_once(ctx, ctx.proxy_recipe(), {}, ctx.run_dir / "baseline" / f"seed{seed}", seed)
    if run["value"] is None:
        log.warning("the baseline did not train (%s): %s", run["status"], run["reason"])
    return {
        "run_dir": run["run_dir"],
        "seed": seed,
        "status": run["status"],
        "reason": run["reason"],
        "dev": _dev_metrics(run["metrics"]),
        "value": run["value"],
    }


# ---------------------------------------------------------------------------------------------
# 3 coarse and 4 fine search
# ---------------------------------------------------------------------------------------------
def _search_spec(ctx: Context, stage: str, space: SearchSpace, *, sampler: str, pruner: str, n_trials: int, seed_offset: int, fidelity: Any) -> TuningSpec:
    base = ctx.proxy_recipe()
    study = dataclasses.replace(
        ctx.tuning.study,
        name=f"{ctx.spec.name}-{ctx.run_uid}-{stage}",
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        storage=None,  # SQLite in the stage's own directory
        seed=None if ctx.tuning.study.seed is None else ctx.tuning.study.seed + seed_offset,
    )
    if ctx.workers > 1 and fidelity is None:
        from speechtune.tuning.backends import packed_storage_url

        # Several processes cannot share SQLite: the stage's study lives in a journal file.
        study = dataclasses.replace(study, storage=packed_storage_url(None, (ctx.run_dir / stage).resolve()))
    raw = dict(ctx.tuning.raw)
    raw["study"] = {**(raw.get("study") or {}), **{k: getattr(study, k) for k in ("name", "sampler", "pruner", "n_trials", "storage", "seed")}}
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


def _summarise_study(study: Any, spec: TuningSpec, stage_dir: Path, top_k: int) -> dict[str, Any]:
    from optuna.trial import TrialState

    from speechtune.tuning.study import ranked_trials, storage_url, trial_config

    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study)
    if not ranked:
        raise WorkflowError(
            f"no trial of study {study.study_name!r} completed ({len(trials)} ran); see {stage_dir}/trials.csv and report.html"
        )
    top = [
        {"trial": t.number, "value": float(t.values[0]), "params": _jsonable(trial_config(t)), "trial_dir": t.user_attrs.get("trial_dir")}
        for t in ranked[:top_k]
    ]
    names = study.user_attrs.get("objective_names") or ["wer"]
    warnings = weak_proxy_warnings([float(t.values[0]) for t in ranked], str(names[0]))
    return {
        "run_dir": str(stage_dir),
        "study": study.study_name,
        "storage": storage_url(spec.study.storage, stage_dir.resolve()),
        "n_trials": len(trials),
        "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "best": top[0],
        "top": top,
        "warnings": warnings,
    }


#: A proxy whose best error rate is at least this cannot tell configs apart (CTC models that
#: have not yet left the all-blank phase all score ~1.0).
WEAK_PROXY_RATE = 0.9


def weak_proxy_warnings(values: list[float], metric: str = "wer") -> list[str]:
    """Warnings when a study's values cannot rank configs: all near chance, or all the same.

    The near-chance test applies to error rates only (a metric named ``...wer`` or ``...cer``).
    """
    if not values:
        return []
    best, worst = min(values), max(values)
    out = []
    if metric.endswith(("wer", "cer")) and best >= WEAK_PROXY_RATE:
        out.append(
            f"every trial scored {best:.3f} or worse: the proxy (data share x epochs) is too weak to rank configs, so "
            "the search is close to a random pick. Raise proxy.fraction or the tuning YAML's train.epochs, or check "
            "how well the proxy ranks configs with `speechtune correlate`."
        )
    elif len(values) >= 3 and worst - best < 1e-3:
        out.append(f"all {len(values)} trials scored within 0.001 of each other ({best:.4f}): the search space or proxy does not separate configs.")
    return out


def _run_search(ctx: Context, spec: TuningSpec, stage_dir: Path, n_trials: int | None = None) -> Any:
    """The stage's study: in this process, or in ``ctx.workers`` worker processes on this machine."""
    from speechtune.reports import write_study_outputs
    from speechtune.tuning.backends import PackedBackend, run_study
    from speechtune.workflow._golden import guard_env

    backend = None
    objective = None
    if ctx.workers > 1 and spec.fidelity is None:
        # The workers neither track nor report (N processes on one MLflow store); this process
        # logs the finished study once. They inherit the golden-set guard through the environment.
        extra = ["--cache-dir", str(Path(ctx.cache_dir).resolve()), "--no-report", "--quiet", "--no-tracking"]
        slots = ctx.gpu_slots if ctx.gpu_slots is not None else (ctx.workers if ctx.device != "cpu" else None)
        backend = PackedBackend(
            ctx.workers, device=ctx.device, gpu_slots=slots, extra_argv=extra, env=guard_env(golden_paths(ctx))
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


def stage_coarse(ctx: Context) -> dict[str, Any]:
    """Random search (by default) over the whole space, on the proxy data."""
    c = ctx.spec.coarse
    spec = _search_spec(ctx, "coarse", ctx.tuning.space, sampler=c.sampler, pruner=c.pruner, n_trials=c.n_trials, seed_offset=0, fidelity=None)
    study = _run_search(ctx, spec, ctx.run_dir / "coarse")
    result = _summarise_study(study, spec, ctx.run_dir / "coarse", max(c.top_k, ctx.spec.validation.top_k))
    result.update(sampler=c.sampler, pruner=c.pruner)
    return result


def _warm_start(ctx: Context, spec: TuningSpec, stage_dir: Path) -> int:
    """Add the coarse trials inside the fine region to the (new) fine study as finished evidence."""
    import optuna

    from speechtune.tuning.study import open_study, ranked_trials, trial_config
    from speechtune.workflow._narrow import distributions_for, encode_params, in_space

    fine = open_study(spec, stage_dir, resume=True)
    if fine.get_trials(deepcopy=False):
        return int(fine.user_attrs.get("warm_started", 0))  # added when the stage first ran
    from speechtune.tuning.study import make_storage

    recorded = ctx.state.result("coarse")
    coarse = optuna.load_study(study_name=recorded["study"], storage=make_storage(recorded["storage"], ctx.run_dir / "coarse"))
    added = 0
    for t in ranked_trials(coarse):
        params = trial_config(t)
        tunable = {k: v for k, v in params.items() if k in spec.space.tunable_names()}
        if not in_space(spec.space, tunable):
            continue
        attrs = {k: t.user_attrs[k] for k in ("config", "metrics", "group_wer", "history", "trial_dir") if k in t.user_attrs}
        attrs.update(status="complete", reason=f"warm start: coarse trial {t.number}", warm_start_from=t.number)
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


def stage_fine(ctx: Context) -> dict[str, Any]:
    """Bayesian optimisation in the region around the coarse top-k (bounds shrunk, log scales kept)."""
    from speechtune.workflow._narrow import narrow_space

    f = ctx.spec.fine
    coarse = ctx.state.result("coarse")
    top = [t["params"] for t in coarse["top"][: ctx.spec.coarse.top_k]]
    space, changes = narrow_space(ctx.tuning.space, top, expand=f.expand)
    fidelity = ctx.tuning.fidelity if f.multi_fidelity else None
    if f.multi_fidelity and fidelity is None:
        raise WorkflowError(f"fine.multi_fidelity is true but {ctx.spec.tuning} has no fidelity: section")
    spec = _search_spec(ctx, "fine", space, sampler=f.sampler, pruner=f.pruner, n_trials=f.n_trials, seed_offset=1, fidelity=fidelity)
    stage_dir = ctx.run_dir / "fine"
    added = _warm_start(ctx, spec, stage_dir) if f.warm_start and fidelity is None else 0
    # Warm-start trials count towards the study's total; the stage still runs n_trials new ones.
    study = _run_search(ctx, spec, stage_dir, n_trials=f.n_trials + added)
    result = _summarise_study(study, spec, stage_dir, ctx.spec.validation.top_k)
    result.update(sampler=f.sampler, pruner=f.pruner, narrowed=changes, warm_started=added, multi_fidelity=fidelity is not None)
    return result


# ---------------------------------------------------------------------------------------------
# 5 validation
# ---------------------------------------------------------------------------------------------
def _candidates(ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """The baseline, then the best distinct configs of both searches (by their search value)."""
    pool: list[tuple[float, str, dict[str, Any]]] = []
    for stage in ("coarse", "fine"):
        for t in ctx.state.result(stage)["top"]:
            origin = t["params"]
            pool.append((t["value"], f"{stage}-{t['trial']}", origin))
    pool.sort(key=lambda x: x[0])
    seen: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = [("baseline", {})]
    for _, name, params in pool:
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            continue  # a warm-started fine trial is its coarse trial
        seen.add(key)
        out.append((name, params))
        if len(out) > ctx.spec.validation.top_k:
            break
    return out


def stage_validate(ctx: Context) -> dict[str, Any]:
    """The top-k configs and the baseline, each trained with every validation seed (fresh seeds)."""
    from speechtune.workflow._stats import mean_std, seed_noise_test

    v = ctx.spec.validation
    recipe = ctx.proxy_recipe()
    baseline = ctx.state.result("baseline")
    candidates = []
    for name, params in _candidates(ctx):
        runs = []
        for seed in v.seeds:
            if name == "baseline" and seed == baseline["seed"]:
                runs.append(json.loads((Path(baseline["run_dir"]) / RUN_RECORD).read_text()))
                continue
            runs.append(train_once(ctx, recipe, params, ctx.run_dir / "validate" / name / f"seed{seed}", seed))
        values = [r["value"] for r in runs if r["value"] is not None]
        mean, std = mean_std(values) if values else (None, None)
        candidates.append(
            {
                "name": name,
                "params": params,
                "values": values,
                "seeds": [r["seed"] for r in runs if r["value"] is not None],
                "failed": [{"seed": r["seed"], "status": r["status"], "reason": r["reason"]} for r in runs if r["value"] is None],
                "mean": mean,
                "std": std,
            }
        )
    ranked = [c for c in candidates if c["mean"] is not None]
    if not ranked:
        raise WorkflowError("no validation run trained (every candidate failed with every seed); see " + str(ctx.run_dir / "validate"))
    # The winner by mean over seeds; ties go to the candidate listed first (baseline, then search order).
    winner = min(ranked, key=lambda c: c["mean"])
    base = candidates[0]
    if winner is base:
        test = {
            "method": "none",
            "statistic": None,
            "p_value": None,
            "alpha": v.alpha,
            "significant": False,
            "statement": "the baseline has the lowest mean: no searched config beat the recipe defaults on the validation seeds.",
        }
    else:
        test = seed_noise_test(winner["values"], base["values"], alpha=v.alpha).as_dict()
    return {"seeds": list(v.seeds), "alpha": v.alpha, "candidates": candidates, "winner": winner["name"], "test": test}


# ---------------------------------------------------------------------------------------------
# 6 full training
# ---------------------------------------------------------------------------------------------
def stage_full(ctx: Context) -> dict[str, Any]:
    """The winner on all the training data at the top fidelity."""
    val = ctx.state.result("validate")
    winner = next(c for c in val["candidates"] if c["name"] == val["winner"])
    seed = ctx.spec.full.seed if ctx.spec.full.seed is not None else ctx.spec.validation.seeds[0]
    recipe = ctx.full_recipe()
    run = train_once(ctx, recipe, winner["params"], ctx.run_dir / "full", seed)
    if run["value"] is None:
        raise WorkflowError(f"full training of {winner['name']} failed ({run['status']}): {run['reason']}; see {run['run_dir']}")
    cfg = config_from_dict({**_merged(recipe, winner["params"]), "seed": seed})
    result = {
        "run_dir": run["run_dir"],
        "candidate": winner["name"],
        "params": winner["params"],
        "seed": seed,
        "epochs": cfg.train.epochs,
        "dev": _dev_metrics(run["metrics"]),
        "value": run["value"],
        "model": str(Path(run["run_dir"]) / "model.pt"),
    }
    if ctx.spec.full.baseline and winner["name"] != "baseline":
        # What the untuned recipe reaches when trained the same way: the honest yardstick for the winner.
        base = train_once(ctx, recipe, {}, ctx.run_dir / "full_baseline", seed)
        result["baseline"] = {"run_dir": base["run_dir"], "status": base["status"], "reason": base["reason"],
                              "dev": _dev_metrics(base["metrics"]), "value": base["value"]}
        if base["value"] is not None and base["value"] < run["value"]:
            # Selection on dev, as everywhere before the gate: the better of the two goes on.
            tuned = {k: result[k] for k in ("run_dir", "candidate", "params", "dev", "value", "model")}
            result.update(
                run_dir=base["run_dir"], candidate="baseline", params={}, dev=result["baseline"]["dev"], value=base["value"],
                model=str(Path(base["run_dir"]) / "model.pt"), tuned=tuned,
                warnings=[
                    f"the tuned winner ({winner['name']}, dev {ctx.state.data.get('metric', 'wer')} {run['value']:.4f}) did worse at full "
                    f"fidelity than the recipe's defaults ({base['value']:.4f}): the baseline goes to the gate instead. The proxy ranked "
                    "configs unlike full training; a larger proxy (more data or epochs) or `speechtune correlate` on the studies can tell why."
                ],
            )
    return result


def _merged(recipe: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    from speechtune.tuning.objectives import merge_config

    return merge_config(recipe, params)


# ---------------------------------------------------------------------------------------------
# 7 gating and 8 export
# ---------------------------------------------------------------------------------------------
def load_golden(ctx: Context) -> tuple[Manifest, str]:
    """The golden manifest (split ``golden``) and where it came from. Only stage 7 calls this."""
    from speechtune.data import load_manifest, synthesize_configured

    g = ctx.spec.golden
    if g.manifest is not None:
        return load_manifest(g.manifest).with_split("golden"), str(g.manifest)
    s = g.synthetic
    assert s is not None
    manifest = synthesize_configured(golden_synthetic_root(ctx), s, ctx.progress)
    # Another seed draws other voices, but the generator names speakers by accent and index
    # (en-us_s00): prefixed, they cannot be mistaken for the training corpus's speakers.
    renamed = [replace_utt(u, id=f"golden-{u.id}", speaker=f"golden-{u.speaker}") for u in manifest]
    return Manifest(renamed, "golden", manifest.root), f"synthetic corpus {manifest.root}"


def golden_synthetic_root(ctx: Context) -> Path:
    """Where a synthetic golden corpus is generated: its own cache directory, never the training one."""
    return Path(ctx.cache_dir) / "golden"


def golden_paths(ctx: Context) -> list[tuple[Path, bool]]:
    """What the guard refuses before gating: the golden manifest, or the golden corpus directory."""
    g = ctx.spec.golden
    if g.manifest is not None:
        return [(g.manifest, g.manifest.is_dir())]
    return [(golden_synthetic_root(ctx), True)]


def registry(ctx: Context) -> Any:
    from speechtune.track import ModelRegistry

    uri = ctx.tracking_uri or ctx.spec.gating.tracking_uri
    return ModelRegistry(uri, ctx.spec.gating.model_name, store_dir=ctx.spec.gating.registry_dir)


def _lineage(ctx: Context, golden: Mapping[str, Any]) -> dict[str, Any]:
    from speechtune.track import code_version

    st = ctx.state
    proxy = st.result("proxy")
    full = st.result("full")
    return {
        "workflow": {"name": ctx.spec.name, "run_uid": ctx.run_uid, "run_dir": str(ctx.run_dir), "config": str(ctx.spec.path), "config_hash": ctx.spec.digest()},
        "config": config_to_dict(config_from_dict({**_merged(ctx.full_recipe(), full["params"]), "seed": full["seed"]})),
        "params": full["params"],
        "data": {
            "manifests": proxy["manifests"],
            "manifest_sha256": proxy["manifest_sha256"],
            "fingerprints": {k: proxy[k]["fingerprint"] for k in ("train_full", "proxy", "dev")},
            "golden": golden,
        },
        "studies": {s: {"name": st.result(s)["study"], "storage": st.result(s)["storage"]} for s in ("coarse", "fine")},
        "validation": st.result("validate"),
        "metrics": {"dev": full["dev"]},
        "code_version": code_version(),
        "cost": st.data.get("cost_total"),
    }


def stage_gate(ctx: Context) -> dict[str, Any]:
    """Golden-set evaluation, registry, and promotion by margin."""
    from speechtune.workflow._gate import gate_model
    from speechtune.workflow._golden import leakage

    g = ctx.spec.gating
    full = ctx.state.result("full")
    golden, source = load_golden(ctx)
    data = ctx.data()
    leak = leakage(golden, data.train, data.dev)
    if not leak.ok:
        raise WorkflowError(
            f"the golden set is not held out: {len(leak.shared_audio)} of its utterances have audio files that are also in "
            f"the training or dev data (e.g. {', '.join(leak.shared_audio[:5])}); gating on it would flatter the model"
        )
    gate_dir = ctx.run_dir / "gate"
    gate_dir.mkdir(parents=True, exist_ok=True)
    golden_info = {
        "source": source,
        "utterances": len(golden),
        "hours": round(golden.hours, 4),
        "fingerprint": golden.fingerprint(),
        "shared_speakers": leak.shared_speakers,
    }
    lineage = _lineage(ctx, golden_info)
    outcome = gate_model(
        Path(full["run_dir"]),
        golden,
        registry(ctx),
        metric=g.metric,
        margin=g.margin,
        device=_eval_device(ctx.device),
        work_dir=gate_dir,
        params=full["params"],
        dev=full["dev"],
        cost=ctx.state.data.get("cost_total") or {},
        tags={
            "speechtune.workflow": ctx.spec.name,
            "speechtune.workflow_run": ctx.run_uid,
            "speechtune.study": ctx.state.result("fine")["study"],
            "speechtune.code_version": str(lineage["code_version"].get("git_commit") or lineage["code_version"].get("package")),
            "speechtune.golden_fingerprint": golden_info["fingerprint"],
            "speechtune.train_fingerprint": lineage["data"]["fingerprints"]["train_full"],
        },
        lineage=lineage,
        run_name=f"{ctx.spec.name}-{ctx.run_uid}",
    )
    return {"golden": golden_info, "gate_metric": g.metric, "margin": g.margin, "model_name": g.model_name, **outcome}


def _eval_device(device: str) -> str:
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def stage_export(ctx: Context) -> dict[str, Any]:
    """The final model with its front end as TorchScript or ONNX, attached to the registered version."""
    from speechtune.inference import export_model

    fmt = ctx.spec.export_format
    if fmt == "none":
        return {"format": "none", "path": None, "bytes": 0}
    full = ctx.state.result("full")
    out_dir = ctx.run_dir / "export"
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a half-written export of an interrupted attempt
    path = export_model(full["model"], out_dir, fmt)
    gate = ctx.state.result("gate")
    reg = registry(ctx)
    version = next((v for v in reg.versions() if v.version == gate["registered_version"]), None)
    uri = reg.attach(version, path) if version is not None else None
    return {"format": fmt, "path": str(path), "bytes": path.stat().st_size, "registry_uri": uri}


#: Stage name -> the directory (under the run directory) that holds its outputs.
STAGE_DIRS: dict[str, tuple[str, ...]] = {
    "proxy": ("data",),
    **{s: (s,) for s in ("baseline", "coarse", "fine", "validate", "gate", "export")},
    "full": ("full", "full_baseline"),
}

#: Stage name -> function, in order.
STAGE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "proxy": stage_proxy,
    "baseline": stage_baseline,
    "coarse": stage_coarse,
    "fine": stage_fine,
    "validate": stage_validate,
    "full": stage_full,
    "gate": stage_gate,
    "export": stage_export,
}
