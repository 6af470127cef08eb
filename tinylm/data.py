"""Text in, batches of character ids out: a LightningDataModule over Hugging Face ``datasets``.

The texts of all splits of the source (``tinylm.sources``) are concatenated in order and cut,
as nanoGPT does, into the first ``1 - val_fraction`` for training and the rest for validation.
Encoding runs once: ``datasets`` caches it on disk, keyed by the source's fingerprint and the
vocabulary.
"""

from __future__ import annotations

import itertools
import time

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from tinylm.config import DataConfig
from tinylm.sources import OFFLINE_HINT, DataError, from_cache, load_texts
from tinylm.tokenizer import CharTokenizer

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


def derived_seed(*key: int) -> int:
    """A seed for one stream of random numbers, e.g. (seed, rank, batch number): distinct keys
    give independent streams. (Append a nonzero tag to start a new family: SeedSequence pads
    keys with zeros, so (a, b) and (a, b, 0) are the same key.)"""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])



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
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.rank, n))
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
        self.documents, self.from_cache = 0, False  # rows (files, splits) read; from datasets' cache

    def prepare(self) -> None:
        """Load, build the vocabulary, encode and split; runs once however often it is called."""
        if self.tokenizer is not None:
            return
        started = time.time()
        texts = load_texts(self.config)
        self.documents, self.from_cache = len(texts), from_cache(texts, started)
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
