"""What the command-line scripts share: turning a user's mistake into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tinylm.config import ConfigError, TinyLMError

T = TypeVar("T")


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


def resolved(cfg: Any) -> dict[str, Any]:
    """A Hydra config as plain, resolved Python values; a value that cannot be resolved
    (``???`` left unset, an interpolation to nothing) is a ConfigError naming its key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key}: is required; set it on the command line: "
                          f"{error.full_key}=...") from None
    except OmegaConfBaseException as error:
        problem = str(error).splitlines()[0]
        raise ConfigError(f"{error.full_key}: cannot be resolved ({problem}); fix the value") from None


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
