"""Callbacks to watch a model learn in TensorBoard: its attention maps and head diagnostics,
and text sampled from it.

Both run at the start of training (the untrained baseline, step 0) and after every validation,
or every ``every_n_steps`` optimizer steps instead. They run on the global-zero process only,
and only when a TensorBoard logger is attached (``logger=none`` and ``debug=fdr`` skip them).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from tinylm.attention.ablation import ablation_scores, can_ablate
from tinylm.attention.circuits import icl_score, induction_loss
from tinylm.attention.formation import find_formation, none_formed
from tinylm.attention.history import append_history
from tinylm.attention.maps import (
    NoWeights,
    ProbeError,
    attention_maps,
    encode_probe,
    head_scores,
    induction_tokens,
)
from tinylm.attention.pictures import AttentionFigure, encode_pngs
from tinylm.attention.scores import HeadScores
from tinylm.generation.stream import generate
from tinylm.model import evaluating
from tinylm.tensorboard import add_image, add_text, tensorboard_writer
from tinylm.tokenizer import Tokenizer

# The positions TensorBoard's pictures show, and their labels' size in points: TensorBoard fits
# a picture to its card, where these stay legible (a panel is MIN_PANEL_INCHES wide at least,
# so 16 positions get cells wide enough for this type). The explorer (the history) shows up to
# callbacks.attention.max_chars.
CARD_CHARS = 16
CARD_LABEL_SIZE = 11.0


class Periodic(Callback):
    """Calls ``record(trainer, module, writer)`` at step 0, then after every validation, or every
    ``every_n_steps`` optimizer steps when that is set: once per step at most, on rank 0."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._logged_at = -1

    def record(self, trainer: L.Trainer, module: L.LightningModule, writer: Any) -> None:
        raise NotImplementedError

    def _maybe_log(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or self._logged_at == trainer.global_step:
            return
        self._logged_at = trainer.global_step
        self.record(trainer, module, writer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed run has its baseline already
            self._maybe_log(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._maybe_log(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every_n_steps and not trainer.sanity_checking:
            self._maybe_log(trainer, pl_module)


class AttentionMaps(Periodic):
    """Logs every head's attention on a fixed probe text, as pictures and as scores.

    Images: ``attention/layer_{l}`` (all heads of layer l side by side) and
    ``attention/layer_{l}/head_{h}``, showing the first ``CARD_CHARS`` positions of the probe
    (at most ``max_chars``); the history, the explorer's, keeps ``max_chars``.
    Scalars: ``heads/<score>/layer_{l}_head_{h}`` for entropy, prev_token, first_token (on the
    whole probe), prefix_matching, duplicate_token (on random sequences of ``period`` tokens
    repeated twice) and copying (from the weights), see ``tinylm.attention.scores`` and
    ``tinylm.attention.circuits``; with ``windows`` (N, T+1) of validation text also
    ``icl/score``, and with ``ablation`` ("zero" or "mean") ``heads/ablation/layer_{l}_head_{h}``,
    the rise of the loss on them without the head (``tinylm.attention.ablation``); and
    ``icl/induction_loss`` on the repeated sequences.
    With ``history``, a path, the shown maps and the scores of every record are also kept
    there (``tinylm.attention.history``), for ``tinylm attention ... out=x.html``.
    When training ends it prints and logs (TEXT ``induction``) when the induction heads formed
    (``tinylm.attention.formation``), or that none did.
    """

    def __init__(self, probe: str, tokenizer: Tokenizer, block_size: int, max_chars: int = 64,
                 every_n_steps: int | None = None, key: str = "callbacks.attention.probe",
                 windows: torch.Tensor | None = None, ablation: str | None = "zero",
                 history: str | Path | None = None, period: int | None = None) -> None:
        super().__init__(every_n_steps)
        self.probe = probe
        self.ids = encode_probe(probe, tokenizer, block_size, key=key)  # (1, T); errors name ``key``
        self.labels = tokenizer.labels(probe)  # one per token
        self.shown = min(max_chars, len(self.labels))  # rendered positions: labels stay readable
        self.windows, self.ablation, self.history, self.period = windows, ablation, history, period
        self.said_no_weights = False
        self.figure = None  # built on first use: matplotlib is slow to import and lay out
        # step → (prefix_matching, prev_token), each (L, H): the curves the formation rule reads
        self.curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @torch.no_grad()
    def record(self, trainer: L.Trainer, module: L.LightningModule, writer: Any) -> None:
        model, step = module.model, trainer.global_step
        try:
            maps = attention_maps(model, self.ids)  # (L, 1, H, T, T)
        except NoWeights as error:
            if not self.said_no_weights:  # once per run; the other callbacks log as usual
                print(f"attention maps: none logged: {error} (see tinylm check-attention)", file=sys.stderr)
                self.said_no_weights = True
            return
        scores = head_scores(model, self.ids, maps, period=self.period)
        if self.windows is not None and self.ablation is not None and can_ablate(model):
            scores = dataclasses.replace(scores, ablation=ablation_scores(model, self.windows, self.ablation))
        metrics = score_metrics(scores) | self.model_metrics(model)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.curves[step] = (scores.prefix_matching.numpy(), scores.prev_token.numpy())
        # A causal map cut to its first n rows and columns is exactly the map of the first n
        # characters: no position attends to anything after it.
        n = self.shown
        shown = maps[:, 0, :, :n, :n].numpy()  # (L, H, n, n)
        if self.history is not None:
            kept = append_history(self.history, step, self.labels[:n], shown,
                                  {name: values.numpy() for name, values in scores.items()})
            self.keep_curves(kept.steps, kept.scores)  # a resumed run's earlier records too
        layers, heads = shown.shape[:2]
        # TensorBoard fits a picture to its card: fewer positions keep the labels legible there.
        n = min(n, CARD_CHARS)
        shown = shown[:, :, :n, :n]
        if self.figure is None:
            self.figure = AttentionFigure(self.labels[:n], rows=1, cols=heads, label_size=CARD_LABEL_SIZE)
        tags, pictures = [], []
        for layer in range(layers):
            # Titles name the head only: each title's glyphs are drawn again every time, and
            # the scores are right beside the pictures, as scalars.
            self.figure.draw(shown[layer][None], [f"layer {layer} · head {head}" for head in range(heads)])
            tags += [f"attention/layer_{layer}"] + [f"attention/layer_{layer}/head_{h}" for h in range(heads)]
            pictures += self.figure.pictures()  # the layer, then each head
        for tag, png in zip(tags, encode_pngs(pictures), strict=True):
            add_image(writer, tag, png, step)

    def model_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """``icl/induction_loss`` on the repeated random sequences, and ``icl/score`` on the
        validation windows when there are some."""
        sequences, period = induction_tokens(model.vocab_size, model.config.block_size, period=self.period)
        metrics = {"icl/induction_loss": induction_loss(model, sequences, period)}
        if self.windows is not None:
            metrics["icl/score"] = icl_score(model, self.windows)
        return metrics

    def keep_curves(self, steps: np.ndarray, scores: Mapping[str, np.ndarray]) -> None:
        if "prefix_matching" in scores and "prev_token" in scores:
            self.curves = {int(s): (scores["prefix_matching"][i], scores["prev_token"][i])
                           for i, s in enumerate(steps)}

    def formation_line(self) -> str | None:
        """The line naming when the induction heads formed (or that none did); None before any record."""
        if not self.curves:
            return None
        steps = sorted(self.curves)
        prefix = np.stack([self.curves[s][0] for s in steps])  # (S, L, H)
        prev = np.stack([self.curves[s][1] for s in steps])
        formed = find_formation(steps, prefix, prev)
        return formed.line() if formed is not None else none_formed(prefix)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        line = self.formation_line()
        if writer is None or not trainer.is_global_zero or line is None:
            return
        add_text(writer, "induction", line, trainer.global_step)
        if line.startswith("induction heads formed"):  # a run without a circuit says nothing more
            print(line, flush=True)


def score_metrics(scores: HeadScores) -> dict[str, float]:
    """``heads/<score>/layer_{l}_head_{h}`` → value, for every score and head."""
    return {
        f"heads/{name}/layer_{layer}_head_{head}": float(values[layer, head])
        for name, values in scores.items()
        for layer in range(values.size(0))
        for head in range(values.size(1))
    }


class TextSamples(Periodic):
    """Logs text sampled from a fixed prompt with a fixed seed as TensorBoard text, tag
    ``samples``: as the seed never changes, samples at different steps differ only by what
    the model has learned."""

    def __init__(self, prompt: str, tokenizer: Tokenizer, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 1337, every_n_steps: int | None = None,
                 key: str = "callbacks.samples.prompt") -> None:
        super().__init__(every_n_steps)
        self.tokenizer = tokenizer
        self.ids = encode_prompt(prompt, tokenizer, key)  # (1, P)
        self.options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p)
        self.seed = seed

    @torch.no_grad()
    def record(self, trainer: L.Trainer, module: L.LightningModule, writer: Any) -> None:
        model = module.model
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with evaluating(model):
            ids = generate(model, self.ids.to(device), generator=generator, **self.options)  # (1, P + N)
        add_text(writer, "samples", self.tokenizer.decode(ids[0].tolist()), trainer.global_step)


def encode_prompt(prompt: str, tokenizer: Tokenizer, key: str) -> torch.Tensor:
    """A sampling prompt as ids (1, P): known characters only, at least one. Any length will
    do: generation keeps the last block_size positions as its context."""
    if not prompt:
        raise ProbeError(f"{key}: is empty; give at least one character (e.g. a newline)")
    tokenizer.check_known(prompt, key)
    return torch.tensor([tokenizer.encode(prompt)])
