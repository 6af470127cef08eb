"""A process of a data-parallel run that dies (kill -9): the others notice at their next
collective operation and stop, well within ``ddp_timeout``, with one line naming it; last.ckpt
is intact and resumes the uninterrupted curve. SIGTERM to every process (what SLURM sends
before a time limit) saves once and stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import GLOBAL_BATCH, TINY_RUN, compose, scalars, tinylm_command

from tinylm.config import TrainConfig
from tinylm.train import fit

TIMEOUT = 30  # ddp_timeout of these runs: the bound on how long the others may outlive one


def start(run_dir: Path, small_text: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        tinylm_command("train", f"data.source={small_text}", f"hydra.run.dir={run_dir}", *TINY_RUN,
                       "trainer.devices=2", "trainer.strategy=ddp", f"data.batch_size={GLOBAL_BATCH // 2}",
                       "trainer.max_steps=100000", "callbacks.checkpoint.every_n_steps=5",
                       "trainer.val_check_interval=1000", f"ddp_timeout={TIMEOUT}"),
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def second_process(first: subprocess.Popen, run_dir: Path) -> int:
    """Once rank 0 has written last.ckpt: the process id of rank 1, which it started."""
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    children = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
    return int(next(pid for pid in children if "run_tinylm" in Path(f"/proc/{pid}/cmdline").read_text()))


def one_process(small_text: Path, run_dir: Path, steps: int, *extra: str) -> dict:
    values = compose(f"data.source={small_text}", f"paths.output_dir={run_dir}", *TINY_RUN,
                     f"data.batch_size={GLOBAL_BATCH}", f"trainer.max_steps={steps}", *extra)
    fit(TrainConfig.from_dict(values))
    return dict(scalars(run_dir)["train/loss"])


@pytest.mark.slow
def test_a_killed_rank_stops_the_others_with_one_line(small_text: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start(run_dir, small_text, tmp_path)
    rank1 = second_process(first, run_dir)
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    _, err = first.communicate(timeout=TIMEOUT + 60)
    waited = time.monotonic() - killed

    assert first.returncode == 1 and waited < TIMEOUT, (waited, err[-3000:])
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped: rank 0: rank 1 \(process {rank1}\) died; training stopped at step \d+ "
                        rf"\(ddp_timeout={TIMEOUT}s\); .*last.ckpt is intact: resume with ckpt_path=.*",
                        last_line), last_line
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved % 5 == 0 and saved > 0

    # Resumed on one process, the run goes on as one that never stopped.
    resumed = one_process(small_text, tmp_path / "resumed", saved + 3,
                          f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    uninterrupted = one_process(small_text, tmp_path / "uninterrupted", saved + 3)
    for step in range(saved, saved + 3):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-4), step


@pytest.mark.slow
def test_sigterm_to_every_process_saves_once_and_stops(small_text: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start(run_dir, small_text, tmp_path)
    rank1 = second_process(first, run_dir)
    for pid in (first.pid, rank1):  # as SLURM signals every task of a job
        os.kill(pid, signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(lines) == 1, err[-3000:]
    step = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
