"""The one backend contract.

A backend decides where a study's trials run: threads of this process, worker processes, a
Ray cluster. It implements two methods (Syne Tune's ``TrialBackend`` and Optuna's
``BasePruner`` keep theirs as small): :meth:`Backend.open_options` says how the study must be
opened, :meth:`Backend.run` runs trials into it. Everything else (storage, resume, tracking,
cost, outputs) is the :class:`~speechtune.tuning.study.StudySession`'s, once for all backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import OpenOptions, StudySession


class Backend(Protocol):
    """Where a study's trials run."""

    def open_options(self, spec: TuningSpec, run_dir: Path) -> OpenOptions:
        """How the study of ``spec`` in ``run_dir`` (absolute) must be opened for this backend.

        Raises:
            ValueError: ``spec`` asks for something this backend cannot run (the message says
                which backend can).
        """
        ...

    def run(
        self,
        session: StudySession,
        objective: Objective | None,
        *,
        n_trials: int | None,
        progress: bool,
    ) -> None:
        """Run trials until the study has ``n_trials`` complete + pruned ones (None: the spec's).

        Trials already in the study count (a resumed study continues). Returns when the target
        is reached, ``study.timeout_s`` passes, or trials keep failing; Ctrl-C propagates.
        ``objective`` is None only for backends whose workers build their own (packed workers).

        Raises:
            ValueError: ``objective`` is None and this backend runs trials itself.
        """
        ...


def needs_objective(objective: Objective | None) -> Objective:
    """``objective``, for a backend that runs trials itself.

    Raises:
        ValueError: it is None.
    """
    if objective is None:
        raise ValueError("this backend runs the trials itself: give it the objective")
    return objective
