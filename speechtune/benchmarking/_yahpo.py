"""YAHPO Gym surrogate benchmarks (Pfisterer et al., 2022) as benchmark problems, read with onnxruntime.

A YAHPO scenario is an ONNX surrogate of real training runs (``model.onnx``), its search space
(``config_space.json``, ConfigSpace JSON) and the integer codes of its categorical inputs
(``encoding.json``). The surrogate takes the categorical inputs (int32) and the continuous ones
(float32, raw values: the model transforms them itself) in the fixed orders of the ``yahpo-gym``
package, and returns one column per target. This module reads the files directly so that no
``yahpo-gym`` (and its old ConfigSpace pin) is needed; ``tests`` check it against yahpo-gym's
own numbers.

The fidelity is ``trainsize``, the share of the training data, like a speech proxy of N hours: a
budget ``b`` in ``[1, max_budget]`` trains on ``b / max_budget`` of the data and costs that much
of a full evaluation. A larger share is a new training, not a continuation (``continues`` is
False). ``repl`` (the resampling repetition) is fixed at its maximum, 10, as in YAHPO's suite.

The value minimised is ``-acc`` (rbv2) or ``mmce`` (iaml). The published bounds of each instance
(``global_statistics/instance_target_statistics.csv``) give the optimum and the reference of the
normalised regret, ``(best - found) / (best - worst)``; a surrogate can predict beyond the
published best, so the regret can go below 0. As in YAHPO's protocol, an evaluation at any
fidelity counts towards the best found (``incumbent_any_fidelity``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from speechtune.tuning.space import (
    CategoricalParam,
    SearchSpace,
    parse_space,
    sample_near,
    sample_uniform,
)

__all__ = ["MAXIMISED", "SCENARIOS", "YAHPO_SUITE", "YahpoProblem", "yahpo_suite"]


@dataclass(frozen=True)
class _Scenario:
    """The surrogate's input layout, as the ``yahpo-gym`` package defines it."""

    cont_names: tuple[str, ...]
    cat_names: tuple[str, ...]
    targets: tuple[str, ...]
    constants: Mapping[str, Any]  # fidelity parameters held fixed (``repl``)
    default_target: str


_RBV2_TARGETS = (
    "acc",
    "bac",
    "auc",
    "brier",
    "f1",
    "logloss",
    "timetrain",
    "timepredict",
    "memory",
)
_IAML_TARGETS = (
    "mmce",
    "f1",
    "auc",
    "logloss",
    "ramtrain",
    "rammodel",
    "rampredict",
    "timetrain",
    "timepredict",
    "mec",
    "ias",
    "nf",
)

#: The scenarios this module reads, by their YAHPO names.
SCENARIOS: dict[str, _Scenario] = {
    "rbv2_xgboost": _Scenario(
        cont_names=(
            "nrounds",
            "eta",
            "gamma",
            "lambda",
            "alpha",
            "subsample",
            "max_depth",
            "min_child_weight",
            "colsample_bytree",
            "colsample_bylevel",
            "rate_drop",
            "skip_drop",
            "trainsize",
            "repl",
        ),
        cat_names=("task_id", "booster", "num.impute.selected.cpo"),
        targets=_RBV2_TARGETS,
        constants={"repl": 10},
        default_target="acc",
    ),
    "rbv2_rpart": _Scenario(
        cont_names=("cp", "maxdepth", "minbucket", "minsplit", "trainsize", "repl"),
        cat_names=("task_id", "num.impute.selected.cpo"),
        targets=_RBV2_TARGETS,
        constants={"repl": 10},
        default_target="acc",
    ),
    "iaml_glmnet": _Scenario(
        cont_names=("alpha", "s", "trainsize"),
        cat_names=("task_id",),
        targets=_IAML_TARGETS,
        constants={},
        default_target="mmce",
    ),
}

