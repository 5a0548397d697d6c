"""Report a Hugging Face ``Trainer``'s evaluation metrics to a speechtune tuner, and stop when pruned.

A training script run by a ``command`` objective adds one callback::

    from speechtune.integrations.huggingface import SpeechtuneCallback

    trainer = Trainer(..., args=TrainingArguments(..., eval_strategy="epoch"),
                      compute_metrics=compute_wer,           # returns {"wer": ...}
                      callbacks=[SpeechtuneCallback()])
    trainer.train()

Every evaluation becomes one row of the trial's report file (``{"epoch": 3, "wer": 0.21,
"loss": 1.9}``: the ``eval_`` prefix stripped), and once the tuner has pruned the trial (its stop
file exists) the callback sets ``control.should_training_stop``, so ``trainer.train()`` returns
after the current step (skipping the evaluation of the epoch it stopped in) and the script exits
normally, before the tuner's grace period runs out.

This module needs ``transformers`` (``pip install 'speechtune[hf]'``); ``import speechtune``
never imports it. From speechtune it uses only :mod:`speechtune._report_file` (standard library),
so it adds nothing heavy to a training script.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

from speechtune._report_file import report, should_stop

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "speechtune.integrations.huggingface needs transformers: pip install 'speechtune[hf]'"
    ) from exc

__all__ = ["DEFAULT_EXCLUDE", "SpeechtuneCallback"]

log = logging.getLogger(__name__)

#: Metrics left out of the report by default: the Trainer's timings say how fast an evaluation
#: ran, not how good the model is, and only clutter the study's tables.
DEFAULT_EXCLUDE: tuple[str, ...] = ("runtime", "samples_per_second", "steps_per_second")

# Keys of the Trainer's metrics that can never be metric names in a report row: "epoch" is the
# row's own epoch argument and "final" its flag (passing them as metrics would be a TypeError).
_RESERVED = ("epoch", "final")


class SpeechtuneCallback(TrainerCallback):
    """A ``TrainerCallback`` that reports each evaluation to speechtune and stops a pruned trial.

    Args:
        metric_map: renames metrics after the prefix is stripped, e.g. ``{"wer": "dev_wer"}``
            when the tuning YAML's ``objective.metric`` is ``dev_wer``.
        step_as_epoch: what a row's ``epoch`` is. ``False``: the epoch, ``round(state.epoch)``
            (comparable across trials whatever their batch size, which matters to the pruner);
            ``True``: ``state.global_step`` (needed when evaluating several times an epoch, where
            the rounded epoch would repeat). ``None`` (default): the epoch when
            ``eval_strategy="epoch"``, else the global step.
        prefix: stripped from metric names (the Trainer's ``metric_key_prefix``).
        exclude: metric names (after stripping) not to report; ``epoch`` is never reported as
            a metric.
        stop_on_step: check for the stop file after every optimizer step (one ``stat``), not
            only at the end of each epoch and evaluation, so that a pruned trial stops within
            one step.

    Only finite numbers are reported (a NaN loss is skipped with a warning: the report format
    rejects it); only the main process reports, so data-parallel ranks do not repeat rows.
    Every process checks the stop file: ranks that see it at different steps are left to the
    tuner, which terminates the process group after its grace period.
    """

    def __init__(
        self,
        metric_map: Mapping[str, str] | None = None,
        *,
        step_as_epoch: bool | None = None,
        prefix: str = "eval_",
        exclude: Collection[str] = DEFAULT_EXCLUDE,
        stop_on_step: bool = True,
    ) -> None:
        self.metric_map = dict(metric_map or {})
        self.step_as_epoch = step_as_epoch
        self.prefix = prefix
        self.exclude = frozenset(exclude)
        self.stop_on_step = stop_on_step
        clash = sorted(set(self.metric_map.values()) & set(_RESERVED))
        if clash:
            raise ValueError(f"metric_map cannot rename a metric to {clash}: reserved names")

    def row_epoch(self, args: TrainingArguments, state: TrainerState) -> int:
        """The ``epoch`` of the row an evaluation at this point of training is reported as."""
        by_step = self.step_as_epoch
        if by_step is None:
            strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
            by_step = strategy != "epoch"
        if by_step or state.epoch is None:
            return int(state.global_step)
        # state.epoch is a float (steps done / steps per epoch): exactly n.0 at the end of
        # epoch n; rounding absorbs float noise and a last, partial batch.
        return int(round(state.epoch))

    def metrics_row(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The metrics to report: prefix stripped, renamed, excluded and non-finite ones left out."""
        row: dict[str, float] = {}
        for key, value in metrics.items():
            name = key[len(self.prefix) :] if self.prefix and key.startswith(self.prefix) else key
            if name in _RESERVED or name in self.exclude:
                continue
            name = self.metric_map.get(name, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # e.g. a per-group dict or a string: not a metric the tuner can rank
            if not math.isfinite(value):
                log.warning("speechtune: not reporting %s=%r (not a finite number)", key, value)
                continue
            row[name] = float(value)
        return row

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Report the evaluation's metrics; ask the Trainer to stop if the trial was pruned."""
        if should_stop():
            # Pruned on an earlier row: the tuner's verdict stands, and this evaluation is of a
            # partly trained epoch (a stopped Trainer still evaluates the epoch it stopped in),
            # which would repeat that epoch's number.
            control.should_training_stop = True
            return
        if metrics and state.is_world_process_zero:
            row = self.metrics_row(metrics)
            if row:
                report(self.row_epoch(args, state), final=False, **row)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Ask the Trainer to stop after this step if the trial was pruned."""
        if self.stop_on_step and should_stop():
            control.should_training_stop = True

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Skip the end-of-epoch evaluation of a pruned trial: it would not be reported."""
        # Runs after the Trainer's own flow callback, which asks for the evaluation: undoing it
        # spares a dev pass inside the tuner's grace period.
        if should_stop():
            control.should_evaluate = False
            control.should_training_stop = True
