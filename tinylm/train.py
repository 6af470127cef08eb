"""One training run: config → data module + model → Lightning module → Trainer → fit.

``run`` is ``tinylm train``: the CLI has built and checked its config (``tinylm.preflight``)
before importing this module. ``train`` is the same from Python, checks included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shlex
import sys
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only

from tinylm.callbacks import DivergedError, RankLost, Ranks, RecordSettings, StopOnSignal, build_callbacks
from tinylm.callbacks.checkpoint_io import AtomicCheckpointIO
from tinylm.checkpoint import model_config_of, read_checkpoint
from tinylm.config import TrainConfig
from tinylm.data import CharDataModule
from tinylm.errors import ConfigError
from tinylm.learner.adapter import LearnerError, Settings
from tinylm.learner.checker.checklist import check_target
from tinylm.lit import LitLM
from tinylm.memory import check_fits
from tinylm.precision import choose_precision
from tinylm.preflight import check_train
from tinylm.resume import RunFinished, checkpoint_state, continued_run, requeue_note, run_settings
from tinylm.rundir import RunDir, run_dir, shown
from tinylm.runlock import holding, remove_leftovers
from tinylm.schema import as_plain, check_trainer_arguments
from tinylm.search import searching
from tinylm.sources import row_unit

GPU_ACCELERATORS = ("auto", "gpu", "cuda")  # what trains on a CUDA GPU when one is there
# Model settings a resumed run may change: they alter no parameter.
RESUMABLE_CHANGES = ("attention", "dropout")


def run(config: TrainConfig) -> float | None:
    """``tinylm train``: one job of Hydra's (a run, or one job of a ``-m`` sweep), its config
    checked by the CLI; a sweep's jobs were all checked, DDP strategy included, before the first.
    A job whose directory holds an unfinished run of its settings (requeued) continues it.
    Returns the run's best val/bpc: what a search (``hparams_search=``) minimises; a trial that
    diverged is a failed trial (NaN) and the search goes on."""
    try:
        best = _run(config)
    except DivergedError as error:
        if not searching(HydraConfig.get()):
            raise
        print(f"{error.label}: {error}", file=sys.stderr, flush=True)
        return math.nan
    return best / math.log(2) if best is not None else None


def _run(config: TrainConfig) -> float | None:
    overrides = list(HydraConfig.get().overrides.task)
    if config.ckpt_path is None and not config.trainer.get("fast_dev_run"):
        root = Path(config.paths.output_dir)
        key = "hydra.sweep.dir" if HydraConfig.get().mode == RunMode.MULTIRUN else "hydra.run.dir"
        try:
            last = continued_run(root, run_settings(as_plain(config)), config.max_steps, key=key)
        except RunFinished as finished:
            print(f"run: {finished}")
            best = ((checkpoint_state(run_dir(root).last) or {}).get("tinylm") or {}).get("best_val_loss")
            return float(best) if isinstance(best, float) and math.isfinite(best) else None
        if last is not None:
            if rank_zero():
                print(requeue_note(root, last), flush=True)
            config = dataclasses.replace(config, ckpt_path=str(last))
    return fit_and_report(config, overrides=overrides)


def train(config: TrainConfig, overrides: Sequence[str] = ()) -> float | None:
    """Check ``config`` as the CLI does, then train as it says, print where the run is and what
    to do with it, and return the best val/loss. ``overrides``: the command line's ``key=value``."""
    check_train(config, overrides)
    return fit_and_report(config, overrides)


def fit_and_report(config: TrainConfig, overrides: Sequence[str] = ()) -> float | None:
    """Train a checked ``config``, print the closing lines, return the best val/loss."""
    trainer, _ = fit(config, overrides)
    if trainer.is_global_zero:
        print(summary(config, trainer))
    best = trainer.checkpoint_callback.best_model_score
    return float(best) if best is not None else None


