"""Checkpoints are data, not code: a .ckpt carrying a pickled payload is refused by every
loader, and nothing in it runs. Nor can a command line make tinylm build arbitrary objects."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import run_script

import tinylm
from tinylm.callbacks.checkpoint_io import AtomicCheckpointIO
from tinylm.checkpoint import FORMAT_VERSION, CheckpointError


class Payload:
    """Unpickling this calls open(marker, "w"): code running, leaving a file as evidence."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[Path, Path]:
    """A file shaped like a tinylm checkpoint with a payload inside, and the payload's marker."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "poisoned.ckpt"
    torch.save({"tinylm": {"format": FORMAT_VERSION}, "state_dict": {}, "payload": Payload(marker),
                "hyper_parameters": {"model": {}, "vocab": ["a"]}}, path)
    torch.load(path, weights_only=False)  # the payload is live: a trusting load runs it ...
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_load_checkpoint_refuses_a_payload(poisoned) -> None:
    path, marker = poisoned
    with pytest.raises(CheckpointError, match=r"holds Python objects \(io.open\) besides tensors"):
        tinylm.load_checkpoint(path)
    assert not marker.exists()


def test_lightnings_resume_loads_only_weights(poisoned) -> None:
    """Lightning reads checkpoints (resume, ddp_spawn's hand-back) through tinylm's plugin."""
    path, marker = poisoned
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # asked for less safety: no
    assert not marker.exists()


def test_sampling_from_a_poisoned_checkpoint_is_refused(poisoned) -> None:
    path, marker = poisoned
    result = run_script("sample.py", f"ckpt={path}", "max_new_tokens=5")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ckpt: ") and "weights_only=True" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_resuming_from_a_poisoned_checkpoint_is_refused(poisoned, small_text: Path, tmp_path: Path) -> None:
    path, marker = poisoned
    result = run_script("train.py", f"data.source={small_text}", f"ckpt_path={path}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ckpt_path: ")
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["+model._target_=os.system", "+_target_=builtins.exec"])
def test_a_command_line_target_is_refused(override: str, tmp_path: Path) -> None:
    """tinylm's configs name no classes and nothing is instantiated from them; a _target_
    on the command line is an unknown key like any other."""
    result = run_script("train.py", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    key = override[1:].split("=")[0]
    assert result.stderr.startswith(f"error: {key}: unknown key")
    assert not (tmp_path / "run").exists()
