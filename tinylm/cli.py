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
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
from tinylm.preflight import check_checkpoint, check_export, check_intact, check_sweep_strategy, check_train
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
from tinylm.rundir import run_dir, shown
from tinylm.runlock import acquire, first_process, forget
from tinylm.schema import as_plain, build, config_error, schema
from tinylm.search import check_trial, searching, trial_name
from tinylm.startup import (
    discard_made_run_dirs,
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


@dataclass(frozen=True)
class Command:
    """One subcommand: its root config in tinylm/configs and typed schema, the torch-free check
    run on the built config before the task's module is imported, and the task itself."""

    name: str
    summary: str
    task: str  # "module:function" called with the checked config; imported only once it is checked
    config: str  # the root config in tinylm/configs
    schema: type  # the typed config the task receives
    check: Callable[[Any, list[str]], None] | None = None  # torch-free: (config, overrides)
    positional: str | None = None  # the key that plain arguments (no key=) are gathered into, as a list
    # Spellings the docs once showed, each with the one that replaced it ("{}": the value given).
    retired: Mapping[str, str] = field(default_factory=dict)
    arguments: Callable[[Sequence[str]], list[str]] | None = None  # the command's own forms, as overrides


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


MAX_NAME_CHARS = 120  # of the overrides in a run directory's name (file names hold 255 bytes)


def run_name_suffix(overrides: str) -> str:
    """``_<overrides>`` for a run directory's name, or "" for a run without overrides:
    ``${tinylm.suffix:${hydra.job.override_dirname}}`` in configs/hydra/default.yaml. A "/" in a
    value would make sub-directories: it becomes "-"."""
    name = str(overrides).replace("/", "-")
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS - 1] + "…"
    return f"_{name}" if name else ""


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


def check_resumed_checkpoint(root: Path, checkpoint: Path) -> None:
    """That the checkpoint a resume of the run in ``root`` names is there and intact."""
    if checkpoint.is_file():
        check_intact(checkpoint, "ckpt_path")
    elif checkpoint.name == "last.ckpt":
        raise ConfigError(f"ckpt_path: {shown(root)} has no checkpoint: it stopped before its first save; "
                          f"train it again, without ckpt_path")
    else:
        raise ConfigError(f"ckpt_path: no checkpoint file at {checkpoint.absolute()}; "
                          f"its run's last checkpoint: ckpt_path={shown(root)}")


def relaunchable(name: str, arguments: list[str], task: Callable[[], T]) -> T:
    """Run ``task`` with ``sys.argv`` a command line that Python can run again: Lightning's ddp
    starts the other processes of a run with ``python sys.argv`` (``python -m tinylm.__main__
    sys.argv[1:]`` under ``python -m tinylm``) plus the run directory. Hydra has read its
    arguments by now."""
    shown, sys.argv = sys.argv, [str(RELAUNCH), name, *arguments]
    try:
        return task()
    finally:
        sys.argv = shown


def hydra_arguments(command: Command, arguments: Sequence[str]) -> list[str]:
    """The command line ``arguments`` as Hydra overrides: a retired spelling refused, plain
    arguments gathered into the command's positional key, values quoted where Hydra needs it."""
    if command.arguments is not None:  # the command's own forms (check-attention's FILE:Class)
        arguments = command.arguments(arguments)
    refuse_retired(command, arguments)
    return quote_arguments(command, gather_positional(command, arguments))


def refuse_retired(command: Command, arguments: Sequence[str]) -> None:
    """Raise for a spelling the docs once showed, naming its replacement:
    ``--plot curves.png`` is ``plot=curves.png``, ``logger.kind=none`` is ``logger=none``."""
    for i, argument in enumerate(arguments):
        old, sep, value = argument.partition("=")
        new = command.retired.get(old.lstrip("+~"))
        if new is None:
            continue
        if not old.startswith("-"):
            raise ConfigError(f"{old.lstrip('+~')}: write {new.format(value or '...')}")
        if not sep and "{}" in new:
            following = arguments[i + 1] if i + 1 < len(arguments) else ""
            value = following if following and not following.startswith("-") else "..."
        raise ConfigError(f"{old}: tinylm takes key=value; write {new.format(value)}")