def summary(config: TrainConfig, trainer: Trainer) -> str:
    """The few lines that end a run: where it is, how well it did, what to run next."""
    if trainer.fast_dev_run:
        return f"fast dev run: {trainer.global_step:,} steps, nothing written"
    where = shown(config.paths.output_dir)
    metrics = trainer.callback_metrics
    lines = [f"run: {where} ({trainer.global_step:,} steps)"]
    best = trainer.checkpoint_callback.best_model_score
    if best is not None:
        last = f"; last {float(metrics['val/loss']):.4f}" if "val/loss" in metrics else ""
        lines.append(f"best val/loss {float(best):.4f} ({float(best) / math.log(2):.4f} bpc){last}")
    ranks = next((c for c in trainer.callbacks if isinstance(c, Ranks) and c.digest), None)
    if ranks is not None:
        lines.append(f"processes: {trainer.world_size} ({trainer.num_nodes} machines × "
                     f"{trainer.num_devices}), the same weights on each (sha256 {ranks.digest[:16]})")
    if "test/bpc" in metrics:
        lines.append(f"test/bpc {float(metrics['test/bpc']):.4f} (the best checkpoint on the test split)")
    if run_dir(config.paths.output_dir).last.is_file():
        own = config.model.learner_attention  # the user's own file, named by the user: it runs
        file = f" attention_file={shlex.quote(own[0])}" if own else ""
        prompt = _shell_quoted(_prompt(trainer))
        lines.append(f"sample:      tinylm sample ckpt={where}{file} prompt={prompt}")
    if config.logger == "tensorboard":
        lines.append(f"tensorboard: {tensorboard_command(where, config)}")
    return "\n".join(lines)


def _prompt(trainer: Trainer) -> str:
    """A prompt the model can read: "ROMEO:" when its vocabulary has those characters, else the
    first word of the validation text (a model of Japanese text has no R)."""
    tokenizer = trainer.lightning_module.tokenizer
    if not tokenizer.unknown_characters("ROMEO:") or trainer.datamodule is None:  # bytes: any text
        return "ROMEO:"
    text = trainer.lightning_module.tokenizer.decode(trainer.datamodule.val_tokens[:64].tolist())
    words = text.split()
    return words[0][:12] if words else text[:1]


def _shell_quoted(text: str) -> str:
    return f"'{text}'" if "'" not in text else shlex.quote(text)


def tensorboard_command(logdir: str | Path, config: TrainConfig) -> str:
    """How to open ``logdir`` in TensorBoard showing every picture the run logged: TensorBoard
    keeps 10 images per tag unless told otherwise."""
    val_every = config.trainer.get("val_check_interval") or config.max_steps
    pictures = 1 + math.ceil(max(config.max_steps, 1) / max(int(val_every), 1))
    every = config.callbacks.attention.every_n_steps
    if every:
        pictures = 1 + math.ceil(max(config.max_steps, 1) / every)
    return f"tensorboard --logdir {logdir} --samples_per_plugin images={max(100, pictures)}"


def fit(config: TrainConfig, overrides: Sequence[str] = (),
        extra_callbacks: Sequence[Callback] = ()) -> tuple[Trainer, LitLM]:
    """Build everything ``config`` describes and train; returns the Trainer and the LitLM.

    The config is logged as the run's hyperparameters, those that ``overrides`` (the command
    line's) set first. ``extra_callbacks`` join the standard ones (benchmarks add a timer this
    way). Raises ``Interrupted`` (on rank 0) when a signal stopped training, after saving
    last.ckpt.
    """
    check_trainer_arguments(config.trainer, L.Trainer)
    if config.trainer.get("fast_dev_run"):  # writes nothing, so holds no directory
        return _fit(config, overrides, extra_callbacks, run_dir(config.paths.output_dir))
    paths = run_dir(config.paths.output_dir)
    # Recorded as given: the learner check may change model.heads, a requeue compares these.
    extra_callbacks = [*extra_callbacks, RecordSettings(run_settings(as_plain(config)))]
    with holding(paths.root, key="paths.output_dir"):
        remove_leftovers(paths.checkpoints)  # what a process killed mid-write left
        return _fit(config, overrides, extra_callbacks, paths)


