"""tinylm from Python, as from the command line: the same commands, checks and files.

    run = tinylm.train("model.heads=2", trainer={"max_steps": 300})   # tinylm train model.heads=2 ...
    tinylm.check_attention(MultiHeadAttention)                        # tinylm check-attention
    run = tinylm.train(attention=MultiHeadAttention)                  # model.attention=...
    model, tokenizer = tinylm.load(run)                               # or a checkpoint, an export
    tinylm.compare(run_a, run_b)                                      # tinylm compare

``train`` goes through the command line's own path (``tinylm.cli.run_hydra``): Hydra composes
the config from the same presets, the schema and ``tinylm.preflight`` check it, and the run
writes the same directory; a mistake raises the TinyLMError whose message is the command line's
one line. An attention class defined in a notebook cell is registered for this process
(``tinylm.learner.registry``); its runs record its name and source hash, never its code.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from tinylm.callbacks import Interrupted
from tinylm.cli import COMMANDS, compose, run_hydra
from tinylm.command_configs import CheckAttentionConfig, CompareConfig
from tinylm.compare import run as compare_runs
from tinylm.config import TrainConfig
from tinylm.learner.checker.checklist import check_target
from tinylm.learner.registry import register
from tinylm.notebook.display import Checklist, Picture
from tinylm.notebook.model import Model
from tinylm.notebook.model import load as load_model
from tinylm.notebook.run import History, Run
from tinylm.schema import build
from tinylm.train import fit, summary

__all__ = ["Model", "Run", "check_attention", "compare", "load", "train"]

# tinylm train, with a task that hands back the run instead of a number.
NOTEBOOK_TRAIN = dataclasses.replace(COMMANDS["train"], task="tinylm.notebook.api:train_job")
PLAIN = re.compile(r"[\w./:@+-]+")  # a value Hydra reads as it is written


def train(*overrides: str, attention: type | None = None, **settings: Any) -> Run:
    """Train as ``tinylm train <overrides>`` does and return the run. ``settings`` say the same
    as overrides: ``model="modern"`` is ``model=modern``, ``trainer={"max_steps": 50}`` is
    ``trainer.max_steps=50``. ``attention``: a class defined in the notebook, checked, then
    trained inside tinylm's blocks. Interrupting the kernel stops after the current step and
    keeps last.ckpt, as Ctrl-C does; the run says so (``run.stopped``)."""
    arguments = [*overrides, *as_overrides(settings)]
    if attention is not None:
        arguments.append(f"model.attention={register(attention)}")
    return run_hydra(NOTEBOOK_TRAIN, arguments, exit=False)


def train_job(config: TrainConfig) -> Run:
    """The task of ``train``: one Hydra job, its config built and checked by the CLI's path."""
    overrides = list(HydraConfig.get().overrides.task)
    history = History()
    stopped = None
    try:
        fit(config, overrides, extra_callbacks=[history])
    except Interrupted as interrupt:  # saved and stopped: the run is still worth returning
        print(f"stopped: {interrupt}")
        stopped = str(interrupt)
    trainer = history.trainer
    text = summary(config, trainer)
    print(text)
    best = trainer.checkpoint_callback.best_model_score
    learner = config.model.learner_attention
    return Run(dir=Path(config.paths.output_dir).absolute(), steps=trainer.global_step,
               best_val_loss=float(best) if best is not None else None, history=history.points,
               stopped=stopped, summary=text, attention_file=config.model.attention if learner else None)


def as_overrides(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"trainer": {"max_steps": 50}, "model": "modern"}`` as
    ``["trainer.max_steps=50", "model=modern"]``."""
    overrides = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            overrides += as_overrides(value, f"{prefix}{key}.")
        else:
            overrides.append(f"{prefix}{key}={hydra_value(value)}")
    return overrides


def hydra_value(value: Any) -> str:
    """A Python value as an override writes it: true, null, [1,2], a quoted string where needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return f"[{','.join(hydra_value(v) for v in value)}]"
    text = str(value)
    if isinstance(value, str) and not PLAIN.fullmatch(text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def load(source: Run | str | Path, attention: type | str | None = None) -> Model:
    """The model and tokenizer (``model, tokenizer = tinylm.load(run)``) of a Run, a run
    directory, a checkpoint, a model.safetensors or a directory ``tinylm export`` wrote; its
    ``sample``, ``attention`` and ``explorer`` show in the cell. A model trained with a learner's
    attention class needs the class again (``attention=MyAttention``) or its file."""
    if isinstance(source, Run):
        return source.load(attention)
    return load_model(source, attention)


def check_attention(attention: type | str, d_model: int | None = None, heads: int | None = None,
                    **kwargs: Any) -> Checklist:
    """``tinylm check-attention``'s checklist of ``attention`` (a class defined in the notebook, or
    "file.py:Class"): each line ✓ or ✗ with the fix. ``kwargs`` go to its constructor."""
    spec = register(attention) if isinstance(attention, type) else attention
    overrides = [f"attention={spec}", *as_overrides({"kwargs": kwargs})]
    overrides += [f"{key}={value}" for key, value in (("d_model", d_model), ("heads", heads)) if value]
    config = build(CheckAttentionConfig, compose("check-attention", overrides))
    report, _ = check_target(config.attention, config.d_model, config.heads, config.kwargs)
    name = attention.__name__ if isinstance(attention, type) else spec
    return Checklist(f"checking {name}: {report}", report.ok)


def compare(*runs: Run | str | Path, sort: str = "run") -> Picture:
    """``tinylm compare``'s table of ``runs`` (Runs, run or sweep directories) and their loss curves."""
    dirs = [str(Path(run)) for run in runs]
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        plot = Path(scratch) / "curves.png"
        overrides = [f"dirs=[{','.join(hydra_value(d) for d in dirs)}]", f"sort={sort}",
                     f"plot={hydra_value(str(plot))}"]
        config = build(CompareConfig, compose("compare", overrides))
        compare_runs(config, out=lines.append)
        return Picture(plot.read_bytes(), "\n".join(lines))

