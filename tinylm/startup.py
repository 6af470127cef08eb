"""A run's start-up, stopped half-way, leaves nothing: a run directory that cannot be written, or a
Ctrl-C before training began, is one line, and the directory this run made goes again.

Torch-free: the CLI wraps every training job in these.
"""

from __future__ import annotations

import errno
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from tinylm.errors import TinyLMError
from tinylm.runlock import LOCK_NAME, RunDirUnwritable, forget, made

# What a write into a directory one may not write to fails with.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT)


class StoppedAtStart(TinyLMError):
    """Ctrl-C (or SIGTERM) came before training began: nothing was trained."""

    label = "stopped"
    bad_input = False

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def unwritable(error: OSError, key: str = "hydra.run.dir") -> RunDirUnwritable | None:
    """``error`` as one line naming the directory and the fix, when it is a write refused;
    ``key``: the setting that names the directory (``hydra.sweep.dir`` for a sweep)."""
    if error.errno not in UNWRITABLE:
        return None
    where = error.filename if error.filename is not None else "the run directory"
    example = "/tmp/tinylm-sweep" if key == "hydra.sweep.dir" else "/tmp/tinylm-run"
    return RunDirUnwritable(
        f"{key}: cannot write {where} ({error.strerror}); run where you can write, or set "
        f"{key} to a directory you can write to, e.g. {key}={example}"
    )


def only_bookkeeping(run_dir: Path, bookkeeping: set[Path]) -> bool:
    """Whether ``run_dir`` holds nothing but ``bookkeeping`` (Hydra's .hydra/ and job log, this
    run's lock): a run that has not begun to write."""
    if not run_dir.is_dir():
        return True
    return all(p in bookkeeping or p.name == ".lock" for p in run_dir.iterdir())


def remove_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir``, which this run made and nothing else wrote to (its lock was held), and
    its empty parents up to the working directory (``outputs/<date>``)."""
    forget(run_dir)
    cwd = Path.cwd()
    if run_dir == cwd or cwd.is_relative_to(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    remove_empty_parents(run_dir)


def remove_empty_parents(run_dir: Path) -> None:
    """Remove ``run_dir``'s parents that are empty now (``outputs/<date>``), up to the working
    directory: never it, nor anything outside it."""
    cwd = Path.cwd()
    for parent in run_dir.parents:
        if cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break  # not empty: an earlier run's outputs


def stopped_at_start(removed: bool) -> StoppedAtStart:
    left = "nothing is left on disk" if removed else "the run directory is as it was"
    return StoppedAtStart(f"Ctrl-C before training began: nothing was trained, {left}")


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
    remove_empty_parents(run_dir)


def discard_made_run_dirs() -> None:
    """Remove the run directories this process made to lock them that still hold nothing but the
    lock: the start-up stopped (a mistake Hydra found, Ctrl-C) before anything was written."""
    for run_dir in made():
        if run_dir.is_dir() and all(p.name == LOCK_NAME for p in run_dir.iterdir()):
            remove_run_dir(run_dir)


@contextmanager
def interrupts_after_loading() -> Iterator[None]:
    """A Ctrl-C while a command's libraries load is taken once they have loaded, as the
    KeyboardInterrupt it would have been: raised inside an import, it is caught half-way by some
    libraries (numpy's, scipy's), which then fail later on a half-made module with an error that
    has nothing to do with it. A second Ctrl-C is taken at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def defer(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be set back; Python's own then
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
