"""data.streaming: training from a Hub-layout directory of parquet shards read as a stream,
resumed from a checkpoint with exactly the batches an uninterrupted run would have drawn."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose
from lightning.pytorch.callbacks import Callback

from tinylm.config import DataConfig, TrainConfig
from tinylm.errors import ConfigError
from tinylm.train import fit


@pytest.fixture(scope="module")
def shards(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training shards of many small row groups, and a validation split."""
    lines = small_text.read_text().splitlines(keepends=True)
    root = tmp_path_factory.mktemp("stream") / "corpus"
    (root / "data").mkdir(parents=True)
    for i in range(4):
        pq.write_table(pa.table({"text": lines[i::4]}), root / "data" / f"train-0000{i}-of-00004.parquet",
                       row_group_size=50)
    pq.write_table(pa.table({"text": ["".join(lines[:100])]}),
                   root / "data" / "validation-00000-of-00001.parquet")
    return root


class Batches(Callback):
    def __init__(self) -> None:
        self.seen: dict[int, list] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen[trainer.global_step] = batch[0].tolist()


def run(shards: Path, run_dir: Path, steps: int, *extra: str) -> dict[int, list]:
    values = compose(
        f"data.source={shards}", "data.streaming=true", "data.tokenizer=byte", f"paths.output_dir={run_dir}",
        "model.layers=1", "model.d_model=32", "model.block_size=16", "data.batch_size=4",
        f"trainer.max_steps={steps}", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false", "logger=none", *extra)
    batches = Batches()
    fit(TrainConfig.from_dict(values), extra_callbacks=[batches])
    return batches.seen


@pytest.fixture(scope="module")
def straight(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, list]:
    """The batches of an uninterrupted 7-step run (shuffled by datasets' buffer, the default)."""
    return run(shards, tmp_path_factory.mktemp("straight"), 7)


def test_streaming_resumes_with_the_same_batches(shards: Path, straight: dict, tmp_path: Path) -> None:
    run(shards, tmp_path / "first", 3)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = run(shards, tmp_path / "resumed", 7, f"ckpt_path={checkpoint}")
    assert sorted(resumed) == [3, 4, 5, 6]
    for step in resumed:
        assert resumed[step] == straight[step], step
    assert straight[0] != straight[1] and straight[3] != straight[0]  # the stream moves on


def test_a_stream_is_shuffled_by_its_seed(shards: Path, straight: dict, tmp_path: Path) -> None:
    in_order = run(shards, tmp_path / "in-order", 1, "data.shuffle_buffer=0")
    other_seed = run(shards, tmp_path / "other-seed", 1, "seed=7")
    again = run(shards, tmp_path / "again", 1)
    assert again[0] == straight[0]  # the same seed, the same order
    assert in_order[0] != straight[0] and other_seed[0] != straight[0]
    first_row = pq.read_table(shards / "data" / "train-00000-of-00004.parquet")["text"][0].as_py().encode()
    assert bytes(in_order[0][0][:len(first_row)]) == first_row  # data.shuffle_buffer=0: file order


def test_streaming_needs_a_vocabulary_up_front() -> None:
    with pytest.raises(ConfigError, match=r"data\.streaming: needs the vocabulary up front"):
        DataConfig(source="some/dataset", streaming=True)
    DataConfig(source="some/dataset", streaming=True, vocab="abc")  # a given vocabulary will do


@pytest.mark.slow
def test_two_processes_stream_their_own_shards_and_both_places_are_kept(shards: Path, tmp_path: Path) -> None:
    import torch

    run_dir = tmp_path / "ddp"
    run(shards, run_dir, 4, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    places = checkpoint["CharDataModule"]["stream"]
    assert sorted(places) == [0, 1]
    # Read by 2 processes, it resumes on 2: on 1 it is refused, in one line.
    with pytest.raises(ConfigError) as refused:
        run(shards, tmp_path / "one", 6, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert str(refused.value) == ("ckpt_path: its stream was read by 2 processes and this run has 1; a "
                                  "streamed run resumes on as many processes as it was read by "
                                  "(trainer.devices × trainer.num_nodes = 2)")