#: YAHPO's single-objective suite instances of the scenarios here (``benchmark_suites/single.json``).
YAHPO_SUITE: tuple[tuple[str, str], ...] = (
    ("rbv2_xgboost", "12"),
    ("rbv2_xgboost", "1501"),
    ("rbv2_xgboost", "16"),
    ("rbv2_xgboost", "40499"),
    ("rbv2_rpart", "14"),
    ("rbv2_rpart", "40499"),
)

#: Random configs behind the oracle and misleading priors (a fixed seed, apart from run seeds).
PRIOR_SAMPLES = 2000
PRIOR_SEED = 20260101
# The good prior's centre: the best random config, then this many rounds of local moves on the
# surrogate (PRIOR_MOVES candidates a round, the best kept when it improves), so that it sits
# near the best known config, as a well-tuned recipe default would.
PRIOR_ROUNDS = 40
PRIOR_MOVES = 100

#: Targets to maximise (the others are minimised).
MAXIMISED = frozenset({"acc", "bac", "auc", "f1"})

_FIDELITY = "trainsize"
_INSTANCE = "task_id"
_NOT_SEARCHED = {_FIDELITY, _INSTANCE, "repl"}


def _space_entry(hp: Mapping[str, Any]) -> Any:
    """One ConfigSpace hyperparameter as a speechtune space entry (YAML syntax)."""
    kind = hp["type"]
    if kind == "uniform_float":
        return {
            "type": "float",
            "low": float(hp["lower"]),
            "high": float(hp["upper"]),
            "log": bool(hp.get("log")),
        }
    if kind == "uniform_int":
        return {
            "type": "int",
            "low": int(hp["lower"]),
            "high": int(hp["upper"]),
            "log": bool(hp.get("log")),
        }
    if kind == "categorical":
        return {"choices": list(hp["choices"])}
    if kind == "constant":
        return hp["value"]
    raise ValueError(
        f"config_space.json: {hp.get('name')!r} has a type this reader does not know: {kind!r}"
    )


