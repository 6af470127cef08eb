"""Crash safety: atomic checkpoints, exact resume after a crash or kill -9, clean stops on
SIGINT/SIGTERM, and a clear stop (with a good checkpoint kept) when the loss diverges."""

from __future__ import annotations

import random
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose, quick_overrides, run_script, scalars, start_script
from lightning.pytorch.callbacks import Callback

import tinylm
from tinylm.callbacks import DivergedError
from tinylm.config import TrainConfig
from tinylm.train import fit


class LossPerStep(Callback):
    """Records each step's training loss, keyed by the step it was computed at."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.losses[trainer.global_step] = loss.item()


class CrashAt(Callback):
    """Fails at the end of a given step, as a crash would: no checkpoint is written then."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def train_losses(overrides: list[str], *callbacks: Callback) -> dict[int, float]:
    values = compose(*overrides)
    recorder = LossPerStep()
    fit(TrainConfig.from_dict(values), extra_callbacks=[recorder, *callbacks])
    return recorder.losses


def test_checkpoint_after_a_crash_resumes_exactly_with_dropout(small_text: Path, tmp_path: Path) -> None:
    """Dropout draws random numbers every step: a resume must draw the same ones."""

    def overrides(run: str, *extra: str) -> list[str]:
        return quick_overrides(small_text, tmp_path / run, "model.dropout=0.2", "trainer.max_steps=24",
                               "trainer.val_check_interval=8", "trainer.limit_val_batches=2",
                               "callbacks.checkpoint.every_n_steps=5", "logger=none", *extra)

    uninterrupted = train_losses(overrides("full"))
    with pytest.raises(RuntimeError, match="crash at step 13"):
        train_losses(overrides("crashed"), CrashAt(13))
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10  # every_n_steps=5: 5, 8 (val), 10
    resumed = train_losses(overrides("resumed", f"ckpt_path={last}"))
    assert sorted(resumed) == list(range(10, 24))
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], abs=1e-6), f"step {step}"


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_file(tmp_path: Path) -> None:
    """The new checkpoint is written beside the old one and renamed over it: a kill -9
    half-way through the write leaves last.ckpt as it was."""
    child = textwrap.dedent("""
        import io, sys, time, torch
        from tinylm.callbacks.checkpoint_io import AtomicCheckpointIO

        path = sys.argv[1]
        AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(100_000)}, path)
        save = torch.save

        def half_then_hang(obj, file):  # a write frozen half-way: the moment of the kill
            buffer = io.BytesIO()
            save(obj, buffer)
            file.write(buffer.getvalue()[: buffer.tell() // 2])
            file.flush()
            print("writing", flush=True)
            time.sleep(600)

        torch.save = half_then_hang
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    """)
    path = tmp_path / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        assert process.stdout.readline() == "writing\n"
    finally:
        process.kill()
        process.communicate()
    temp = tmp_path / f"last.ckpt.{process.pid}.tmp"  # named per process
    assert temp.stat().st_size > 0  # it was killed mid-write
    assert torch.load(path, weights_only=True)["step"] == 1


def _step_of(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except FileNotFoundError:
        return -1


def _wait_for_checkpoint(process: subprocess.Popen, last: Path, step: int, timeout: float = 300) -> None:
    """Until ``last`` holds ``step`` or later (a save is atomic, so it can be read any time)."""
    deadline = time.monotonic() + timeout
    while _step_of(last) < step:
        if process.poll() is not None:
            pytest.fail(f"training ended before step {step}: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_resume_matches_an_uninterrupted_run(small_text: Path,
                                                                          tmp_path: Path) -> None:
    def args(run: str, *extra: str) -> list[str]:
        # Checkpoints on even steps, logs on odd ones: what the killed run logged after its
        # last save is logged again by the resume, and must replace, not double, those steps.
        return quick_overrides(small_text, tmp_path / run, "model.dropout=0.1", "trainer.max_steps=120",
                               "trainer.limit_val_batches=4", "trainer.log_every_n_steps=2",
                               "callbacks.checkpoint.every_n_steps=2", *extra, script=True)

    target = random.randint(5, 45)  # a checkpoint every other step: the kill often lands mid-save
    killed = start_script("train.py", *args("killed"))
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    try:
        _wait_for_checkpoint(killed, last, target)
        time.sleep(random.uniform(0, 0.5))  # often past a logged step the checkpoint has not
    finally:
        killed.kill()  # SIGKILL: no handler runs
        killed.communicate()
    step = torch.load(last, weights_only=True)["global_step"]  # it loads: never left half-written
    assert target <= step < 120  # killed before it finished

    resumed = run_script("train.py", *args("killed", f"ckpt_path={last}"))  # in its own directory
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = run_script("train.py", *args("full"))
    assert full.returncode == 0, full.stderr[-3000:]

    expected, got = scalars(tmp_path / "full"), scalars(tmp_path / "killed")  # one TensorBoard run
    for tag in ("train/loss", "val/loss", "train/lr"):
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], f"{tag}, killed at step {step}"
        for (s, value), (_, reference) in zip(got[tag], expected[tag], strict=True):
            assert value == pytest.approx(reference, abs=1e-6), f"{tag} at step {s}, killed at {step}"


