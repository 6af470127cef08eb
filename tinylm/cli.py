"""The ``tinylm`` command. Every entry point has one shape: ``main([command, *arguments])``;
``scripts/<command>.py`` is ``main([command, *sys.argv[1:]])`` and nothing more.

A command names a root config in ``tinylm/configs`` (the repository's ``configs/``, shipped
inside the package), its typed schema, a torch-free check (``tinylm.preflight``) and a task
that takes the checked config. Hydra composes the config once; the schema builds the typed
config from it once, the check runs on it, and only then is the task's module imported (torch,
Lightning) and handed that object. A mistake anywhere becomes one line,
``error: <key>: <what to do>``, and exit status 2, with nothing left on disk:

- Hydra's own refusals (an unknown key, a wrong type, a preset that does not exist, an
  override it cannot parse) reach us as exceptions, which name the key in their attributes;
- a value our checks refuse stops the job before torch is imported, and the run directory
  Hydra made for it is removed again (``discard_unused_run_dir``);
- a sweep (``-m``) is checked whole, every job, before its first job starts (``CheckSweep``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinylm.arguments import (
    Command,
    hydra_arguments,
    several_values,
    sweep_jobs,
    sweep_override,
)
from tinylm.command_configs import (
    AttentionScriptConfig,
    BenchRunConfig,
    CheckAttentionConfig,
    CompareConfig,
    ExportConfig,
    PatchConfig,
    SampleConfig,
    SoakRunConfig,
)
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError, TinyLMError
from tinylm.learner.checker.arguments import overrides as check_attention_overrides
from tinylm.preflight import (
    check_checkpoint,
    check_export,
    check_resumed_checkpoint,
    check_sweep_strategy,
    check_train,
)
from tinylm.resume import (
    RunFinished,
    check_unfinished,
    continued_run,
    override_value,
    quoted_value,
    requeue_note,
    resume_arguments,
    run_settings,
)
from tinylm.rundir import run_dir, run_name_suffix
from tinylm.runlock import acquire, first_process
from tinylm.schema import as_plain, build, config_error, schema
from tinylm.search import check_trial, searching, trial_name
from tinylm.startup import (
    discard_made_run_dirs,
    discard_unused_run_dir,
    hydra_run_dir,
    interrupts_after_loading,
    only_bookkeeping,
    remove_run_dir,
    stopped_at_start,
    unwritable,
)

T = TypeVar("T")
CONFIG_MODULE = "tinylm.configs"
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
# What Lightning's ddp runs to start a run's other processes: `python <it> <command> <arguments>`.
RELAUNCH = Path(__file__).with_name("launch") / "run_tinylm.py"


# One spelling per setting, a key each: logger=none (no group of presets), optim.name=muon.
TRAINING_RETIRED = {"logger.kind": "logger={}", "optim": "optim.name={}"}


COMMANDS = {
    command.name: command
    for command in [
        Command("train", "train a model: tinylm train model.heads=4", "tinylm.train:run",
                "train", TrainConfig, check_train, retired=TRAINING_RETIRED),
        Command("sample", "sample text from a checkpoint: tinylm sample ckpt=RUN_DIR prompt=ROMEO:",
                "tinylm.sample:run", "sample", SampleConfig, check_checkpoint),
        Command("attention", "draw a checkpoint's attention: tinylm attention ckpt=RUN_DIR out=attn.png",
                "tinylm.attention.render:run", "attention", AttentionScriptConfig, check_checkpoint),
        Command("patch", "which heads carry a prediction: tinylm patch ckpt=RUN_DIR clean=... corrupt=...",
                "tinylm.patch:run", "patch", PatchConfig, check_checkpoint),
        Command("compare", "compare runs: tinylm compare multirun/DATE/TIME sort=val_bpc",
                "tinylm.compare:run", "compare", CompareConfig, positional="dirs",
                retired={"--sort": "sort={}", "--csv": "csv=true", "--plot": "plot={}"}),
        Command("export", "a checkpoint in the Hugging Face format: tinylm export ckpt=RUN_DIR out=DIR",
                "tinylm.export:run", "export", ExportConfig, check_export),
        Command("check-attention", "check an attention class: tinylm check-attention my_attn.py:MyAttention",
                "tinylm.learner.checker.command:run", "check_attention", CheckAttentionConfig,
                arguments=check_attention_overrides),
        Command("bench", "benchmarks: tinylm bench experiment=cpu_quick", "tinylm.tools.bench:run",
                "bench", BenchRunConfig, retired=TRAINING_RETIRED),
        Command("soak", "a long run watching memory: tinylm soak", "tinylm.tools.soak:run", "soak",
                SoakRunConfig, check_train, retired=TRAINING_RETIRED),
    ]
}


def main(argv: Sequence[str] | None = None) -> Any:
    """``tinylm <command> [arguments]``; ``argv`` defaults to the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name, *arguments = argv
    command = COMMANDS.get(name)
    if command is None:
        print(f"error: {name!r} is not a tinylm command; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        return run_hydra(command, arguments)
    except KeyboardInterrupt:  # before Hydra began the job (within it, the job says more)
        discard_made_run_dirs()
        print("stopped: Ctrl-C while tinylm was starting: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(["usage: tinylm <command> [key=value ...]", "", "commands:", *lines, "",
                      "tinylm <command> --help shows a command's settings."])


