"""Lightning callbacks for bookkeeping: the last checkpoint, training metrics, hyperparameters."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from tinylm.hparams import experiment_summary, session_end_summary, session_start_summary


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


class TrainingMetrics(Callback):
    """Writes the training scalars every ``trainer.log_every_n_steps`` steps, straight to the
    loggers: ``train/loss`` (the mean over those steps), ``train/lr``, ``train/tokens_per_sec``
    (all processes together, over the same steps) and ``hp/tokens_per_sec`` (the mean over the
    whole run, for the HPARAMS tab). Time spent validating counts in neither speed.

    Why not ``LightningModule.log``: each call costs about 1.4 ms on this CPU with Lightning 2.6
    (it wraps every value for epoch-level reduction we do not use); three a step were 4% of a
    nano step. Here a step costs one tensor addition, and a write every N steps one ``.item()``.
    The latest values also feed the progress bar (``ProgressBar``).
    """

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self._loss_sum: Any = 0.0
        self._steps = self._tokens = self._run_tokens = 0
        self._seconds = self._run_seconds = 0.0
        self._last_step_end: float | None = None
        self._lr = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step uses

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._loss_sum = self._loss_sum + outputs["loss"].detach()
        self._steps += 1
        if self._last_step_end is not None:  # a step's time runs from the previous step's end
            tokens = batch[0].numel() * trainer.world_size
            self._tokens, self._run_tokens = self._tokens + tokens, self._run_tokens + tokens
            elapsed = now - self._last_step_end
            self._seconds, self._run_seconds = self._seconds + elapsed, self._run_seconds + elapsed
        self._last_step_end = now
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._write(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step_end = None  # the next step's time would include this validation

    def _write(self, trainer: L.Trainer) -> None:
        metrics = {"train/loss": float(self._loss_sum) / self._steps,
                   "train/lr": self._lr}
        if self._seconds > 0:
            metrics["train/tokens_per_sec"] = self._tokens / self._seconds
            metrics["hp/tokens_per_sec"] = self._run_tokens / self._run_seconds
        self.latest = metrics
        # Logged at global_step - 1, where Lightning logs the validation of that same step.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)
        self._loss_sum, self._steps, self._tokens, self._seconds = 0.0, 0, 0, 0.0


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss and speed of ``TrainingMetrics``."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's version number: always "" in tinylm
        for callback in trainer.callbacks:
            if isinstance(callback, TrainingMetrics) and callback.latest:
                metrics["loss"] = f"{callback.latest['train/loss']:.3f}"
                if "train/tokens_per_sec" in callback.latest:
                    metrics["tok/s"] = f"{callback.latest['train/tokens_per_sec']:,.0f}"
        return metrics


class HParamsLogger(Callback):
    """Fills TensorBoard's HPARAMS tab for this run: the flattened config as its
    hyperparameters, the real metrics of ``tinylm.hparams.HP_METRICS`` as its columns (never a
    -1 placeholder), ``hp/params`` once training starts and the run's status when it ends.

    The other metrics are logged where they are measured: ``hp/val_loss``, ``hp/val_bpc`` and
    ``hp/best_val_loss`` by ``LitLM`` at each validation, ``hp/tokens_per_sec`` by
    ``TrainingMetrics``.
    """

    def __init__(self, params: dict[str, Any], highlight: Collection[str] = ()) -> None:
        self.params = params
        self.highlight = highlight  # shown first in the tab: the keys set on the command line

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, experiment_summary(self.params, differs=self.highlight),
                    session_start_summary(self.params))

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Logged directly: Lightning accepts self.log in on_train_start only per epoch, and an
        # epoch of the endless training stream may never end. After a resume, global_step is
        # already the checkpoint's here.
        params = sum(p.numel() for p in pl_module.parameters())  # shared tensors counted once
        for logger in self._loggers(trainer):
            logger.log_metrics({"hp/params": params}, step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, session_end_summary("success"))

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._write(trainer, session_end_summary("failure"))

    @staticmethod
    def _loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def _write(self, trainer: L.Trainer, *summaries: Any) -> None:
        for logger in self._loggers(trainer):
            for summary in summaries:
                logger.experiment.file_writer.add_summary(summary)
            logger.experiment.flush()
