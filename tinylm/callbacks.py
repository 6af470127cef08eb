"""Lightning callbacks for bookkeeping: the last checkpoint, throughput, hyperparameters."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from tinylm.hparams import experiment_summary, session_end_summary, session_start_summary


class LastCheckpoint(Callback):
    """Keeps ``<dirpath>/last.ckpt`` current: after each validation, every ``every_n_steps``
    optimizer steps if set, and when training ends, so a resume never repeats work."""

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self._saved_at_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if self._saved_at_step != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)  # full state, to resume
            self._saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


class TokensPerSecond(Callback):
    """Logs training throughput (all processes together): ``train/tokens_per_sec`` over the
    last ``window`` steps, shown in the progress bar, so it reads the steady state rather than
    start-up; and ``hp/tokens_per_sec``, the mean over the whole run, for the HPARAMS tab.

    Time spent validating is left out of both: it is not training throughput.
    """

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._times: list[float] = []
        self._tokens = 0  # over the run, counted from the second step of each training stretch
        self._seconds = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        tokens = batch[0].numel() * trainer.world_size
        if self._times:
            self._tokens += tokens
            self._seconds += now - self._times[-1]
        self._times = [*self._times[-self.window :], now]
        if len(self._times) > 1:
            rate = tokens * (len(self._times) - 1) / (self._times[-1] - self._times[0])
            pl_module.log("train/tokens_per_sec", rate, prog_bar=True)
            pl_module.log("hp/tokens_per_sec", self._tokens / self._seconds)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._times = []  # the next step's time would include this validation


class HParamsLogger(Callback):
    """Fills TensorBoard's HPARAMS tab for this run: the flattened config as its
    hyperparameters, the real metrics of ``tinylm.hparams.HP_METRICS`` as its columns (never a
    -1 placeholder), ``hp/params`` once training starts and the run's status when it ends.

    The other metrics are logged where they are measured: ``hp/val_loss``, ``hp/val_bpc`` and
    ``hp/best_val_loss`` by ``LitLM`` at each validation, ``hp/tokens_per_sec`` by
    ``TokensPerSecond``.
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
