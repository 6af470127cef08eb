"""Lightning callbacks for bookkeeping: the last checkpoint, throughput, hyperparameters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

HP_METRICS = ("hp/val_loss", "hp/val_bpc")


class LastCheckpoint(Callback):
    """Keeps ``<dirpath>/last.ckpt`` current: after each validation, every ``every_n_steps``
    optimizer steps if set, and when training ends, so a resume never repeats work.

    It only ever holds good weights: all finite, and giving a finite loss (the validation loss,
    or for a periodic save the loss on the batch just trained on). So when training diverges,
    the file keeps the last state worth resuming from.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.saved_step: int | None = None  # the step of the last save in this run

    def save(self, trainer: L.Trainer, loss: torch.Tensor | None = None) -> None:
        """Write last.ckpt now, unless it holds this step already or the weights are not good
        (not all finite, or ``loss``, a loss they gave, not finite). Every process must call
        it: they agree on whether to save, and rank 0 writes."""
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if self.saved_step == trainer.global_step:
            return
        parameters = trainer.lightning_module.parameters()
        good = all(bool(torch.isfinite(p).all()) for p in parameters) and (
            loss is None or bool(torch.isfinite(loss))
        )
        if trainer.strategy.reduce_boolean_decision(good, all=True):
            trainer.save_checkpoint(self.path, weights_only=False)  # full state, to resume
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and self.saved_step != step:
            self.save(trainer, _loss_of_updated_weights(pl_module, batch))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, trainer.callback_metrics.get("val/loss"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)


def _loss_of_updated_weights(module: L.LightningModule, batch: Any) -> torch.Tensor:
    """The loss the weights give on the batch they were just updated with. Weights that an
    update has blown up show it here, where the training loss would show it one step later."""
    training = module.training
    module.eval()
    with torch.no_grad():
        loss = module.loss(batch)
    module.train(training)
    return loss


class TokensPerSecond(Callback):
    """Logs ``train/tokens_per_sec`` (all processes together), shown in the progress bar.

    It is measured over the last ``window`` steps, so it reads the steady state, not start-up.
    """

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._times = [*self._times[-self.window :], time.perf_counter()]
        if len(self._times) > 1:
            tokens = batch[0].numel() * trainer.world_size * (len(self._times) - 1)
            rate = tokens / (self._times[-1] - self._times[0])
            pl_module.log("train/tokens_per_sec", rate, prog_bar=True)


class HParamsLogger(Callback):
    """Writes the run's flattened config to TensorBoard's HPARAMS tab, declaring the real
    metrics logged during validation (``hp/val_loss``, ``hp/val_bpc``) instead of a -1
    placeholder."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.utils.tensorboard.summary import hparams

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                experiment, start, end = hparams(self.params, dict.fromkeys(HP_METRICS, 0.0))
                for summary in (experiment, start, end):
                    logger.experiment.file_writer.add_summary(summary)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"heads": 4}} → {"model.heads": 4}; lists and None become strings, as
    TensorBoard's HPARAMS tab takes only numbers, strings and booleans."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
