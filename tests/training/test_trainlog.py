"""``train.log``: each run's file holds its own thread's records, also while others train."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from speechtune.training._trainlog import TRAIN_LOG, train_log


def test_parallel_runs_each_log_only_their_own_lines(tmp_path: Path) -> None:
    logger = logging.getLogger("speechtune.training.test")
    both_open = threading.Barrier(2, timeout=30)

    def run(name: str) -> None:
        out = tmp_path / name
        out.mkdir()
        with train_log(out) as tlog:
            both_open.wait()  # both files are open: each must filter the other's lines
            logger.warning("warning of %s", name)
            tlog.write(logger, f"epoch line of {name}")
            both_open.wait()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("run_one", "run_two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for mine, other in (("run_one", "run_two"), ("run_two", "run_one")):
        text = (tmp_path / mine / TRAIN_LOG).read_text()
        assert f"warning of {mine}" in text and f"epoch line of {mine}" in text
        assert other not in text
    # Closed with the run: later records go nowhere near the files.
    assert not any(
        getattr(h, "baseFilename", "").endswith(TRAIN_LOG)
        for h in logging.getLogger("speechtune").handlers
    )


def test_the_epoch_line_is_written_whatever_the_logger_level(tmp_path: Path) -> None:
    logger = logging.getLogger("speechtune.training.test_quiet")
    logger.setLevel(logging.ERROR)  # as under a library user's logging config
    try:
        with train_log(tmp_path) as tlog:
            logger.info("dropped by the level")
            tlog.write(logger, "epoch 1/1  WER 0.500")
    finally:
        logger.setLevel(logging.NOTSET)
    text = (tmp_path / TRAIN_LOG).read_text()
    assert "epoch 1/1  WER 0.500" in text and "dropped" not in text
