"""Encoded text, compact and shared: one flat file of token ids in the smallest dtype that holds
the vocabulary (uint8 up to 256 symbols, uint16, int32), written once beside the source's
``datasets`` cache files and memory-mapped by every process that trains on it. DDP ranks and
DataLoader workers share its pages instead of each holding a copy; windows are cut from the
map and widened to int64 one batch at a time.

The file's name is a hash of the source's cache files, the text column and the tokenizer
(kind and vocabulary), so a second run with the same source and vocabulary opens it at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import Hasher

from tinylm.runlock import remove_leftovers
from tinylm.tokenizer import CharTokenizer, Tokenizer

FORMAT = 1  # bump when the file's contents change meaning: old files are then not reused
BATCH_ROWS = 10_000  # rows read from the dataset at a time
CHUNK_CHARS = 1 << 22  # characters encoded at a time: memory stays bounded for a huge row


class Tokens:
    """A read-only run of token ids: a slice of a memory-mapped token file, or an array in
    memory. Slicing gives Tokens; indexing with an array gives a numpy array. It pickles as its
    file's path and its place in it, so a spawned process maps the same pages."""

    def __init__(self, array: np.ndarray, path: str | None = None, offset: int = 0) -> None:
        self.array, self.path, self.offset = array, path, offset  # offset: in tokens, into the file

    @classmethod
    def open(cls, path: str | Path, dtype: Any) -> Tokens:
        if Path(path).stat().st_size == 0:  # an empty file cannot be mapped
            return cls(np.empty(0, dtype=dtype), str(path))
        return cls(np.asarray(np.memmap(path, dtype=dtype, mode="r")), str(path))

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("Tokens slices must be contiguous")
            return Tokens(self.array[start:stop], self.path, self.offset + start)
        return self.array[key]

    def tolist(self) -> list[int]:
        return self.array.tolist()

    def __getstate__(self) -> dict[str, Any]:
        if self.path is None:
            return {"array": self.array}
        return {"path": self.path, "dtype": self.dtype.str, "offset": self.offset, "length": len(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "array" in state:
            self.__init__(state["array"])
            return
        whole = Tokens.open(state["path"], np.dtype(state["dtype"]))
        start = state["offset"]
        self.__init__(whole.array[start : start + state["length"]], state["path"], start)

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"Tokens({len(self):,} × {self.dtype} in {where})"


def as_array(tokens: Any) -> np.ndarray:
    """Tokens, a numpy array or a 1-D torch tensor, as a numpy array (no copy)."""
    if isinstance(tokens, Tokens):
        return tokens.array
    if hasattr(tokens, "numpy"):
        return tokens.numpy()
    return np.asarray(tokens)


# --------------------------------------------------------------------------- building


def encode_cached(texts, tokenizer: Tokenizer, text_column: str = "text") -> Tokens:
    """Every row of ``texts`` (a ``datasets.Dataset`` with a "text" column) encoded and joined:
    read from the token file when a run has written it, written there when not; held in
    memory when ``texts`` has no cache files (a dataset built in memory)."""
    dtype = tokenizer.dtype
    files = [f["filename"] for f in texts.cache_files]
    if not files:
        pieces = list(encoded_pieces(texts, tokenizer))
        return Tokens(np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype))
    path = token_file(files, text_column, tokenizer)
    if not path.is_file():
        write_tokens(path, encoded_pieces(texts, tokenizer))
    return Tokens.open(path, dtype)


def token_file(cache_files: list[str], text_column: str, tokenizer: Tokenizer) -> Path:
    """Where the tokens of these cache files, column and tokenizer live: beside the first file."""
    key = Hasher.hash([FORMAT, cache_files, text_column, tokenizer.spec()])
    return Path(cache_files[0]).parent / f"tinylm-tokens-{key}.{tokenizer.dtype.name}"


def write_tokens(path: Path, pieces: Iterable[np.ndarray]) -> None:
    """Write the pieces one after another to ``path``, atomically: processes preparing the same
    data at once each write their own temporary file, and the last rename wins. What a process
    killed mid-write left is removed first."""
    remove_leftovers(path.parent, "tinylm-tokens-*.partial")
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            for piece in pieces:
                piece.tofile(out)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def encoded_pieces(texts, tokenizer: Tokenizer) -> Iterator[np.ndarray]:
    """The token ids of ``texts``, in order, a bounded piece at a time, in the tokenizer's dtype."""
    for utf8 in utf8_batches(texts):
        if tokenizer.kind == "byte":
            yield np.frombuffer(utf8, dtype=np.uint8)
            continue
        text = utf8.decode("utf-8")
        for start in range(0, len(text), CHUNK_CHARS):
            yield tokenizer.encode_array(text[start : start + CHUNK_CHARS], tokenizer.dtype)


def utf8_batches(texts) -> Iterator[bytes]:
    """The "text" column, ``BATCH_ROWS`` rows at a time, as the UTF-8 bytes of the rows joined."""
    for batch in texts.with_format("arrow").iter(batch_size=BATCH_ROWS):
        yield joined_utf8(batch)


def joined_utf8(table) -> bytes:
    """The "text" column of an Arrow table, its rows joined, as UTF-8 bytes: read straight from
    Arrow's buffers, without a Python string per row."""
    parts = []
    for chunk in table.column("text").chunks:
        if chunk.null_count:
            chunk = pc.fill_null(chunk, "")
        _, offsets, data = chunk.buffers()
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        bounds = np.frombuffer(offsets, dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        if data is not None and len(bounds):
            parts.append(memoryview(data)[int(bounds[0]) : int(bounds[-1])])
    return b"".join(parts)


def vocabulary(texts) -> CharTokenizer | None:
    """The characters of ``texts``, from a batched ``datasets.map`` pass (cached by ``datasets``
    like any map): one row of distinct characters per batch, joined. None if there are none."""
    found = texts.with_format("arrow").map(
        _batch_characters, batched=True, batch_size=BATCH_ROWS, remove_columns=texts.column_names,
        desc="finding characters")
    characters = set("".join(found.with_format(None)["characters"]))
    return CharTokenizer(sorted(characters)) if characters else None


def _batch_characters(batch) -> dict[str, list[str]]:
    return {"characters": ["".join(sorted(characters_of(joined_utf8(batch))))]}


def characters_of(utf8: bytes) -> set[str]:
    """The distinct characters of UTF-8 text; ASCII by counting bytes, which is quick."""
    if utf8.isascii():
        return {chr(b) for b in np.flatnonzero(np.bincount(np.frombuffer(utf8, dtype=np.uint8)))}
    text = utf8.decode("utf-8")
    return set().union(*(set(text[i : i + CHUNK_CHARS]) for i in range(0, len(text), CHUNK_CHARS)))
