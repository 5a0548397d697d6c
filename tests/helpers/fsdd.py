"""A tiny corpus in the Free Spoken Digit Dataset's layout, written by the tests themselves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.helpers.paths import SHARED

#: The real FSDD training part beside the checkout (``../shared/data/fsdd``), when present.
REAL_FSDD = SHARED / "data" / "fsdd"

#: Two accents with two speakers each: the smallest corpus with a speaker-disjoint dev split.
SPEAKERS = {"amy": "USA/neutral", "bob": "USA/neutral", "cem": "DEU/German", "dan": "DEU/German"}


def metadata_py(speakers: Mapping[str, str]) -> str:
    """FSDD's ``metadata.py``: a docstring, then one dict literal of speaker -> attributes."""
    entries = "".join(
        f"    {name!r}: {{'gender': 'male', 'accent': {accent!r}, 'language': 'english'}},\n"
        for name, accent in speakers.items()
    )
    return f'"""A python dictionary to store meta-data about the speakers."""\n\nmetadata = {{\n{entries}}}\n'


def fake_fsdd(
    root: Path,
    speakers: Mapping[str, str] = SPEAKERS,
    digits: Iterable[int] = range(10),
    indices: Iterable[int] = range(5, 8),
    seconds: float = 0.3,
    rate: int = 8000,
    ext: str = "wav",
) -> Path:
    """``root/recordings/{digit}_{speaker}_{index}.{ext}`` and ``root/metadata.py``; returns root.

    Each recording is a tone whose pitch depends on its digit, plus a little seeded noise, so a
    model has something to tell the digits apart by.
    """
    rec = root / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    (root / "metadata.py").write_text(metadata_py(speakers))
    t = np.arange(int(seconds * rate)) / rate
    for s, speaker in enumerate(speakers):
        for digit in digits:
            for index in indices:
                rng = np.random.default_rng(1000 * s + 10 * digit + index)
                wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * digit + 5 * s) * t)
                wave += 0.02 * rng.standard_normal(t.size)
                path = rec / f"{digit}_{speaker}_{index}.{ext}"
                sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
    return root
