"""Data: the exact nanoGPT split through every kind of source, the cache, windows, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, closed_port

from tinylm.config import DataConfig
from tinylm.data import CharDataModule, DataError, RandomWindows, SequentialWindows

NANOGPT_TRAIN, NANOGPT_VAL = 1_003_854, 111_540


def prepared(source, **options) -> CharDataModule:
    data = CharDataModule(DataConfig(source=source, **options), block_size=64)
    data.prepare()
    return data


def test_tiny_shakespeare_file_gives_nanogpts_split(shakespeare_path: Path, shakespeare_text: str) -> None:
    data = prepared(str(shakespeare_path))
    assert data.tokenizer.vocab_size == 65
    assert (len(data.train_tokens), len(data.val_tokens)) == (NANOGPT_TRAIN, NANOGPT_VAL)
    expected = shakespeare_text[NANOGPT_TRAIN : NANOGPT_TRAIN + 50]
    assert data.tokenizer.decode(data.val_tokens[:50].tolist()) == expected


@pytest.fixture(scope="module")
def hub_layout_dir(shakespeare_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory laid out like the Hub's parquet conversion of karpathy/tiny_shakespeare:
    one row per split, column "text"; train + validation + test is the whole of input.txt."""
    text = shakespeare_text
    root = tmp_path_factory.mktemp("hub") / "tiny_shakespeare"
    (root / "data").mkdir(parents=True)
    cuts = {"train": (0, 1_003_854), "validation": (1_003_854, 1_059_624), "test": (1_059_624, len(text))}
    for split, (start, end) in cuts.items():
        table = pa.table({"text": [text[start:end]]})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_hub_layout_directory_gives_the_same_split(hub_layout_dir: Path) -> None:
    data = prepared(str(hub_layout_dir))
    assert data.tokenizer.vocab_size == 65
    assert (len(data.train_tokens), len(data.val_tokens)) == (NANOGPT_TRAIN, NANOGPT_VAL)


def test_text_column_is_configurable_and_checked(hub_layout_dir: Path) -> None:
    with pytest.raises(DataError, match=r"data.text_column='content' is not a column .* \['text'\]"):
        prepared(str(hub_layout_dir), text_column="content")


def test_encoding_is_cached_between_runs(small_text: Path, tmp_path: Path) -> None:
    text = tmp_path / "fresh.txt"  # a file no other test has encoded yet
    text.write_text(small_text.read_text() + f"\n{tmp_path}\n")
    cache = Path(os.environ["HF_DATASETS_CACHE"])
    before = set(cache.rglob("cache-*.arrow"))
    first = prepared(str(text))
    written = {p: p.stat().st_mtime_ns for p in set(cache.rglob("cache-*.arrow")) - before}
    assert written, "the first run should write the encoded rows to the datasets cache"
    second = prepared(str(text))
    assert set(cache.rglob("cache-*.arrow")) - before == set(written)  # nothing new encoded
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nor rewritten
    assert first.train_tokens.tolist() == second.train_tokens.tolist()


def test_glob_and_list_sources_concatenate_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc" * 50)
    (tmp_path / "b.txt").write_text("xyz" * 50)
    from_glob = prepared(str(tmp_path / "*.txt"), val_fraction=0.5)
    from_list = prepared((str(tmp_path / "a.txt"), str(tmp_path / "b.txt")), val_fraction=0.5)
    assert from_glob.tokenizer.decode(from_glob.train_tokens.tolist()) == "abc" * 50
    assert from_glob.val_tokens.tolist() == from_list.val_tokens.tolist()


def test_pydocs_needs_no_network() -> None:
    data = prepared("builtin:pydocs")
    total = len(data.train_tokens) + len(data.val_tokens)
    assert 300_000 < total < 700_000
    assert 80 < data.tokenizer.vocab_size < 130


def test_training_windows_are_shifted_by_one_and_reproducible() -> None:
    tokens = torch.arange(1000)
    windows = RandomWindows(tokens, block_size=8, batch_size=4, seed=1)
    x, y = windows.batch(7)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, RandomWindows(tokens, 8, 4, seed=1).batch(7)[0])  # a function of n
    assert not torch.equal(x, RandomWindows(tokens, 8, 4, seed=1, rank=1).batch(7)[0])
    resumed = next(iter(RandomWindows(tokens, 8, 4, seed=1, start=7)))
    assert torch.equal(resumed[0], x)


