"""Tokenizers for the ASR recipe: characters, or BPE pieces from sentencepiece.

Every tokenizer shares one id layout so that models and decoders need not know which one
they got:

* ``0`` is the CTC blank (``blank_id``);
* ``vocab_size - 1`` is the attention decoder's start/end symbol (``sos_eos_id``);
* the ids in between are the tokens.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

BLANK = "<blank>"
SOS_EOS = "<sos/eos>"


@runtime_checkable
class Tokenizer(Protocol):
    """What the recipe needs from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, blank and sos/eos included."""
        ...

    @property
    def blank_id(self) -> int:
        """The CTC blank: always 0."""
        ...

    @property
    def sos_eos_id(self) -> int:
        """Attention decoder start/end symbol: always ``vocab_size - 1``."""
        ...

    @property
    def charset(self) -> frozenset[str]:
        """Characters that :meth:`encode` accepts."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises ValueError naming characters outside :attr:`charset`."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping blank and sos/eos."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, read back by :func:`tokenizer_from_dict`."""
        ...


def _check_known(text: str, charset: frozenset[str]) -> None:
    unknown = sorted(set(text) - charset)
    if unknown:
        raise ValueError(
            f"cannot encode {text!r}: characters {unknown} are not in the tokenizer's vocabulary "
            "(it was built from other texts; normalise the transcripts the same way)"
        )


class _IdLayout:
    """Blank at 0 and sos/eos last, shared by every tokenizer."""

    vocab_size: int

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def sos_eos_id(self) -> int:
        return self.vocab_size - 1

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:10]} are outside [0, {self.vocab_size})")
        return [i for i in ids if i not in (self.blank_id, self.sos_eos_id)]


class CharTokenizer(_IdLayout):
    """One token per character; the space is an ordinary token (the word boundary).

    Args:
        chars: the distinct characters, in id order (ids ``1 .. len(chars)``).
    """

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        bad = [c for c in chars if len(c) != 1]
        if bad or len(set(chars)) != len(chars):
            raise ValueError(f"CharTokenizer needs distinct single characters, got {chars!r}")
        self.chars = tuple(chars)
        self.vocab_size = len(chars) + 2
        self._to_id = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 64) -> CharTokenizer:
        """The sorted characters of ``texts`` (``vocab_size`` is ignored: the texts decide it)."""
        chars = sorted({c for t in texts for c in t})
        if not chars:
            raise ValueError("cannot build a char tokenizer from empty texts")
        return cls(chars)

    @property
    def charset(self) -> frozenset[str]:
        return frozenset(self.chars)

    @property
    def symbols(self) -> list[str]:
        """Symbol of every id, blank and sos/eos included."""
        return [BLANK, *self.chars, SOS_EOS]

    def encode(self, text: str) -> list[int]:
        _check_known(text, self.charset)
        return [self._to_id[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in self._check_ids(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        return cls(d["chars"])


class BpeTokenizer(_IdLayout):
    """Byte-pair-encoding pieces from a sentencepiece model.

    Id ``k`` of sentencepiece is id ``k + 1`` here (sentencepiece's own ``<unk>`` takes id 1
    and is never produced, since :meth:`encode` rejects unknown characters first).
    sentencepiece collapses runs of spaces and strips leading/trailing spaces, so
    ``decode(encode(t))`` returns ``t`` with its whitespace normalised.

    Args:
        model: serialised sentencepiece model (``ModelProto`` bytes).
    """

    def __init__(self, model: bytes) -> None:
        import sentencepiece as spm

        self.model = bytes(model)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model)
        self.vocab_size = self._sp.get_piece_size() + 2
        chars: set[str] = set()
        for i in range(self._sp.get_piece_size()):
            if not (self._sp.is_unknown(i) or self._sp.is_control(i)):
                chars.update(self._sp.id_to_piece(i).replace("\u2581", " "))
        self._charset = frozenset(chars)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 64) -> BpeTokenizer:
        """Train a BPE model in memory, deterministically.

        Args:
            texts: training transcripts.
            vocab_size: total ids wanted, blank and sos/eos included. When the corpus is too
                small to make that many pieces, the vocabulary is clamped to what it supports
                and a ``UserWarning`` says so.

        Raises:
            ValueError: when ``vocab_size`` cannot hold every character of the texts.
        """
        import sentencepiece as spm

        sentences = [t for t in texts if t.strip()]
        if not sentences:
            raise ValueError("cannot train a BPE tokenizer on empty texts")
        wanted = vocab_size - 2
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buf,
                model_type="bpe",
                vocab_size=wanted,
                character_coverage=1.0,
                # Only <unk> as a special piece: blank and sos/eos are added around the model.
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                normalization_rule_name="identity",
                # A soft limit lets a tiny corpus yield fewer pieces instead of failing.
                hard_vocab_limit=False,
                # One thread and no sampling: the same texts always give the same model.
                num_threads=1,
                shuffle_input_sentence=False,
                input_sentence_size=0,
                minloglevel=2,
            )
        except RuntimeError as err:
            if "required_chars" in str(err):
                n_chars = len({c for t in sentences for c in t.strip()})
                raise ValueError(
                    f"tokenizer.vocab_size={vocab_size} is too small for BPE on these texts: they have "
                    f"{n_chars} distinct characters, so vocab_size must be at least about {n_chars + 3} "
                    "(characters + <unk> + blank + sos/eos)"
                ) from err
            raise
        tok = cls(buf.getvalue())
        if tok.vocab_size < vocab_size:
            warnings.warn(
                f"tokenizer.vocab_size={vocab_size} is more than this corpus supports for BPE; "
                f"using vocab_size={tok.vocab_size}",
                UserWarning,
                stacklevel=2,
            )
        return tok

    @property
    def charset(self) -> frozenset[str]:
        return self._charset

    @property
    def symbols(self) -> list[str]:
        """Symbol of every id, blank and sos/eos included."""
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        return [BLANK, *pieces, SOS_EOS]

    def encode(self, text: str) -> list[int]:
        _check_known(text, self.charset)
        return [i + 1 for i in self._sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([i - 1 for i in self._check_ids(ids)])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "model": base64.b64encode(self.model).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        return cls(base64.b64decode(d["model"]))


# One explicit mapping from the config's ``tokenizer.kind`` to its class.
_KINDS: dict[str, type[CharTokenizer] | type[BpeTokenizer]] = {
    "char": CharTokenizer,
    "bpe": BpeTokenizer,
}


def _lookup(kind: Any) -> type[CharTokenizer] | type[BpeTokenizer]:
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {sorted(_KINDS)}")
    return _KINDS[kind]


def build_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 64) -> Tokenizer:
    """Build a tokenizer from training transcripts.

    Args:
        kind: ``"char"`` or ``"bpe"``.
        texts: training transcripts (never dev/test ones).
        vocab_size: total ids for BPE (blank and sos/eos included); ignored for ``char``.

    Returns:
        the tokenizer.

    Raises:
        ValueError: on an unknown kind (the valid ones are listed) or unusable texts.
    """
    builder: Callable[[Iterable[str], int], Tokenizer] = _lookup(kind).train
    return builder(texts, vocab_size)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output.

    Raises:
        ValueError: on a missing or unknown ``kind``, or missing fields.
    """
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"tokenizer dict needs a 'kind' key, got {d!r:.200}")
    cls = _lookup(d["kind"])
    try:
        return cls.from_dict(d)
    except KeyError as err:
        raise ValueError(f"tokenizer dict of kind {d['kind']!r} lacks key {err}") from err
