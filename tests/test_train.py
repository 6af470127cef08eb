"""End to end with a real Trainer: files, TensorBoard scalars, resume, checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose, quick_overrides, run_script, scalars

import tinylm
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.train import fit, train


def test_run_writes_checkpoints_and_tensorboard_scalars(trained) -> None:
    run_dir, trainer, _ = trained
    assert trainer.global_step == 40
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    logged = scalars(run_dir)
    for tag in ("train/loss", "train/lr", "train/tokens_per_sec", "val/loss", "val/bpc", "val/ppl"):
        assert logged.get(tag), f"no {tag} in the event file"
    assert len(logged["val/loss"]) == 2  # at steps 20 and 40
    for (_, loss), (_, bpc) in zip(logged["val/loss"], logged["val/bpc"], strict=True):
        assert bpc == pytest.approx(loss / 0.6931471805599453, rel=1e-5)


def test_loss_falls(trained) -> None:
    logged = scalars(trained[0])
    train_loss, val_loss = [v for _, v in logged["train/loss"]], [v for _, v in logged["val/loss"]]
    assert train_loss[-1] < train_loss[0] - 0.5
    assert val_loss[-1] < val_loss[0]


def test_learning_rate_warms_up_then_decays(trained) -> None:
    lrs = [v for _, v in scalars(trained[0])["train/lr"]]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[-1] < lrs[peak]


def test_load_checkpoint_rebuilds_the_model_from_the_file_alone(trained) -> None:
    run_dir, _, module = trained
    model, tokenizer = tinylm.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert tokenizer.vocab == module.tokenizer.vocab
    idx = torch.tensor([tokenizer.encode("ROMEO:\nWhat say")])
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=1e-6)


def test_checkpoint_hyperparameters_are_plain_python(trained) -> None:
    checkpoint = torch.load(trained[0] / "checkpoints" / "last.ckpt", weights_only=True)

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, bool | int | float | str)

    assert plain(checkpoint["hyper_parameters"])
    assert checkpoint["global_step"] == 40


def test_resume_continues_the_global_step(trained, small_text: Path, tmp_path: Path) -> None:
    run_dir = trained[0]
    last = run_dir / "checkpoints" / "last.ckpt"
    values = compose(*quick_overrides(small_text, tmp_path, f"ckpt_path={last}", "trainer.max_steps=60"))
    trainer, _ = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 60
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 60
    logged = scalars(tmp_path)
    assert min(s for s, _ in logged["train/loss"]) >= 40  # no step repeated
    # The best validation loss so far counts the validations before the resume too.
    before = [v for _, v in scalars(run_dir)["val/loss"]]
    after = [v for _, v in logged["val/loss"]]
    assert logged["hp/best_val_loss"][-1][1] == pytest.approx(min(before + after))


def test_resume_with_a_different_shape_is_refused(trained, small_text: Path, tmp_path: Path) -> None:
    last = trained[0] / "checkpoints" / "last.ckpt"
    values = compose(*quick_overrides(small_text, tmp_path, f"ckpt_path={last}", "model.layers=3"))
    with pytest.raises(ConfigError, match=r"ckpt_path: .*model.layers=2 there, 3 here"):
        train(TrainConfig.from_dict(values))


def test_missing_resume_checkpoint_is_refused(small_text: Path, tmp_path: Path) -> None:
    values = compose(*quick_overrides(small_text, tmp_path, f"ckpt_path={tmp_path / 'no.ckpt'}"))
    with pytest.raises(ConfigError, match="ckpt_path: no checkpoint file at"):
        train(TrainConfig.from_dict(values))


def test_training_runs_with_validation_off(small_text: Path, tmp_path: Path) -> None:
    values = compose(*quick_overrides(small_text, tmp_path, "trainer.limit_val_batches=0",
                                      "trainer.max_steps=5", "model.attention=explicit"))
    trainer, _ = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 5
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


@pytest.mark.slow
def test_train_script_end_to_end(small_text: Path, tmp_path: Path) -> None:
    """What a user runs: scripts/train.py, then a resume from its last.ckpt."""
    run_dir = tmp_path / "run"
    args = [f"data.source={small_text}", "trainer.max_steps=30", "trainer.val_check_interval=15",
            "trainer.limit_val_batches=5", f"hydra.run.dir={run_dir}"]
    first = run_script("train.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / run_dir.name).glob("events.out.tfevents.*"))
    assert {"train/loss", "val/loss", "val/bpc"} <= scalars(run_dir).keys()
    resume = run_script("train.py", *args, "trainer.max_steps=45",
                        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 45


@pytest.mark.slow
def test_fast_dev_run_writes_nothing(small_text: Path, tmp_path: Path) -> None:
    """debug=fdr, as the README says: 3 steps, and nothing written (no outputs/, no log)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_script("train.py", "debug=fdr", f"data.source={small_text}",
                        "callbacks.progress_bar.refresh_rate=0", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(workdir.iterdir()) == []
    assert result.stdout.strip().splitlines()[-1] == "fast dev run: 3 steps, nothing written"


def test_bf16_mixed_precision_trains_with_the_fused_optimizer(small_text: Path, tmp_path: Path) -> None:
    values = compose(*quick_overrides(small_text, tmp_path, "trainer.precision=bf16-mixed",
                                      "trainer.max_steps=4", "trainer.limit_val_batches=1",
                                      "trainer.val_check_interval=4", "logger=none"))
    trainer, module = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())
