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


def train(values: dict[str, Any], overrides: Sequence[str] = (), sweep: bool = False) -> float | None:
    """Train as ``values`` (the resolved Hydra config) say; return the best val/loss.

    ``overrides``: the command line's ``key=value`` overrides; ``sweep``: this run is one job
    of a Hydra sweep (``-m``).
    """
    config = check(values)
    if sweep:
        check_sweep_strategy(config.trainer)
    trainer, _ = fit(config, values, overrides)
    best = trainer.checkpoint_callback.best_model_score
    return float(best) if best is not None else None


def fit(config: TrainConfig, values: dict[str, Any], overrides: Sequence[str] = (),
        extra_callbacks: Sequence[Callback] = ()) -> tuple[Trainer, LitLM]:
    """Build everything ``config`` describes and train; returns the Trainer and the LitLM.

    ``values`` is the same config as plain values: it is logged as the run's hyperparameters,
    those that ``overrides`` set first. ``extra_callbacks`` join the standard ones
    (benchmarks add a timer this way). Raises ``Interrupted`` (on rank 0) when a signal stopped
    training, after saving last.ckpt.
    """
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from tinylm.callbacks import StopOnSignal, build_callbacks
    from tinylm.checkpoint_io import AtomicCheckpointIO
    from tinylm.data import CharDataModule
    from tinylm.lit import LitLM

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
    callbacks = build_callbacks(config, values, data, output_dir, overrides, extra_callbacks)
    stop = next(callback for callback in callbacks if isinstance(callback, StopOnSignal))
    refresh_rate = config.callbacks.progress_bar.refresh_rate
    logger: TensorBoardLogger | bool = False
    if config.logger.kind == "tensorboard":
        logger = TensorBoardLogger(save_dir=output_dir, name=config.logger.subdir, version="",
                                   default_hp_metric=False)

    trainer = L.Trainer(**config.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                        default_root_dir=output_dir, enable_progress_bar=refresh_rate > 0)
    trainer.fit(module, datamodule=data, ckpt_path=config.ckpt_path, weights_only=True)
    # One process reports (and exits 128+N); the others end quietly: Lightning's launcher
    # kills all processes when one of the ranks it started exits non-zero.
    if (interrupted := stop.stopped()) and trainer.is_global_zero:
        raise interrupted
    return trainer, module


# Strategies that start their processes without re-running the script.
IN_PROCESS_LAUNCH = ("spawn", "fork", "notebook")


def check_sweep_strategy(trainer_args: dict[str, Any]) -> None:
    """Refuse DDP that re-runs the script in a sweep: each process would start the whole sweep.

    Lightning's ``ddp`` launches processes 1..N-1 by running ``sys.argv`` again, ``-m`` and all
    (lightning-hydra-template issue 393); ``ddp_spawn`` starts them inside this job.
    """
    strategy = str(trainer_args.get("strategy", "auto"))
    devices = trainer_args.get("devices", "auto")
    several = (isinstance(devices, int) and (devices > 1 or devices == -1)) or (
        isinstance(devices, list | tuple) and len(devices) > 1)
    relaunches = (strategy.startswith("ddp") and not any(k in strategy for k in IN_PROCESS_LAUNCH)) or (
        strategy == "auto" and several)  # auto picks ddp for several devices
    if relaunches:
        raise ConfigError(
            f"trainer.strategy: {strategy} with trainer.devices={devices} re-runs this script in every "
            f"process, which under -m starts the whole sweep again; use trainer.strategy=ddp_spawn"
        )


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
