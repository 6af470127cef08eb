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
from tinylm.rundir import RunDir

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

    events = EventAccumulator(str(RunDir(two_runs["learner"]).tensorboard), size_guidance={"images": 0})
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


@pytest.mark.parametrize("example, extra, says", [
    ("no_mask.py", [], "is refused, a model that sees the future learns nothing useful; causal: output "),
    # right at T=7, wrong at this run's block_size
    ("mask_buffer_short.py", ["model.block_size=48"],
     "is refused before training: context: mask buffer tril built for 32 positions; the model trains "
     "with 48"),
])
def test_a_class_that_fails_is_refused_before_training(small_text: Path, tmp_path: Path, example: str,
                                                       extra: list[str], says: str) -> None:
    target = f"{REPO / 'docs' / 'attention-examples' / example}:MultiHeadAttention"
    overrides = quick_overrides(small_text, tmp_path / "run", f"model.attention={target}", *extra,
                                script=True)
    result = run_script("train.py", *overrides, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: model.attention: {target} {says}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_constructor_argument_is_passed_to_training_or_asked_for(small_text: Path, tmp_path: Path
                                                                   ) -> None:
    from tinylm.config import TrainConfig
    from tinylm.errors import ConfigError
    from tinylm.train import check_learner_attention, fit

    path = tmp_path / "odd.py"
    path.write_text(CORRECT.read_text().replace("def __init__(self, d_model, num_heads):",
                                                "def __init__(self, d_model, num_heads, scale):\n"
                                                "        self.scale = scale"))
    overrides = quick_overrides(small_text, tmp_path / "run", f"model.attention={path}:MultiHeadAttention")
    with pytest.raises(ConfigError, match=r"^model.attention: building MultiHeadAttention\(d_model=64, "
                                          r"num_heads=4\) \(pass other arguments as "
                                          r"model.attention_kwargs.NAME=VALUE\): TypeError: "):
        check_learner_attention(TrainConfig.from_dict(compose(*overrides)))
    given = TrainConfig.from_dict(compose(*overrides, "model.attention_kwargs.scale=0.5"))
    assert given.model.attention_kwargs == {"scale": 0.5}
    assert check_learner_attention(given).model == given.model
    # recorded in the checkpoint and used on load, without naming it again
    fit(TrainConfig.from_dict(compose(*overrides, "model.attention_kwargs.scale=0.5", "trainer.max_steps=2",
                                      "trainer.limit_val_batches=0")))
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", attention_file=str(path))
    assert model.config.attention_kwargs == {"scale": 0.5} and model.blocks[0].attn.inner.scale == 0.5


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
                                              r"holds other parameters than the checkpoint "
                                              r"\(not in the checkpoint: "):
        load_checkpoint(last, attention_file=str(other), attention_file_changed=True)

    classless = tmp_path / "classless.py"  # the trained class is not in it: one line, before running it
    classless.write_text("import torch\n\nclass Head(torch.nn.Module):\n    pass\n")
    refused = run_script("sample.py", f"ckpt={last}", f"attention_file={classless}",
                         "attention_file_changed=true", "max_new_tokens=5")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"error: attention_file: {classless} has no class MultiHeadAttention, the class the checkpoint was "
        f"trained with (it defines Head); name the file that defines it"]


ONE_HEAD = """
import torch
from torch import nn


class SimpleSelfAttention(nn.Module):
    def __init__(self, input_dim):
        super().__init__()
        self.query_layer = nn.Linear(input_dim, input_dim)
        self.key_layer = nn.Linear(input_dim, input_dim)
        self.value_layer = nn.Linear(input_dim, input_dim)

    def forward(self, x):
        T = x.size(1)
        Q, K, V = self.query_layer(x), self.key_layer(x), self.value_layer(x)
        scores = Q @ K.transpose(-2, -1) / Q.size(-1) ** 0.5
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(scores, dim=-1) @ V
"""


def test_a_one_head_class_in_a_four_head_model_is_drawn_from_its_own_weights(
        small_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tinylm.attention.maps import attention_maps
    from tinylm.config import TrainConfig
    from tinylm.learner.module import attention_for
    from tinylm.model import TransformerLM
    from tinylm.train import check_learner_attention

    path = tmp_path / "one_head.py"
    path.write_text(ONE_HEAD)
    overrides = quick_overrides(small_text, tmp_path / "run", f"model.attention={path}:SimpleSelfAttention",
                                "model.heads=4")
    config = check_learner_attention(TrainConfig.from_dict(compose(*overrides)))
    assert config.model.heads == 1
    assert "so the model is built with model.heads=1" in capsys.readouterr().out
    model = TransformerLM(config.model, 37, attention=attention_for(config.model))
    ids = torch.randint(0, 37, (1, 9))
    maps = attention_maps(model, ids)  # (L, 1, 1, T, T): what TensorBoard and `tinylm attention` draw
    assert maps.shape == (2, 1, 1, 9, 9)
    x = model.token_embedding(ids) + model.position_embedding(torch.arange(9))
    first = model.blocks[0].attn.inner
    with torch.no_grad():
        h = model.blocks[0].ln_1(x)
        scores = first.query_layer(h) @ first.key_layer(h).transpose(-2, -1) / 64 ** 0.5
        own = scores.masked_fill(torch.triu(torch.ones(9, 9, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    assert torch.allclose(maps[0, 0, 0], own[0], atol=1e-6)
