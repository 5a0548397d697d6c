"""The multi-fidelity driver: asks the search for jobs, runs each as an Optuna trial, tells the outcome.

Every job (a config at a fidelity rung) is one Optuna trial, with the job in the trial's user
attributes (``rung``, ``config_id``, ``bracket``, ``parent_trial``, ``job_cost``, ``source``), so
the study is stored, reported and dashboarded like any other. The search itself is not stored:
it is deterministic, so resuming replays the stored asks and tells (in the order they happened)
into a fresh search, which then continues exactly where the killed one stopped.

A promoted config whose rungs differ only in the epoch count continues from its checkpoint: the
parent trial's directory is copied into the new trial's directory with a ``continue_from.json``
marker (the recipe objective resumes from ``last.pt``; a Python objective may read its own state
from ``trial_dir``). Epoch-level pruning (median, Wilcoxon, ...) still runs inside a rung, against
trials of the same rung only.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from speechtune.tuning.objectives import CONTINUE_MARKER
from speechtune.tuning.search import (
    Fidelity,
    Job,
    MultiFidelitySearch,
    schedule_horizon,
)
from speechtune.tuning.study import TrialFailed, TrialRunner

log = logging.getLogger(__name__)


class _RungView:
    """A study as a pruner should see it: only the trials of one fidelity rung."""

    def __init__(self, study: optuna.Study, rung: Any) -> None:
        self._study = study
        self._rung = rung

    def get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.user_attrs.get("rung") == self._rung]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    @property
    def best_trial(self) -> FrozenTrial:
        done = [
            t
            for t in self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None
        ]
        if not done:
            raise ValueError("no complete trial at this rung yet")
        pick = min if self._study.direction == optuna.study.StudyDirection.MINIMIZE else max
        return pick(done, key=lambda t: float(t.value or 0.0))  # every trial in `done` has a value

    @property
    def best_value(self) -> float:
        return self.best_trial.value  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class RungPruner(BasePruner):
    """Wraps an epoch-level pruner so that a trial is only compared with trials of its own rung.

    Curves at different rungs (1% vs 100% of the data) are not comparable epoch for epoch.
    """

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.inner.prune(_RungView(study, trial.user_attrs.get("rung")), trial)  # type: ignore[arg-type]


def fidelity_record(strategy: str, fidelity: Fidelity) -> dict[str, Any]:
    """The study's ``fidelity`` user attribute (see the contract in the package docs)."""
    return {"strategy": strategy, **fidelity.as_dict()}


def _job_record(job: Job, asked_after: int) -> dict[str, Any]:
    return {
        "number": job.number,
        "config_id": job.config_id,
        "rung": job.rung,
        "params": job.params,
        "bracket": job.bracket,
        "parent": job.parent,
        "cost": job.cost,
        "source": job.source,
        "asked_after": asked_after,
    }


def _same_job(a: Job, rec: Mapping[str, Any]) -> bool:
    return (a.config_id, a.rung, a.parent) == (
        rec["config_id"],
        rec["rung"],
        rec["parent"],
    ) and _close(a.params, rec["params"])


def _close(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) or isinstance(y, float):
            if not (
                isinstance(x, (int, float))
                and isinstance(y, (int, float))
                and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
            ):
                return False
        elif x != y:
            return False
    return True