# --------------------------------------------------------------------------- Hydra commands


def register_configs() -> None:
    """Put each command's schema in Hydra's ConfigStore as ``<command>_schema``: the root
    configs in tinylm/configs list it first in their defaults."""
    store = ConfigStore.instance()
    for command in COMMANDS.values():
        store.store(name=f"{command.name}_schema", node=schema(command.schema))
    OmegaConf.register_new_resolver("tinylm.suffix", run_name_suffix, replace=True)
    OmegaConf.register_new_resolver("tinylm.trial", trial_name, replace=True)


def run_hydra(command: Command, arguments: list[str], exit: bool = True) -> Any:
    """Run ``command`` through ``hydra.main`` with ``arguments`` as its command line: Hydra
    composes the config, the schema builds and checks it, the command's torch-free check runs,
    and only then is the command's module imported (torch, Lightning: seconds) and its task run.
    ``exit=False`` (the notebook API): a mistake raises its TinyLMError instead of exiting, and
    the task's result is returned."""
    register_configs()
    result: list[Any] = []
    failed: list[TinyLMError] = []  # exit=False: raised once Hydra is done (it reports a failed job itself)

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=command.config)
    def app(cfg: Any) -> Any:
        def job() -> Any:
            config = build(command.schema, cfg)
            if command.check is not None:
                command.check(config, list(HydraConfig.get().overrides.task))
            try:
                result.append(relaunchable(command.name, given, lambda: _function(command.task)(config)))
                return result[-1]
            except OSError as error:  # a run directory that cannot be written: one line
                raise unwritable(error) or error from None

        run_dir, bookkeeping = hydra_run_dir()
        fresh = only_bookkeeping(run_dir, bookkeeping)  # else a run resumed in its directory
        try:
            if exit:
                return exit_on_error(job, cleanup=discard_unused_run_dir)
            try:
                return job()
            except TinyLMError as error:
                if error.bad_input:
                    discard_unused_run_dir()
                failed.append(error)
        except KeyboardInterrupt:  # before training began: the callbacks handle it after
            if fresh:
                remove_run_dir(run_dir)
            if not exit:
                failed.append(stopped_at_start(removed=fresh))
                return None
            return exit_on_error(lambda: _raise(stopped_at_start(removed=fresh)))

    given = list(arguments)
    arguments = exit_on_error(lambda: hydra_arguments(command, arguments), exit=exit)
    if command.name == "train":
        arguments = exit_on_error(lambda: claim_run_dir(arguments), exit=exit)
    # Hydra reads its arguments from here and names the command in its messages.
    argv, sys.argv = sys.argv, [f"tinylm {command.name}", *arguments]
    # Hydra then lets its errors reach us as exceptions instead of printing them itself.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        returned = exit_on_error(lambda: _translating(command, arguments, app), exit=exit)
    finally:
        sys.argv = argv
    if failed:
        raise failed[0]
    return result[-1] if result and not exit else returned


