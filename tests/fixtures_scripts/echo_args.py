"""Writes its argv (after the script name) as JSON to <trial_dir>/argv.json and reports one metric."""

import json
import os
import sys

import speechtune

with open(os.path.join(os.environ["SPEECHTUNE_TRIAL_DIR"], "argv.json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
speechtune.report(epoch=1, wer=0.5)