class Driver:
    """Asks the search for jobs, runs each as an Optuna trial, tells the search the outcome."""

    def __init__(
        self,
        study: optuna.Study,
        search: MultiFidelitySearch,
        runner: JobRunner,
        run_dir: Path,
        *,
        budget: float | None,
        max_jobs: int | None,
        timeout_s: float | None,
        callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
        recipe_epochs: bool,
        rank_metric: str | None = None,
    ) -> None:
        self.study = study
        self.search = search
        self.runner = runner
        self.run_dir = run_dir
        self.budget = budget
        self.max_jobs = max_jobs
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.callbacks = list(callbacks)
        self.recipe_epochs = recipe_epochs
        self.rank_metric = rank_metric
        self.lock = threading.Condition()
        self.tells = 0
        self.trial_of_job: dict[
            int, int
        ] = {}  # job number -> Optuna trial number that finished it
        self.retry: list[Job] = []  # jobs a killed process left unfinished
        self.stopped = False
        self.closed = False  # the closing promotion (see _closing_job) was asked

    # -- resume ---------------------------------------------------------------------------------
    def replay(self) -> None:
        """Rebuild the search from the stored trials: the same asks, the same tells, in order."""
        finished: dict[int, FrozenTrial] = {}
        asked: dict[int, dict[str, Any]] = {}
        storage = self.study._storage
        for t in self.study.get_trials(deepcopy=False):
            rec = t.user_attrs.get("job")
            if not isinstance(rec, dict):
                continue
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                # Left by a killed process (one driver runs a study): fail it; its job re-runs.
                storage.set_trial_user_attr(t._trial_id, "reason", "interrupted: re-run on resume")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            asked.setdefault(rec["number"], rec)
            if "told" in t.user_attrs:
                finished[rec["number"]] = t
        if not asked:
            return
        tells = sorted(finished.values(), key=lambda t: t.user_attrs["told"])
        t_iter = iter(tells)
        jobs: dict[int, Job] = {}
        for number in sorted(asked):
            rec = asked[number]
            while self.tells < rec["asked_after"]:
                trial = next(t_iter)
                self._tell_stored(jobs[trial.user_attrs["job"]["number"]], trial)
            job = self.search.ask()
            if job is None or not _same_job(job, rec):
                raise RuntimeError(
                    f"cannot resume study {self.study.study_name!r}: replaying its stored jobs, "
                    f"job {number} differs from "
                    "the one the search chooses now (the tuning spec or speechtune changed since it started); "
                    "start a new study (another study.name or --run-dir)"
                )
            jobs[number] = job
        for trial in t_iter:
            self._tell_stored(jobs[trial.user_attrs["job"]["number"]], trial)
        self.retry = [jobs[n] for n in sorted(asked) if n not in finished]
        if self.retry:
            log.info(
                "resuming: re-running %d job(s) left unfinished: %s",
                len(self.retry),
                [j.number for j in self.retry],
            )

    def _rank_value(self, job: Job, trial: FrozenTrial) -> float | None:
        """What the search ranks this job by: the objective, or ``rank_metric`` below the top rung."""
        if trial.state != TrialState.COMPLETE:
            return None
        if self.rank_metric and job.rung < self.search.fidelity.top:
            value = _last_epoch_value(trial, self.rank_metric)
            if value is None:
                raise ValueError(
                    f"fidelity.rank_metric: trial {trial.number} reported no {self.rank_metric!r}; "
                    f"it reported: {', '.join(sorted(trial.user_attrs.get('metrics') or {})) or 'nothing'} "
                    "(a study begun before that metric existed: set fidelity.rank_metric to the "
                    "one its trials report, e.g. dev_loss)"
                )
            return float(value)
        # The engine minimises; a maximised objective (BLEU, accuracy) is ranked negated, while
        # a rank_metric (a loss) is lower-is-better already.
        return None if trial.value is None else self._sign * trial.value

    @property
    def _sign(self) -> float:
        return -1.0 if self.study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def _tell_stored(self, job: Job, trial: FrozenTrial) -> None:
        try:
            rank = self._rank_value(job, trial)
        except ValueError:
            rank = None  # logged when the trial first finished
        self.search.tell(
            job,
            rank,
            intermediate=self._intermediate(job, trial),
            cost=trial.user_attrs.get("job_cost"),
        )
        self.trial_of_job[job.number] = trial.number
        self.tells += 1

    def _used_cost(self, job: Job, state: TrialState, steps: Mapping[int, float]) -> float:
        """The compute a finished job used: its planned cost, pro rata for the epochs a pruned job ran."""
        fid = self.search.fidelity
        key = fid.resume_key
        epochs = fid.rungs[job.rung].overrides.get(key) if key else None
        if (
            key is None
            or state != TrialState.PRUNED
            or not isinstance(epochs, (int, float))
            or not steps
        ):
            return job.cost
        start = job.resume_from
        planned = float(epochs) - start
        if planned <= 0:
            return job.cost
        ran = max(steps) - start
        return job.cost * min(1.0, max(ran, 0.0) / planned)

    # -- running --------------------------------------------------------------------------------
    def _intermediate(self, job: Job, trial: FrozenTrial) -> dict[int, float]:
        """Values at the cheaper epoch rungs this run passed through (free rank-faithfulness data)."""
        fid = self.search.fidelity
        key = fid.resume_key
        out: dict[int, float] = {}
        if key is None or job.parent is not None:
            return out
        curve = {step: self._sign * v for step, v in trial.intermediate_values.items()}
        if self.rank_metric:
            rows = trial.user_attrs.get("history") or []
            curve = {
                int(r["epoch"]): r[self.rank_metric]
                for r in rows
                if r.get(self.rank_metric) is not None
            }
        for rung in range(job.rung):
            if fid.continues(rung, job.rung):
                step = fid.rungs[rung].overrides.get(key)
                if isinstance(step, (int, float)) and int(step) in curve:
                    out[rung] = float(curve[int(step)])
        return out

    def _done(self) -> bool:
        if self.stopped:
            return True
        if self.budget is not None and self.search.budget_used >= self.budget - 1e-9:
            return True
        if self.max_jobs is not None and self.tells >= self.max_jobs:
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def _closing_job(self) -> Job | None:
        """Once the budget is spent: a last job taking the best config to the top rung when no
        config reached it (MultiFidelitySearch.promote_best), so that the study ends with a
        result; it may overrun the budget by that one job. Not after a stop, a timeout or the
        job limit: those are hard limits."""
        if self.closed or self.stopped or self.budget is None:
            return None
        if self.search.budget_used < self.budget - 1e-9:
            return None
        if self.max_jobs is not None and self.tells >= self.max_jobs:
            return None
        if self.deadline is not None and time.monotonic() > self.deadline:
            return None
        self.closed = True
        job = self.search.promote_best()
        if job is not None:
            log.info(
                "the budget is spent and no config reached the top rung: continuing the best "
                "one there (job %d)",
                job.number,
            )
        return job

    def _next(self) -> tuple[Job, optuna.Trial] | None:
        with self.lock:
            job: Job | None = None
            while job is None:
                if self._done():
                    job = self._closing_job()
                    if job is None:
                        return None
                    break
                job = self.retry.pop(0) if self.retry else self.search.ask()
                if job is None:
                    self.lock.wait(timeout=1.0)  # a synchronous bracket waits on running jobs
            record = _job_record(job, self.tells)
            rung = self.search.fidelity.rungs[job.rung]
            parent_trial = self.trial_of_job.get(job.parent) if job.parent is not None else None
            attrs = {
                "job": record,
                "rung": job.rung,
                "rung_name": rung.name,
                "config_id": job.config_id,
                "bracket": job.bracket,
                "parent_trial": parent_trial,
                "job_cost": job.cost,
                "source": job.source,
            }
            self.study.enqueue_trial(job.params, user_attrs=attrs, skip_if_exists=False)
            with warnings.catch_warnings():
                # This driver replaces Study.optimize (and its heartbeat): a killed run's trials
                # are failed and re-run by replay() when the study resumes.
                warnings.filterwarnings(
                    "ignore", message="Heartbeat of storage", category=UserWarning
                )
                trial = self.study.ask()
            return job, trial

    def _config(self, job: Job) -> dict[str, Any]:
        config = dict(job.config)
        if self.recipe_epochs:
            # The LR schedule runs over the epochs of the highest rung this run may be continued
            # to, so that continuing it there equals training there from scratch.
            horizon = schedule_horizon(self.search.fidelity, job.rung)
            if horizon is not None:
                config["train.schedule_epochs"] = horizon
        return config

    def _prepare_dir(self, job: Job, trial: optuna.Trial) -> None:
        if job.parent is None:
            return
        parent_number = self.trial_of_job.get(job.parent)
        if parent_number is None:
            return
        parent_dir = self.run_dir / "trials" / f"{parent_number:04d}"
        trial_dir = self.run_dir / "trials" / f"{trial.number:04d}"
        if not parent_dir.is_dir():
            # A Python objective may keep no state; a recipe trial always has a checkpoint.
            (log.warning if self.recipe_epochs else log.debug)(
                "trial %d: parent trial dir %s is missing; training anew", trial.number, parent_dir
            )
            return
        shutil.copytree(parent_dir, trial_dir, dirs_exist_ok=True)
        marker = json.dumps({"parent_trial": parent_number, "parent_dir": str(parent_dir)})
        # Every run dir holding a checkpoint continues: the trial dir, or one per seed (seed<k>/).
        for ckpt in [trial_dir / "last.pt", *trial_dir.glob("*/last.pt")]:
            if ckpt.is_file():
                (ckpt.parent / CONTINUE_MARKER).write_text(marker)
        if not (trial_dir / CONTINUE_MARKER).exists():
            (trial_dir / CONTINUE_MARKER).write_text(
                marker
            )  # for Python objectives keeping their own state

    def run_one(self) -> bool:
        nxt = self._next()
        if nxt is None:
            return False
        job, trial = nxt
        self._prepare_dir(job, trial)
        self.runner.configs[trial.number] = self._config(job)
        value: float | None = None
        try:
            out = self.runner(trial)
            value = float(out) if not isinstance(out, (list, tuple)) else float(out[0])
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialFailed:
            state = TrialState.FAIL
        except Exception:  # a crashing trial is recorded, never allowed to end the study
            log.exception("trial %d raised", trial.number)
            state = TrialState.FAIL
        finally:
            self.runner.configs.pop(trial.number, None)
        with self.lock:
            trial.set_user_attr("told", self.tells)
            stored = self.study._storage.get_trial(trial._trial_id)
            steps = stored.intermediate_values
            if (
                state == TrialState.COMPLETE
                and self.rank_metric
                and job.rung < self.search.fidelity.top
            ):
                # Recorded (trials.csv's rank_value) because it is not the trial's value: the
                # value is the run's best-WER epoch, the search ranks the last epoch's metric.
                ranked_by = _last_epoch_value(stored, self.rank_metric)
                if ranked_by is not None:
                    trial.set_user_attr("rank_value", ranked_by)
            used = self._used_cost(job, state, steps)
            if used != job.cost:
                trial.set_user_attr(
                    "job_cost", used
                )  # what it really cost: pruned after a few epochs
            frozen = self.study.tell(
                trial, value if state == TrialState.COMPLETE else None, state=state
            )
            try:
                rank = self._rank_value(job, frozen)
            except ValueError as exc:
                log.error("%s; ranking this trial last", exc)
                rank = None
            self.search.tell(job, rank, intermediate=self._intermediate(job, frozen), cost=used)
            self.trial_of_job[job.number] = trial.number
            self.tells += 1
            self.lock.notify_all()
        for cb in self.callbacks:
            cb(self.study, frozen)
        return True

    def run(self, n_workers: int) -> None:
        if n_workers <= 1:
            while self.run_one():
                pass
            return
        errors: list[BaseException] = []

        def work() -> None:
            try:
                while self.run_one():
                    pass
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)
                with self.lock:
                    self.stopped = True
                    self.lock.notify_all()

        threads = [
            threading.Thread(target=work, name=f"speechtune-worker-{i}", daemon=True)
            for i in range(n_workers)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]


