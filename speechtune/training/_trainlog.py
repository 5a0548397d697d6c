"""``train.log`` in a run's output dir: what the training of that run logged, line by line.

Every training run (``speechtune train``, each trial of a recipe study, each workflow stage)
writes one, so that a trial dir tells how its run went without the study's console output.

The file gets every ``speechtune`` log record of the thread that trains (parallel trials run in
threads of one process: each file holds only its own trial's lines), plus the per-epoch line,
which is written even when the run shows no progress (tuning trials): the console then stays
quiet, the file does not.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The file name, in the run's output dir.
TRAIN_LOG = "train.log"

#: Records of these loggers (and their children) reach the file.
_CAPTURED = "speechtune"


class _ThisThread(logging.Filter):
    """Passes the records of one thread only."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


class TrainLog:
    """The open ``train.log`` of one run (see :func:`train_log`)."""

    def __init__(self, handler: logging.Handler | None) -> None:
        self._handler = handler

    def write(self, logger: logging.Logger, message: str, *, error: bool = False) -> None:
        """Write ``message`` to the file only, whatever the logger's level (the per-epoch line).

        With ``error``, at ERROR level with the traceback of the exception being handled.
        """
        if self._handler is None:
            return
        level, exc_info = (logging.ERROR, sys.exc_info()) if error else (logging.INFO, None)
        record = logger.makeRecord(logger.name, level, "(train.log)", 0, message, (), exc_info)
        self._handler.handle(record)


@contextmanager
def train_log(out_dir: Path) -> Iterator[TrainLog]:
    """Append this thread's ``speechtune`` log records to ``out_dir/train.log`` while open.

    A file that cannot be opened (read-only dir, full disk) costs the log, never the run.
    """
    try:
        handler: logging.Handler | None = logging.FileHandler(
            out_dir / TRAIN_LOG, encoding="utf-8", delay=False
        )
    except OSError as exc:
        logging.getLogger(__name__).warning("no %s in %s: %s", TRAIN_LOG, out_dir, exc)
        handler = None
    logger = logging.getLogger(_CAPTURED)
    if handler is not None:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
        handler.addFilter(_ThisThread())
        logger.addHandler(handler)
    try:
        yield TrainLog(handler)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
