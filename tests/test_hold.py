"""Holding fast: checkpoints that prove their integrity to every reader, one run per directory,
and start-ups that stop (Ctrl-C at any moment) with one line and nothing left behind."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, compose, quick_overrides, run_script

import tinylm
from tinylm.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def damaged(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a trained run's checkpoints/ whose last.ckpt has 64 random bytes flipped at a
    random place; its best.ckpt is intact."""
    checkpoints = tmp_path_factory.mktemp("damaged") / "checkpoints"
    shutil.copytree(trained[0] / "checkpoints", checkpoints)
    last = checkpoints / "last.ckpt"
    data = bytearray(last.read_bytes())
    start = random.randrange(len(data) - 64)
    for i in range(start, start + 64):
        data[i] ^= random.randrange(1, 256)
    last.write_bytes(bytes(data))
    return last


@pytest.mark.parametrize(("script", "key", "extra"), [
    ("sample.py", "ckpt", ["max_new_tokens=5"]),
    ("attention.py", "ckpt", ["out=attn.png"]),
    ("train.py", "ckpt_path", ["trainer.max_steps=50"]),
    ("train.py", "ckpt_path", ["the run"]),  # a resume of the run: refused before "resuming ..."
])
def test_a_damaged_checkpoint_is_refused_by_every_command(script, key, extra, damaged, small_text, tmp_path,
                                                          tmp_path_factory) -> None:
    given = damaged
    if extra == ["the run"]:  # the damaged checkpoints in a run directory, its settings beside them
        given, extra = tmp_path_factory.mktemp("damaged-run"), []
        shutil.copytree(damaged.parent, given / "checkpoints")
        (given / ".hydra").mkdir()
        (given / ".hydra" / "overrides.yaml").write_text(f"- data.source={small_text}\n")
        damaged = given / "checkpoints" / "last.ckpt"
    elif script == "train.py":
        extra = [*extra, f"data.source={small_text}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_script(script, f"{key}={given}", *extra, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {key}: {damaged} is truncated or corrupt ("), lines[0]
    assert lines[0].endswith(f"use the intact best.ckpt beside it: {key}={damaged.parent / 'best.ckpt'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given", ["", "checkpoints/best.ckpt"])
def test_a_resume_of_a_run_without_that_checkpoint_is_one_line(given, tmp_path: Path) -> None:
    run = tmp_path / "run"  # a run killed before its first save: its settings, no checkpoint
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model.layers=2\n")
    result = run_script("train.py", f"ckpt_path={run / given}", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    expected = ("error: ckpt_path: run has no checkpoint: it stopped before its first save; train it "
                "again, without ckpt_path" if not given else
                f"error: ckpt_path: no checkpoint file at {run / given}; its run's last checkpoint: "
                f"ckpt_path=run")
    assert result.stderr.strip() == expected
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "overrides.yaml"]  # nothing written


def test_a_damaged_checkpoint_is_refused_from_python(damaged) -> None:
    with pytest.raises(CheckpointError, match=r"is truncated or corrupt .*use the intact best\.ckpt"):
        tinylm.load_checkpoint(damaged)
    model, _ = tinylm.load_checkpoint(damaged.parent / "best.ckpt")  # the one it names loads
    assert model.num_parameters() > 0


HOLDER = textwrap.dedent("""
    import sys, time
    from tinylm.runlock import acquire
    acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_second_run_into_a_live_run_directory_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        before = sorted(run.rglob("*"))
        second = run_script("train.py", f"hydra.run.dir={run}", "trainer.max_steps=5", cwd=tmp_path)
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"error: hydra.run.dir: {run} is in use by a training run that is still going "
            f"(PID {holder.pid}); wait for it to end, stop it (kill {holder.pid}), or train into another "
            f"directory")
        assert sorted(run.rglob("*")) == before  # nothing of it touched
    finally:
        holder.kill()  # kill -9: no clean-up runs, the lock file stays
        holder.communicate()
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    taken = subprocess.run([sys.executable, "-c", "import sys; from tinylm.runlock import acquire; "
                            "acquire(sys.argv[1])", str(run)], capture_output=True, text=True, cwd=REPO)
    assert taken.returncode == 0
    assert taken.stderr.strip() == (f"{run}: took over the lock of a run that is gone (PID {holder.pid}, "
                                    f"no longer running)")
    assert not (run / ".lock").exists()  # let go when that process ended


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(trained, small_text, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0] / "checkpoints", run / "checkpoints")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a PID whose process has ended
    leftovers = [run / "checkpoints" / f"last.ckpt.{gone}.tmp", run / "checkpoints" / "last.ckpt.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    from tinylm.config import TrainConfig  # here: Lightning loads only for the tests that train
    from tinylm.train import fit
    values = compose(*quick_overrides(small_text, run, "trainer.max_steps=41", "logger=none",
                                      f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"))
    fit(TrainConfig.from_dict(values))
    assert not any(path.exists() for path in leftovers)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_start_up_is_one_line_and_leaves_nothing(small_text, tmp_path) -> None:
    for i, moment in enumerate(sorted(random.uniform(0.2, 6.0) for _ in range(3))):
        work = tmp_path / f"at-{moment:.2f}"
        work.mkdir()
        named = ["hydra.run.dir=run"] if i % 2 else []  # locked (and made) before Hydra starts
        process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "train.py"), f"data.source={small_text}", *named,
             "trainer.max_steps=100000", "callbacks.progress_bar.refresh_rate=0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        time.sleep(moment)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert process.returncode == 130, stderr[-2000:]
        assert "Traceback" not in stderr and lines[-1].startswith("stopped: "), stderr[-2000:]
        if "training stopped after step" not in lines[-1]:  # stopped before training began
            assert lines == [lines[-1]] and list(work.iterdir()) == [], (moment, stderr[-2000:])
