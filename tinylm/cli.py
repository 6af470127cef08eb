"""What the command-line scripts share: turning a user's mistake into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tinylm.config import ConfigError, TinyLMError

T = TypeVar("T")


def exit_on_error(run: Callable[[], T]) -> T:
    """Run ``run``; a TinyLMError becomes ``error: <message>`` on stderr and exit status 2.

    Set TINYLM_DEBUG=1 to get the full traceback instead.
    """
    try:
        return run()
    except TinyLMError as error:
        if os.environ.get("TINYLM_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def resolved(cfg: Any) -> dict[str, Any]:
    """A Hydra config as plain, resolved Python values; a required key left unset (``???``)
    is a ConfigError naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key}: is required; set it on the command line: "
                          f"{error.full_key}=...") from None