def signal_args(text: Path, run: Path) -> list[str]:
    """A run whose logging (every 4 steps), validation (every 10) and periodic checkpoint (every
    7) fall on different grids, so a stop lands off at least one of them."""
    return quick_overrides(text, run, "model.dropout=0.1", "trainer.max_steps=60",
                           "trainer.val_check_interval=10", "trainer.log_every_n_steps=4",
                           "callbacks.checkpoint.every_n_steps=7", script=True)


SPEEDS = ("train/tokens_per_sec", "hp/tokens_per_sec")  # timings: no two runs share them


@pytest.fixture(scope="module")
def uninterrupted(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_script("train.py", *signal_args(small_text, run))
    assert result.returncode == 0, result.stderr[-3000:]
    return {tag: values for tag, values in scalars(run).items() if tag not in SPEEDS}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stop_then_the_printed_command_resumes_exactly(signum: int, small_text: Path, tmp_path: Path,
                                                                uninterrupted: dict) -> None:
    run = tmp_path / "run"
    process = start_script("train.py", *signal_args(small_text, run))
    last = run / "checkpoints" / "last.ckpt"
    try:
        _wait_for_checkpoint(process, last, 7)  # training is under way
        time.sleep(random.uniform(0, 0.3))  # a random step after it, well before the last
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    stopped = re.fullmatch(rf"stopped: {signal.Signals(signum).name} received; training stopped after "
                           rf"step (\d+) and saved (\S+); resume with: (tinylm train ckpt_path=\S+)", message)
    assert stopped, message
    step = int(stopped[1])
    assert Path(stopped[2]) == last and torch.load(last, weights_only=True)["global_step"] == step
    # The stop wrote nothing an uninterrupted run does not: no validation or pictures of its own.
    for tag, values in scalars(run).items():
        assert tag in SPEEDS or set(values) <= set(uninterrupted[tag]), f"{tag}, stopped at step {step}"

    command = shlex.split(stopped[3])  # run exactly as printed
    resumed = subprocess.run([sys.executable, "-m", "tinylm", *command[1:]], capture_output=True, text=True,
                             cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.startswith(f"resuming {run} from step {step} with the settings it was started with")
    got = {tag: values for tag, values in scalars(run).items() if tag not in SPEEDS}  # one TensorBoard run
    assert sorted(got) == sorted(uninterrupted), f"stopped at step {step}"
    for tag, expected in uninterrupted.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in expected], f"{tag}, stopped at step {step}"
        for (s, value), (_, reference) in zip(got[tag], expected, strict=True):
            assert value == pytest.approx(reference, abs=1e-6), f"{tag} at step {s}, stopped at {step}"

    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    finished = subprocess.run([sys.executable, "-m", "tinylm", *command[1:]], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
    assert finished.returncode == 0 and finished.stderr == ""
    assert finished.stdout.startswith(f"run: {run} is finished: 60 of trainer.max_steps=60 steps are trained")
    lower = subprocess.run([sys.executable, "-m", "tinylm", *command[1:], "trainer.max_steps=10"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert lower.returncode == 0 and lower.stdout == (
        f"run: {run} is finished: 60 steps are trained, more than trainer.max_steps=10, nothing to do; "
        f"to train on, raise it: tinylm train ckpt_path={run} trainer.max_steps=120\n")
    changed = subprocess.run([sys.executable, "-m", "tinylm", *command[1:], "model.heads=8"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert changed.returncode == 2
    assert changed.stderr.startswith(f"error: model.heads: {run} was trained with the default model.heads; ")
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # nothing written


DIVERGING = ("optim.lr=1e4", "optim.warmup_steps=1000", "optim.min_lr=0", "optim.grad_clip=0",
             "trainer.max_steps=100", "trainer.limit_val_batches=0", "callbacks.checkpoint.every_n_steps=1")


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(small_text: Path,
                                                                            tmp_path: Path) -> None:
    values = compose(*quick_overrides(small_text, tmp_path, *DIVERGING, "logger=none"))
    with pytest.raises(DivergedError) as error:
        fit(TrainConfig.from_dict(values))
    message = str(error.value)
    diverged = re.match(r"train/loss is (nan|inf|-inf) at step (\d+): training stopped", message)
    assert diverged, message
    assert "optim.lr=1000" in message and "\n" not in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["global_step"] < int(diverged[2])
    assert f"kept: {last} (step {checkpoint['global_step']})" in message
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    model, tokenizer = tinylm.load_checkpoint(last)  # good: it gives a finite loss
    idx = torch.tensor([tokenizer.encode(small_text.read_text()[:33])])
    with torch.no_grad():
        logits = model(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[0, 1:])
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_the_train_script_reports_divergence_in_one_line(small_text: Path, tmp_path: Path) -> None:
    result = run_script("train.py", *quick_overrides(small_text, tmp_path, *DIVERGING, script=True))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.match(r"error: train/loss is \S+ at step \d+: training stopped; the last good checkpoint",
                    result.stderr.strip().splitlines()[-1])
