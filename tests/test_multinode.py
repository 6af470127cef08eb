"""Several machines, checked on one: every process of a 2-"node" run is started by hand on
127.0.0.1 over gloo, the way torchrun, a plain environment (MASTER_ADDR, NODE_RANK, ...) and
SLURM start them. Each way must end with the same weights on every process (digest printed
once, equal to last.ckpt's), one set of files written by rank 0, and the curve, validation
combined over all processes, of one process training the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLOBAL_BATCH, REPO, TINY_RUN, closed_port, tinylm_command
from test_ddp import assert_same_curve

from tinylm.callbacks.ranks import weights_digest
from tinylm.rundir import RunDir

SCRIPT = str(REPO / "scripts" / "train.py")


def launches(way: str, port: int) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of each of the 2 machines' launches (one process each)."""
    if way == "torchrun":
        return [([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                  "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", SCRIPT], {})
                for node in (0, 1)]
    if way == "environment":
        return [(tinylm_command("train"), {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                           "NODE_RANK": str(node), "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
                for node in (0, 1)]
    # SLURM: what srun sets for each task of `sbatch --nodes=2 --ntasks-per-node=1`.
    return [(tinylm_command("train"), {
        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node),
        "SLURM_JOB_NAME": "tinylm", "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port)}) for node in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("way", ["torchrun", "environment", "slurm"])
def test_two_machines_train_as_one(way: str, one_process: dict, small_text: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [f"data.source={small_text}", f"hydra.run.dir={run_dir}", *TINY_RUN, "trainer.num_nodes=2",
            "trainer.devices=1", "trainer.strategy=ddp", f"data.batch_size={GLOBAL_BATCH // 2}",
            "trainer.max_steps=10"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC"))}
    processes = [subprocess.Popen([*command, *args], cwd=tmp_path, env={**clean, **env}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for command, env in launches(way, closed_port())]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    stdout = "".join(out for out, _ in outputs)

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    digest = weights_digest(checkpoint["state_dict"])
    assert stdout.count("run: ") == 1 and stdout.count("data: ") == 1  # the closing lines, once
    assert f"processes: 2 (2 machines × 1), the same weights on each (sha256 {digest[:16]})" in stdout, stdout
    assert_same_curve(run_dir, one_process, range(10))
    tb = sorted(p.name for p in RunDir(run_dir).tensorboard.iterdir())
    assert len([name for name in tb if name.startswith("events")]) == 1, tb
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "attention.npz", "best.ckpt", "last.ckpt", "model.safetensors"]