def _when(conditions: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """``child -> {parent: [values]}`` from ConfigSpace ``EQ``/``IN`` conditions."""
    out: dict[str, dict[str, list[Any]]] = {}
    for cond in conditions:
        kind = cond.get("type")
        if kind == "EQ":
            values = [cond["value"]]
        elif kind == "IN":
            values = list(cond["values"])
        else:
            raise ValueError(
                f"config_space.json: condition type {kind!r} is not supported (only EQ and IN)"
            )
        out.setdefault(cond["child"], {}).setdefault(cond["parent"], []).extend(values)
    return out


def _bounds(stats_csv: Path, scenario: str, instance: str, target: str) -> tuple[float, float]:
    """``(min, max)`` of ``target`` on the instance, as YAHPO publishes them."""
    found: dict[str, float] = {}
    with stats_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if (
                row["scenario"] == scenario
                and row["instance"] == instance
                and row["metric"] == target
            ):
                found[row["statistic"]] = float(row["value"])
    if "min" not in found or "max" not in found:
        raise ValueError(
            f"{stats_csv}: no min/max of {target!r} for {scenario} instance {instance}"
        )
    return found["min"], found["max"]


class YahpoProblem:
    """One YAHPO instance (a scenario on one dataset) as a multi-fidelity problem to minimise.

    Args:
        scenario: ``rbv2_xgboost``, ``rbv2_rpart`` or ``iaml_glmnet`` (:data:`SCENARIOS`).
        instance: the instance (OpenML dataset id), e.g. ``"12"``.
        data_dir: the YAHPO data folder (with ``<scenario>/`` and ``global_statistics/``), e.g.
            ``../shared/benchmarks/yahpo``.
        max_budget: budgets run over ``[1, max_budget]``; budget ``b`` trains on
            ``b / max_budget`` of the data (the lowest share must stay >= 0.03).
        target: the metric to optimise; default the scenario's (``acc`` for rbv2, ``mmce`` for
            iaml). A metric to maximise (:data:`MAXIMISED`) is negated.

    Raises:
        FileNotFoundError: a file of the scenario is missing.
        ValueError: an unknown scenario or instance, or a budget ladder below the lowest share.
    """

    continues = False
    incumbent_any_fidelity = True
    suite = "yahpo"

    def __init__(
        self,
        scenario: str,
        instance: str,
        data_dir: str | Path,
        *,
        max_budget: int = 27,
        target: str | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(
                f"unknown YAHPO scenario {scenario!r}; this reader knows: {', '.join(SCENARIOS)}"
            )
        self.scenario = scenario
        self.instance = str(instance)
        self.layout = SCENARIOS[scenario]
        target = target or self.layout.default_target
        if target not in self.layout.targets:
            raise ValueError(
                f"{scenario}: unknown target {target!r}; targets: {', '.join(self.layout.targets)}"
            )
        self.target = target
        self.sign = -1.0 if target in MAXIMISED else 1.0
        self.dir = Path(data_dir) / scenario
        for name in ("config_space.json", "encoding.json", "model.onnx"):
            if not (self.dir / name).is_file():
                raise FileNotFoundError(f"YAHPO {scenario}: {self.dir / name} not found")
        self.encoding: dict[str, dict[str, int]] = json.loads(
            (self.dir / "encoding.json").read_text()
        )
        if self.instance not in self.encoding[_INSTANCE]:
            raise ValueError(f"{scenario}: unknown instance {self.instance!r}")
        self.name = f"{scenario}/{self.instance}"
        self.max_budget = int(max_budget)
        cs = json.loads((self.dir / "config_space.json").read_text())
        hps = {hp["name"]: hp for hp in cs["hyperparameters"]}
        lowest = float(hps[_FIDELITY]["lower"])
        if 1.0 / self.max_budget < lowest - 1e-12:
            raise ValueError(
                f"{scenario}: max_budget {max_budget} gives a data share below {lowest}"
            )
        when = _when(cs.get("conditions") or [])
        space: dict[str, Any] = {}
        for name, hp in hps.items():
            if name in _NOT_SEARCHED:
                continue
            entry = _space_entry(hp)
            if name in when:
                entry = {**entry, "when": when[name]}
            space[name] = entry
        self.space: SearchSpace = parse_space(space)
        self.dim = len(space)
        low, high = _bounds(
            Path(data_dir) / "global_statistics" / "instance_target_statistics.csv",
            scenario,
            self.instance,
            target,
        )
        # Minimise sign * target: the best is the published max (min), the reference the other end.
        self.optimum, self.reference = (-high, -low) if self.sign < 0 else (low, high)

    @cached_property
    def _session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: the benchmark runs many problems in parallel processes.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return ort.InferenceSession(
            str(self.dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def data_share(self, budget: float) -> float:
        """The share of the training data a budget trains on."""
        return min(1.0, float(budget) / self.max_budget)

    def _inputs(
        self, configs: Sequence[Mapping[str, Any]], shares: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout
        cats = np.zeros((len(configs), len(layout.cat_names)), dtype=np.int32)
        conts = np.zeros((len(configs), len(layout.cont_names)), dtype=np.float32)
        for i, (config, share) in enumerate(zip(configs, shares)):
            values = {**config, **layout.constants, _FIDELITY: share, _INSTANCE: self.instance}
            for j, name in enumerate(layout.cat_names):
                value = values.get(name)
                # An inactive categorical is "#na#", as in yahpo-gym; an unknown one is an error.
                code = self.encoding[name].get("#na#" if value is None else str(value))
                if code is None:
                    raise ValueError(
                        f"{self.name}: {name}={value!r} is not one of the encoded choices"
                    )
                cats[i, j] = code
            for j, name in enumerate(layout.cont_names):
                value = values.get(name)
                conts[i, j] = (
                    0.0 if value is None else float(value)
                )  # inactive: 0, as in yahpo-gym
        return cats, conts

    def predict(
        self, configs: Sequence[Mapping[str, Any]], shares: Sequence[float]
    ) -> list[dict[str, float]]:
        """The surrogate's targets for each config trained on each share of the data."""
        cats, conts = self._inputs(configs, shares)
        inputs = self._session.get_inputs()
        out = self._session.run(None, {inputs[0].name: cats, inputs[1].name: conts})[0]
        return [dict(zip(self.layout.targets, (float(v) for v in row))) for row in out]

    def evaluate(self, config: Mapping[str, Any], budget: float) -> float:
        """The target (negated when maximised) of ``config`` trained on ``budget / max_budget`` of the data."""
        if not (1.0 - 1e-9 <= float(budget) <= self.max_budget * (1 + 1e-9)):
            raise ValueError(
                f"{self.name}: budget must be in [1, {self.max_budget}] (got {budget!r})"
            )
        value = self.sign * self.predict([config], [self.data_share(budget)])[0][self.target]
        return value if math.isfinite(value) else math.inf

    @cached_property
    def _sample(self) -> tuple[list[dict[str, Any]], np.ndarray]:
        """:data:`PRIOR_SAMPLES` uniform configs (fixed seed) and their full-budget values."""
        rng = np.random.default_rng(PRIOR_SEED)
        configs = [sample_uniform(self.space, rng)[1] for _ in range(PRIOR_SAMPLES)]
        values = np.array(
            [self.sign * y[self.target] for y in self.predict(configs, [1.0] * len(configs))]
        )
        return configs, values

    def _prior_from(self, config: Mapping[str, Any]) -> dict[str, tuple[Any, float]]:
        out: dict[str, tuple[Any, float]] = {}
        for name, param in self.space.params.items():
            if name in config and param.name in self.space.tunable_names():
                # Categorical width 0.3: the default gets probability 0.7 (contract of Prior).
                width = 0.3 if isinstance(param, CategoricalParam) else 0.15
                out[name] = (config[name], width)
        return out

    @cached_property
    def _refined_best(self) -> dict[str, Any]:
        """The best random config improved by local search on the surrogate (fixed seed)."""
        configs, values = self._sample
        best, best_value = configs[int(np.argmin(values))], float(np.min(values))
        rng = np.random.default_rng([PRIOR_SEED, 1])
        for round_ in range(PRIOR_ROUNDS):
            scale = 0.1 if round_ < PRIOR_ROUNDS // 2 else 0.03
            centre = {k: v for k, v in best.items() if k in self.space.tunable_names()}
            moves = [sample_near(self.space, centre, rng, scale)[1] for _ in range(PRIOR_MOVES)]
            got = np.array(
                [self.sign * y[self.target] for y in self.predict(moves, [1.0] * len(moves))]
            )
            if float(np.min(got)) < best_value:
                best, best_value = moves[int(np.argmin(got))], float(np.min(got))
        return best

    @property
    def prior_good(self) -> dict[str, tuple[Any, float]]:
        """An oracle prior: centred on the best of :data:`PRIOR_SAMPLES` random configs after
        :data:`PRIOR_ROUNDS` rounds of local search on the surrogate at full budget."""
        return self._prior_from(self._refined_best)

    @property
    def prior_bad(self) -> dict[str, tuple[Any, float]]:
        """A misleading prior: the worst of :data:`PRIOR_SAMPLES` random configs at full budget."""
        configs, values = self._sample
        return self._prior_from(configs[int(np.argmax(values))])

    def default_budget(self) -> float:
        """YAHPO's budget: ``20 + 40 * sqrt(d)`` full evaluations for ``d`` searched hyperparameters."""
        return 20.0 + 40.0 * math.sqrt(self.dim)


def yahpo_suite(data_dir: str | Path, *, max_budget: int = 27) -> list[YahpoProblem]:
    """The problems of :data:`YAHPO_SUITE` read from ``data_dir``."""
    return [YahpoProblem(s, i, data_dir, max_budget=max_budget) for s, i in YAHPO_SUITE]
