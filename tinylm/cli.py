"""The ``tinylm`` command. Every entry point has one shape: ``main([command, *arguments])``;
``scripts/<command>.py`` is ``main([command, *sys.argv[1:]])`` and nothing more.

A command names a root config in ``tinylm/configs`` (the repository's ``configs/``, shipped
inside the package), its typed schema (``tinylm.config``) and a task that takes the checked
config. Hydra composes the config once; the task builds the typed config from it once and
hands that object on. A mistake anywhere becomes one line, ``error: <key>: <what to do>``,
and exit status 2, with nothing left on disk:

- Hydra's own refusals (an unknown key, a wrong type, a preset that does not exist, an
  override it cannot parse) reach us as exceptions, which name the key in their attributes;
- a value our checks refuse stops the task before torch is imported, and the run directory
  Hydra made for it is removed again (``discard_unused_run_dir``);
- a sweep (``-m``) is checked whole, every job, before its first job starts (``CheckSweep``).
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback as HydraCallback

from tinylm.config import (
    AttentionScriptConfig,
    BenchRunConfig,
    SampleConfig,
    SoakRunConfig,
    TrainConfig,
    build,
    config_error,
    schema,
)
from tinylm.errors import ConfigError, TinyLMError

T = TypeVar("T")
CONFIG_MODULE = "tinylm.configs"
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    task: str  # "module:function" called with the arguments (argparse) or the checked config
    config: str | None = None  # the root config in tinylm/configs; None: not a Hydra command
    schema: type | None = None  # the typed config the task receives


COMMANDS = {
    command.name: command
    for command in [
        Command("train", "train a model: tinylm train model.heads=4", "tinylm.train:run",
                "train", TrainConfig),
        Command("sample", "sample text from a checkpoint: tinylm sample ckpt=RUN_DIR prompt=ROMEO:",
                "tinylm.sample:run", "sample", SampleConfig),
        Command("attention", "draw a checkpoint's attention: tinylm attention ckpt=RUN_DIR out=attn.png",
                "tinylm.attention.render:run", "attention", AttentionScriptConfig),
        Command("compare", "compare runs: tinylm compare multirun/DATE/TIME --sort val_bpc",
                "tinylm.compare:main"),
        Command("check-attention", "check an attention class: tinylm check-attention my_attn.py:MyAttention",
                "tinylm.attention.check:main"),
        Command("bench", "benchmarks: tinylm bench experiment=cpu_quick", "tinylm.tools.bench:run",
                "bench", BenchRunConfig),
        Command("soak", "a long run watching memory: tinylm soak", "tinylm.tools.soak:run", "soak",
                SoakRunConfig),
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
    if command.config is None:
        return exit_on_error(lambda: _function(command.task)(arguments))
    return run_hydra(command, arguments)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(["usage: tinylm <command> [key=value ...]", "", "commands:", *lines, "",
                      "tinylm <command> --help shows a command's settings."])


# --------------------------------------------------------------------------- Hydra commands


def register_configs() -> None:
    """Put each command's schema in Hydra's ConfigStore as ``<command>_schema``: the root
    configs in tinylm/configs list it first in their defaults."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for command in COMMANDS.values():
        if command.schema is not None:
            store.store(name=f"{command.name}_schema", node=schema(command.schema))
    OmegaConf.register_new_resolver("tinylm.suffix", run_name_suffix, replace=True)


MAX_NAME_CHARS = 120  # of the overrides in a run directory's name (file names hold 255 bytes)


def run_name_suffix(overrides: str) -> str:
    """``_<overrides>`` for a run directory's name, or "" for a run without overrides:
    ``${tinylm.suffix:${hydra.job.override_dirname}}`` in configs/hydra/default.yaml. A "/" in a
    value would make sub-directories: it becomes "-"."""
    name = str(overrides).replace("/", "-")
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS - 1] + "…"
    return f"_{name}" if name else ""