def claim_run_dir(arguments: list[str]) -> list[str]:
    """Before Hydra writes anything: a resume of a run (``ckpt_path=`` naming it) completed with
    that run's own settings, said in one line, or ended at once if the run is finished; and the
    lock of the run directory taken where the command line names it (a resume, ``hydra.run.dir=``),
    so a second run into a live one is refused before it touches a file there. A directory that
    holds a stopped run of the same settings (a requeued job) is resumed from its last.ckpt; one
    that holds a run of other settings is refused (``tinylm.resume.continued_run``)."""
    arguments, resumed = resume_arguments(arguments)
    multirun = any(a in ("-m", "--multirun") for a in arguments)
    directory = next((override_value(a) for a in reversed(arguments) if a.startswith("hydra.run.dir=")), None)
    overrides = [a for a in arguments if not a.startswith("-") and not a.startswith("hydra.")]
    note = resumed.note if resumed is not None else None
    try:
        if resumed is not None:
            check_resumed_checkpoint(resumed.root, resumed.checkpoint)  # before saying "resuming"
            max_steps = build(TrainConfig, compose("train", overrides)).max_steps
            check_unfinished(resumed.root, resumed.checkpoint, max_steps)
        if directory and not multirun and first_process():
            own = resumed is not None and resumed.root == Path(directory)
            acquire(str(directory), key="ckpt_path" if own else "hydra.run.dir")
        if resumed is None and directory and not multirun and run_dir(str(directory)).last.is_file():
            # A requeued job, or the same command again: its own run, if the settings agree.
            config, root = build(TrainConfig, compose("train", overrides)), Path(str(directory))
            last = continued_run(root, run_settings(as_plain(config)), config.max_steps, key="hydra.run.dir")
            if last is not None:
                arguments = [*arguments, f"ckpt_path={quoted_value(str(last))}"]
                note = requeue_note(root, last)
    except RunFinished as finished:
        print(f"run: {finished}")
        raise SystemExit(0) from None
    if note is not None:
        print(note, flush=True)
    return arguments


def relaunchable(name: str, arguments: list[str], task: Callable[[], T]) -> T:
    """Run ``task`` with ``sys.argv`` a command line that Python can run again: Lightning's ddp
    starts the other processes of a run with ``python sys.argv`` (``python -m tinylm.__main__
    sys.argv[1:]`` under ``python -m tinylm``) plus the run directory. Hydra has read its
    arguments by now."""
    given, sys.argv = sys.argv, [str(RELAUNCH), name, *arguments]
    try:
        return task()
    finally:
        sys.argv = given


def _translating(command: Command, arguments: list[str], run: Callable[[], T]) -> T:
    try:
        return run()
    except (HydraException, OmegaConfBaseException) as error:
        discard_made_run_dirs()
        raise hydra_error(error, command, arguments) from None
    except OSError as error:  # Hydra making the run (or sweep) directory
        discard_made_run_dirs()
        key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in arguments) else "hydra.run.dir"
        raise unwritable(error, key) or error from None
    except KeyboardInterrupt:  # before Hydra made the run directory, or while it did
        discard_unused_run_dir()
        discard_made_run_dirs()
        raise stopped_at_start(removed=True) from None


def _raise(error: BaseException) -> Any:
    raise error


