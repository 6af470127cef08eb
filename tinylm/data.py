"""Text in, batches of character ids out: a LightningDataModule over Hugging Face ``datasets``.

The texts of all splits of the source are concatenated in order and cut, as nanoGPT does,
into the first ``1 - val_fraction`` for training and the rest for validation. Encoding runs
once: ``datasets`` caches it on disk, keyed by the source's fingerprint and the vocabulary.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from tinylm.config import DataConfig, TinyLMError
from tinylm.tokenizer import CharTokenizer

BUILTIN_PREFIX = "builtin:"
OFFLINE_HINT = "offline alternatives: data=pydocs, or data.source=path/to/file.txt"
# Splits in the order their texts are joined; other splits follow in the source's order.
SPLIT_ORDER = ("train", "validation", "valid", "dev", "test")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HUB_PROBE_TIMEOUT_S = 5.0


class DataError(TinyLMError):
    """The data source cannot give us text; the message names the key to change."""


# --------------------------------------------------------------------------- loading


def load_texts(config: DataConfig):
    """The source as a ``datasets.Dataset`` with one column, "text", in corpus order
    (the splits of a Hub dataset joined train, validation, test)."""
    import datasets

    datasets.disable_progress_bars()
    source = config.source
    rows = _load_rows(source, config.revision)
    if config.text_column not in rows.column_names:
        raise DataError(
            f"data.text_column={config.text_column!r} is not a column of data.source={source!r}; "
            f"its columns are {rows.column_names}"
        )
    rows = rows.select_columns([config.text_column])
    if config.text_column != "text":
        rows = rows.rename_column(config.text_column, "text")
    return rows


def _load_rows(source: str | tuple[str, ...], revision: str | None):
    """Load ``source`` with ``datasets`` as one Dataset (all splits, in order)."""
    import datasets

    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        return _builtin(source.removeprefix(BUILTIN_PREFIX))
    files = _local_files(source)
    if files is not None:
        builder = FILE_BUILDERS.get(Path(files[0]).suffix.lower(), "text")
        # sample_by="document": each file is one row, its text exactly as on disk.
        options = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=files, split="train", **options)
    if Path(source).expanduser().is_dir():
        return _concatenate_splits(datasets.load_dataset(str(Path(source).expanduser())))
    _check_hub_reachable(source)
    try:
        loaded = datasets.load_dataset(source, revision=revision)
    except Exception as error:  # the Hub raises many types; every one means "no data"
        raise DataError(
            f"data.source={source!r} (revision {revision!r}) could not be loaded from the "
            f"Hugging Face Hub: {type(error).__name__}: {_first_line(error)}. "
            f"Check the id and data.revision, or use {OFFLINE_HINT}"
        ) from error
    return _concatenate_splits(loaded)


def _local_files(source: str | tuple[str, ...]) -> list[str] | None:
    """The files ``source`` names; None when it names a directory or a Hub id."""
    if isinstance(source, str):
        path = Path(source).expanduser()
        if path.is_dir() or not (path.exists() or glob.has_magic(source) or _looks_like_path(source)):
            return None
    patterns = [source] if isinstance(source, str) else list(source)
    files: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        if not matches:
            raise DataError(f"data.source: no file matches {pattern!r}; {OFFLINE_HINT}")
        for match in matches:
            if not Path(match).is_file():
                raise DataError(
                    f"data.source: file not found: {Path(match).resolve()}; fix the path, "
                    f"or use a Hub dataset id, or data=pydocs"
                )
        files.extend(matches)
    return files


def _looks_like_path(source: str) -> bool:
    """A Hub id is "name" or "owner/name"; anything else, or a file suffix, means a path."""
    suffix = Path(source).suffix.lower()
    return (
        not HUB_ID.match(source)
        or source.startswith((".", "~"))
        or suffix in (".txt", ".text", ".md", *FILE_BUILDERS)
    )


def _concatenate_splits(loaded):
    import datasets

    names = list(loaded)
    ordered = [s for s in SPLIT_ORDER if s in names] + [s for s in names if s not in SPLIT_ORDER]
    return datasets.concatenate_datasets([loaded[s] for s in ordered])


def _builtin(name: str):
    import datasets

    if name != "pydocs":
        raise DataError(f"data.source: unknown built-in corpus {name!r}; the built-in is 'builtin:pydocs'")
    return datasets.Dataset.from_generator(_pydoc_topics)


def _pydoc_topics():
    """Python's own documentation topics (shipped with every CPython): English prose, offline."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"text": topics[name] + "\n\n"}