def _last_epoch_value(trial: FrozenTrial, metric: str) -> float | None:
    """``metric`` at the last epoch the trial trained (its history), else its final metrics'.

    A recipe's final metrics are those of its best-WER epoch. At a cheap rung every WER is still
    near 1.0, so that epoch is whichever happened to tie lowest, often an early one: on AN4 a
    4-epoch run's final dev loss was its epoch-2 value (67 where epoch 4 had 50), and ranking
    configs by it ranked epochs, not configs. The last epoch is also where a promoted config
    continues from.
    """
    history = trial.user_attrs.get("history") or []
    last = history[-1].get(metric) if history and isinstance(history[-1], Mapping) else None
    if isinstance(last, (int, float)) and not isinstance(last, bool):
        return float(last)
    value = (trial.user_attrs.get("metrics") or {}).get(metric)
    return None if value is None else float(value)


class JobRunner(TrialRunner):
    """The study's trial runner with the job's config instead of a sampled one."""

    def __init__(self, *args: Any, rank_metric: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configs: dict[int, dict[str, Any]] = {}
        self.rank_metric = rank_metric

    def report_metric(self, trial: optuna.Trial) -> str:
        """Below the top rung the pruner judges the rank metric, the one promotion ranks by."""
        fspec = self.spec.fidelity
        if fspec is None:  # a job runner only runs multi-fidelity studies
            return super().report_metric(trial)
        fidelity = fspec.fidelity
        if self.rank_metric and trial.user_attrs.get("rung", fidelity.top) < fidelity.top:
            return self.rank_metric
        return super().report_metric(trial)

    def _sample(self, trial: optuna.Trial) -> dict[str, Any]:
        super()._sample(trial)  # records the (enqueued) params on the trial
        return dict(self.configs[trial.number])
