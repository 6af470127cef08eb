"""Compact tokens: the smallest dtype, one memory-mapped file per source and vocabulary,
windows read from it equal to windows of the same ids in memory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.config import DataConfig
from tinylm.data import CharDataModule, RandomWindows, SequentialWindows
from tinylm.tokenizer import CharTokenizer, token_dtype
from tinylm.tokens import Tokens


@pytest.mark.parametrize(("vocab_size", "dtype"), [
    (2, np.uint8), (256, np.uint8), (257, np.uint16), (65_536, np.uint16), (65_537, np.int32)])
def test_the_smallest_dtype_that_holds_the_vocabulary(vocab_size: int, dtype) -> None:
    assert token_dtype(vocab_size) == dtype


@pytest.mark.parametrize(("distinct", "dtype", "itemsize"), [(256, "uint8", 1), (257, "uint16", 2)])
def test_token_file_is_written_in_that_dtype(tmp_path: Path, distinct: int, dtype: str,
                                             itemsize: int) -> None:
    characters = [chr(0x100 + i) for i in range(distinct)]  # beyond ASCII: the general path
    text = "".join(characters) * 4
    (tmp_path / "t.txt").write_text(text)
    data = CharDataModule(DataConfig(source=str(tmp_path / "t.txt"), val_fraction=0.5), block_size=4)
    data.prepare()
    assert data.tokenizer.vocab_size == distinct
    path = Path(data.train_tokens.path)
    assert path.suffix == f".{dtype}" and path.stat().st_size == itemsize * len(text)
    assert data.train_tokens.dtype == np.dtype(dtype)
    assert data.tokenizer.decode(data.train_tokens.tolist() + data.val_tokens.tolist()) == text


def test_memory_mapped_windows_equal_in_memory_windows(small_text: Path) -> None:
    data = CharDataModule(DataConfig(source=str(small_text)), block_size=32)
    data.prepare()
    assert data.train_tokens.path is not None and data.train_tokens.dtype == np.uint8
    text = small_text.read_text()
    ids = torch.tensor(CharTokenizer.from_text(text).encode(text))  # int64, in memory
    n_train = len(data.train_tokens)
    mapped = RandomWindows(data.train_tokens, 32, 8, seed=5)
    in_memory = RandomWindows(ids[:n_train], 32, 8, seed=5)
    for n in (0, 1, 17):
        for a, b in zip(mapped.batch(n), in_memory.batch(n), strict=True):
            assert a.dtype == torch.int64 and torch.equal(a, b)
    val_mapped, val_memory = SequentialWindows(data.val_tokens, 32), SequentialWindows(ids[n_train:], 32)
    assert len(val_mapped) == len(val_memory)
    for i in (0, len(val_mapped) - 1):
        assert all(torch.equal(a, b) for a, b in zip(val_mapped[i], val_memory[i], strict=True))


def test_tokens_pickle_as_their_file(small_text: Path) -> None:
    data = CharDataModule(DataConfig(source=str(small_text)), block_size=32)
    data.prepare()
    val = data.val_tokens
    pickled = pickle.dumps(val)
    assert len(pickled) < 1000  # the path and the slice, not the ids
    again = pickle.loads(pickled)
    assert again.path == val.path and again.offset == val.offset and again.tolist() == val.tolist()
    in_memory = Tokens(np.arange(10, dtype=np.uint8))[2:5]
    assert pickle.loads(pickle.dumps(in_memory)).tolist() == [2, 3, 4]


def test_second_preparation_reads_the_same_file(small_text: Path) -> None:
    first = CharDataModule(DataConfig(source=str(small_text)), block_size=32)
    first.prepare()
    stamp = Path(first.train_tokens.path).stat().st_mtime_ns
    second = CharDataModule(DataConfig(source=str(small_text)), block_size=32)
    second.prepare()
    assert second.train_tokens.path == first.train_tokens.path
    assert Path(second.train_tokens.path).stat().st_mtime_ns == stamp  # not rewritten
