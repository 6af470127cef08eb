"""Two-process data parallel training on the CPU (``ddp_spawn``: plain ``ddp`` would relaunch
pytest): each rank its own batches from one shared memory-mapped token file, one validation
result, one set of files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose, quick_overrides, scalars
from lightning.pytorch.callbacks import Callback

from tinylm.config import TrainConfig
from tinylm.train import fit


class RankProbe(Callback):
    """Each process writes what it saw to <out>/rank<N>.json (spawned processes share no memory)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: dict = {"first_batch": None, "val_windows": [], "val_loss": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen["first_batch"] is None:
            self.seen["first_batch"] = batch[0].tolist()
            # The token file this process reads, and whether it is mapped into its memory.
            path = trainer.datamodule.train_tokens.path
            self.seen["token_file"] = path
            self.seen["mapped"] = path in Path("/proc/self/maps").read_text()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.seen["val_windows"].append(0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen["val_windows"][-1] += len(batch[0])

    def on_validation_end(self, trainer, pl_module) -> None:
        self.seen["val_loss"].append(float(trainer.callback_metrics["val/loss"]))
        self.seen["world_size"] = trainer.world_size
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_two_cpu_processes_train_as_one(small_text: Path, tmp_path: Path) -> None:
    run_dir, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    values = compose(*quick_overrides(
        small_text, run_dir, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn",
        "trainer.max_steps=10", "trainer.val_check_interval=5", "trainer.log_every_n_steps=1"))
    fit(TrainConfig.from_dict(values), extra_callbacks=[RankProbe(probes)])

    rank0, rank1 = (json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["first_batch"] != rank1["first_batch"]  # each rank its own random windows
    assert rank0["token_file"] == rank1["token_file"] and rank0["mapped"] and rank1["mapped"]
    windows = len(small_text.read_text()[int(30_000 * 0.9):]) // 32  # validation windows in all
    for mine, theirs in zip(rank0["val_windows"], rank1["val_windows"], strict=True):  # split
        assert mine < windows and mine + theirs >= windows
    assert len(rank0["val_loss"]) == 2 and rank0["val_loss"] == rank1["val_loss"]  # synced

    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tb/events.out.tfevents")]
    assert len(events) == 1, files
    assert sorted(set(files) - set(events)) == ["checkpoints/attention.npz", "checkpoints/best.ckpt",
                                                "checkpoints/last.ckpt", "tb/hparams.yaml"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    logged = scalars(run_dir)
    assert [v for _, v in logged["val/loss"]] == pytest.approx(rank0["val_loss"])
    assert len(logged["train/loss"]) == 10  # one process logs, once per step
