"""Training with a learner's attention class: it trains like tinylm's own explicit path, its
attention shows in TensorBoard, a non-causal class is refused, and a checkpoint that names the
class loads only when the user names the file."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose, quick_overrides, run_script, scalars

from tinylm.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from tinylm.learner.source import AttentionSource

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
    logged = scalars(two_runs["learner"])
    assert "heads/prefix_matching/layer_1_head_3" in logged
    assert "heads/ablation/layer_1_head_3" in logged  # its W_O reads the heads side by side


def test_its_checkpoint_loads_only_with_the_file_named(two_runs: dict[str, Path]) -> None:
    last = two_runs["learner"] / "checkpoints" / "last.ckpt"
    record = AttentionSource.from_checkpoint(read_checkpoint(last))
    assert record.sha256 == hashlib.sha256(CORRECT.read_bytes()).hexdigest()
    assert (two_runs["learner"] / record.path).resolve() == CORRECT and record.absolute == str(CORRECT)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(last)
    assert str(refused.value) == (
        "attention_file: this checkpoint's attention is the class MultiHeadAttention of a file of yours; "
        f"tinylm imports no code a checkpoint names; attention_file={CORRECT} has the sha256 it was trained "
        f"with ({record.sha256[:16]}); pass it if you trust it: tinylm will execute that file")
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


def test_another_attention_file_is_one_line_naming_both_hashes(two_runs: dict[str, Path], tmp_path: Path
                                                               ) -> None:
    last = two_runs["learner"] / "checkpoints" / "last.ckpt"
    edited = tmp_path / "correct.py"  # the same names, other maths: it would load and sample other text
    edited.write_text(CORRECT.read_text().replace("math.sqrt(self.d_k)", "self.d_k"))
    trained = hashlib.sha256(CORRECT.read_bytes()).hexdigest()[:16]
    now = hashlib.sha256(edited.read_bytes()).hexdigest()[:16]
    refused = run_script("sample.py", f"ckpt={last}", f"attention_file={edited}", "max_new_tokens=5")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"error: attention_file: {edited} has sha256 {now}, the checkpoint was trained with a file of sha256 "
        f"{trained}; name that file, or load this one knowingly with attention_file_changed=true"]
    assert load_checkpoint(last, attention_file=str(edited), attention_file_changed=True)  # knowingly

    other = tmp_path / "other.py"  # other parameter names: one line, not load_state_dict's report
    other.write_text(CORRECT.read_text().replace("W_Q", "query"))
    with pytest.raises(CheckpointError, match=r"^attention_file: the class MultiHeadAttention in .*other\.py "
                                              r"holds other parameters than the checkpoint \(missing: "):
        load_checkpoint(last, attention_file=str(other), attention_file_changed=True)
