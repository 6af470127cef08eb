"""Data-parallel training on the CPU with Lightning's plain ``ddp`` (it starts the other
processes by running the command again): from ``tinylm train`` and ``python scripts/train.py``.
A step's windows are drawn for the whole global batch, each process taking its slice, so 2
processes of B/2 follow the curve of 1 process of B, and a checkpoint resumes on either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLOBAL_BATCH, REPO, TINY_RUN, scalars, tinylm_command

TOLERANCE = 1e-4


def assert_same_curve(run_dir: Path, reference: dict, steps: range) -> None:
    """train/loss at ``steps`` and every val/loss equal to the one-process run's."""
    mine, theirs = scalars(run_dir), reference["scalars"]
    losses = dict(mine["train/loss"])
    assert sorted(losses) == list(steps)
    for step in steps:
        assert losses[step] == pytest.approx(dict(theirs["train/loss"])[step], abs=TOLERANCE), step
    for step, value in mine["val/loss"]:
        assert value == pytest.approx(dict(theirs["val/loss"])[step], abs=TOLERANCE), step


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["tinylm train", "python scripts/train.py"])
def test_plain_ddp_on_two_processes_follows_one_process(entry: str, one_process: dict, small_text: Path,
                                                        tmp_path: Path) -> None:
    # scripts/train.py resumes the one-process run's step-10 checkpoint: another world size.
    resume = entry.startswith("python")
    command = [sys.executable, str(REPO / "scripts" / "train.py")] if resume else tinylm_command("train")
    run_dir = tmp_path / "run"
    args = [f"data.source={small_text}", f"hydra.run.dir={run_dir}", *TINY_RUN, "trainer.devices=2",
            "trainer.strategy=ddp", f"data.batch_size={GLOBAL_BATCH // 2}", "trainer.max_steps=20"]
    if resume:
        args.append(f"ckpt_path={one_process['half']}")
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert result.stdout.count("run: ") == 1 and result.stdout.count("data: ") == 1  # said once
    assert (run_dir / "train_ddp_process_1.log").is_file()  # Lightning started the second process
    assert_same_curve(run_dir, one_process, range(10 if resume else 0, 20))
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert [f for f in files if f.startswith(f"{run_dir.name}/events")] == [f for f in files if "events" in f]
    assert len([f for f in files if f.startswith(f"{run_dir.name}/events")]) == 1, files
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
