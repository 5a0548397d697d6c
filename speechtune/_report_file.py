"""Report metrics from an external training script to a speechtune tuner, without importing torch.

A script run by a ``command`` objective reports with the standard library alone (the protocol,
for a script in another virtual environment or a container), or with :func:`report`:

* ``$SPEECHTUNE_REPORT_FILE``: append one JSON object per line, ``{"epoch": 3, "wer": 0.21}``
  (``epoch`` an int: an epoch or a step; every other key a finite number), and optionally
  ``{"final": true, "wer": 0.19}`` for the run's final figures;
* ``$SPEECHTUNE_STOP_FILE``: the tuner creates this file when the trial is pruned; a script
  that checks for it (:func:`should_stop`) can stop cleanly, and one that does not is
  terminated after ``command.stop_grace_s`` seconds;
* ``$SPEECHTUNE_TRIAL_DIR``: the trial's own directory (checkpoints, logs).

With the helpers::

    import speechtune
    for epoch in range(1, epochs + 1):
        ...
        speechtune.report(epoch=epoch, wer=dev_wer, loss=dev_loss)
    speechtune.report(final=True, wer=best_wer)   # optional: the final figures of the run

Each call appends one JSON line to the file named by ``SPEECHTUNE_REPORT_FILE`` (set by the
tuner for every trial). The tuner reads the file while the script runs, passes each new epoch to
its pruner, and terminates the script's process group when the trial is pruned, so a script needs
no "should I stop?" check. A ``final=True`` line (its ``epoch`` may be None) is merged over the
last epoch's row to give the trial's final metrics.

This module imports only the standard library (json, os, sys, math) so that it costs nothing in
a training script's start-up and never drags torch or optuna into a foreign environment.
"""

from __future__ import annotations

import json
import math
import os
import sys

__all__ = ["REPORT_FILE_ENV", "STOP_FILE_ENV", "TRIAL_DIR_ENV", "report", "should_stop"]

#: Environment variable naming the JSON-lines file a trial's metrics are appended to.
REPORT_FILE_ENV = "SPEECHTUNE_REPORT_FILE"
#: Environment variable naming the trial's own output directory.
TRIAL_DIR_ENV = "SPEECHTUNE_TRIAL_DIR"
#: Environment variable naming the file the tuner creates when the trial should stop (pruned).
STOP_FILE_ENV = "SPEECHTUNE_STOP_FILE"

_warned = False


def _check_epoch(epoch: object) -> int | None:
    if epoch is None:
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(
            f"speechtune.report: epoch must be an int or None, got {type(epoch).__name__} {epoch!r}"
        )
    return epoch


def _check_metric(key: str, value: object) -> float | int:
    # bool is an int subclass, but True as a WER is always a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"speechtune.report: metric {key!r} must be a number (int or float), got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"speechtune.report: metric {key!r} must be finite, got {value!r}")
    return value


def report(epoch: int | None = None, *, final: bool = False, **metrics: float) -> None:
    """Append one row of metrics to this trial's report file.

    Args:
        epoch: the epoch (or step) these metrics belong to; None for a row that is not tied to
            an epoch (typically the ``final`` row).
        final: mark the row as the run's final figures (merged over the last epoch's row).
        **metrics: metric name -> finite number, e.g. ``wer=0.21``.

    Raises:
        TypeError: ``epoch`` is not an int/None, or a metric value is not a number.
        ValueError: a metric value is NaN or infinite, or no metric is given.

    Without ``SPEECHTUNE_REPORT_FILE`` in the environment (the script was run by hand, not by a
    tuner) the call prints a one-time warning to stderr and does nothing.
    """
    global _warned
    row: dict[str, object] = {"epoch": _check_epoch(epoch)}
    if not isinstance(final, bool):
        raise TypeError(f"speechtune.report: final must be True or False, got {final!r}")
    if not metrics:
        raise ValueError(
            "speechtune.report: give at least one metric, e.g. report(epoch=1, wer=0.3)"
        )
    for key, value in metrics.items():
        row[key] = _check_metric(key, value)
    if final:
        row["final"] = True
    path = os.environ.get(REPORT_FILE_ENV)
    if not path:
        if not _warned:
            print(
                f"speechtune.report: {REPORT_FILE_ENV} is not set (not run by a speechtune tuner); "
                "metrics are not recorded",
                file=sys.stderr,
            )
            _warned = True
        return
    # One write of one complete line in append mode: the reader never sees half a row from us,
    # and concurrent writers (e.g. data-parallel ranks) do not interleave within a line.
    line = json.dumps(row, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def should_stop() -> bool:
    """True once the tuner has asked this trial to stop (it was pruned).

    Cheap enough to call after every training step (one ``stat``). False when the script was
    not started by a tuner. A script that stops on it should exit normally (code 0).
    """
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]
