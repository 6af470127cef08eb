"""experiment=induction at reduced size, as a user runs it: a real process trains until the
induction heads form; its TensorBoard, closing line, explorer and ``tinylm patch`` say where and
which. The sizes: docs/attention.md#induction-heads-forming."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import scalars

from tinylm.attention.render import render_attention
from tinylm.cli import main
from tinylm.command_configs import AttentionScriptConfig

STEPS = 2000  # the heads form about halfway through (docs/attention.md): the rise well inside the run
# The preset at a quarter of its attention cost: context 64 with repeats of 16, width 64, half of
# each batch repeated and a higher rate, so the phase change comes in a few hundred steps.
REDUCED = ["model.d_model=64", "model.block_size=64", "data.repeat_length=16", "data.repeat_fraction=0.5",
           "callbacks.attention.repeat_length=16", "optim.lr=3e-3", "optim.min_lr=3e-3",
           f"trainer.max_steps={STEPS}", "trainer.val_check_interval=50", "trainer.limit_val_batches=2",
           "callbacks.samples.enabled=false", "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    run_dir = tmp_path_factory.mktemp("induction")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tinylm", "train", "experiment=induction", *REDUCED,
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir, done.stdout, time.monotonic() - started


@pytest.mark.slow
def test_the_phase_change_shows_in_the_scores_and_the_closing_line(induction_run) -> None:
    run_dir, stdout, seconds = induction_run
    logged = scalars(run_dir)
    assert "data: 8 of each training batch's 16 windows are a random string of 16 characters" in stdout
    prefix_tags = [tag for tag in logged if tag.startswith("heads/prefix_matching/")]
    assert len(prefix_tags) == 2 * 4
    for name in ("duplicate_token", "copying", "prev_token"):
        assert f"heads/{name}/layer_1_head_3" in logged
    steps = [step for step, _ in logged["icl/induction_loss"]]
    best = [max(dict(logged[tag])[step] for tag in prefix_tags) for step in steps]
    loss = [value for _, value in logged["icl/induction_loss"]]
    assert "icl/score" in logged
    # Within a fifth of the run: the best prefix matching from < 0.1 to > 0.5, the loss on the
    # second copy down by a nat or more.
    window = STEPS // 5
    curve = list(zip(steps, best, loss, strict=True))
    assert any(best[i] < 0.1 and best[j] > 0.5 and loss[i] - loss[j] >= 1.0 and steps[j] - steps[i] <= window
               for i in range(len(steps)) for j in range(i + 1, len(steps))), curve
    line = re.search(r"induction heads formed around step (\d+): layer 1 head (\d) \(prefix matching "
                     r"[\d.]+ → ([\d.]+)\), helped by layer 0 head \d \(previous token [\d.]+ → [\d.]+\)",
                     stdout)
    assert line is not None, stdout[-1500:]
    assert float(line[3]) > 0.5
    print(f"reduced experiment=induction: {seconds:.0f} s, formed at step {line[1]}; "
          f"{[(step, round(b, 2), round(v, 2)) for step, b, v in curve]}")


@pytest.mark.slow
def test_the_explorer_marks_the_step_and_patching_finds_the_head(
        induction_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, stdout, _ = induction_run
    step, head = re.search(r"formed around step (\d+): layer 1 head (\d)", stdout).groups()
    report = render_attention(AttentionScriptConfig(ckpt=str(run_dir), out=str(tmp_path / "run.html")))
    assert f"formed around step {step}" in report and "marked on the slider" in report
    assert '"marks": [{"index": ' in (tmp_path / "run.html").read_text()

    letters = random.Random(0).sample("abcdefghijklmnopqrstuvwxyz", 16)
    clean = "".join(letters) * 2
    corrupt = "".join([*letters[:10], "Q", *letters[11:]]) + "".join(letters)  # after letters[9]: Q
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI hands Hydra a command line there
    main(["patch", f"ckpt={run_dir}", f"clean={clean[:26]}", f"corrupt={corrupt[:26]}",
          f"out={tmp_path / 'patch.png'}"])
    out = capsys.readouterr().out
    top = re.search(r"most recovered: (.*)", out)[1]
    assert f"layer 1 head {head}" in top, out
    assert (tmp_path / "patch.png").stat().st_size > 0
