"""The checkpoints a run keeps: ``best.ckpt`` (lowest val/loss) and ``last.ckpt`` (to resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint

from tinylm.model import evaluating
from tinylm.resume import SETTINGS_KEY
from tinylm.rundir import WEIGHTS
from tinylm.weights import save_weights


def best_checkpoint(path: Path) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint keeping ``path`` (a run's best.ckpt): the lowest val/loss so far."""
    return ModelCheckpoint(dirpath=path.parent, filename=path.stem, monitor="val/loss", mode="min",
                           save_top_k=1, save_on_train_epoch_end=False, auto_insert_metric_name=False,
                           enable_version_counter=False)


class LastCheckpoint(Checkpoint):
    """Keeps ``path`` (a run's last.ckpt) current: after each validation, every ``every_n_steps``
    optimizer steps if set, and when training ends, so a resume never repeats work. When
    training ends it also writes the weights beside it as model.safetensors (tinylm.weights).

    A ``Checkpoint`` callback, so Lightning runs it after the others, best.ckpt's included: the
    file then holds what that validation changed (which checkpoint is best, and its score), and
    a resumed run never takes a worse model for the best.

    It only ever holds good weights: all finite, and giving a finite loss (the validation loss,
    or for a periodic save the loss on the batch just trained on). So when training diverges,
    the file keeps the last state worth resuming from.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None) -> None:
        self.path = path
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
        if self.saved_step == trainer.global_step and trainer.is_global_zero:
            # The same good weights as last.ckpt, in a file that loads without pickle; written
            # after it, so loaders know it is current (tinylm.weights.preferred).
            save_weights(self.path.with_name(WEIGHTS), pl_module.model, pl_module.model_config,
                         pl_module.tokenizer, trainer.global_step, pl_module.attention_source())


def _loss_of_updated_weights(module: L.LightningModule, batch: Any) -> torch.Tensor:
    """The loss the weights give on the batch they were just updated with. Weights that an
    update has blown up show it here, where the training loss would show it one step later;
    they may all be finite and still give an infinite loss, so checking them alone is not
    enough (without this pass, a diverging run's last.ckpt held the step whose loss was inf)."""
    with evaluating(module), torch.no_grad():
        return module.loss(batch)


class RecordSettings(Callback):
    """Writes the run's settings (``tinylm.resume.run_settings``) into each of its checkpoints, so
    a run started into a directory holding one can tell whether it is the same run (a requeued
    job, which continues it) or another (refused)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("tinylm", {})[SETTINGS_KEY] = dict(self.settings)
