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


def test_streaming_resumes_with_the_same_batches(shards: Path, tmp_path: Path) -> None:
    straight = run(shards, tmp_path / "straight", 7)
    run(shards, tmp_path / "first", 3)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = run(shards, tmp_path / "resumed", 7, f"ckpt_path={checkpoint}")
    assert sorted(resumed) == [3, 4, 5, 6]
    for step in resumed:
        assert resumed[step] == straight[step], step
    assert straight[0] != straight[1] and straight[3] != straight[0]  # the stream moves on


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
    assert places[0] != places[1]  # each rank read its own shards
