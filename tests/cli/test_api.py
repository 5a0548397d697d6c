"""The public API: short, lazily imported, and free of name clashes with subpackages."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_resolve_to_the_api() -> None:
    import speechtune.training  # importing the subpackage must not shadow the function

    assert (
        callable(speechtune.train) and speechtune.train.__module__ == "speechtune.training._loop"
    )
    assert speechtune.load_config().model.encoder == "conformer"
    assert set(speechtune.__all__) >= {
        "train",
        "load_config",
        "Reporter",
        "RunOptions",
        "TrainResult",
    }


def test_reporter_protocol_imports_without_torch() -> None:
    # A user's training script may only need the Reporter; it should not pay for torch.
    code = "import sys; from speechtune.training import Reporter, CallbackReporter; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