def test_training_windows_are_the_same_with_worker_processes() -> None:
    from torch.utils.data import DataLoader

    windows = RandomWindows(torch.arange(1000), block_size=8, batch_size=4, seed=3)
    loaded = DataLoader(windows, batch_size=None, num_workers=2)
    for n, (x, _) in zip(range(5), loaded, strict=False):
        assert torch.equal(x, windows.batch(n)[0])


def test_validation_windows_cover_the_split_once() -> None:
    tokens = torch.arange(103)
    windows = SequentialWindows(tokens, block_size=10)
    assert len(windows) == 10
    xs, ys = zip(*(windows[i] for i in range(len(windows))), strict=True)
    assert torch.equal(torch.cat(ys), tokens[1:101])  # every target but the short tail, once
    assert torch.equal(torch.cat(xs), tokens[:100])


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.source: file not found: .*nope.txt.*data=pydocs"):
        prepared(str(tmp_path / "nope.txt"))


def test_glob_without_matches_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.source: no file matches"):
        prepared(str(tmp_path / "*.txt"))


def test_empty_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        prepared(str(tmp_path / "empty.txt"))


def test_text_too_short_for_a_validation_window(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("hello world, " * 20)  # 260 characters, val 26
    with pytest.raises(DataError, match=r"model.block_size \+ 1 = 65.*data.val_fraction"):
        prepared(str(tmp_path / "short.txt"))


def test_hub_id_while_offline_fails_fast_with_alternatives() -> None:
    started = time.monotonic()
    with pytest.raises(DataError) as error:
        prepared("karpathy/tiny_shakespeare", revision="refs/convert/parquet")
    assert time.monotonic() - started < 15
    assert "data.source='karpathy/tiny_shakespeare'" in str(error.value)
    assert "data=pydocs" in str(error.value) and "data.source=path/to/file.txt" in str(error.value)


def test_unreachable_hub_fails_fast_with_alternatives() -> None:
    """With HF_HUB_OFFLINE unset, an unreachable Hub must not mean minutes of retries."""
    code = (
        "from tinylm.config import DataConfig; from tinylm.data import CharDataModule;"
        "CharDataModule(DataConfig(source='karpathy/tiny_shakespeare'), 64).prepare()"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert "cannot be reached" in result.stderr and "data=pydocs" in result.stderr


def test_the_embedded_default_is_nanogpts_tiny_shakespeare(shakespeare_text: str) -> None:
    """The default source ships in the package as a Hub-layout parquet dataset: its text is
    input.txt byte for byte, and it splits as nanoGPT's prepare.py does."""
    import hashlib

    from conftest import SHAKESPEARE_SHA256, compose

    from tinylm.config import TrainConfig
    from tinylm.loading import load_texts
    from tinylm.sources import embedded_corpus

    config = TrainConfig.from_dict(compose("paths.output_dir=."))
    assert config.data.source == "builtin:tiny_shakespeare"
    assert (embedded_corpus("tiny_shakespeare") / "data").is_dir()
    text = "".join(load_texts(config.data)["text"])
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert text == shakespeare_text  # the tests' reading of it, too
    data = CharDataModule(config.data, block_size=64)
    data.prepare()
    sizes = (len(data.train_tokens), len(data.val_tokens), data.tokenizer.vocab_size)
    assert sizes == (1_003_854, 111_540, 65)


def test_a_test_split_follows_the_validation_split(tmp_path: Path) -> None:
    """enwik8's 90/5/5: train, validation, test, in the order of the text."""
    (tmp_path / "t.txt").write_text("".join(chr(97 + i % 26) for i in range(100_000)))
    data = prepared(str(tmp_path / "t.txt"), val_fraction=0.05, test_fraction=0.05)
    assert (len(data.train_tokens), len(data.val_tokens), len(data.test_tokens)) == (90_000, 5_000, 5_000)
    assert data.test_tokens.offset == 95_000
