"""A sweep through Hydra's submitit launcher (``tinylm[slurm]``): ``submitit_local`` runs each
job as its own process, as ``submitit_slurm`` runs each as a SLURM job; the runs are ordinary
sweep runs, in TensorBoard and ``tinylm compare``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TINY_RUN, scalars, tinylm_command


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_each_job_as_a_process(small_text: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        tinylm_command("train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
                       f"data.source={small_text}", *TINY_RUN, "trainer.max_steps=4",
                       "trainer.val_check_interval=4", "data.batch_size=4", "model.heads=1,2"),
        capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name[:2] for p in runs] == ["0_", "1_"]
    assert ["model.heads=1" in p.name for p in runs] == [True, False]  # named by their overrides
    assert len(list((sweep / ".submitit").iterdir())) >= 2  # each job its own process
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert [step for step, _ in scalars(run)["val/loss"]] == [4]

    compared = subprocess.run(tinylm_command("compare", str(sweep)), capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert all(p.name[:40] in compared.stdout for p in runs), compared.stdout
