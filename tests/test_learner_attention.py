"""Training with a learner's attention class: it trains like tinylm's own explicit path, its
attention shows in TensorBoard, a non-causal class is refused, and a checkpoint that names the
class loads only when the user names the file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose, quick_overrides, run_script, scalars

from tinylm.checkpoint import CheckpointError, load_checkpoint

CORRECT = REPO / "docs" / "attention-examples" / "correct.py"


@pytest.fixture(scope="module")
def two_runs(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 steps with the correct example's class, and 40 with tinylm's explicit path."""
    from tinylm.config import TrainConfig
    from tinylm.train import fit

    runs = {}
    for name, attention in [("learner", f"{CORRECT}:MultiHeadAttention"), ("explicit", "explicit")]:
        run_dir = tmp_path_factory.mktemp(name)
        overrides = quick_overrides(small_text, run_dir, f"model.attention={attention}")
        fit(TrainConfig.from_dict(compose(*overrides)))
        runs[name] = run_dir
    return runs


def test_the_correct_example_trains_like_the_explicit_path(two_runs: dict[str, Path]) -> None:
    learner, explicit = (dict(scalars(two_runs[n])["val/loss"]) for n in ("learner", "explicit"))
    assert sorted(learner) == sorted(explicit) and len(learner) == 2
    first, last = (learner[step] for step in sorted(learner))
    assert last < first < math.log(65)  # it learns
    assert abs(last - explicit[max(explicit)]) < 0.05, (learner, explicit)


def test_its_attention_maps_and_head_scores_are_in_tensorboard(two_runs: dict[str, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(two_runs["learner"] / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "attention/layer_1/head_3" in events.Tags()["images"]
    assert "heads/prefix_matching/layer_1_head_3" in scalars(two_runs["learner"])


def test_its_checkpoint_loads_only_with_the_file_named(two_runs: dict[str, Path]) -> None:
    last = two_runs["learner"] / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"^attention_file: this checkpoint's attention is the class "
                                              r"MultiHeadAttention of .*correct\.py; .*name the file"):
        load_checkpoint(last)
    model, _ = load_checkpoint(last, attention_file=str(CORRECT))
    ids = model.generate(torch.tensor([[0]]), 10, temperature=0)  # no KV cache: the window each step
    assert ids.shape == (1, 11)
    sampled = run_script("sample.py", f"ckpt={two_runs['learner']}", "max_new_tokens=5")
    assert sampled.returncode == 2 and len(sampled.stderr.splitlines()) == 1
    assert sampled.stderr.startswith("error: attention_file: this checkpoint's attention is the class")


def test_a_class_that_sees_the_future_is_refused_before_training(small_text: Path, tmp_path: Path) -> None:
    no_mask = REPO / "docs" / "attention-examples" / "no_mask.py"
    overrides = quick_overrides(small_text, tmp_path / "run", f"model.attention={no_mask}:MultiHeadAttention",
                                script=True)
    result = run_script("train.py", *overrides, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: model.attention: {no_mask}:MultiHeadAttention is refused")
    assert "no causal mask" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_learner_run_resumes_with_its_class_and_only_with_it(two_runs: dict[str, Path], small_text: Path,
                                                               tmp_path: Path) -> None:
    last = two_runs["learner"] / "checkpoints" / "last.ckpt"
    learner = f"model.attention={CORRECT}:MultiHeadAttention"
    resumed = run_script("train.py", *quick_overrides(small_text, tmp_path / "resumed", f"ckpt_path={last}",
                                                      learner, "trainer.max_steps=60", script=True))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [step for step, _ in scalars(tmp_path / "resumed")["val/loss"]] == [60]  # on from step 40

    without = run_script("train.py", *quick_overrides(small_text, tmp_path / "without", f"ckpt_path={last}",
                                                      "trainer.max_steps=60", script=True))
    assert without.returncode == 2 and len(without.stderr.strip().splitlines()) <= 2, without.stderr[-3000:]
    assert without.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path: the checkpoint was trained with model.attention={CORRECT}:MultiHeadAttention, "
        f"this run uses model.attention=sdpa; resume with model.attention={CORRECT}:MultiHeadAttention")
    assert not (tmp_path / "without").exists()
