"""A sweep through Hydra's submitit launcher (``tinylm[slurm]``): ``submitit_local`` runs each
job as its own process, as ``submitit_slurm`` runs each as a SLURM job; the runs are ordinary
sweep runs, in TensorBoard and ``tinylm compare``. A requeued job (SLURM's, submitit's) finds its
own directory holding its stopped run's last.ckpt and continues it, with no ckpt_path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GLOBAL_BATCH, TINY_RUN, scalars, tinylm_command


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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["run", "sweep"])
def test_a_requeued_job_continues_its_own_run_without_ckpt_path(how: str, one_process: dict, small_text: Path,
                                                                 tmp_path: Path) -> None:
    # What a requeued job finds: its run directory holding a last.ckpt at step 10 of its 20 steps.
    run = tmp_path / "job"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(one_process["half"], run / "checkpoints" / "last.ckpt")
    where = ["-m", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job"] if how == "sweep" else [
        f"hydra.run.dir={run}"]
    settings = [f"data.source={small_text}", *TINY_RUN, f"data.batch_size={GLOBAL_BATCH}"]

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(tinylm_command("train", *where, *settings, "trainer.max_steps=20", *extra),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    result = train()
    assert result.returncode == 0, result.stderr[-3000:]
    # Run from tmp_path, so the run directory is shown as "job".
    assert "resuming job from step 10: it holds an unfinished run of these settings" in result.stdout
    losses, reference = dict(scalars(run)["train/loss"]), dict(one_process["scalars"]["train/loss"])
    assert sorted(losses) == list(range(10, 20))  # it went on from step 10, not from scratch
    assert all(losses[s] == pytest.approx(reference[s], abs=1e-5) for s in losses), (losses, reference)
    if how == "sweep":
        return
    # The same command again: the run is finished, nothing is written.
    again = train()
    assert again.returncode == 0 and again.stdout.startswith("run: job is finished: 20 of "), again.stdout
    # Other settings into the same directory: refused in one line, not resumed nor overwritten.
    other = train("model.heads=1")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr[-3000:]
    assert other.stderr.startswith("error: hydra.run.dir: job holds a run of other settings "
                                   "(model.heads=2 there, 1 here; "), other.stderr
    assert other.stderr.rstrip().endswith("continue that run with: tinylm train ckpt_path=job")
