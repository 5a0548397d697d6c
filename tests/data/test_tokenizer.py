"""Char and BPE tokenizers: id layout, round trips, serialisation, errors."""

from __future__ import annotations

import json

import pytest

from speechtune.data import Tokenizer, build_tokenizer, tokenizer_from_dict
from speechtune.data._tokenizer import BpeTokenizer, CharTokenizer

TEXTS = [
    "HELLO WORLD",
    "GO TO THE STORE",
    "THE WORLD IS BIG",
    "ONE TWO THREE FOUR FIVE",
    "ENTER SIX TWO ZERO",
    "RUBOUT G M E F THREE NINE",
    "HELP ME PLEASE",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
] * 4


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_round_trip_and_id_layout(kind: str) -> None:
    tok = build_tokenizer(kind, TEXTS, vocab_size=40)
    assert isinstance(tok, Tokenizer)
    assert tok.blank_id == 0 and tok.sos_eos_id == tok.vocab_size - 1
    for text in set(TEXTS) | {"HELLO THE BIG DOG", "ZOO"}:
        ids = tok.encode(text)
        assert ids and all(0 < i < tok.sos_eos_id for i in ids)
        assert tok.decode(ids) == text
        # Blank and sos/eos are skipped wherever they appear.
        assert tok.decode([tok.sos_eos_id, 0, *ids, 0, tok.sos_eos_id]) == text
    assert set("".join(TEXTS)) == set(tok.charset)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_to_dict_round_trip_is_json(kind: str) -> None:
    tok = build_tokenizer(kind, TEXTS, vocab_size=40)
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert type(again) is type(tok)
    assert again.vocab_size == tok.vocab_size and again.charset == tok.charset
    assert again.encode("THE BIG FOX") == tok.encode("THE BIG FOX")
    assert again.to_dict() == tok.to_dict()


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_unknown_characters_are_named(kind: str) -> None:
    tok = build_tokenizer(kind, TEXTS, vocab_size=40)
    with pytest.raises(ValueError, match=r"\['!', 'x'\]"):
        tok.encode("HELLO x!")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_char_layout() -> None:
    tok = build_tokenizer("char", ["BA", "A C"])
    assert isinstance(tok, CharTokenizer)
    assert tok.symbols == ["<blank>", " ", "A", "B", "C", "<sos/eos>"]
    assert tok.vocab_size == 6 and tok.encode("CAB A") == [4, 2, 3, 1, 2]
    # Repeats are kept: collapsing them is the CTC decoder's job, not the tokenizer's.
    assert tok.decode([3, 3, 0, 3]) == "BBB"


def test_bpe_vocab_size_deterministic_and_merges() -> None:
    tok = build_tokenizer("bpe", TEXTS, vocab_size=48)
    assert isinstance(tok, BpeTokenizer)
    assert tok.vocab_size == 48
    assert len(tok.encode("THE WORLD")) < len("THE WORLD")
    assert build_tokenizer("bpe", TEXTS, vocab_size=48).to_dict() == tok.to_dict()
    # Different size, different model.
    assert build_tokenizer("bpe", TEXTS, vocab_size=44).to_dict() != tok.to_dict()


def test_bpe_vocab_too_large_clamps_with_warning_too_small_raises() -> None:
    with pytest.warns(UserWarning, match="vocab_size=5000 is more than this corpus supports"):
        tok = build_tokenizer("bpe", TEXTS, vocab_size=5000)
    assert 30 < tok.vocab_size < 5000
    assert tok.decode(tok.encode("HELLO WORLD")) == "HELLO WORLD"
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer("bpe", TEXTS, vocab_size=8)


def test_unknown_kind_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'wordpiece'.*\['bpe', 'char'\]"):
        build_tokenizer("wordpiece", TEXTS)
    with pytest.raises(ValueError, match="'kind'"):
        tokenizer_from_dict({"chars": ["a"]})
    with pytest.raises(ValueError, match="lacks key"):
        tokenizer_from_dict({"kind": "bpe"})
