"""Callbacks that report a run: training scalars, the progress bar, TensorBoard's HPARAMS tab."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from tinylm.tensorboard import (
    add_summaries,
    experiment_summary,
    layout_summary,
    session_end_summary,
    session_start_summary,
    tensorboard_logger,
    tensorboard_writer,
)


class TrainingMetrics(Callback):
    """Writes the training scalars besides ``train/loss`` (``LitLM.training_step`` logs that)
    every ``trainer.log_every_n_steps`` steps, straight to the loggers: ``train/lr`` (the rate
    the step used), ``train/tokens_per_sec`` (all processes together, over the same steps) and
    ``hp/tokens_per_sec`` (the mean over the whole run, for the HPARAMS tab). Time spent
    validating counts in neither speed. The latest values also feed the progress bar.

    The rate is read from the optimizer, not logged by ``LearningRateMonitor``: that names one
    scalar per parameter group (``train/lr/pg1`` ...), never ``train/lr``.
    """

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self._tokens = self._run_tokens = 0
        self._seconds = self._run_seconds = 0.0
        self._last_step_end: float | None = None
        self._lr = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step uses

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
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
        metrics = {"train/lr": self._lr}
        if self._seconds > 0:
            metrics["train/tokens_per_sec"] = self._tokens / self._seconds
            metrics["hp/tokens_per_sec"] = self._run_tokens / self._run_seconds
        self.latest = metrics
        # Logged at global_step - 1, the step train/loss is logged at (Lightning's).
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)
        self._tokens, self._seconds = 0, 0.0


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss and the speed of ``TrainingMetrics``."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's version number: always "" in tinylm
        if (loss := trainer.callback_metrics.get("train/loss")) is not None:
            metrics["loss"] = f"{float(loss):.3f}"
        if (val_loss := trainer.callback_metrics.get("val/loss")) is not None:
            metrics["val/loss"] = f"{float(val_loss):.4f}"  # as the closing lines print it
        for callback in trainer.callbacks:
            if isinstance(callback, TrainingMetrics) and "train/tokens_per_sec" in callback.latest:
                metrics["tok/s"] = f"{callback.latest['train/tokens_per_sec']:,.0f}"
        return metrics


class ScalarsLayout(Callback):
    """Writes the custom-scalars tab's layout once: the losses first, then the training
    scalars, then one chart per head score (``tinylm.tensorboard.layout_summary``)."""

    def __init__(self, head_scores: Collection[str] = ()) -> None:
        self.head_scores = head_scores

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (writer := tensorboard_writer(trainer)) is not None:
            add_summaries(writer, layout_summary(self.head_scores))


class HParamsLogger(Callback):
    """Fills TensorBoard's HPARAMS tab for this run: the flattened config as its
    hyperparameters, the real metrics of ``tinylm.tensorboard.HP_METRICS`` as its columns (never a
    -1 placeholder), ``hp/params`` once training starts and the run's status when it ends.

    The other metrics are logged where they are measured: ``hp/val_loss``, ``hp/val_bpc`` and
    ``hp/best_val_loss`` by ``LitLM`` at each validation, ``hp/tokens_per_sec`` by
    ``TrainingMetrics``.
    """

    def __init__(self, params: dict[str, Any], highlight: Collection[str] = (),
                 continuing: bool = False) -> None:
        self.params = params
        self.highlight = highlight  # shown first in the tab: the keys set on the command line
        self.continuing = continuing  # a resumed run writing on in its own TensorBoard run

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, experiment_summary(self.params, differs=self.highlight),
                    session_start_summary(self.params))

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Logged directly: Lightning accepts self.log in on_train_start only per epoch, and an
        # epoch of the endless training stream may never end. A run continued in its own
        # directory has it already, at step 0.
        if self.continuing:
            return
        params = sum(p.numel() for p in pl_module.parameters())  # shared tensors counted once
        if (logger := tensorboard_logger(trainer)) is not None:
            logger.log_metrics({"hp/params": params}, step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, session_end_summary("success"))

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._write(trainer, session_end_summary("failure"))

    @staticmethod
    def _write(trainer: L.Trainer, *summaries: Any) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None:
            add_summaries(writer, *summaries)
