"""Characters ↔ ids: lossless, ordered like nanoGPT, loud about characters it has never seen."""

from __future__ import annotations

import pytest

from tinylm.tokenizer import CharTokenizer, UnknownCharacterError


def test_round_trip_and_nanogpt_ids() -> None:
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.vocab == sorted(set(text))  # ids in code-point order, as nanoGPT's stoi
    ids = tokenizer.encode(text)
    assert ids[:2] == [tokenizer.vocab.index("F"), tokenizer.vocab.index("i")]
    assert tokenizer.decode(ids) == text


def test_round_trip_beyond_ascii() -> None:
    text = "naïve café — 東京 🙂\n"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unknown_characters_are_named() -> None:
    tokenizer = CharTokenizer.from_text("abc ")
    with pytest.raises(UnknownCharacterError) as error:
        tokenizer.encode("a cab€ z")
    message = str(error.value)
    assert "'€' (U+20AC)" in message and "'z'" in message
    assert error.value.characters == ["z", "€"]
    assert tokenizer.unknown_characters("a cab€ z") == ["z", "€"]


def test_plain_list_survives_a_round_trip() -> None:
    tokenizer = CharTokenizer.from_text("hello, world\n")
    rebuilt = CharTokenizer(tokenizer.to_list())
    assert rebuilt.vocab == tokenizer.vocab and rebuilt.encode("lol") == tokenizer.encode("lol")
    assert all(type(c) is str for c in tokenizer.to_list())


def test_unsorted_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        CharTokenizer(["b", "a"])
