"""A training command for the worker and fault-injection tests.

Reads ``x`` from its config YAML, runs EPOCHS epochs, sleeps SLEEP_S seconds per epoch, saves a checkpoint
(``ckpt.json``, written atomically) in its trial dir after each epoch, and reports the epoch's
``wer`` through ``speechtune.report``. When ``ckpt.json`` exists at start (the tuner copied a dead
trial's files into this trial's dir), it resumes after the saved epoch, as a real training script
resumes from its own checkpoint.

    python ckpt_epochs.py CONFIG.yaml EPOCHS SLEEP_S
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

import speechtune


def main() -> int:
    config = yaml.safe_load(Path(sys.argv[1]).read_text())
    trial_dir = Path(os.environ["SPEECHTUNE_TRIAL_DIR"])
    x = float(config["x"])
    epochs, sleep_s = int(sys.argv[2]), float(sys.argv[3])
    ckpt = trial_dir / "ckpt.json"
    saved = json.loads(ckpt.read_text()) if ckpt.exists() else {"epoch": 0, "wer": None}
    for epoch in range(saved["epoch"] + 1, epochs + 1):
        time.sleep(sleep_s)
        wer = (x - 0.3) ** 2 + 0.1 / epoch
        # The checkpoint is saved before the epoch is reported (as the recipe saves last.pt).
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": epoch, "x": x, "wer": wer}))
        os.replace(tmp, ckpt)
        speechtune.report(epoch=epoch, wer=wer)
        saved = {"epoch": epoch, "wer": wer}
    # A run resumed after its last epoch (killed between its last report and the tuner's record)
    # has nothing left to train but must still give its result.
    speechtune.report(final=True, wer=saved["wer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
