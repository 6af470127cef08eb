"""Every Lightning callback of tinylm, one module per idea, and the one list a run trains with:

- ``checkpoints``: ``best.ckpt`` (lowest val/loss) and ``last.ckpt`` (to resume);
- ``safety``: exact resumes (``StepSeed``), a clean stop on a signal, a clear stop on divergence;
- ``metrics``: the training scalars, the progress bar, TensorBoard's HPARAMS and custom-scalars tabs;
- ``ranks``: several processes end with the same weights, and one that dies is named;
- ``watch``: attention maps, head scores and text samples in TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch.callbacks import Callback

from tinylm.attention.ablation import validation_windows
from tinylm.attention.scores import SCORES
from tinylm.callbacks.checkpoints import LastCheckpoint, RecordSettings, best_checkpoint
from tinylm.callbacks.metrics import HParamsLogger, ProgressBar, ScalarsLayout, TrainingMetrics
from tinylm.callbacks.ranks import RankLost, Ranks, WeightsDiffer, weights_digest
from tinylm.callbacks.safety import DivergedError, Interrupted, StepSeed, StopOnNonFiniteLoss, StopOnSignal
from tinylm.callbacks.watch import AttentionMaps, Periodic, TextSamples
from tinylm.rundir import RunDir
from tinylm.schema import as_plain
from tinylm.tensorboard import flatten, leading_keys

if TYPE_CHECKING:
    from tinylm.config import TrainConfig
    from tinylm.data import CharDataModule

__all__ = [
    "AttentionMaps", "DivergedError", "HParamsLogger", "Interrupted", "LastCheckpoint", "Periodic",
    "ProgressBar", "RankLost", "Ranks", "RecordSettings", "StepSeed", "StopOnNonFiniteLoss", "StopOnSignal",
    "TextSamples", "TrainingMetrics",
    "WeightsDiffer", "best_checkpoint", "build_callbacks", "watch_callbacks", "weights_digest",
]


def build_callbacks(config: TrainConfig, data: CharDataModule, paths: RunDir,
                    overrides: Sequence[str] = (), extra: Sequence[Callback] = ()) -> list[Callback]:
    """The callbacks of a run as ``config`` describes it: checkpoints, safety, metrics, then
    ``extra``, the progress bar, and with a TensorBoard logger the HPARAMS tab and the watch
    callbacks. The HPARAMS tab shows the config, the keys that ``overrides`` set first;
    ``data`` is the prepared data module.
    """
    last = LastCheckpoint(paths.last, config.callbacks.checkpoint.every_n_steps)
    callbacks: list[Callback] = [
        best_checkpoint(paths.best),
        last,
        StepSeed(config.seed),
        StopOnSignal(last, paths.resume_command()),
        StopOnNonFiniteLoss(last, config.optim.lr),
        TrainingMetrics(),
        Ranks(),
        *extra,
    ]
    refresh_rate = config.callbacks.progress_bar.refresh_rate
    if refresh_rate > 0:
        callbacks.append(ProgressBar(refresh_rate=refresh_rate))
    if config.logger == "tensorboard":
        params = flatten(as_plain(config))
        continuing = config.ckpt_path is not None and paths.holds(config.ckpt_path)  # its TensorBoard run
        callbacks.append(HParamsLogger(params, highlight=leading_keys(overrides, params),
                                       continuing=continuing))
        attention = config.callbacks.attention
        scores = (*SCORES, "copying", *(["ablation"] if attention.ablation else []))
        callbacks.append(ScalarsLayout(scores if attention.enabled else ()))
        callbacks.extend(watch_callbacks(config, data, paths.attention_history))
    return callbacks


def watch_callbacks(config: TrainConfig, data: CharDataModule,
                    history: Path | None = None) -> list[Periodic]:
    """The TensorBoard callbacks that show the model learning: attention maps and head scores
    on a probe, and text samples. ``data`` is the prepared data module; the attention of each
    record is also kept in ``history`` (a run's attention.npz) when that is given."""
    block_size, tokenizer = config.model.block_size, data.tokenizer
    callbacks: list[Periodic] = []
    attention = config.callbacks.attention
    if attention.enabled:
        # The default probe: real text the model is not trained on, as long as a context.
        probe = attention.probe or default_probe(tokenizer, data.val_tokens[:block_size].tolist())
        # The same validation windows at every record: for the ablation and icl/score.
        windows = validation_windows(data.val_tokens, attention.ablation_windows, block_size)
        callbacks.append(AttentionMaps(probe, tokenizer, block_size, max_chars=attention.max_chars,
                                       every_n_steps=attention.every_n_steps, windows=windows,
                                       ablation=attention.ablation, history=history,
                                       period=attention.repeat_length))
    samples = config.callbacks.samples
    if samples.enabled:
        prompt = samples.prompt
        if prompt is None:
            prompt = "\n" if not tokenizer.unknown_characters("\n") else tokenizer.decode(
                data.val_tokens[:1].tolist())
        callbacks.append(TextSamples(prompt, tokenizer, max_new_tokens=samples.max_new_tokens,
                                     temperature=samples.temperature, top_k=samples.top_k,
                                     top_p=samples.top_p, seed=samples.seed,
                                     every_n_steps=samples.every_n_steps))
    return callbacks


def default_probe(tokenizer, ids: list[int]) -> str:
    """The text of ``ids`` (at most a context of tokens), cut so that it encodes to at most as
    many tokens: bytes cut inside a character decode to U+FFFD, which takes three."""
    text = tokenizer.decode(ids)
    while len(tokenizer.encode(text)) > len(ids):
        text = text[:-1]
    return text
