"""tinylm as an installed package: the configs and the default corpus travel inside it, and the
main job runs from any directory with nothing but the install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as ``pip install .`` builds it (a wheel, not the checkout), in its own dir."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, text=True)
    return target


def run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tinylm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_installed_package_trains_and_samples_from_an_empty_directory(installed: Path,
                                                                         tmp_path: Path) -> None:
    assert (installed / "tinylm" / "configs" / "model" / "baby.yaml").is_file()
    assert list((installed / "tinylm" / "corpora" / "tiny_shakespeare" / "data").glob("*.parquet"))
    trained = run_installed(installed, tmp_path, "train", "trainer.max_steps=4",
                            "trainer.val_check_interval=2", "hydra.run.dir=run",
                            "callbacks.progress_bar.refresh_rate=0", "trainer.limit_val_batches=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    last_lines = trained.stdout.strip().splitlines()[-4:]
    assert last_lines[0] == "run: run (4 steps)"
    assert last_lines[2] == "sample:      tinylm sample ckpt=run prompt='ROMEO:'"
    assert last_lines[3].startswith("tensorboard: tensorboard --logdir run --samples_per_plugin images=")
    assert "Tip" not in trained.stdout + trained.stderr and "deprecated" not in trained.stderr
    import torch

    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(checkpoint["hyper_parameters"]["vocab"]) == 65
    sampled = run_installed(installed, tmp_path, "sample", "ckpt=run", "prompt=ROMEO:", "max_new_tokens=20")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert sampled.stdout.startswith("ROMEO:") and len(sampled.stdout.rstrip("\n")) == len("ROMEO:") + 20


def test_every_command_is_listed_and_a_wrong_one_is_one_line(tmp_path: Path) -> None:
    from tinylm.cli import COMMANDS

    listed = subprocess.run([sys.executable, "-m", "tinylm", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert listed.returncode == 0
    assert all(f"  {name}" in listed.stdout for name in ("train", "sample", "attention", "compare", "bench"))
    assert set(COMMANDS) >= {"train", "sample", "attention", "compare", "bench"}
    wrong = subprocess.run([sys.executable, "-m", "tinylm", "trian"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert wrong.returncode == 2
    choices = ", ".join(COMMANDS)
    assert wrong.stderr == f"error: 'trian' is not a tinylm command; choose one of {choices}\n"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_every_script_is_a_thin_wrapper_over_the_one_entry_point(script: str) -> None:
    source = (REPO / "scripts" / script).read_text()
    command = script.removesuffix(".py").replace("_", "-")
    assert f'main(["{command}", *sys.argv[1:]])' in source
    assert len([line for line in source.splitlines() if line and not line.startswith(("#", " "))]) <= 8


def test_no_private_hydra_api_in_the_package() -> None:
    for path in [*(REPO / "tinylm").rglob("*.py"), *(REPO / "scripts").glob("*.py")]:
        assert "hydra._internal" not in path.read_text(), path