def hydra_error(error: Exception, command: Command, arguments: Sequence[str]) -> ConfigError:
    """One of Hydra's errors as one line naming the override, read from the error's attributes."""
    if isinstance(error, OmegaConfBaseException):
        return config_error(error, command.schema)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        if group:
            return ConfigError(f"{group}: no preset {choice!r} in configs/{group}/; "
                               f"choose one of {', '.join(sorted(error.options))}")
    if isinstance(error, OverrideParseException):
        return ConfigError(f"{error.override}: {error.message.splitlines()[0]}; quote a value with "
                           f"special characters (key='a value'), see {OVERRIDE_GRAMMAR}")
    cause = error.__cause__
    if isinstance(error, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return config_error(cause, command.schema)
    sweep = sweep_override(arguments)
    if sweep is not None and "-m" not in arguments and "--multirun" not in arguments:
        return several_values(sweep)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return ConfigError("; ".join(lines[:2]) or type(error).__name__)


def compose(command: str, overrides: Sequence[str] = ()) -> Any:
    """The config ``tinylm <command> <overrides>`` runs with (one job), from Hydra's compose
    API, as a DictConfig; a mistake is a ConfigError. Its ``paths.output_dir`` is "." unless
    given: only a running job has a run directory."""
    spec = COMMANDS[command]
    register_configs()
    overrides = list(overrides)
    if "paths" in spec.schema.__dataclass_fields__ and not any(
            o.startswith("paths.output_dir=") for o in overrides):
        overrides.append("paths.output_dir=.")

    def composed() -> Any:
        return hydra_compose(config_name=spec.config, overrides=overrides)

    if GlobalHydra.instance().is_initialized():  # inside a running command: a sweep's check
        return _translating(spec, overrides, composed)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return _translating(spec, overrides, composed)


def check_command(argv: Sequence[str]) -> None:
    """Check ``tinylm <argv>`` without running it: compose each job's config (each job of a
    ``-m`` sweep) and build its typed config. Checks settings only, not that files or data
    sources exist. Raises a TinyLMError for a mistake."""
    name, *arguments = argv
    command = COMMANDS.get(name)
    if command is None:
        raise ConfigError(f"{name!r} is not a tinylm command; choose one of {', '.join(COMMANDS)}")
    arguments = hydra_arguments(command, arguments)
    multirun = any(a in ("-m", "--multirun") for a in arguments)
    overrides = [a for a in arguments if not a.startswith("-")]
    if multirun:
        check_sweep(command, overrides)
    elif (sweep := sweep_override(overrides)) is not None:
        raise several_values(sweep)
    else:
        build(command.schema, compose(command.name, overrides))


def check_sweep(command: Command, overrides: Sequence[str]) -> None:
    """Build every job's typed config of the sweep ``overrides`` ask for, and check that a
    training sweep's DDP strategy starts no job twice; raises a TinyLMError for a mistake."""
    for job in sweep_jobs(overrides):
        config = build(command.schema, compose(command.name, job))
        if isinstance(config, TrainConfig):
            check_sweep_strategy(config.trainer)


class CheckSweep(HydraCallback):
    """A Hydra callback (configs/hydra/default.yaml): before a sweep's first job starts, check
    every job's config, so a mistake in the fifth job does not wait for four runs to end."""

    def __init__(self, command: str) -> None:
        self.command = command

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        exit_on_error(lambda: check_sweep(COMMANDS[self.command], overrides))
        if searching(config.hydra):  # every trial's config differs only in what is searched
            exit_on_error(lambda: check_trial(build(TrainConfig, compose(self.command, overrides))))


# --------------------------------------------------------------------------- errors


def exit_on_error(run: Callable[[], T], cleanup: Callable[[], None] | None = None, exit: bool = True) -> T:
    """Run ``run``; a TinyLMError becomes ``<label>: <message>`` on stderr and its exit status
    (``error: ...`` and 2 for a mistake), or with ``exit=False`` is raised again. For bad input
    ``cleanup`` runs first: it removes what the failed run wrote, so a mistake leaves nothing behind.

    Set TINYLM_DEBUG=1 to get the full traceback instead.
    """
    try:
        return run()
    except TinyLMError as error:
        if cleanup is not None and error.bad_input:
            cleanup()
        if os.environ.get("TINYLM_DEBUG") or not exit:
            raise
        print(f"{error.label}: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None


def _function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    with interrupts_after_loading():  # torch, Lightning, datasets: seconds of imports
        loaded = importlib.import_module(module)
    return getattr(loaded, name)
