"""The workflow YAML (``speechtune workflow --config conf/workflow.yaml``): schema and validation.

A workflow names a tuning YAML (base recipe, presets, search space, objective, cost model) and
says how each stage of the production path uses it. Every problem is collected with its dotted
key, the rule it breaks and the value received, as for recipes and tuning YAMLs.

Example::

    name: synthetic-workflow
    tuning: tuning.yaml                  # relative to this file
    proxy: {fraction: 0.5}               # or hours: 0.5 (the subset is seeded by the recipe's data.split_seed)
    coarse: {n_trials: 20, sampler: random, pruner: none, top_k: 5}
    fine: {n_trials: 30, sampler: tpe, pruner: median, expand: 0.25, warm_start: true}
    validation: {top_k: 3, seeds: [1, 2, 3], alpha: 0.05}
    full: {overrides: {train.epochs: 25}}
    golden: {manifest: data_local/golden.jsonl}          # or synthetic: {...}
    gating: {model_name: speechtune-asr, metric: wer, margin: 0.005}
    export: {format: torchscript}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    RecipeConfig,
    SyntheticConfig,
    YamlFileError,
    config_from_dict,
    config_to_dict,
    flatten,
    merge,
    parse_overrides,
    read_yaml,
)
from speechtune.tuning.spec import checked_entries, close_matches, is_int, is_num

#: The stages in the order they run; ``--from-stage`` takes a name or its number (1-based).
STAGES = ("proxy", "baseline", "coarse", "fine", "validate", "full", "gate", "export")
SECTIONS = (
    "name",
    "tuning",
    "proxy",
    "coarse",
    "fine",
    "validation",
    "full",
    "golden",
    "gating",
    "export",
)
_SAMPLERS = ("random", "tpe", "gp", "cmaes", "qmc")
_PRUNERS = ("none", "median", "percentile", "sha", "hyperband", "wilcoxon")
_GATE_METRICS = ("wer", "cer", "worst_group_wer")
_EXPORT_FORMATS = ("torchscript", "onnx", "none")


def _pos_int(v: Any) -> bool:
    return is_int(v) and v >= 1


def _fraction(v: Any) -> bool:
    return is_num(v) and 0.0 < v <= 1.0


def _overrides(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(k, str) for k in v)


@dataclass(frozen=True)
class ProxySpec:
    """Stage 1: the stratified tuning subset of the training split (``fraction`` of its hours, or ``hours``).

    The subset is seeded by the recipe's ``data.split_seed``, as every trial's proxy subset is,
    so that the manifest stage 1 writes is exactly the data the trials train on.
    """

    fraction: float | None = 0.05
    hours: float | None = None


@dataclass(frozen=True)
class SearchStageSpec:
    """Stages 3 and 4: one Optuna study each on the proxy data."""

    n_trials: int
    sampler: str
    pruner: str
    #: coarse: how many of its best configs define the fine region.
    top_k: int = 5
    #: fine: widen the top-k range on each side by this share of it (log scale for log params).
    expand: float = 0.25
    #: fine: add the coarse trials that fall inside the region to the fine study as evidence.
    warm_start: bool = True
    #: fine: search with the tuning YAML's ``fidelity:`` ladder (the multi-fidelity ``speechtune``
    #: strategy) instead of a pruner. "auto": when the tuning YAML has a ``fidelity:`` section.
    multi_fidelity: bool | str = "auto"


@dataclass(frozen=True)
class ValidationSpec:
    """Stage 5: the top-k configs (and the baseline) retrained with each seed."""

    top_k: int = 3
    seeds: tuple[int, ...] = (1, 2, 3)
    alpha: float = 0.05


@dataclass(frozen=True)
class FullSpec:
    """Stage 6: the winner on all the training data (proxy off) with these recipe overrides."""

    overrides: dict[str, Any] = field(default_factory=dict)
    #: None: the first validation seed.
    seed: int | None = None
    #: Also train the baseline (the recipe's defaults) the same way, so the report can say what
    #: tuning bought at full fidelity; it costs one more full training.
    baseline: bool = True


@dataclass(frozen=True)
class GoldenSpec:
    """Stage 7's held-out golden set: a manifest file, or a synthetic corpus of its own.

    No stage before gating may read it: the workflow refuses to open these paths until then.
    """

    manifest: Path | None = None
    synthetic: SyntheticConfig | None = None


@dataclass(frozen=True)
class GatingSpec:
    """Stage 7: the registry and the promotion rule."""

    model_name: str = "speechtune-asr"
    metric: str = "wer"
    #: Promote only if the challenger's golden ``metric`` is lower than the champion's by at least this (absolute).
    margin: float = 0.005
    #: MLflow tracking URI of the registry; None: ``sqlite:///<registry_dir>/mlflow.db``.
    tracking_uri: str | None = None
    #: Where the default local registry lives (shared by successive workflow runs).
    registry_dir: Path = Path("runs/registry")


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow YAML."""

    path: Path
    name: str
    tuning: Path
    proxy: ProxySpec
    coarse: SearchStageSpec
    fine: SearchStageSpec
    validation: ValidationSpec
    full: FullSpec
    golden: GoldenSpec
    gating: GatingSpec
    export_format: str
    raw: dict[str, Any]

    def digest(self) -> str:
        """Hash of everything that decides the stages' results.

        That is the raw YAML after overrides, and the tuning YAML's text.
        """
        h = hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode())
        try:
            h.update(self.tuning.read_bytes())
        except OSError:
            pass
        return h.hexdigest()[:16]


