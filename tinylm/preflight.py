"""Checking a command line before Hydra acts on it.

Hydra creates the run directory and writes ``.hydra/`` before our code runs, and its own
errors (an unknown key, a preset that does not exist) take several lines and a hint that
does not apply to tinylm (``+model.foo=1`` adds a key our validation then refuses). So the
scripts first compose every job's config with Hydra's compose API and validate it here:
a mistake anywhere on the command line, in any job of a sweep, becomes one line naming the
key and the fix, before anything is written and before torch is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tinylm.cli import resolved
from tinylm.config import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def check_command_line(argv: Sequence[str], config_name: str, check: Callable[[dict[str, Any]], object],
                       parse: Callable[[dict[str, Any]], object] | None = None) -> None:
    """Compose the config of each job ``argv`` asks for and pass it to ``check``, which raises
    a TinyLMError for what it finds wrong. ``parse`` (default: ``check``) only validates the
    settings, quickly: it tells whether a key Hydra does not know could be added with ``+``.

    Raises ConfigError for any mistake. Does nothing when ``argv`` is not a run (``--help``,
    ``--cfg``, ``--info``) or points Hydra at other config files: Hydra handles those itself.
    """
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig

    args = get_args_parser().parse_args(list(argv))
    not_a_run = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion,
                 args.config_path, args.config_dir, args.experimental_rerun)
    if any(not_a_run):
        return
    name = args.config_name or config_name
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            for overrides in _jobs(args.overrides, args.multirun):
                check(_compose(name, overrides, parse or check))
    finally:
        HydraConfig.instance().cfg = None  # Hydra sets it again for the real run


def _jobs(overrides: list[str], multirun: bool) -> Iterator[list[str]]:
    """The overrides of each job: one job, or the sweep expanded as Hydra's basic sweeper does."""
    if not multirun:
        yield overrides
        return
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as error:
        raise _hydra_error(error) from None
    yield from batch


def _compose(name: str, overrides: list[str], parse: Callable[[dict[str, Any]], object]
             ) -> dict[str, Any]:
    """The job's config as plain values, or a ConfigError for what Hydra refused."""
    from hydra.errors import HydraException, MissingConfigException

    try:
        return _values(name, overrides)
    except MissingConfigException as error:
        raise _missing_preset(error) from None
    except HydraException as error:
        raise _unknown_key(error, name, overrides, parse) or _hydra_error(error) from None


def _values(name: str, overrides: list[str]) -> dict[str, Any]:
    """The config the job will get, as plain values (bar the run directory's exact name)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        # Hydra fills this in when it runs the job; paths.output_dir interpolates it.
        cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).absolute())
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]  # the job's config has no hydra node either
    return resolved(cfg)


def _unknown_key(error: Exception, name: str, overrides: list[str],
                 parse: Callable[[dict[str, Any]], object]) -> ConfigError | None:
    """Hydra's "Could not override 'model.foo'" as our one line, or None for other errors.

    Composed again with the key added (``+model.foo=1``), the config meets our validation,
    which names the known keys of that section; where validation accepts the added key
    (``trainer`` takes any lightning.Trainer argument), ``+`` is the fix to suggest.
    """
    from hydra.errors import HydraException

    message = str(error)
    if not message.startswith("Could not override '") or "not in struct" not in str(error.__cause__):
        return None
    key = message.split("'")[1]
    override = next((o for o in overrides if o.split("=", 1)[0] == key), None)
    if override is None:
        return None
    try:
        values = _values(name, [f"+{o}" if o is override else o for o in overrides])
    except HydraException:
        return None  # not a key that can be added either (e.g. one below a number)
    try:
        parse(values)
    except ConfigError as refused:
        return refused
    parent, _, leaf = key.rpartition(".")
    section = _lookup(values, parent)
    known = sorted(k for k in section if k != leaf) if isinstance(section, dict) else []
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {parent}.{close[0]}? " if close and parent else ""
    return ConfigError(f"{key}: unknown key; {hint}to add a new key write +{override}")


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in filter(None, dotted.split(".")):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _missing_preset(error: Any) -> ConfigError:
    """ "Could not find 'model/nope'" → model: no preset 'nope'; choose one of baby, nano."""
    missing = error.missing_cfg_file or ""
    group, _, choice = missing.rpartition("/")
    if not group or error.options is None:
        return _hydra_error(error)
    options = ", ".join(sorted(error.options))
    return ConfigError(f"{group}: no preset {choice!r} in configs/{group}/; choose one of {options}")


def _hydra_error(error: Exception) -> ConfigError:
    """Any other error of Hydra's, in one line that names the override when Hydra's does not."""
    from hydra.errors import OverrideParseException

    message = str(error)
    if isinstance(error, OverrideParseException):
        return ConfigError(f"{error.override}: {error.message.splitlines()[0]}; quote a value with "
                           f"special characters (key='a value'), see {OVERRIDE_GRAMMAR}")
    if message.startswith("Ambiguous value for argument '"):
        override = message.split("'")[1]
        return ConfigError(f"{override}: several values; to sweep over them add -m, for a list write "
                           f"key=[a,b], for text with a comma quote it: key='a,b'")
    lines = [line.strip() for line in message.splitlines()]
    end = next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))
    return ConfigError("; ".join(line for line in lines[:end] if line))
