"""One training run: config → data module + model → Lightning module → Trainer → fit.

``train`` takes the resolved config as plain values. It validates all of it before importing
torch or Lightning (seconds of start-up), so a mistyped key costs the user no wait.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinylm.config import ConfigError, TrainConfig, as_plain

if TYPE_CHECKING:
    from lightning import Callback, Trainer

    from tinylm.lit import LitLM

# Model settings a resumed run may change: they alter no parameter.
RESUMABLE_CHANGES = ("attention", "dropout")


def check(values: dict[str, Any]) -> TrainConfig:
    """``values`` (the resolved Hydra config) checked as far as can be done in seconds, without
    torch: every setting, that ``ckpt_path`` exists, and that ``data.source`` can be had."""
    from tinylm.sources import check_source

    config = TrainConfig.from_dict(values)
    if config.ckpt_path is not None and not Path(config.ckpt_path).expanduser().is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {Path(config.ckpt_path).resolve()}")
    check_source(config.data)
    return config


def train(values: dict[str, Any]) -> float | None:
    """Train as ``values`` (the resolved Hydra config) say; return the best val/loss."""
    config = check(values)
    trainer, _ = fit(config, values)
    best = trainer.checkpoint_callback.best_model_score
    return float(best) if best is not None else None


def fit(config: TrainConfig, values: dict[str, Any], extra_callbacks: Sequence[Callback] = ()
        ) -> tuple[Trainer, LitLM]:
    """Build everything ``config`` describes and train; returns the Trainer and the LitLM.

    ``values`` is the same config as plain values: it is logged as the run's hyperparameters.
    ``extra_callbacks`` join the standard ones (benchmarks add a timer this way).
    Raises ``Interrupted`` (on rank 0) when a signal stopped training, after saving last.ckpt.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from tinylm.callbacks import HParamsLogger, LastCheckpoint, TokensPerSecond, flatten
    from tinylm.data import CharDataModule
    from tinylm.lit import LitLM
    from tinylm.resilience import AtomicCheckpointIO, StepSeed, StopOnNonFiniteLoss, StopOnSignal

    _check_trainer_keys(config.trainer, L.Trainer)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls where the GPU has them
    L.seed_everything(config.seed, workers=True, verbose=False)

    data = CharDataModule(config.data, block_size=config.model.block_size, seed=config.seed)
    data.prepare()  # load and encode now: data errors come before the model is built
    vocab = data.tokenizer.to_list()
    if config.ckpt_path is not None:
        _check_resumable(config, vocab)
    module = LitLM(model=as_plain(config.model), optim=as_plain(config.optim), vocab=vocab,
                   max_steps=config.max_steps)

    output_dir = Path(config.paths.output_dir)
    last = LastCheckpoint(output_dir / "checkpoints", config.callbacks.checkpoint.every_n_steps)
    stop = StopOnSignal(last)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best", monitor="val/loss",
                        mode="min", save_top_k=1, save_on_train_epoch_end=False,
                        auto_insert_metric_name=False, enable_version_counter=False),
        last,
        StepSeed(config.seed),
        stop,
        StopOnNonFiniteLoss(last, config.optim.lr),
        TokensPerSecond(),
        *extra_callbacks,
    ]
    refresh_rate = config.callbacks.progress_bar.refresh_rate
    if refresh_rate > 0:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh_rate))
    logger: TensorBoardLogger | bool = False
    if config.logger.kind == "tensorboard":
        logger = TensorBoardLogger(save_dir=output_dir, name=config.logger.subdir, version="",
                                   default_hp_metric=False)
        callbacks.append(HParamsLogger(flatten(values)))

    trainer = L.Trainer(**config.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                        default_root_dir=output_dir, enable_progress_bar=refresh_rate > 0)
    trainer.fit(module, datamodule=data, ckpt_path=config.ckpt_path, weights_only=True)
    # One process reports (and exits 128+N); the others end quietly: Lightning's launcher
    # kills all processes when one of the ranks it started exits non-zero.
    if (interrupted := stop.stopped()) and trainer.is_global_zero:
        raise interrupted
    return trainer, module


def _check_trainer_keys(trainer_args: dict[str, Any], trainer_class: type) -> None:
    accepted = inspect.signature(trainer_class.__init__).parameters
    for key in trainer_args:
        if key not in accepted:
            raise ConfigError(
                f"trainer.{key}: not an argument of lightning.Trainer; "
                f"see https://lightning.ai/docs/pytorch/stable/common/trainer.html"
            )


def _check_resumable(config: TrainConfig, vocab: list[str]) -> None:
    """Refuse, with the keys to fix, a checkpoint that this run's model or data cannot continue."""
    from tinylm.checkpoint import model_config_of, read_checkpoint

    checkpoint = read_checkpoint(config.ckpt_path, key="ckpt_path")
    saved = model_config_of(checkpoint)
    differences = [
        f"model.{f.name}={getattr(saved, f.name)!r} there, {getattr(config.model, f.name)!r} here"
        for f in dataclasses.fields(saved)
        if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config.model, f.name)
    ]
    if differences:
        raise ConfigError(
            f"ckpt_path: the checkpoint's model differs from this run's ({'; '.join(differences)}); "
            f"pass the same model overrides as the run that wrote it"
        )
    saved_vocab = checkpoint["hyper_parameters"]["vocab"]
    if saved_vocab != vocab:
        raise ConfigError(
            f"ckpt_path: the checkpoint's vocabulary ({len(saved_vocab)} characters) differs from "
            f"this run's data.source ({len(vocab)} characters); resume with the data it was trained on"
        )
