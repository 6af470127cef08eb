"""Text in, batches of token ids out: a LightningDataModule over Hugging Face ``datasets``.

The texts of all splits of the source (``tinylm.sources``) are concatenated in order and cut,
as nanoGPT does, into the first ``1 - val_fraction`` for training and the rest for validation.
Encoding runs once: the token ids go to a compact file beside the ``datasets`` cache, keyed by
the source and the vocabulary, and every process memory-maps it (``tinylm.tokens``).
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from tinylm.config import DataConfig
from tinylm.errors import ConfigError
from tinylm.loading import count_documents, from_cache, load_streams, load_texts
from tinylm.sources import OFFLINE_HINT, DataError
from tinylm.tokenizer import ByteTokenizer, CharTokenizer, Tokenizer
from tinylm.tokens import Tokens, as_array, encode_cached, encoded_pieces, vocabulary

# --------------------------------------------------------------------------- batches


def derived_seed(*key: int) -> int:
    """A seed for one stream of random numbers, e.g. (seed, rank, batch number): distinct keys
    give independent streams. (Append a nonzero tag to start a new family: SeedSequence pads
    keys with zeros, so (a, b) and (a, b, 0) are the same key.)"""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])



class Repeats:
    """``data.repeat_fraction``: the first round(fraction · B) windows of a batch become a random
    string of ``length`` tokens (uniform over the vocabulary) repeated to fill the window, text
    whose every token after the first copy follows from the copy before: induction's task."""

    def __init__(self, fraction: float, length: int, vocab_size: int) -> None:
        self.fraction, self.length, self.vocab_size = fraction, length, vocab_size

    def count(self, batch_size: int) -> int:
        return round(self.fraction * batch_size)

    def mix(self, windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``windows`` (B, T+1) with its first ``count(B)`` rows replaced by repeated strings."""
        k, span = self.count(windows.size(0)), windows.size(1)
        if k == 0:
            return windows
        strings = torch.randint(self.vocab_size, (k, self.length), generator=generator)  # (k, length)
        copies = -(-span // self.length)  # enough copies to cover the window
        windows = windows.clone()
        windows[:k] = strings.repeat(1, copies)[:, :span]
        return windows


class RandomWindows(IterableDataset):
    """Training batches as nanoGPT draws them: ``batch_size`` windows of ``block_size + 1``
    tokens at uniformly random offsets; inputs are the first ``block_size`` tokens of each
    window, targets the last ``block_size`` (the same text shifted by one).

    Batch n is one slice of a global batch of ``batch_size × world_size`` windows drawn by a
    generator seeded with (seed, 0, n) (0: the key one process always used), process ``rank``
    taking windows [rank·B, (rank + 1)·B). The data order is then a function of the step alone,
    whatever the number of processes: a resumed run draws exactly the batches it would have
    drawn, on one process or on several, and 2 processes of B/2 windows see what 1 of B sees.
    ``tokens`` is ``Tokens`` (a memory map), a numpy array or a 1-D tensor; windows are read
    from it in its compact dtype and widened to int64 per batch.
    """

    def __init__(self, tokens: Tokens | np.ndarray | torch.Tensor, block_size: int, batch_size: int,
                 seed: int, rank: int = 0, start: int = 0, world_size: int = 1,
                 repeats: Repeats | None = None) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.start, self.world_size = seed, rank, start, world_size
        self.repeats = repeats

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``n``: inputs and targets, each (batch_size, block_size)."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, 0, n))
        every = torch.randint(len(self.tokens) - self.block_size, (self.batch_size * self.world_size,),
                              generator=generator)  # the global batch's window offsets
        starts = every[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        offsets = np.arange(self.block_size + 1)
        windows = as_array(self.tokens)[starts.numpy()[:, None] + offsets]  # (B, T + 1)
        windows = torch.from_numpy(windows.astype(np.int64))
        if self.repeats is not None:  # this rank's first windows replaced: a stream of its own
            windows = self.repeats.mix(windows, torch.Generator().manual_seed(
                derived_seed(self.seed, self.rank, n, 1)))
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self):
        worker = get_worker_info()
        first, step = (self.start, 1) if worker is None else (self.start + worker.id, worker.num_workers)
        # The DataLoader takes one batch from each worker in turn, so order is preserved.
        for n in itertools.count(first, step):
            yield self.batch(n)


class StreamWindows(IterableDataset):
    """Training batches from a streamed dataset (``data.streaming``): the rows' tokens joined in
    order and cut into consecutive windows of ``block_size + 1`` tokens, each starting where the
    one before ended (every token is a target once), ``batch_size`` windows a batch.

    ``snapshots[n]`` is where batch n starts: the stream's ``state_dict`` before the row it
    starts in (None: the stream's beginning) and how many of that row's tokens came before. A
    checkpoint stores the snapshot of the next batch to train on; ``state`` resumes from it.

    A shuffled stream (``replay``: datasets' shuffle buffer, whose contents its ``state_dict``
    does not keep) is placed by the number of rows read before that row instead: a resume
    reads the stream again from its beginning, passing over those rows untokenized, so it
    draws exactly the rows an uninterrupted run would have.
    """

    KEEP = 64  # snapshots kept: more than the DataLoader and Lightning fetch ahead

    def __init__(self, rows, tokenizer: Tokenizer, block_size: int, batch_size: int,
                 state: dict[str, Any] | None = None, start: int = 0, replay: bool = False) -> None:
        self.rows, self.tokenizer, self.block_size, self.batch_size = rows, tokenizer, block_size, batch_size
        self.state, self.start, self.replay = state, start, replay
        self.snapshots: dict[int, dict[str, Any]] = {}

    def __iter__(self):
        state = self.state or {"rows": None, "skip": 0}
        self.state = None  # a later epoch starts the stream from its beginning
        read = 0  # rows read so far (replay)
        if self.replay:
            read = state["rows"] or 0
            rows = itertools.islice(iter(self.rows), read, None)
        else:
            if state["rows"] is not None:
                self.rows.load_state_dict(state["rows"])
            rows = iter(self.rows)
        anchors = collections.deque()  # [state before the row, its tokens, tokens of it used]
        buffer = np.empty(0, dtype=self.tokenizer.dtype)
        first, skip = True, state["skip"]
        need = self.batch_size * self.block_size + 1  # a batch's windows overlap by one token
        n = self.start
        self.snapshots[n] = dict(state)
        while True:
            while len(buffer) < need:
                # The stream's state is readable once it has started: before that, ours.
                before = read if self.replay else state["rows"] if first else self.rows.state_dict()
                row = next(rows, None)
                if row is None:
                    return  # the stream is over: so is the epoch
                read += 1
                ids = self.tokenizer.encode_array(row["text"], self.tokenizer.dtype)
                anchors.append([before, len(ids), skip])
                buffer = np.concatenate([buffer, ids[skip:]])
                first, skip = False, 0
            windows = np.lib.stride_tricks.sliding_window_view(buffer[:need], self.block_size + 1)
            batch = torch.from_numpy(windows[:: self.block_size].astype(np.int64))  # (B, T + 1)
            used = self.batch_size * self.block_size
            buffer = buffer[used:]
            while used:  # account the used tokens to their rows; drop rows used up
                take = min(used, anchors[0][1] - anchors[0][2])
                anchors[0][2] += take
                used -= take
                if anchors[0][2] == anchors[0][1]:
                    anchors.popleft()
            n += 1
            self.snapshots[n] = ({"rows": anchors[0][0], "skip": anchors[0][2]} if anchors
                                 else {"rows": read if self.replay else self.rows.state_dict(), "skip": 0})
            self.snapshots.pop(n - self.KEEP, None)
            self.start = n  # a later epoch goes on counting from here
            yield batch[:, :-1], batch[:, 1:]


class SequentialWindows(Dataset):
    """Validation windows: consecutive and non-overlapping, each target predicted once.

    Window i holds tokens [i·T, i·T + T]; together they cover every target position of the
    split but a tail shorter than one window.
    """

    def __init__(self, tokens: Tokens | np.ndarray | torch.Tensor, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        window = as_array(self.tokens)[i * self.block_size : (i + 1) * self.block_size + 1]
        window = torch.from_numpy(window.astype(np.int64))
        return window[:-1], window[1:]


class CharDataModule(L.LightningDataModule):
    """Loads and encodes the text once (``prepare``), then serves windows of it."""

    def __init__(self, config: DataConfig, block_size: int, seed: int = 1337) -> None:
        super().__init__()
        self.config, self.block_size, self.seed = config, block_size, seed
        self.tokenizer: Tokenizer | None = None
        self.train_tokens: Tokens | None = None
        self.val_tokens: Tokens | None = None
        self.test_tokens: Tokens | None = None  # data.test_fraction > 0 only
        self._resumed: dict[int, dict[str, Any]] | None = None  # streaming: from a checkpoint
        self.documents, self.from_cache = 0, False  # rows (files, splits) read; from datasets' cache

    def prepare(self) -> None:
        """Load, build the vocabulary, encode and split; runs once however often it is called."""
        if self.tokenizer is not None:
            return
        config = self.config
        if config.streaming:
            self.train_rows, texts = load_streams(config)  # texts: the validation split
        else:
            started = time.time()
            texts = load_texts(config)
            self.documents = count_documents(config.source, texts)
            self.from_cache = from_cache(texts, started)
        if config.tokenizer == "byte":
            tokenizer = ByteTokenizer()
        elif config.vocab is not None:
            tokenizer = CharTokenizer(sorted(set(config.vocab)))
        else:
            tokenizer = vocabulary(texts)
        if config.streaming:
            pieces = list(encoded_pieces(texts, tokenizer))
            tokens = Tokens(np.concatenate(pieces) if pieces else np.empty(0, tokenizer.dtype))
        else:
            tokens = encode_cached(texts, tokenizer, config.text_column) if tokenizer else []
        if not len(tokens):
            raise DataError(f"data.source={config.source!r} holds no text; {OFFLINE_HINT}")
        held_out = config.val_fraction + config.test_fraction
        n_train = 0 if config.streaming else int(len(tokens) * (1 - held_out))
        n_test = int(len(tokens) * config.test_fraction)
        train, val = tokens[:n_train], tokens[n_train : len(tokens) - n_test]
        self.test_tokens = tokens[len(tokens) - n_test :] if n_test else None
        if config.streaming:
            self.tokenizer, self.train_tokens, self.val_tokens = tokenizer, None, val
            return
        need = self.block_size + 1
        if len(train) < need or len(val) < need or (n_test and n_test < need):
            raise DataError(
                f"data.source={self.config.source!r} gives {len(train):,} training and "
                f"{len(val):,} validation characters; each split needs at least "
                f"model.block_size + 1 = {need}. Use more text, change data.val_fraction, "
                f"or lower model.block_size"
            )
        self.tokenizer, self.train_tokens, self.val_tokens = tokenizer, train, val

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def repeats(self) -> Repeats | None:
        """The repeated strings mixed into training batches (``data.repeat_fraction``), or None."""
        if self.config.repeat_fraction == 0 or self.tokenizer is None:
            return None
        return Repeats(self.config.repeat_fraction, self.config.repeat_length, self.tokenizer.vocab_size)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # On resume Lightning restores global_step before asking for this loader.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if self.config.streaming:
            rows, shuffled = self.train_rows, self.config.shuffle_buffer > 0
            if shuffled:  # the same seed on every rank: one order of shards, split between them
                rows = rows.shuffle(seed=self.seed, buffer_size=self.config.shuffle_buffer)
            if world > 1:
                rows = split_dataset_by_node(rows, rank=rank, world_size=world)
            if self._resumed is not None and len(self._resumed) != world:
                raise ConfigError(
                    f"ckpt_path: its stream was read by {len(self._resumed)} processes and this run has "
                    f"{world}; a streamed run resumes on as many processes as it was read by "
                    f"(trainer.devices × trainer.num_nodes = {len(self._resumed)})")
            resumed = (self._resumed or {}).get(rank)
            self.stream = StreamWindows(rows, self.tokenizer, self.block_size, self.config.batch_size,
                                        state=resumed, start=start, replay=shuffled)
            return DataLoader(self.stream, batch_size=None, num_workers=0)
        windows = RandomWindows(self.train_tokens, self.block_size, self.config.batch_size,
                                self.seed, rank=rank, start=start, world_size=world, repeats=self.repeats)
        return DataLoader(windows, batch_size=None, num_workers=self.config.num_workers,
                          persistent_workers=self.config.num_workers > 0)

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: with streaming, where each rank's stream is (its next batch's
        snapshot); nothing otherwise (random batches are a function of the step)."""
        stream = getattr(self, "stream", None)
        if stream is None:
            return {}
        trainer = self.trainer
        snapshots, n = stream.snapshots, trainer.global_step * trainer.accumulate_grad_batches
        if n in snapshots:
            mine = snapshots[n]
        elif snapshots:  # not a batch we cut (an epoch's end): the last place we know
            mine = snapshots[max(snapshots)]
        else:  # not iterated yet: where it will start
            mine = stream.state or {"rows": None, "skip": 0}
        states = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, mine)
        return {"stream": dict(enumerate(states))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed = state.get("stream")

    def test_dataloader(self) -> DataLoader:
        """``data.test_fraction``: the test split, in consecutive windows like validation."""
        return self._whole_split(SequentialWindows(self.test_tokens, self.block_size))

    def val_dataloader(self) -> DataLoader:
        return self._whole_split(SequentialWindows(self.val_tokens, self.block_size))

    def _whole_split(self, windows: SequentialWindows) -> DataLoader:
        """Every window of a split once, however many processes share it: each takes every
        world_size-th window, none repeated (torch's DistributedSampler would repeat some to
        even out the processes' counts, and weigh them twice in the combined loss)."""
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(windows, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(windows, batch_size=self.config.val_batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.config.num_workers)
