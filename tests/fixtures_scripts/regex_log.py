"""A toy script that only prints its metrics (a foreign toolkit's log): for metric_regex tests."""

import sys

for epoch in range(1, 4):
    print(f"epoch {epoch} loss {1.0 / epoch:.3f} wer {0.75 - 0.25 * epoch:.2f}", flush=True)
    print("some unrelated line", file=sys.stderr, flush=True)