def _fit(config: TrainConfig, overrides: Sequence[str], extra_callbacks: Sequence[Callback],
         paths: RunDir) -> tuple[Trainer, LitLM]:
    quiet_libraries()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls where the GPU has them
    L.seed_everything(config.seed, workers=True, verbose=False)

    if config.model.learner_attention is not None:
        config = check_learner_attention(config)
    data = CharDataModule(config.data, block_size=config.model.block_size, seed=config.seed)
    data.prepare()  # load and encode now: data errors come before the model is built
    on_gpu = torch.cuda.is_available() and str(config.trainer.get("accelerator", "auto")) in GPU_ACCELERATORS
    config, precision = choose_precision(config, overrides, on_cpu=not on_gpu)
    if on_gpu:
        device = torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(device)
        check_fits(config, free, f"GPU memory (cuda:{device})", overrides, vocab=data.tokenizer.vocab_size)
    resumed_step = _check_resumable(config, data.tokenizer.spec()) if config.ckpt_path is not None else None
    module = LitLM(model=config.model, optim=config.optim, vocab=data.tokenizer.vocab,
                   max_steps=config.max_steps, tokenizer=data.tokenizer.kind)

    callbacks = build_callbacks(config, data, paths, overrides, extra_callbacks)
    stop = next(callback for callback in callbacks if isinstance(callback, StopOnSignal))
    refresh_rate = config.callbacks.progress_bar.refresh_rate
    logger: TensorBoardLogger | bool = False
    if config.logger == "tensorboard":
        # A resume from a checkpoint behind what the run logged (a kill -9 after the last save, a
        # best.ckpt) logs those steps again: purge_step makes TensorBoard drop the old ones.
        purge = {"purge_step": resumed_step + 1} if resumed_step is not None else {}
        events = paths.tensorboard
        logger = TensorBoardLogger(save_dir=events.parent, name=events.name, version="",
                                   default_hp_metric=False, **purge)

    ranks = next(callback for callback in callbacks if isinstance(callback, Ranks))
    trainer_args = {**config.trainer, "strategy": strategy(config)}
    trainer = L.Trainer(**trainer_args, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                        default_root_dir=paths.root, enable_progress_bar=refresh_rate > 0)
    if rank_zero():  # the Trainer has read this process's rank from its launcher
        print(loaded(config, data), flush=True)
        if precision:
            print(precision, flush=True)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=config.ckpt_path, weights_only=True)
    except SystemExit as exit:  # Lightning's answer to a Ctrl-C before training began
        if isinstance(exit.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    except RuntimeError as error:  # gloo's lost connections are plain RuntimeErrors
        # A timeout is torch's DistError; any other error is ours to see only if no peer died.
        if trainer.world_size > 1 and (isinstance(error, dist.DistError) or ranks.lost_any()):
            raise rank_lost(trainer, ranks, config) from error
        raise
    # One process reports (and exits 128+N); the others end quietly: Lightning's launcher
    # kills all processes when one of the ranks it started exits non-zero.
    if (interrupted := stop.stopped()) and trainer.is_global_zero:
        raise interrupted
    if data.test_tokens is not None and not interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=data, ckpt_path=best or None, weights_only=True, verbose=False)
    return trainer, module


def strategy(config: TrainConfig) -> str | Strategy:
    """``trainer.strategy``, a data-parallel one given ``ddp_timeout`` as its process group's
    timeout (torch's default is half an hour: a cluster job whose process died would idle that
    long)."""
    name, trainer = config.trainer.get("strategy", "auto"), config.trainer
    several = trainer.get("devices", 1) not in (1, "1", [0]) or int(trainer.get("num_nodes", 1)) > 1
    if name == "auto" and several:
        name = "ddp"  # what Lightning's auto picks for several processes outside a notebook
    entry = StrategyRegistry[name] if isinstance(name, str) and name in StrategyRegistry else None
    if entry is None or not issubclass(entry["strategy"], DDPStrategy):
        return name
    return entry["strategy"](**{**entry["init_params"], "timeout": timedelta(seconds=config.ddp_timeout)})


def rank_lost(trainer: Trainer, ranks: Ranks, config: TrainConfig) -> RankLost:
    """The one line a surviving process ends with when another died: which, and what is kept."""
    last = run_dir(config.paths.output_dir).last.absolute()
    kept = (f"{last} is intact: resume with ckpt_path={last}" if last.is_file()
            else "no checkpoint was written yet")
    return RankLost(f"rank {trainer.global_rank}: {ranks.lost(trainer.global_rank)}; training stopped at "
                    f"step {trainer.global_step} (ddp_timeout={config.ddp_timeout}s); {kept}")


def check_learner_attention(config: TrainConfig) -> TrainConfig:
    """Run ``tinylm check-attention`` on the class model.attention names, at the run's settings
    (width, heads, block_size, model.attention_kwargs), and print its checklist; refuse a class
    that is not causal (it would learn to copy the next character from the future) or fails at
    the run's block_size. Returns the config, its model.heads the class's own head count (a
    one-head class is drawn and scored as one head)."""
    model = config.model
    target = model.attention
    settings = Settings(model.d_model, model.heads, model.block_size, model.dropout, model.bias)
    try:
        report, built = check_target(target, model.d_model, model.heads, dict(model.attention_kwargs),
                                     key="model.attention", settings=settings,
                                     kwargs_key="model.attention_kwargs")
    except LearnerError as error:  # its file or constructor fails: nothing to train, nothing written
        raise ConfigError(f"model.attention: {error}") from None
    if (refusal := report.refusal(target)) is not None:
        raise ConfigError(f"model.attention: {refusal}")
    print(f"model.attention={target}: {report}")
    if built.heads != model.heads:
        print(f"model.heads: {target} has {built.heads} head(s) of its own, so the model is built with "
              f"model.heads={built.heads}: its attention maps and head scores show those heads")
        heads = built.heads
        config = dataclasses.replace(config, model=dataclasses.replace(model, heads=heads, kv_heads=heads))
    return config


