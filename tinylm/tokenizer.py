"""Text to integers and back: ``CharTokenizer`` (one token per character; the vocabulary is
the sorted set of characters seen) and ``ByteTokenizer`` (one token per UTF-8 byte: 256 ids,
no vocabulary to build, any text). ``tokenizer_from`` rebuilds either from a checkpoint's
plain values."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tinylm.config import TOKENIZERS
from tinylm.errors import TinyLMError


class UnknownCharacterError(TinyLMError, ValueError):
    """Text holds characters the vocabulary does not have; the one message for it, naming the
    setting that held the text (``key``) and what to do (``fix``) when they are known."""

    def __init__(self, characters: Iterable[str], key: str = "", fix: str = "") -> None:
        self.characters = sorted(set(characters))
        shown = ", ".join(describe_char(c) for c in self.characters[:20])
        more = f" and {len(self.characters) - 20} more" if len(self.characters) > 20 else ""
        found = f"{len(self.characters)} character(s) not in the"
        message = f"{key}: {found} model's vocabulary" if key else f"{found} vocabulary"
        message += f": {shown}{more}"
        super().__init__(f"{message}; {fix}" if fix else message)


def describe_char(char: str) -> str:
    """A character as a reader can see it: 'a', '\\n', U+20AC '€'."""
    visible = repr(char)
    return visible if char.isascii() else f"{visible} (U+{ord(char):04X})"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of a vocabulary: uint8 up to 256 symbols, then
    uint16 up to 65,536, then int32."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


class CharTokenizer:
    """One token per character; token ids follow code-point order, as nanoGPT assigns them."""

    kind = "char"

    def __init__(self, vocab: Iterable[str]) -> None:
        chars = list(vocab)
        if any(len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary holds single characters only")
        if chars != sorted(set(chars)):
            raise ValueError("the vocabulary must be sorted and free of duplicates")
        if not chars:
            raise ValueError("the vocabulary is empty")
        self.vocab: list[str] = chars
        self._index = {c: i for i, c in enumerate(chars)}
        # A table from code point to id (-1: not in the vocabulary), one entry past the largest
        # code point standing for every larger one: encoding is one numpy lookup.
        code_points = np.array([ord(c) for c in chars], dtype=np.int64)
        self._lookup = np.full(int(code_points[-1]) + 2, -1, dtype=np.int32)
        self._lookup[code_points] = np.arange(len(chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        """Token ids of ``text`` as an array of ``dtype``; fast for megabytes of text."""
        if text.isascii():  # one byte per character: no UTF-32 copy four times the size
            code_points = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        limit = len(self._lookup) - 1  # code points above it are unknown, as is the entry there
        clipped = code_points
        if limit < np.iinfo(code_points.dtype).max:
            clipped = np.minimum(code_points, np.array(limit, dtype=code_points.dtype))
        ids = self._lookup[clipped]
        if (ids < 0).any():
            raise UnknownCharacterError(chr(c) for c in np.unique(code_points[ids < 0]))
        return ids.astype(dtype)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def stream_decoder(self) -> Callable[[Iterable[int]], str]:
        """A function from the next ids to the text they complete (for streaming output)."""
        return self.decode

    def labels(self, text: str) -> list[str]:
        """One label per token of ``text``, for pictures: its characters."""
        return list(text)

    def spec(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this tokenizer (``tokenizer_from``)."""
        return {"tokenizer": self.kind, "vocab": self.to_list()}

    def check_known(self, text: str, key: str,
                    fix: str = "use only characters of the text it was trained on") -> None:
        """Refuse ``text``, naming ``key``, if it holds characters outside the vocabulary."""
        unknown = self.unknown_characters(text)
        if unknown:
            raise UnknownCharacterError(unknown, key, fix)

    def unknown_characters(self, text: str) -> list[str]:
        """The characters of ``text`` outside the vocabulary, sorted."""
        return sorted(set(text) - self._index.keys())

    def to_list(self) -> list[str]:
        """The vocabulary as a plain list, for checkpoints."""
        return list(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0-255, for any text, with no vocabulary to build. Decoding
    shows a byte sequence that is not valid UTF-8 as U+FFFD (the replacement character)."""

    kind = "byte"
    vocab_size = 256
    vocab = None  # every byte: nothing to store
    dtype = np.dtype(np.uint8)

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(dtype)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> Callable[[Iterable[int]], str]:
        """A function from the next ids to the text they complete: a character split across
        calls comes out whole, once its last byte has arrived."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(bytes(int(i) for i in ids))

    def labels(self, text: str) -> list[str]:
        """One label per byte of ``text``: a character's first byte shows the character, the
        bytes that continue it their value in hex ('春' → '春', '98', 'a5')."""
        return [label for char in text for label in [char, *(f"{b:02x}" for b in char.encode("utf-8")[1:])]]

    def check_known(self, text: str, key: str, fix: str = "") -> None:
        """Every text has UTF-8 bytes: nothing to refuse."""

    def unknown_characters(self, text: str) -> list[str]:
        return []

    def spec(self) -> dict[str, Any]:
        return {"tokenizer": self.kind, "vocab": None}

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


Tokenizer = CharTokenizer | ByteTokenizer


def tokenizer_from(kind: str, vocab: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer ``kind`` ("char" with ``vocab``, or "byte"), e.g. from a checkpoint."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(vocab or [])
    raise ValueError(f"unknown tokenizer {kind!r}; expected one of {', '.join(TOKENIZERS)}")
