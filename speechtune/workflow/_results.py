"""The typed result of each workflow stage, as recorded under ``stages.<name>.result`` in ``state.json``.

Field order is the JSON key order the stages have always written; :func:`parse_result` reads a
stored result back (a result that does not fit stays a :class:`~._record.RawResult`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from speechtune.workflow._record import (
    OPTIONAL,
    RawResult,
    Record,
    RecordError,
    json_key,
)

#: A config's values by dotted recipe key (``optim.lr``): JSON scalars.
Params = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class StageResult(Record):
    """The base of the stage results."""

    def stage_warnings(self) -> tuple[str, ...]:
        """What the stage flagged as unreliable (e.g. a proxy too weak to rank configs)."""
        return ()


@dataclass(frozen=True, kw_only=True)
class Metrics(Record):
    """Error rates of one evaluation: a dev set's (with ``dev_loss``) or the golden set's.

    A key the evaluation did not produce is absent, not null. ``version`` is the registry version
    of an evaluated champion; ``utterances`` the size of the golden set.
    """

    version: str | None = field(default=None, metadata=OPTIONAL)
    wer: float | None = field(default=None, metadata=OPTIONAL)
    cer: float | None = field(default=None, metadata=OPTIONAL)
    worst_group_wer: float | None = field(default=None, metadata=OPTIONAL)
    worst_group: str | None = field(default=None, metadata=OPTIONAL)
    group_wer: Mapping[str, float | None] | None = field(default=None, metadata=OPTIONAL)
    utterances: int | None = field(default=None, metadata=OPTIONAL)
    dev_loss: float | None = field(default=None, metadata=OPTIONAL)

    def value(self, metric: str) -> float | None:
        """The value of ``metric`` (``wer``, ``cer``, ``worst_group_wer``, ...), None when absent."""
        known = {
            "wer": self.wer,
            "cer": self.cer,
            "worst_group_wer": self.worst_group_wer,
            "dev_loss": self.dev_loss,
        }
        value = known.get(metric, self.extra.get(metric))
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True, kw_only=True)
class RunRecord(Record):
    """One training run, as :func:`~._context.train_once` records it (``workflow_run.json``)."""

    status: str
    reason: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    value: float | None = None
    seed: int
    run_dir: str


# -- 1 proxy ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DataSummary(Record):
    """One manifest: its size, speakers, groups and content fingerprint."""

    utterances: int
    hours: float
    speakers: int
    groups: tuple[str, ...] = ()
    fingerprint: str


@dataclass(frozen=True, kw_only=True)
class ProxyResult(StageResult):
    """Stage 1: the full training set, the proxy subset carved from it, and dev."""

    fraction: float | None = None
    hours: float | None = None
    seed: int | None = None
    train_full: DataSummary
    proxy: DataSummary
    dev: DataSummary
    manifests: Mapping[str, str] = field(default_factory=dict)
    manifest_sha256: Mapping[str, str] = field(default_factory=dict)
    skipped_utterances: tuple[str, ...] = ()


# -- 2 baseline -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BaselineResult(StageResult):
    """Stage 2: the recipe's defaults on the proxy data (``value`` None when it did not train)."""

    run_dir: str
    seed: int | None = None
    status: str | None = None
    reason: str | None = None
    dev: Metrics = field(default_factory=Metrics)
    value: float | None = None


# -- 3 coarse and 4 fine search ---------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrialSummary(Record):
    """One of a study's best trials."""

    trial: int
    value: float
    params: Params = field(default_factory=dict)
    trial_dir: str | None = None


@dataclass(frozen=True, kw_only=True)
class Narrowing(Record):
    """How the fine stage narrowed one parameter (both as ``describe_param`` writes them)."""

    before: str
    after: str


@dataclass(frozen=True, kw_only=True)
class SearchResult(StageResult):
    """Stages 3 and 4: a study's counts, its best trials and where it is stored.

    ``narrowed``, ``warm_started`` and ``multi_fidelity`` are the fine stage's only.
    """

    run_dir: str
    study: str
    storage: str
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best: TrialSummary
    top: tuple[TrialSummary, ...] = ()
    warnings: tuple[str, ...] = ()
    sampler: str | None = None
    pruner: str | None = None
    narrowed: Mapping[str, Narrowing] | None = field(default=None, metadata=OPTIONAL)
    warm_started: int | None = field(default=None, metadata=OPTIONAL)
    multi_fidelity: bool | None = field(default=None, metadata=OPTIONAL)

    def stage_warnings(self) -> tuple[str, ...]:
        """The study's warnings (values too weak or too alike to rank configs)."""
        return self.warnings