# Hydra's flags that take the next argument as their value: never a plain argument.
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
                     "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def gather_positional(command: Command, arguments: Sequence[str]) -> list[str]:
    """``arguments`` with the plain ones collected into ``<command.positional>=[...]``:
    ``tinylm compare a b sort=val_bpc`` is ``tinylm compare dirs=[a,b] sort=val_bpc``. A path
    holding "=" (a run directory named by its overrides) is plain too: before its "=" comes a
    "/", or it exists."""
    key = command.positional
    plain = [False] * len(arguments)
    for i, argument in enumerate(arguments):
        flag_value = i > 0 and arguments[i - 1] in HYDRA_VALUE_FLAGS
        before, sep, _ = argument.partition("=")
        plain[i] = key is not None and not flag_value and not argument.startswith(("-", "+", "~")) and (
            not sep or "/" in before or Path(argument).exists())
    if not any(plain):
        return list(arguments)
    rest = [a for a, p in zip(arguments, plain, strict=True) if not p]
    if any(a.partition("=")[0] == key for a in rest):
        raise ConfigError(f"{key}: given twice, as plain arguments and as {key}=; give one of them")
    values = [quote_prompt(f"prompt={a}").removeprefix("prompt=")
              for a, p in zip(arguments, plain, strict=True) if p]
    return [f"{key}=[{','.join(values)}]", *rest]


PATH_KEYS = ("ckpt", "ckpt_path")  # a run directory's name holds "=" and ",": quoted for Hydra
TEXT_KEYS = {"sample": ("prompt",), "attention": ("prompt",), "patch": ("clean", "corrupt")}  # any text


def quote_arguments(command: Command, arguments: Sequence[str]) -> list[str]:
    """``arguments`` as Hydra can parse them: a prompt (``TEXT_KEYS``) quoted whatever it holds, and
    a checkpoint path holding "=" (a run directory named by its overrides: ``<time>_model.heads=8``) quoted
    as well; a path without "=" is left as it is (``ckpt_path=a,b`` may be a sweep)."""
    quoted = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key in TEXT_KEYS.get(command.name, ()):  # quoted as a prompt, under its own key
            argument = quote_prompt(f"prompt={value}").replace("prompt=", f"{key}=", 1)
        if key in PATH_KEYS and "=" in value and not (value[:1] == value[-1:] and value[:1] in "'\""):
            argument = quote_prompt(f"prompt={value}").replace("prompt=", f"{key}=", 1)
        quoted.append(argument)
    return quoted


def quote_prompt(arg: str) -> str:
    """Quote a ``prompt=`` override for Hydra, whose grammar rejects unquoted text with
    characters such as €, ', = or a trailing colon-space; already quoted values pass as they are."""
    key, sep, value = arg.partition("=")
    if key != "prompt" or not sep or (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
        return arg
    # Hydra's quoted strings: escape the quote, and double backslashes before a quote or the end.
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"prompt='{escaped}'"


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
    sweep = _sweep_override(arguments)
    if sweep is not None and "-m" not in arguments and "--multirun" not in arguments:
        return several_values(sweep)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return ConfigError("; ".join(lines[:2]) or type(error).__name__)


def several_values(override: str) -> ConfigError:
    """``key=a,b`` given to a single run."""
    return ConfigError(f"{override}: several values; to sweep over them add -m, for a list write "
                       f"key=[a,b], for text with a comma quote it: key='a,b'")


def _sweep_override(arguments: Sequence[str]) -> str | None:
    """The first argument that gives several values (``model.heads=1,2``), or None."""
    overrides = [a for a in arguments if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override()), None)


def sweep_jobs(overrides: Sequence[str]) -> Iterator[list[str]]:
    """The overrides of each job of a sweep, in the order Hydra's basic sweeper runs them."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    for job in itertools.product(*choices):
        yield list(job)


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
    elif (sweep := _sweep_override(overrides)) is not None:
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


def hydra_run_dir() -> tuple[Path, set[Path]]:
    """This job's run directory and the files of Hydra's own bookkeeping in it."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir).absolute()
    bookkeeping = {run_dir / f"{hydra.job.name}.log"}
    if hydra.output_subdir is not None:
        bookkeeping.add(run_dir / hydra.output_subdir)
    return run_dir, bookkeeping


def discard_unused_run_dir() -> None:
    """Remove the directory Hydra made for this job if it holds nothing but Hydra's own
    bookkeeping (``.hydra/`` and the job's log): after a run stopped on bad input, that is
    all it holds. Anything else in it (a resumed run's checkpoints) keeps it as it is.
    Empty parents (``outputs/<date>``) go too, up to the working directory."""
    if not HydraConfig.initialized():
        return
    run_dir, bookkeeping = hydra_run_dir()
    forget(run_dir)  # this run's lock goes with it
    if not run_dir.is_dir() or run_dir == Path.cwd():
        return
    entries = list(run_dir.iterdir())
    hydra_files = [p for d in entries if d.is_dir() and d in bookkeeping for p in d.iterdir()]
    if any(p not in bookkeeping for p in entries) or any(not p.is_file() for p in hydra_files):
        return
    for path in [*hydra_files, *entries]:
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    run_dir.rmdir()
    cwd = Path.cwd()
    for parent in run_dir.parents:
        if cwd not in parent.parents:
            break  # never the working directory, nor anything outside it
        try:
            parent.rmdir()
        except OSError:
            break  # not empty: an earlier run's outputs


def _function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
