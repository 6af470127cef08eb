"""Characters to integers and back: the vocabulary is the sorted set of characters seen."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tinylm.config import TinyLMError


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


class CharTokenizer:
    """One token per character; token ids follow code-point order, as nanoGPT assigns them."""

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
        # Code points in ascending order: encoding is a binary search, vectorised by numpy.
        self._code_points = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array; fast for megabytes of text."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._code_points, code_points)
        known = self._code_points[np.minimum(ids, len(self.vocab) - 1)] == code_points
        if not known.all():
            raise UnknownCharacterError(chr(c) for c in np.unique(code_points[~known]))
        return ids.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

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