def _check_hub_reachable(source: str) -> None:
    """Fail in seconds, not minutes, when the Hub cannot be reached (datasets retries long)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # datasets then uses its cache, or fails at once
    endpoint = constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return  # the server answered: it is reachable
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"data.source={source!r} looks like a Hugging Face Hub id, but the Hub at {endpoint} "
            f"cannot be reached ({reason}). If you meant a local path, it does not exist: "
            f"{Path(source).resolve()}. {OFFLINE_HINT.capitalize()}; or, if the dataset is "
            f"already in your Hugging Face cache, set HF_HUB_OFFLINE=1"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


# --------------------------------------------------------------------------- encoding


def encode_cached(texts, tokenizer: CharTokenizer) -> torch.Tensor:
    """All rows of ``texts`` joined as one int64 tensor of token ids.

    ``datasets`` caches the encoded rows on disk, keyed by the rows' fingerprint and the
    vocabulary, so a second run with the same source reads them back instead of encoding.
    """
    encoded = texts.map(
        _encode_batch,
        batched=True,
        remove_columns=["text"],
        fn_kwargs={"vocab": tokenizer.to_list()},
        desc="encoding characters",
    )
    ids = encoded.with_format("arrow")["ids"]  # a list column: one array per row
    return torch.from_numpy(ids.combine_chunks().flatten().to_numpy().astype(np.int64))


def _encode_batch(batch: dict, vocab: list[str]) -> dict:
    tokenizer = CharTokenizer(vocab)
    return {"ids": [tokenizer.encode_array(text) for text in batch["text"]]}


# --------------------------------------------------------------------------- batches


class RandomWindows(IterableDataset):
    """Training batches as nanoGPT draws them: ``batch_size`` windows of ``block_size + 1``
    tokens at uniformly random offsets; inputs are the first ``block_size`` tokens of each
    window, targets the last ``block_size`` (the same text shifted by one).

    Batch n comes from a generator seeded with (seed, rank, n): the data order is a function
    of the step alone, so a resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, start: int = 0) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.start = seed, rank, start

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``n``: inputs and targets, each (batch_size, block_size)."""
        seed = np.random.SeedSequence([self.seed, self.rank, n]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,), generator=generator)
        offsets = torch.arange(self.block_size + 1)
        windows = self.tokens[starts[:, None] + offsets]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self):
        worker = get_worker_info()
        first, step = (self.start, 1) if worker is None else (self.start + worker.id, worker.num_workers)
        # The DataLoader takes one batch from each worker in turn, so order is preserved.
        for n in itertools.count(first, step):
            yield self.batch(n)


class SequentialWindows(Dataset):
    """Validation windows: consecutive and non-overlapping, each target predicted once.

    Window i holds tokens [i·T, i·T + T]; together they cover every target position of the
    split but a tail shorter than one window.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        window = self.tokens[i * self.block_size : (i + 1) * self.block_size + 1]
        return window[:-1], window[1:]


class CharDataModule(L.LightningDataModule):
    """Loads and encodes the text once (``prepare``), then serves windows of it."""

    def __init__(self, config: DataConfig, block_size: int, seed: int = 1337) -> None:
        super().__init__()
        self.config, self.block_size, self.seed = config, block_size, seed
        self.tokenizer: CharTokenizer | None = None
        self.train_tokens: torch.Tensor | None = None
        self.val_tokens: torch.Tensor | None = None

    def prepare(self) -> None:
        """Load, build the vocabulary, encode and split; runs once however often it is called."""
        if self.tokenizer is not None:
            return
        texts = load_texts(self.config)
        characters = set().union(*map(set, texts["text"]))
        if not characters:
            raise DataError(f"data.source={self.config.source!r} holds no text; {OFFLINE_HINT}")
        tokenizer = CharTokenizer(sorted(characters))
        tokens = encode_cached(texts, tokenizer)
        n_train = int(len(tokens) * (1 - self.config.val_fraction))
        train, val = tokens[:n_train], tokens[n_train:]
        need = self.block_size + 1
        if len(train) < need or len(val) < need:
            raise DataError(
                f"data.source={self.config.source!r} gives {len(train):,} training and "
                f"{len(val):,} validation characters; each split needs at least "
                f"model.block_size + 1 = {need}. Use more text, change data.val_fraction, "
                f"or lower model.block_size"
            )
        self.tokenizer, self.train_tokens, self.val_tokens = tokenizer, train, val

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # On resume Lightning restores global_step before asking for this loader.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank = trainer.global_rank if trainer else 0
        windows = RandomWindows(self.train_tokens, self.block_size, self.config.batch_size,
                                self.seed, rank=rank, start=start)
        return DataLoader(windows, batch_size=None, num_workers=self.config.num_workers,
                          persistent_workers=self.config.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        windows = SequentialWindows(self.val_tokens, self.block_size)
        return DataLoader(windows, batch_size=self.config.val_batch_size, shuffle=False,
                          num_workers=self.config.num_workers)
