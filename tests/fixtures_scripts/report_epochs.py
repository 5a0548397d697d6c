"""A toy training script for CommandObjective tests: reads its rendered config, reports per epoch.

Usage: report_epochs.py CONFIG_YAML [--spawn-sleeper] [--exit-code N]
The "WER" of epoch e is lr * 10 / e; with --spawn-sleeper it starts a grandchild (`sleep 60`)
in its own process group and writes the grandchild's pid to <trial_dir>/sleeper.pid.
"""

import os
import subprocess
import sys
import time

import yaml

import speechtune


def main() -> int:
    config = yaml.safe_load(open(sys.argv[1]))
    lr = float(config["optim"]["lr"])
    epochs = int(config["train"]["epochs"])
    delay = float(config.get("delay", 0.0))
    trial_dir = os.environ["SPEECHTUNE_TRIAL_DIR"]
    if "--spawn-sleeper" in sys.argv:
        sleeper = subprocess.Popen(["sleep", "60"])
        with open(os.path.join(trial_dir, "sleeper.pid"), "w") as fh:
            fh.write(str(sleeper.pid))
    best = float("inf")
    for epoch in range(1, epochs + 1):
        wer = lr * 10 / epoch
        best = min(best, wer)
        speechtune.report(epoch=epoch, wer=wer, loss=1.0 / epoch)
        print(f"finished epoch {epoch}", flush=True)
        time.sleep(delay)
    speechtune.report(epoch=None, final=True, wer=best, num_parameters=1234)
    if "--exit-code" in sys.argv:
        print("something went wrong", file=sys.stderr)
        return int(sys.argv[sys.argv.index("--exit-code") + 1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