def run_hydra(command: Command, arguments: list[str]) -> Any:
    """Run ``command`` through ``hydra.main`` with ``arguments`` as its command line."""
    import hydra

    register_configs()
    task = _function(command.task)

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=command.config)
    def app(cfg: Any) -> Any:
        return exit_on_error(lambda: task(build(command.schema, cfg)), cleanup=discard_unused_run_dir)

    arguments = quote_arguments(command, arguments)
    sys.argv = [f"tinylm {command.name}", *arguments]
    # Hydra then lets its errors reach us as exceptions instead of printing them itself.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    return exit_on_error(lambda: _translating(command, arguments, app))


PATH_KEYS = ("ckpt", "ckpt_path")  # a run directory's name holds "=" and ",": quoted for Hydra


def quote_arguments(command: Command, arguments: Sequence[str]) -> list[str]:
    """``arguments`` as Hydra can parse them: a prompt quoted whatever it holds, and a checkpoint
    path holding "=" (a run directory named by its overrides: ``<time>_model.heads=8``) quoted
    as well; a path without "=" is left as it is (``ckpt_path=a,b`` may be a sweep)."""
    from tinylm.sample import quote_prompt

    quoted = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        if command.name in ("sample", "attention"):
            argument = quote_prompt(argument)
        if key in PATH_KEYS and "=" in value and not (value[:1] == value[-1:] and value[:1] in "'\""):
            argument = quote_prompt(f"prompt={value}").replace("prompt=", f"{key}=", 1)
        quoted.append(argument)
    return quoted


def _translating(command: Command, arguments: list[str], run: Callable[[], T]) -> T:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return run()
    except (HydraException, OmegaConfBaseException) as error:
        raise hydra_error(error, command, arguments) from None


def hydra_error(error: Exception, command: Command, arguments: Sequence[str]) -> ConfigError:
    """One of Hydra's errors as one line naming the override, read from the error's attributes."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

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
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = [a for a in arguments if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override()), None)


def sweep_jobs(overrides: Sequence[str]) -> Iterator[list[str]]:
    """The overrides of each job of a sweep, in the order Hydra's basic sweeper runs them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    spec = COMMANDS[command]
    register_configs()
    overrides = list(overrides)
    if spec.schema is not None and "paths" in spec.schema.__dataclass_fields__ and not any(
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
    if command.config is None:
        _function(command.task.replace(":main", ":parse_args"))(arguments)
        return
    arguments = quote_arguments(command, arguments)
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
            from tinylm.train import check_sweep_strategy

            check_sweep_strategy(config.trainer)


class CheckSweep(HydraCallback):
    """A Hydra callback (configs/hydra/default.yaml): before a sweep's first job starts, check
    every job's config, so a mistake in the fifth job does not wait for four runs to end."""

    def __init__(self, command: str) -> None:
        self.command = command

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        exit_on_error(lambda: check_sweep(COMMANDS[self.command], overrides))


# --------------------------------------------------------------------------- errors


def exit_on_error(run: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
    """Run ``run``; a TinyLMError becomes ``<label>: <message>`` on stderr and its exit status
    (``error: ...`` and 2 for a mistake). For bad input ``cleanup`` runs first: it removes what
    the failed run wrote, so a mistake leaves nothing behind.

    Set TINYLM_DEBUG=1 to get the full traceback instead.
    """
    try:
        return run()
    except TinyLMError as error:
        if cleanup is not None and error.bad_input:
            cleanup()
        if os.environ.get("TINYLM_DEBUG"):
            raise
        print(f"{error.label}: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None


def discard_unused_run_dir() -> None:
    """Remove the directory Hydra made for this job if it holds nothing but Hydra's own
    bookkeeping (``.hydra/`` and the job's log): after a run stopped on bad input, that is
    all it holds. Anything else in it (a resumed run's checkpoints) keeps it as it is.
    Empty parents (``outputs/<date>``) go too, up to the working directory."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir).absolute()
    bookkeeping = {run_dir / f"{hydra.job.name}.log"}
    if hydra.output_subdir is not None:
        bookkeeping.add(run_dir / hydra.output_subdir)
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
