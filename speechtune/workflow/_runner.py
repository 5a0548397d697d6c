"""Run the workflow's stages in order, resumably, and the ``speechtune workflow`` command.

``state.json`` in the run directory records each stage. A rerun skips the stages that are
done, picks up the one that was interrupted, and refuses to mix results of a changed workflow
YAML unless ``--from-stage`` says where to start again. Every stage is measured (device-hours,
energy, CO2e, money) and the report (``report.md``, ``report.html``) is rewritten after each.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speechtune.config import ConfigError, ConfigProblem
from speechtune.devices import gpus_for_device
from speechtune.metrics import EnergyMeter, format_cost
from speechtune.tuning.spec import load_tuning
from speechtune.workflow._config import (
    STAGES,
    WorkflowSpec,
    spec_summary,
    stage_index,
)
from speechtune.workflow._context import Context, WorkflowError
from speechtune.workflow._golden import golden_guard, golden_paths
from speechtune.workflow._report import wer_path, write_workflow_report
from speechtune.workflow._results import (
    ExportResult,
    GateResult,
    StageResult,
    ValidateResult,
)
from speechtune.workflow._stages import (
    STAGE_DIRS,
    STAGE_FUNCTIONS,
    check_data_unchanged,
)
from speechtune.workflow._state import CodeVersion, WorkflowState, now

log = logging.getLogger(__name__)


class WorkflowConfigChanged(RuntimeError):
    """The workflow YAML (or its tuning YAML) changed since stages of this run directory finished."""


def _load_tuning(spec: WorkflowSpec) -> Any:

    tuning = load_tuning(spec.tuning)
    problems = []
    if tuning.objective.kind != "recipe":
        problems.append(
            ConfigProblem(
                "objective.kind",
                "the workflow trains, gates and exports the built-in recipe's model: it needs objective.kind: recipe "
                "(tune your own script with `speechtune tune`)",
                tuning.objective.kind,
            )
        )
    if tuning.objective.is_multi_objective:
        problems.append(
            ConfigProblem(
                "objective.extra_objectives",
                "the workflow selects one winner: fold extra objectives into one value with objective.scalarize",
                tuning.objective.extra_objectives,
            )
        )
    data = tuning.base_recipe.get("data", {})
    golden = spec.golden.synthetic
    if (
        golden is not None
        and data.get("corpus") == "synthetic"
        and golden.seed == data.get("synthetic", {}).get("seed")
    ):
        problems.append(
            ConfigProblem(
                "golden.synthetic.seed",
                f"must differ from the training corpus's data.synthetic.seed ({golden.seed}): "
                "the same seed generates the same texts and voices, so the golden set would not be held out",
                golden.seed,
            )
        )
    if problems:
        raise ConfigError(problems, f"{spec.path} (tuning: {spec.tuning})")
    return tuning


def run_workflow(
    spec: WorkflowSpec,
    run_dir: str | Path | None = None,
    *,
    from_stage: str | int | None = None,
    to_stage: str | int | None = None,
    device: str = "auto",
    cache_dir: str | Path = ".cache/speechtune",
    num_threads: int | None = None,
    tracking_uri: str | None = None,
    track_studies: bool = True,
    workers: int = 1,
    gpu_slots: int | None = None,
    progress: bool = False,
) -> WorkflowState:
    """Run (or resume) the workflow's stages up to ``to_stage``.

    Args:
        spec: the validated workflow (:func:`load_workflow`).
        run_dir: where state, stage outputs and reports go (default ``runs/<name>``).
        from_stage: start again from this stage (name or 1-based number): it and every later
            stage are forgotten and rerun; earlier stages must be done.
        to_stage: stop after this stage (default: the last, export).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``.
        cache_dir: corpus and feature cache (a synthetic golden set is generated under ``<cache_dir>/golden``).
        num_threads: torch CPU threads (None: torch's default).
        tracking_uri: MLflow tracking/registry URI (overrides ``gating.tracking_uri``).
        track_studies: log the coarse and fine studies to MLflow too (a parent run per study,
            a child run per trial, in the registry's store).
        workers: ``speechtune worker`` processes for the coarse and fine studies (1: trials in
            this process); on a GPU they pack trials onto it. They inherit the golden-set guard.
        gpu_slots: concurrent trials per GPU with ``workers`` > 1 (default: ``workers``).
        progress: progress displays.

    Returns:
        The workflow's state after the run.

    Raises:
        WorkflowConfigChanged: the YAML changed since finished stages ran, and no ``from_stage``.
        WorkflowError: a stage could not finish (recorded as failed in ``state.json``).
        KeyboardInterrupt: re-raised after the running stage is recorded as interrupted.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / spec.name
    tuning = _load_tuning(spec)
    state = WorkflowState(run_dir)
    digest = spec.digest()
    done = [s for s in STAGES if state.is_done(s)]
    start = stage_index(from_stage) if from_stage is not None else None
    if state.record.config_hash not in (None, digest) and done and start is None:
        raise WorkflowConfigChanged(
            f"{spec.path} (or its tuning YAML) changed since stages {', '.join(done)} of {run_dir} ran; "
            "rerun with --from-stage STAGE to redo that stage and everything after it, or use a new --run-dir"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if start is not None:
        missing = [s for s in STAGES[:start] if not state.is_done(s)]
        if missing:
            raise WorkflowError(
                f"cannot start from stage {start + 1} ({STAGES[start]}): "
                f"stage(s) {', '.join(missing)} have not finished in "
                f"{run_dir}; start from {missing[0]}"
            )
        dropped = state.reset_from(start)
        _set_aside(run_dir, STAGES[start:])
        if dropped:
            log.info("rerunning stages %s", ", ".join(dropped))
    end = stage_index(to_stage) if to_stage is not None else len(STAGES) - 1
    from speechtune.track import code_version

    objective = tuning.objective
    state.update(
        run_uid=state.record.run_uid or secrets.token_hex(4),
        started=state.record.started or now(),
        name=spec.name,
        run_dir=str(run_dir.resolve()),
        config=str(spec.path),
        config_hash=digest,
        spec=spec_summary(spec),
        code_version=CodeVersion.from_dict(code_version()),
        metric=objective.metric
        if objective.group == "mean"
        else f"{objective.group}_{objective.metric}",
        cost_model=tuning.cost,
    )
    state.save()
    ctx = Context(
        spec=spec,
        tuning=tuning,
        run_dir=run_dir,
        state=state,
        device=device,
        cache_dir=Path(cache_dir),
        num_threads=num_threads,
        progress=progress,
        tracking_uri=tracking_uri,
        track_studies=track_studies,
        workers=workers,
        gpu_slots=gpu_slots,
    )
    guard = golden_paths(ctx)
    for i, name in enumerate(STAGES[: end + 1]):
        if state.is_done(name):
            log.info("stage %d %s: done (skipped)", i + 1, name)
            continue
        _run_stage(ctx, i, name, guard)
    return state


def _set_aside(run_dir: Path, stages: Sequence[str]) -> None:
    """Rename the outputs of stages about to rerun (``fine`` -> ``fine.superseded-<time>``): kept, never reused.

    A study that resumed from its old storage, or a training read back from its old record,
    would silently return the results the user asked to redo.
    """
    stamp = now().replace(":", "").replace("+0000", "")
    for stage in stages:
        for name in STAGE_DIRS[stage]:
            path = run_dir / name
            if path.exists():
                path.rename(path.with_name(f"{path.name}.superseded-{stamp}"))


def _run_stage(ctx: Context, index: int, name: str, guard: list[tuple[Path, bool]]) -> None:

    state = ctx.state
    log.info("stage %d %s: running", index + 1, name)
    state.start(name)
    meter = EnergyMeter(ctx.cost_model, gpus=gpus_for_device(ctx.device))
    meter.start()
    status, error = "failed", None
    result: StageResult | None = None
    try:
        # Stages before gating run with the golden set locked: any open() of it raises.
        with golden_guard(guard if index < STAGES.index("gate") else [], name):
            if name != "proxy":
                check_data_unchanged(ctx)
            result = STAGE_FUNCTIONS[name](ctx)
        for warning in result.stage_warnings():
            log.warning("stage %d %s: %s", index + 1, name, warning)
        status = "done"
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted (Ctrl-C); rerun the same command to continue"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        meter.stop()
        state.finish(name, status, meter.record(), result=result, error=error)
        _write_report(state)
        entry = state.stage(name)
        if status == "done" and entry is not None and entry.cost is not None:
            log.info("stage %d %s: done (%s)", index + 1, name, format_cost(entry.cost))


def _write_report(state: WorkflowState) -> None:
    try:
        write_workflow_report(state.record, state.run_dir)
    except Exception as exc:
        log.warning("could not write the workflow report: %s: %s", type(exc).__name__, exc)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def summary(state: WorkflowState) -> str:
    """A few lines for the terminal: the WER path, the gating decision, cost, and where the report is."""

    rec = state.record
    lines = [f"workflow {rec.name}: {state.run_dir}"]
    for point in wer_path(rec):
        if point.value is not None:
            spread = f" ± {point.spread:.4f}" if point.spread is not None else ""
            lines.append(
                f"  {point.metric} {point.step + ' (' + point.split + ')':<46} {point.value:.4f}{spread}"
            )
    for stage in STAGES:
        entry = rec.stage(stage)
        if entry is not None and isinstance(entry.result, StageResult):
            lines += [
                f"  warning ({stage}): {warning}" for warning in entry.result.stage_warnings()
            ]
    validate = rec.result_of("validate", ValidateResult)
    if validate is not None and validate.test is not None and validate.test.statement:
        lines.append(f"  validation: {validate.test.statement}")
    gate = rec.result_of("gate", GateResult)
    if gate is not None and gate.decision:
        lines.append(
            f"  gating: {gate.decision} (version {gate.registered_version} of {gate.model_name})"
        )
    export = rec.result_of("export", ExportResult)
    if export is not None and export.path:
        lines.append(f"  exported: {export.path}")
    if rec.cost_total is not None:
        lines.append(f"  cost: {format_cost(rec.cost_total)}")
    lines.append(f"  report: {state.run_dir / 'report.html'} (and report.md)")
    return "\n".join(lines)