# -- 5 validation -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FailedRun(Record):
    """A validation run that did not train."""

    seed: int
    status: str
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Candidate(Record):
    """A validated config: its value with each seed that trained (``mean``/``std`` None when none did)."""

    name: str
    params: Params = field(default_factory=dict)
    values: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    failed: tuple[FailedRun, ...] = ()
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True, kw_only=True)
class SeedTestResult(Record):
    """The winner against the baseline over seeds (:class:`~._stats.SeedTest` as a dict, or method ``none``)."""

    method: str
    statistic: float | None = None
    p_value: float | None = None
    alpha: float | None = None
    significant: bool = False
    candidate_mean: float | None = field(default=None, metadata=OPTIONAL)
    candidate_std: float | None = field(default=None, metadata=OPTIONAL)
    baseline_mean: float | None = field(default=None, metadata=OPTIONAL)
    baseline_std: float | None = field(default=None, metadata=OPTIONAL)
    n_candidate: int | None = field(default=None, metadata=OPTIONAL)
    n_baseline: int | None = field(default=None, metadata=OPTIONAL)
    statement: str = ""
    df: float | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True, kw_only=True)
class ValidateResult(StageResult):
    """Stage 5: the baseline and the top configs trained with every validation seed, and the winner."""

    seeds: tuple[int, ...] = ()
    alpha: float | None = None
    candidates: tuple[Candidate, ...]
    winner: str
    test: SeedTestResult | None = None

    def winner_candidate(self) -> Candidate | None:
        """The winner's candidate record (None when the winner is not among the candidates)."""
        return next((c for c in self.candidates if c.name == self.winner), None)


# -- 6 full training --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FullBaseline(Record):
    """The recipe's defaults trained like the winner (all data, same epochs and seed)."""

    run_dir: str
    status: str | None = None
    reason: str | None = None
    dev: Metrics = field(default_factory=Metrics)
    value: float | None = None


@dataclass(frozen=True, kw_only=True)
class TunedRun(Record):
    """The tuned winner's full training, kept when the baseline beat it and went to the gate instead."""

    run_dir: str
    candidate: str | None = None
    params: Params = field(default_factory=dict)
    dev: Metrics = field(default_factory=Metrics)
    value: float | None = None
    model: str | None = None


@dataclass(frozen=True, kw_only=True)
class FullResult(StageResult):
    """Stage 6: the model that goes to the gate, trained on all the training data."""

    run_dir: str
    candidate: str | None = None
    params: Params = field(default_factory=dict)
    seed: int
    epochs: int | None = None
    dev: Metrics = field(default_factory=Metrics)
    value: float | None = None
    model: str
    baseline: FullBaseline | None = field(default=None, metadata=OPTIONAL)
    tuned: TunedRun | None = field(default=None, metadata=OPTIONAL)
    warnings: tuple[str, ...] | None = field(default=None, metadata=OPTIONAL)

    def stage_warnings(self) -> tuple[str, ...]:
        """Set when the tuned winner did worse than the baseline at full fidelity."""
        return self.warnings or ()


# -- 7 gate and 8 export ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GoldenInfo(Record):
    """The golden set the gate read."""

    source: str
    utterances: int | None = None
    hours: float | None = None
    fingerprint: str | None = None
    shared_speakers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GateResult(StageResult):
    """Stage 7: challenger and champion on the golden set, the registered version and the decision."""

    golden: GoldenInfo
    gate_metric: str = "wer"
    margin: float | None = None
    model_name: str | None = None
    challenger: Metrics = field(default_factory=Metrics)
    champion: Metrics | None = None
    tracking_uri: str | None = None
    registered_version: str | None = None
    promoted: bool | None = None
    decision: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExportResult(StageResult):
    """Stage 8: the exported model (``format`` ``none``: nothing exported)."""

    format: str
    path: str | None = None
    size: int = field(default=0, metadata=json_key("bytes"))
    registry_uri: str | None = field(default=None, metadata=OPTIONAL)
    #: A streaming model's (``model.chunk_ms > 0``) chunk-step artefact, beside ``path``.
    stream_path: str | None = field(default=None, metadata=OPTIONAL)
    stream_registry_uri: str | None = field(default=None, metadata=OPTIONAL)


#: Stage name -> the type of its result.
RESULT_TYPES: dict[str, type[StageResult]] = {
    "proxy": ProxyResult,
    "baseline": BaselineResult,
    "coarse": SearchResult,
    "fine": SearchResult,
    "validate": ValidateResult,
    "full": FullResult,
    "gate": GateResult,
    "export": ExportResult,
}


def parse_result(stage: str, data: Any) -> StageResult | RawResult:
    """The typed result of ``stage`` read from its JSON; a :class:`RawResult` when it is none.

    An empty result, one of a stage this version does not know, or one that does not fit its
    type is kept as read (a rewrite of ``state.json`` never loses it) with the reason.
    """
    kind = RESULT_TYPES.get(stage)
    if kind is None:
        return RawResult(data, f"no result type for stage {stage!r}")
    if isinstance(data, Mapping) and not data:
        return RawResult(data, "empty")
    try:
        return kind.from_dict(data)
    except RecordError as exc:
        return RawResult(data, str(exc))
