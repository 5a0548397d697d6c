"""Let ``import speechbrain`` work where torchaudio cannot be imported, and fail loudly on use.

SpeechBrain imports torchaudio when it is imported (``speechbrain.core`` -> ``speechbrain.dataio``
-> ``speechbrain.utils.torch_audio_backend``), although this recipe uses nothing from it: audio is
read with soundfile and the Fbank features, the CRDNN, the CTC loss and the error-rate statistics
are SpeechBrain's own torch code.

With a CPU build of torch 2.13 (the version speechtune pins for its demo and CI) there is no
torchaudio that loads: the torchaudio wheels on PyPI (2.11.1 is the newest) are linked against
torch's CUDA libraries (``libc10_cuda.so``, ``libtorch_cuda.so``), which a CPU torch does not have,
so ``import torchaudio`` raises ``OSError: Could not load this library: .../_torchaudio.so``; and
without torchaudio installed it raises ``ModuleNotFoundError``.

In either case :func:`install` puts a placeholder module named ``torchaudio`` in ``sys.modules``.
It is not a stand-in: every attribute lookup raises ``AttributeError`` naming the original error,
so any code path that really needs torchaudio stops with that message instead of computing
something else. Where torchaudio imports (a matching torch/torchaudio pair), :func:`install`
changes nothing.
"""

from __future__ import annotations

import sys
import types


class _Unavailable(types.ModuleType):
    """A module whose every attribute lookup fails with the reason torchaudio could not load."""

    def __init__(self, reason: str) -> None:
        super().__init__("torchaudio")
        self._reason = reason

    def __getattr__(self, name: str) -> object:
        # AttributeError (not another type) so that hasattr() checks, such as SpeechBrain's
        # torchaudio version probe, see "not there" instead of crashing.
        raise AttributeError(
            f"torchaudio.{name} is not available here: torchaudio could not be imported "
            f"({self.__dict__['_reason']})"
        )


def install() -> str | None:
    """Import torchaudio, or put the placeholder in its place; return the reason, or None."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        return None
    # A failed import can leave some of torchaudio's submodules behind; drop them so that
    # nothing half-initialised is found later.
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]
    sys.modules["torchaudio"] = _Unavailable(reason)
    return reason
