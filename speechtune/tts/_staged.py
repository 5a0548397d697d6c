"""Staged tuning of the TTS recipe, and joint tuning for comparison.

A TTS model has hyperparameters in its acoustic model and in its vocoder; tuning them jointly
pays for a full training (acoustic model and vocoder) per trial and makes the sampler learn
both at once. In stages: stage 1 tunes the acoustic keys with the vocoder frozen (Griffin-Lim at
fixed settings, or the recipe's vocoder); stage 2 tunes the vocoder keys with the stage-1 winner
frozen, reusing its trained acoustic model, so that a stage-2 trial trains only a vocoder.

Each stage is a study of the project's tuning system (a Python-function objective run by
:func:`speechtune.tuning.run_study`); ``stages.json`` in the run directory records, per stage,
the keys it searched, the keys it froze with their values, its winner and its compute. A stage
marked done there is never run again when an interrupted staged study is resumed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    YamlFileError,
    flatten,
    merge,
    read_yaml,
    unflatten,
)
from speechtune.tts._config import TTSConfig, tts_config_from_dict, tts_config_to_dict
from speechtune.tts._data import TTSData, prepare_tts_data
from speechtune.tts._train import train_tts
from speechtune.tuning import FunctionObjective, run_study
from speechtune.tuning.spec import build_spec
from speechtune.tuning.study import StudyOutputs

log = logging.getLogger(__name__)

_TOP_KEYS = ("recipe", "overrides", "stages", "study", "objective", "joint")
_STAGE_KEYS = ("name", "space", "n_trials", "freeze")
SAMPLERS = ("tpe", "random", "gp", "qmc")

#: Writes trials.csv, best.yaml and report.html of a finished study (``write_study_outputs``).
Outputs = StudyOutputs


@dataclass(frozen=True)
class StageSpec:
    """One stage: its search space (dotted keys of the TTS recipe) and its number of trials.

    ``freeze`` pins keys of this stage to values other than the base recipe's while it runs.
    """

    name: str
    space: dict[str, Any]
    n_trials: int
    freeze: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedSpec:
    """A staged TTS study (``conf/tts_staged.yaml``)."""

    base: dict[str, Any]  # the base recipe with the overrides, nested
    stages: tuple[StageSpec, ...]
    sampler: str = "tpe"
    seed: int = 0
    metric: str = "mcd"
    joint_trials: int | None = None  # default: the stages' trials together
    source: str | None = None

    @property
    def total_trials(self) -> int:
        return sum(s.n_trials for s in self.stages)


def load_staged(path: str | Path) -> StagedSpec:
    """Read and validate a staged-tuning YAML; every problem is reported at once.

    Raises:
        ConfigError: each problem with its key (``stages[1].space.model.d_model``...).
    """
    path = Path(path)
    try:
        raw = read_yaml(path)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "cannot read file", str(exc))]) from exc
    except YamlFileError as exc:
        raise ConfigError([ConfigProblem(str(path), exc.reason, exc.snippet)]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(str(path), "top level must be a mapping", raw)])
    problems = [
        ConfigProblem(k, f"unknown key; valid keys here: {', '.join(_TOP_KEYS)}", raw[k])
        for k in raw
        if k not in _TOP_KEYS
    ]
    base: dict[str, Any] = {}
    if raw.get("recipe") is not None:
        recipe = path.parent / str(raw["recipe"])
        try:
            loaded = read_yaml(recipe)
            base = loaded if isinstance(loaded, dict) else {}
        except (OSError, YamlFileError) as exc:
            problems.append(
                ConfigProblem("recipe", f"cannot read the TTS recipe ({exc})", raw["recipe"])
            )
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append(ConfigProblem("overrides", "must be a mapping of dotted keys", overrides))
        overrides = {}
    base = merge(base, unflatten(flatten(overrides)))
    try:
        # The complete recipe: a later stage's keys are frozen at its values.
        base = tts_config_to_dict(tts_config_from_dict(base))
    except ConfigError as exc:
        problems.extend(
            ConfigProblem(f"recipe/overrides: {p.key}", p.rule, p.value) for p in exc.problems
        )
    known = set(flatten(tts_config_to_dict(TTSConfig())))
    stages: list[StageSpec] = []
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append(ConfigProblem("stages", "must be a non-empty list of stages", raw_stages))
        raw_stages = []
    for i, st in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(st, dict):
            problems.append(
                ConfigProblem(where, "must be a mapping with name, space, n_trials", st)
            )
            continue
        problems.extend(
            ConfigProblem(
                f"{where}.{k}", f"unknown key; valid keys here: {', '.join(_STAGE_KEYS)}", st[k]
            )
            for k in st
            if k not in _STAGE_KEYS
        )
        space = flatten_space(st.get("space") or {})
        freeze = flatten(st.get("freeze") or {})
        for key in [*space, *freeze]:
            if key not in known:
                problems.append(
                    ConfigProblem(f"{where}.space.{key}", "is not a key of the TTS recipe", key)
                )
        for key in sorted(set(space) & set(freeze)):
            problems.append(
                ConfigProblem(
                    f"{where}.freeze.{key}",
                    "is searched by this stage; freeze it or search it",
                    key,
                )
            )
        n = st.get("n_trials")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            problems.append(ConfigProblem(f"{where}.n_trials", "must be an integer >= 1", n))
            n = 1
        if not space:
            problems.append(
                ConfigProblem(f"{where}.space", "must search at least one key", st.get("space"))
            )
        stages.append(StageSpec(str(st.get("name") or f"stage{i + 1}"), space, n, freeze))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        problems.append(ConfigProblem("stages", "stage names must be distinct", names))
    for a in range(len(stages)):
        for b in range(a + 1, len(stages)):
            both = sorted(set(stages[a].space) & set(stages[b].space))
            if both:
                problems.append(
                    ConfigProblem(
                        f"stages[{b}].space",
                        f"searches key(s) stage {stages[a].name!r} searches too",
                        both,
                    )
                )
    study = raw.get("study") or {}
    sampler = study.get("sampler", "tpe") if isinstance(study, dict) else "tpe"
    if sampler not in SAMPLERS:
        problems.append(
            ConfigProblem("study.sampler", f"must be one of: {', '.join(SAMPLERS)}", sampler)
        )
    seed = study.get("seed", 0) if isinstance(study, dict) else 0
    objective = raw.get("objective") or {}
    metric = objective.get("metric", "mcd") if isinstance(objective, dict) else "mcd"
    if metric not in ("mcd", "wer", "cer"):
        problems.append(ConfigProblem("objective.metric", "must be one of: mcd, wer, cer", metric))
    joint = raw.get("joint") or {}
    joint_trials = joint.get("n_trials") if isinstance(joint, dict) else None
    if problems:
        raise ConfigError(problems, str(path))
    return StagedSpec(
        base, tuple(stages), str(sampler), int(seed), str(metric), joint_trials, str(path)
    )


def flatten_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Nested space sections (``{model: {d_model: [...]}}``) to dotted keys; a param spec
    (a mapping with ``low``/``choices``/``value``/``derive``/``type``) stays whole."""
    out: dict[str, Any] = {}
    markers = {"low", "high", "choices", "value", "derive", "type", "when", "prior", "step", "log"}
    for key, value in space.items():
        if isinstance(value, Mapping) and not markers & set(value):
            for sub, v in flatten_space(value).items():
                out[f"{key}.{sub}"] = v
        else:
            out[str(key)] = value
    return out


