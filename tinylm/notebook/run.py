"""A finished training run, as ``tinylm.train`` returns it: where it is, how well it did, what
it logged, and what to do next (``load``, ``sample``, ``explorer``, ``attention``)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from tinylm.notebook.display import Page, Picture
from tinylm.notebook.model import Model, load
from tinylm.rundir import run_dir


class History(Callback):
    """Keeps every logged loss of a run in memory, logger or not: ``train/loss`` at each logging
    step, and each validation's ``val/loss`` and ``val/bpc`` at its step."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, float]]] = {}
        self.trainer: L.Trainer | None = None  # the run's, once it starts

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def _add(self, tag: str, step: int, value: Any) -> None:
        if value is not None:
            self.points.setdefault(tag, []).append((step, float(value)))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._add("train/loss", trainer.global_step, trainer.callback_metrics.get("train/loss"))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            for tag in ("val/loss", "val/bpc"):
                self._add(tag, trainer.global_step, trainer.callback_metrics.get(tag))


@dataclass
class Run:
    """One training run: its directory, steps, best val/loss (and bpc), every logged loss
    (``history``: tag → [(step, value)]), and whether a signal stopped it."""

    dir: Path
    steps: int
    best_val_loss: float | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stopped: str | None = None  # why it stopped early (a kernel interrupt), with the checkpoint kept
    summary: str = ""  # the closing lines the command line prints
    attention_file: str | None = None  # a learner's class, as the commands name it

    @property
    def best_val_bpc(self) -> float | None:
        return None if self.best_val_loss is None else self.best_val_loss / math.log(2)

    @property
    def checkpoint(self) -> Path:
        """last.ckpt: the state to resume from (``ckpt_path=``) or sample."""
        return run_dir(self.dir).last

    @property
    def best_checkpoint(self) -> Path:
        return run_dir(self.dir).best

    def load(self, attention: Any = None) -> Model:
        """The model and tokenizer (``model, tokenizer = run.load()``): ``tinylm.load(run)``."""
        return load(self.dir, attention if attention is not None else self.attention_file)

    def sample(self, prompt: str = "\n", **settings: Any) -> str:
        """Text from the run's model, streamed into the cell: ``Model.sample``."""
        return self.load().sample(prompt, **settings)

    def explorer(self, height: int = 720) -> Page:
        """Its heads at every recorded step, with a slider: ``tinylm attention out=*.html``."""
        return self.load().explorer(height=height)

    def attention(self, prompt: str = "To be, or not to be", **settings: Any) -> Picture:
        return self.load().attention(prompt, **settings)

    def __fspath__(self) -> str:  # a Run is a path too: its directory
        return str(self.dir)

    def __repr__(self) -> str:
        return self.summary or f"run: {self.dir} ({self.steps:,} steps)"

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"
