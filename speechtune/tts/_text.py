"""The TTS text front end: a transcript as a sequence of token ids, with the token table saved
beside the model so that synthesis reads text exactly as training did."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from speechtune.tts._config import TextConfig

#: Id 0 pads a batch; it is never a symbol.
PAD = "<pad>"


def text_symbols(text: str, cfg: TextConfig) -> list[str]:
    """The symbols of ``text`` under the front end ``cfg``.

    ``char``: the upper-cased characters of the transcript. ``phoneme``: espeak-ng's phoneme
    mnemonics for the spoken form of the transcript (letters said as their names), one symbol
    per mnemonic character, words kept apart by a space. Splitting a mnemonic such as ``aI@``
    into characters loses nothing a model cannot relearn from context, and needs no table of
    espeak's multi-character phonemes.
    """
    if cfg.kind == "char":
        return list(" ".join(text.upper().split()))
    from speechtune.data import spoken_form, text_to_phonemes  # espeak: an optional extra

    phonemes = text_to_phonemes(spoken_form(" ".join(text.upper().split())), cfg.voice)
    return list(" ".join(phonemes.replace("|", " ").split()))


@dataclass(frozen=True)
class TokenTable:
    """Symbols by id (id 0 is padding)."""

    symbols: tuple[str, ...]

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]]) -> TokenTable:
        """The table of every symbol in ``sequences``, sorted (deterministic ids)."""
        found = sorted({s for seq in sequences for s in seq})
        return cls((PAD, *found))

    @property
    def size(self) -> int:
        return len(self.symbols)

    def encode(self, symbols: Sequence[str]) -> list[int]:
        """Token ids of ``symbols``.

        Raises:
            ValueError: a symbol the model never saw in training (all of them named).
        """
        index = {s: i for i, s in enumerate(self.symbols)}
        unknown = sorted({s for s in symbols if s not in index or s == PAD})
        if unknown:
            known = "".join(s for s in self.symbols[1:])
            raise ValueError(
                f"text has symbol(s) {unknown} that the TTS model was not trained on "
                f"(it knows {known!r})"
            )
        if not symbols:
            raise ValueError("text is empty: nothing to say")
        return [index[s] for s in symbols]
