"""The errors a user can fix. Every command prints one as ``<label>: <message>`` and exits with
its status (``tinylm.cli.exit_on_error``); each module that can refuse something defines its
own subclass beside the check that raises it."""

from __future__ import annotations


class TinyLMError(Exception):
    """An error the user can fix; the message says what is wrong and how to fix it."""

    label = "error"  # the command line prints "<label>: <message>" ...
    exit_code = 2  # ... and exits with this status
    bad_input = True  # found before any work was done: the run's directory can go


class ConfigError(TinyLMError, ValueError):
    """A configuration value is wrong; the message names the key."""


def require(condition: bool, key: str, problem: str) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {problem}")
