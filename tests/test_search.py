"""A search over settings with Hydra's Optuna sweeper (``tinylm[search]``): ``hparams_search=``
presets minimise each trial's best val/bpc; the trials are ordinary runs (named by what they
tried, in TensorBoard and ``tinylm compare``), and the search ends with its best trial as a
command line to rerun."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import scalars, tinylm_command

from tinylm.cli import check_command

SEARCHED = ("optim.lr", "model.d_model", "model.heads", "model.dropout")


@pytest.mark.slow
def test_a_four_trial_search_ends_with_its_best_trial_as_a_command(small_text: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    given = [f"data.source={small_text}", "model.layers=1", "model.block_size=32", "data.batch_size=8",
             "trainer.max_steps=10", "trainer.val_check_interval=5", "callbacks.progress_bar.refresh_rate=0",
             "callbacks.samples.enabled=false", "callbacks.attention.enabled=false",
             "trainer.enable_model_summary=false", "trainer.accelerator=cpu"]
    result = subprocess.run(tinylm_command("train", "hparams_search=shakespeare", "hydra.sweeper.n_trials=4",
                                           f"hydra.sweep.dir={sweep}", *given),
                            capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [t.name[:2] for t in trials] == ["0_", "1_", "2_", "3_"]
    for trial in trials:  # named by what it tried, in the search's order
        assert re.fullmatch(r"\d_optim\.lr=[\d.e-]+,model\.d_model=\d+,model\.heads=\d,"
                            r"model\.dropout=[\d.e-]+", trial.name), trial.name
    best_bpc = {t: min(v for _, v in scalars(t)["val/bpc"]) for t in trials}
    assert all("hp/val_bpc" in scalars(t) for t in trials)  # TensorBoard's HPARAMS tab
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(best_bpc.values()), abs=1e-4)  # it minimised val/bpc

    # The closing lines: the best trial, and a command that trains it again.
    best_line, again = result.stdout.strip().splitlines()[-2:]
    best = results["best_value"]
    (best_trial,) = [t for t, bpc in best_bpc.items() if math.isclose(bpc, best, abs_tol=1e-4)]
    assert best_line == f"best trial: val/bpc {best:.4f} ({best_trial.relative_to(tmp_path)})"
    command = shlex.split(again.removeprefix("train it again: "))
    assert command[:2] == ["tinylm", "train"] and command[2:2 + len(given)] == given
    rerun = dict(a.split("=", 1) for a in command[2 + len(given):])
    assert list(rerun) == list(SEARCHED)
    assert {k: float(v) for k, v in rerun.items()} == pytest.approx(results["best_params"])
    check_command(command[1:])  # a command tinylm takes

    compared = subprocess.run(tinylm_command("compare", str(sweep), "sort=val_bpc"), capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert all(t.name[:30] in compared.stdout for t in trials), compared.stdout