def stage_index(stage: str | int) -> int:
    """0-based index of a stage given by name (``coarse``) or 1-based number (``3`` / ``"3"``).

    Raises:
        ValueError: an unknown stage (the message lists them).
    """
    text = str(stage).strip()
    if text.isdigit() and 1 <= int(text) <= len(STAGES):
        return int(text) - 1
    if text in STAGES:
        return STAGES.index(text)
    listing = ", ".join(f"{i + 1} {s}" for i, s in enumerate(STAGES))
    raise ValueError(
        f"unknown stage {stage!r}{close_matches(text, STAGES)}; the stages are: {listing}"
    )


def _section(raw: Mapping[str, Any], key: str, problems: list[ConfigProblem]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(ConfigProblem(key, "must be a mapping", value))
        return {}
    return dict(value)


_PROXY = {
    "fraction": (lambda v: v is None or _fraction(v), "must be a number in (0, 1] or null"),
    "hours": (
        lambda v: v is None or (is_num(v) and v > 0),
        "must be a positive number of hours or null",
    ),
}
_COARSE = {
    "n_trials": (_pos_int, "must be an integer >= 1"),
    "sampler": (lambda v: v in _SAMPLERS, f"must be one of {', '.join(_SAMPLERS)}"),
    "pruner": (lambda v: v in _PRUNERS, f"must be one of {', '.join(_PRUNERS)}"),
    "top_k": (_pos_int, "must be an integer >= 1"),
}
_FINE = {
    **{k: v for k, v in _COARSE.items() if k != "top_k"},
    "expand": (lambda v: is_num(v) and 0 <= v <= 10, "must be a number in [0, 10]"),
    "warm_start": (lambda v: isinstance(v, bool), "must be true or false"),
    "multi_fidelity": (
        lambda v: isinstance(v, bool) or v == "auto",
        "must be true, false or auto",
    ),
}
_VALIDATION = {
    "top_k": (_pos_int, "must be an integer >= 1"),
    "seeds": (
        lambda v: (
            isinstance(v, list)
            and len(v) >= 1
            and all(is_int(s) for s in v)
            and len(set(v)) == len(v)
        ),
        "must be a list of distinct integers",
    ),
    "alpha": (lambda v: is_num(v) and 0 < v < 1, "must be a number in (0, 1)"),
}
_FULL = {
    "overrides": (_overrides, "must be a mapping of recipe keys to values"),
    "seed": (lambda v: v is None or is_int(v), "must be an integer or null"),
    "baseline": (lambda v: isinstance(v, bool), "must be true or false"),
}
_GATING = {
    "model_name": (lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string"),
    "metric": (lambda v: v in _GATE_METRICS, f"must be one of {', '.join(_GATE_METRICS)}"),
    "margin": (lambda v: is_num(v) and v >= 0, "must be a number >= 0 (absolute WER)"),
    "tracking_uri": (
        lambda v: v is None or (isinstance(v, str) and v != ""),
        "must be an MLflow tracking URI or null",
    ),
    "registry_dir": (lambda v: isinstance(v, str) and v != "", "must be a directory path"),
}
_EXPORT = {
    "format": (lambda v: v in _EXPORT_FORMATS, f"must be one of {', '.join(_EXPORT_FORMATS)}")
}


def _golden(raw: Mapping[str, Any], here: Path, problems: list[ConfigProblem]) -> GoldenSpec:
    sec = raw.get("golden")
    if not isinstance(sec, Mapping) or not sec:
        problems.append(
            ConfigProblem(
                "golden",
                "is required: a held-out set no other stage touches ({manifest: path} or {synthetic: {...}})",
                sec,
            )
        )
        return GoldenSpec()
    unknown = [k for k in sec if k not in ("manifest", "synthetic")]
    for k in unknown:
        problems.append(
            ConfigProblem(
                f"golden.{k}",
                f"unknown key{close_matches(str(k), ['manifest', 'synthetic'])}; valid keys: manifest, synthetic",
                sec[k],
            )
        )
    if ("manifest" in sec) == ("synthetic" in sec):
        problems.append(
            ConfigProblem("golden", "give exactly one of manifest or synthetic", dict(sec))
        )
        return GoldenSpec()
    if "manifest" in sec:
        value = sec["manifest"]
        if not isinstance(value, str) or not value:
            problems.append(
                ConfigProblem(
                    "golden.manifest",
                    "must be a path to a manifest (JSONL/CSV/Kaldi dir/lhotse)",
                    value,
                )
            )
            return GoldenSpec()
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (here / path)
        # Existence only (a stat, not a read): hours of search must not end in a missing golden set.
        if not path.exists():
            problems.append(ConfigProblem("golden.manifest", f"does not exist ({path})", value))
        return GoldenSpec(manifest=path.resolve())
    synth = sec["synthetic"]
    if not isinstance(synth, Mapping):
        problems.append(
            ConfigProblem("golden.synthetic", "must be a mapping of synthetic-corpus keys", synth)
        )
        return GoldenSpec()
    valid = list(SyntheticConfig.__dataclass_fields__)
    good = {}
    for k, v in synth.items():
        if k not in valid:
            problems.append(
                ConfigProblem(
                    f"golden.synthetic.{k}",
                    f"unknown key{close_matches(str(k), valid)}; valid keys: {', '.join(valid)}",
                    v,
                )
            )
        else:
            good[k] = v
    try:
        cfg = config_from_dict({"data": {"corpus": "synthetic", "synthetic": good}})
    except ConfigError as exc:
        problems.extend(
            ConfigProblem(f"golden.{p.key.removeprefix('data.')}", p.rule, p.value)
            for p in exc.problems
        )
        return GoldenSpec()
    return GoldenSpec(synthetic=cfg.data.synthetic)


def _read(path: Path, problems: list[ConfigProblem]) -> dict[str, Any] | None:
    try:
        data = read_yaml(path)
    except OSError as exc:
        problems.append(
            ConfigProblem(str(path), f"cannot read the workflow YAML: {exc.strerror or exc}", None)
        )
        return None
    except YamlFileError as exc:
        problems.append(ConfigProblem(str(path), exc.reason, exc.snippet))
        return None
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(str(path), "must be a mapping of sections", data))
        return None
    return dict(data)


def load_workflow(path: str | Path, overrides: Sequence[str] = ()) -> WorkflowSpec:
    """Load and validate a workflow YAML (the tuning YAML it names is checked when stages build their studies).

    Args:
        path: the workflow YAML; ``tuning`` and ``golden.manifest`` are relative to it.
        overrides: dotted overrides of the workflow file itself, e.g. ``"coarse.n_trials=5"``.

    Returns:
        The validated :class:`WorkflowSpec`.

    Raises:
        ConfigError: listing every problem found.
    """
    path = Path(path)
    problems: list[ConfigProblem] = []
    raw = _read(path, problems)
    if raw is None:
        raise ConfigError(problems, str(path))
    try:
        raw = merge(raw, parse_overrides(list(overrides)))
    except ConfigError as exc:
        problems.extend(exc.problems)
    here = path.parent
    for key in raw:
        if key not in SECTIONS:
            problems.append(
                ConfigProblem(
                    str(key),
                    f"unknown section{close_matches(str(key), SECTIONS)}; valid sections: {', '.join(SECTIONS)}",
                    raw[key],
                )
            )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip() or "/" in name:
        problems.append(ConfigProblem("name", "must be a non-empty name without '/'", name))
        name = path.stem
    tuning_entry = raw.get("tuning")
    tuning = here / "tuning.yaml"
    if not isinstance(tuning_entry, str) or not tuning_entry:
        problems.append(
            ConfigProblem(
                "tuning",
                "is required: the path of a tuning YAML (recipe, presets, space, objective)",
                tuning_entry,
            )
        )
    else:
        tuning = (here / Path(tuning_entry).expanduser()).resolve()
        if not tuning.is_file():
            problems.append(ConfigProblem("tuning", f"does not exist ({tuning})", tuning_entry))

    proxy = checked_entries(_section(raw, "proxy", problems), "proxy", _PROXY, problems)
    if "hours" in proxy and proxy["hours"] is not None:
        proxy.setdefault("fraction", None)
        if proxy["fraction"] is not None:
            problems.append(
                ConfigProblem(
                    "proxy",
                    "give fraction or hours, not both",
                    {"fraction": proxy["fraction"], "hours": proxy["hours"]},
                )
            )
    coarse = checked_entries(_section(raw, "coarse", problems), "coarse", _COARSE, problems)
    fine = checked_entries(_section(raw, "fine", problems), "fine", _FINE, problems)
    validation = checked_entries(
        _section(raw, "validation", problems), "validation", _VALIDATION, problems
    )
    full = checked_entries(_section(raw, "full", problems), "full", _FULL, problems)
    gating = checked_entries(_section(raw, "gating", problems), "gating", _GATING, problems)
    export = checked_entries(_section(raw, "export", problems), "export", _EXPORT, problems)
    golden = _golden(raw, here, problems)
    if full.get("overrides"):
        _check_full_overrides(full["overrides"], problems)
    if problems:
        raise ConfigError(problems, str(path))
    registry_dir = Path(gating.pop("registry_dir", "runs/registry")).expanduser()
    return WorkflowSpec(
        path=path.resolve(),
        name=name,
        tuning=tuning,
        proxy=ProxySpec(**proxy),
        coarse=SearchStageSpec(
            **{"n_trials": 20, "sampler": "random", "pruner": "none", **coarse}
        ),
        fine=SearchStageSpec(**{"n_trials": 30, "sampler": "tpe", "pruner": "median", **fine}),
        validation=ValidationSpec(
            **{
                **validation,
                **({"seeds": tuple(validation["seeds"])} if "seeds" in validation else {}),
            }
        ),
        full=FullSpec(**full),
        golden=golden,
        gating=GatingSpec(**gating, registry_dir=registry_dir),
        export_format=export.get("format", "torchscript"),
        raw=json.loads(json.dumps(raw, default=str)),
    )


def _check_full_overrides(overrides: Mapping[str, Any], problems: list[ConfigProblem]) -> None:
    """Recipe keys only, and no data keys: stage 6 trains on all the data stage 1 prepared."""

    keys = set(flatten(config_to_dict(RecipeConfig())))
    for key, value in overrides.items():
        if key in ("data.proxy_fraction", "data.proxy_hours"):
            problems.append(
                ConfigProblem(
                    f"full.overrides.{key}",
                    "is set by the workflow: full training uses all the training data",
                    value,
                )
            )
        elif key.startswith("data."):
            problems.append(
                ConfigProblem(
                    f"full.overrides.{key}",
                    "cannot change the data of one stage: stage 1 fixes train and dev for all of them "
                    "(set it in the tuning YAML's recipe)",
                    value,
                )
            )
        elif key not in keys:
            problems.append(
                ConfigProblem(
                    f"full.overrides.{key}",
                    f"unknown recipe key{close_matches(key, sorted(keys))}",
                    value,
                )
            )


def spec_summary(spec: WorkflowSpec) -> dict[str, Any]:
    """The validated spec as plain JSON (for state.json and the registry's lineage)."""
    out = asdict(spec)
    return json.loads(json.dumps(out, default=str))
