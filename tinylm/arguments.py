"""What a tinylm command is, and how its command line becomes Hydra overrides: one grammar,
``key=value``, for every command. Plain arguments are gathered into a command's positional key,
retired spellings are refused naming their replacement, and text (a prompt, a path holding "=")
is quoted so Hydra's override grammar takes it whatever it holds.

Torch-free: the CLI reads the command line with it before anything heavy loads.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from tinylm.errors import ConfigError


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


def several_values(override: str) -> ConfigError:
    """``key=a,b`` given to a single run."""
    return ConfigError(f"{override}: several values; to sweep over them add -m, for a list write "
                       f"key=[a,b], for text with a comma quote it: key='a,b'")


def sweep_override(arguments: Sequence[str]) -> str | None:
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