def loaded(config: TrainConfig, data: CharDataModule) -> str:
    """The line that starts a run: what was loaded, from where, and what it gave."""
    source = config.data.source
    shown = ",".join(source) if isinstance(source, tuple) else source
    tokens = "bytes" if data.tokenizer.kind == "byte" else "characters"
    if config.data.streaming:
        return (f"data: {shown} (streamed): its train split as training reads it, "
                f"{len(data.val_tokens):,} validation {tokens}, a vocabulary of {data.tokenizer.vocab_size}")
    unit = row_unit(source) + ("s" if data.documents != 1 else "")
    cache = "read back from the datasets cache" if data.from_cache else "read and cached"
    test = f", {len(data.test_tokens):,} test" if data.test_tokens is not None else ""
    line = (f"data: {shown} ({data.documents:,} {unit}, {cache}): {len(data.train_tokens):,} training "
            f"and {len(data.val_tokens):,} validation{test} {tokens}, a vocabulary of "
            f"{data.tokenizer.vocab_size}")
    if (repeats := data.repeats) is not None:
        line += (f"\ndata: {repeats.count(config.data.batch_size)} of each training batch's "
                 f"{config.data.batch_size} windows are a random string of {repeats.length} {tokens} "
                 f"repeated to fill the window, not text "
                 f"(data.repeat_fraction={config.data.repeat_fraction}); validation is text only")
    return line


def rank_zero() -> bool:
    """Whether this process is the first (or only) one of a run: it speaks for all."""
    return getattr(rank_zero_only, "rank", 0) == 0


def quiet_libraries() -> None:
    """Keep a run's console to what the user acts on. Lightning's notices (which devices it
    found, advertising tips, "fit stopped") give way to ``summary``; the model summary and
    every warning stay. Deprecations raised inside Lightning's own code (its use of torch's
    pytree API) are Lightning's to fix, not the user's."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # A resume trains on in its own run directory (or in one hydra.run.dir names on purpose):
    # ModelCheckpoint's notices about a directory that is not empty, or not the checkpoint's,
    # would report the expected case.
    for notice in (r"Checkpoint directory .* exists and is not empty", r"The dirpath has changed from"):
        warnings.filterwarnings("ignore", message=notice)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"lightning(\.|$)")


def _check_resumable(config: TrainConfig, tokenizer: dict[str, Any]) -> int:
    """Refuse, with the keys to fix, a checkpoint that this run's model or data cannot continue;
    returns the global step it holds."""
    checkpoint = read_checkpoint(config.ckpt_path, key="ckpt_path", mmap=True)
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
    # sdpa and explicit share their parameters; a learner's class has parameters of its own.
    saved_class, this_class = (c.learner_attention and c.learner_attention[1] for c in (saved, config.model))
    if saved_class != this_class:
        raise ConfigError(
            f"ckpt_path: the checkpoint was trained with model.attention={saved.attention}, this run "
            f"uses model.attention={config.model.attention}; resume with model.attention={saved.attention}"
        )
    saved_kind = checkpoint["hyper_parameters"].get("tokenizer", "char")
    if saved_kind != tokenizer["tokenizer"]:
        raise ConfigError(
            f"ckpt_path: the checkpoint was trained with data.tokenizer={saved_kind}, this run uses "
            f"data.tokenizer={tokenizer['tokenizer']}; resume with data.tokenizer={saved_kind}"
        )
    saved_vocab, vocab = checkpoint["hyper_parameters"]["vocab"], tokenizer["vocab"]
    if saved_vocab != vocab:
        raise ConfigError(
            f"ckpt_path: the checkpoint's vocabulary ({len(saved_vocab)} characters) differs from "
            f"this run's data.source ({len(vocab)} characters); resume with the data it was trained on"
        )
    return int(checkpoint["global_step"])