class _DataCache:
    """Prepared data shared by the trials whose data, features and text sections agree."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._data: TTSData | None = None

    def get(self, cfg: TTSConfig, cache_dir: Path) -> TTSData:
        d = tts_config_to_dict(cfg)
        key = json.dumps([d["data"], d["features"], d["text"]], sort_keys=True)
        with self._lock:
            if self._key != key or self._data is None:
                self._data, self._key = prepare_tts_data(cfg, cache_dir), key
            return self._data


def stage_objective(
    base: Mapping[str, Any],
    frozen: Mapping[str, Any],
    *,
    acoustic_from: Path | None,
    cache_dir: Path,
    asr_model: Path | None,
    cache: _DataCache | None = None,
) -> Callable[..., dict[str, float]]:
    """The Python-function objective of one stage: base recipe, frozen keys, sampled keys."""
    cache = cache if cache is not None else _DataCache()

    def objective(config: dict[str, Any], reporter: Any, trial_dir: Path) -> dict[str, float]:
        cfg = tts_config_from_dict(merge(dict(base), unflatten({**frozen, **config})))
        result = train_tts(
            cfg,
            trial_dir,
            cache_dir=cache_dir,
            asr_model=asr_model,
            reporter=reporter,
            acoustic_from=acoustic_from,
            data=cache.get(cfg, cache_dir),
        )
        return result.metrics

    return objective


def _value_at(nested: Mapping[str, Any], key: str) -> Any:
    node: Any = nested
    for part in key.split("."):
        node = node[part]
    return node


def _study_record(study: optuna.Study) -> dict[str, Any]:
    """The winner and the compute of a finished study."""
    seconds = cpu = 0.0
    for t in study.trials:
        td = t.user_attrs.get("trial_dir")
        mfile = Path(td) / "metrics.json" if td else None
        if mfile is not None and mfile.is_file():
            m = json.loads(mfile.read_text())
            seconds += float(m.get("total_seconds", 0.0))
            cpu += float(m.get("cpu_seconds", 0.0))
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError(
            f"study {study.study_name}: no trial completed (the reasons are in its trials.csv)"
        )
    best = study.best_trial
    trial_dir = Path(best.user_attrs["trial_dir"])
    metrics = json.loads((trial_dir / "metrics.json").read_text())
    return {
        "winner": {
            "trial": best.number,
            "config": best.user_attrs.get("config", {}),
            "metrics": metrics,
            "model": str(trial_dir / "model.pt"),
        },
        "trials": len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]),
        "train_seconds": seconds,
        "cpu_seconds": cpu,
    }


def _run_one(
    spec: StagedSpec,
    name: str,
    space: Mapping[str, Any],
    n_trials: int,
    objective: Callable[..., dict[str, float]],
    stage_dir: Path,
    outputs: Outputs | None,
) -> optuna.Study:
    tuning = build_spec(
        dict(space),
        study_name=f"tts-{name}",
        n_trials=n_trials,
        sampler=spec.sampler,
        pruner="none",
        seed=spec.seed,
        metric=spec.metric,
        seeds=(int(spec.base.get("seed", 0)),),
    )
    resume = (stage_dir / "study.db").is_file()
    return run_study(
        tuning,
        FunctionObjective(objective),
        stage_dir,
        resume=resume,
        outputs=outputs,
        progress=False,
    )


def run_staged(
    spec: StagedSpec,
    run_dir: str | Path,
    *,
    mode: str = "staged",
    cache_dir: str | Path = ".cache/speechtune",
    asr_model: str | Path | None = None,
    outputs: Outputs | None = None,
) -> dict[str, Any]:
    """Run a staged (or joint) TTS study; resumable.

    ``staged``: the stages in order. Stage k searches its own keys; every key another stage
    searches is frozen: an earlier stage's at its winner's value, a later stage's at the base
    recipe's. A stage that searches no acoustic key reuses the previous winner's trained
    acoustic model (only its vocoder is trained). ``joint``: one study over every stage's keys
    with as many trials as the stages together (or ``joint.n_trials``).

    Args:
        spec: from :func:`load_staged`.
        run_dir: one sub-directory per study (``<stage name>/`` or ``joint/``) and the record,
            ``stages.json`` (staged) or ``joint.json``.
        mode: ``staged`` or ``joint``.
        cache_dir: the corpus cache.
        asr_model: a speechtune ASR ``model.pt`` for intelligibility (WER/CER of every trial).
        outputs: writes each study's trials.csv/best.yaml/report.html (from the caller, e.g.
            :func:`speechtune.reports.write_study_outputs`).

    Returns:
        The record written to the run directory.
    """
    if mode not in ("staged", "joint"):
        raise ValueError(f"mode: expected 'staged' or 'joint', got {mode!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir)
    asr = Path(asr_model) if asr_model is not None else None
    data_cache = _DataCache()
    if mode == "joint":
        space = {k: v for s in spec.stages for k, v in s.space.items()}
        n = spec.joint_trials or spec.total_trials
        obj = stage_objective(
            spec.base, {}, acoustic_from=None, cache_dir=cache_dir, asr_model=asr, cache=data_cache
        )
        study = _run_one(spec, "joint", space, n, obj, run_dir / "joint", outputs)
        joint: dict[str, Any] = {
            "mode": "joint",
            "searched": sorted(space),
            "frozen": {},
            "n_trials": n,
            **_study_record(study),
        }
        (run_dir / "joint.json").write_text(json.dumps(joint, indent=2, default=str) + "\n")
        return joint
    record_file = run_dir / "stages.json"
    record: dict[str, Any] = (
        json.loads(record_file.read_text())
        if record_file.is_file()
        else {"mode": "staged", "stages": []}
    )
    done = {s["name"]: s for s in record["stages"] if s.get("status") == "done"}
    winners: dict[str, Any] = {}  # dotted key -> the value an earlier stage chose
    model_from: Path | None = None
    acoustic_keys = ("text.", "model.", "aligner.", "train.", "data.", "features.", "seed")
    for i, stage in enumerate(spec.stages):
        later = {k: _value_at(spec.base, k) for s in spec.stages[i + 1 :] for k in s.space}
        frozen = {**later, **winners, **stage.freeze}
        searches_acoustic = any(k.startswith(acoustic_keys) for k in stage.space)
        reuse = model_from if not searches_acoustic else None
        if stage.name in done:
            entry = done[stage.name]
            log.info("stage %s: done in an earlier run, not run again", stage.name)
        else:
            log.info("stage %s: searching %s; frozen %s", stage.name, sorted(stage.space), frozen)
            obj = stage_objective(
                spec.base,
                frozen,
                acoustic_from=reuse,
                cache_dir=cache_dir,
                asr_model=asr,
                cache=data_cache,
            )
            study = _run_one(
                spec, stage.name, stage.space, stage.n_trials, obj, run_dir / stage.name, outputs
            )
            entry = {
                "name": stage.name,
                "searched": sorted(stage.space),
                "frozen": frozen,
                "acoustic_model_from": str(reuse) if reuse is not None else None,
                "n_trials": stage.n_trials,
                **_study_record(study),
                "status": "done",
            }
            record["stages"] = [s for s in record["stages"] if s["name"] != stage.name] + [entry]
            record_file.write_text(json.dumps(record, indent=2, default=str) + "\n")
        chosen = entry["winner"]["config"]
        winners.update({k: chosen[k] for k in stage.space if k in chosen})
        model_from = Path(entry["winner"]["model"])
    # Each stage's winner is a complete, measured config (its own keys + the frozen ones). A
    # later stage need not beat an earlier one (stage 2 may find no vocoder better than the
    # frozen one stage 1 was judged with), so the final model is the best of the stage winners.
    order = {st.name: i for i, st in enumerate(spec.stages)}
    stages = sorted(record["stages"], key=lambda st: order.get(st["name"], len(order)))
    best = min(stages, key=lambda st: st["winner"]["metrics"].get(spec.metric, float("inf")))
    record["final"] = {
        "stage": best["name"],
        "config": {**best["frozen"], **best["winner"]["config"]},
        "metrics": best["winner"]["metrics"],
        "model": best["winner"]["model"],
        "train_seconds": sum(s["train_seconds"] for s in record["stages"]),
        "cpu_seconds": sum(s.get("cpu_seconds", 0.0) for s in record["stages"]),
        "trials": sum(s["trials"] for s in record["stages"]),
    }
    record_file.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record
