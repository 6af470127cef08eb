"""The LightningModule: next-character cross-entropy, the optimiser (tinylm.optim), warm-up +
cosine schedule.

It owns the training recipe and nothing else: the model comes from ``tinylm.model``, the
batches from ``tinylm.data``, the Trainer from ``tinylm.train``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from tinylm.checkpoint import FORMAT_VERSION
from tinylm.config import ModelConfig, OptimConfig
from tinylm.learner.module import attention_for
from tinylm.learner.registry import registered, source_sha256
from tinylm.learner.source import AttentionSource
from tinylm.model import TransformerLM
from tinylm.optim import build_optimizer
from tinylm.schema import as_plain, build
from tinylm.tokenizer import tokenizer_from

LN2 = math.log(2)


def learning_rate(step: int, config: OptimConfig, decay_steps: int) -> float:
    """nanoGPT's schedule: linear warm-up to lr, then cosine decay to min_lr at decay_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if step >= decay_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, decay_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


class LitLM(L.LightningModule):
    """Trains a TransformerLM. Checkpoints store its settings as plain dicts and lists, so
    ``torch.load(weights_only=True)`` can read them back (and ``load_from_checkpoint`` passes
    them back in as such)."""

    def __init__(self, model: ModelConfig | Mapping[str, Any], optim: OptimConfig | Mapping[str, Any],
                 vocab: list[str] | None, max_steps: int = -1, tokenizer: str = "char") -> None:
        super().__init__()
        self.model_config = model if isinstance(model, ModelConfig) else build(ModelConfig, model, "model")
        self.optim_config = optim if isinstance(optim, OptimConfig) else build(OptimConfig, optim, "optim")
        # The run's full config is logged separately; this is what a checkpoint needs.
        # vocab: the characters of a "char" tokenizer; None for "byte" (every byte).
        self.save_hyperparameters({"model": as_plain(self.model_config), "optim": as_plain(self.optim_config),
                                   "vocab": None if vocab is None else list(vocab), "max_steps": max_steps,
                                   "tokenizer": tokenizer}, logger=False)
        self.tokenizer = tokenizer_from(tokenizer, vocab)
        self.model = TransformerLM(self.model_config, self.tokenizer.vocab_size,
                                   attention=attention_for(self.model_config))
        self.decay_steps = self.optim_config.decay_steps or max_steps
        self.val_loss = MeanMetric()  # token-weighted, and synced across processes
        self.best_val_loss = math.inf  # kept in checkpoints, so a resumed run remembers it

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy (nats per character) of predicting each next character."""
        inputs, targets = batch  # (B, T), (B, T)
        logits = self.model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # Written every trainer.log_every_n_steps steps, at global_step - 1: the step whose
        # batch it is, as TrainingMetrics writes train/lr and the speeds. Averaged over the
        # processes: the loss of the global batch, the same on 1 process or on several.
        self.log("train/loss", loss, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # A stop asked for between steps (a signal: tinylm.callbacks.safety.StopOnSignal) ends
        # training before this batch: -1 is Lightning's way to end the epoch here.
        return -1 if self.trainer.should_stop else None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self.loss(batch), weight=batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self.loss(batch), weight=batch[1].numel())

    def on_test_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # the mean over every test window
        self.val_loss.reset()
        self.log_dict({"test/loss": loss, "test/bpc": loss / LN2}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # the mean over every validation window
        self.val_loss.reset()
        bpc = loss / LN2
        if not self.trainer.sanity_checking:  # a sanity check is not a result
            self.best_val_loss = min(self.best_val_loss, loss.item())
        # Already the same on every process (the metric syncs); sync_dist says so to Lightning.
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict({"val/bpc": bpc, "val/ppl": loss.exp(), "hp/val_loss": loss, "hp/val_bpc": bpc,
                       "hp/best_val_loss": self.best_val_loss}, sync_dist=True)
        # A validation's step is the number of optimizer steps behind the weights it measured,
        # global_step: the step of the pictures and head scores logged after it. Lightning would
        # write these at global_step - 1; a logged "step" is the step it writes them at instead.
        self.log("step", float(self.trainer.global_step), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.optim_config
        optimizer = build_optimizer(self.model, config, fused=not self._fp16_scaled)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: learning_rate(step, config, self.decay_steps) / config.lr
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if self.optim_config.grad_clip <= 0:
            return
        if self._fp16_scaled:  # Lightning unscales fp16 gradients before it clips them
            self.clip_gradients(optimizer, gradient_clip_val=self.optim_config.grad_clip,
                                gradient_clip_algorithm="norm")
        else:  # unscaled gradients; Lightning would refuse a fused optimizer under bf16-mixed
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_config.grad_clip)

    @property
    def _fp16_scaled(self) -> bool:
        """Float16 mixed precision scales the loss; the fused AdamW cannot take part in that."""
        return self._trainer is not None and str(self.trainer.precision).startswith("16")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Marks the file as ours; the tokenizer, vocabulary and model config are in its
        # hyper_parameters.
        checkpoint.setdefault("tinylm", {}).update(format=FORMAT_VERSION, best_val_loss=self.best_val_loss)
        if (source := self.attention_source()) is not None:  # the class's hash: loads check they use it
            checkpoint["tinylm"]["attention_source"] = source

    def attention_source(self) -> dict[str, Any] | None:
        """Where a learner's attention class came from (``tinylm.learner.source``): its file and that
        file's hash, or for a class of a notebook cell, its name and its source's hash."""
        if self.model_config.learner_attention is None:
            return None
        file, name = self.model_config.learner_attention
        if (cls := registered(self.model_config.attention)) is not None:
            return AttentionSource("notebook", name, source_sha256(cls)).as_dict()
        run = self.trainer.default_root_dir if self._trainer is not None else "."
        return AttentionSource.of_file(file, name, run).as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_loss = checkpoint.get("tinylm", {}).get("best_val_loss", math.inf)
