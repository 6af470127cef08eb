"""One run per directory: a training run holds a lock on its run directory for its lifetime.

The lock is ``<run>/.lock``, an ``fcntl.flock`` on a file that names the holder's PID. The kernel
releases a flock when its process ends, however it ends (``kill -9`` included), so a lock file
left by a dead process holds nothing: the next run takes it over and says so. A second run into a
live run's directory (a repeated command with ``hydra.run.dir=``, a requeued job beside a live
one) is refused in one line naming the live run's PID, before it writes anything there.

Torch-free: the CLI takes the lock before Hydra writes into a directory it knows.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tinylm.errors import TinyLMError

LOCK_NAME = ".lock"
# Set by launchers in every process of a multi-process run but the first: those share its lock.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")

_held: dict[Path, list[int]] = {}  # resolved directory -> [fd, how many holds]
_made: list[Path] = []  # the run directories acquire made: a start-up stopped early removes them


class RunDirUnwritable(TinyLMError):
    """The run directory cannot be made, or written to."""


class RunDirInUse(TinyLMError):
    """Another live process trains in this run directory."""

    bad_input = False  # the directory is that run's: nothing of it may be removed


def first_process() -> bool:
    """Whether this process is the first (or only) one of its run, the one that holds the lock."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _holder(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def acquire(root: str | Path, key: str = "hydra.run.dir") -> None:
    """Hold the lock of run directory ``root`` (made if need be) until ``release`` or the end of
    the process; a second hold by this process only counts. Raises RunDirInUse naming the live
    holder's PID; prints one line when it takes over a lock a dead process left."""
    given = Path(root).expanduser()
    try:
        root = given.resolve()
    except (OSError, RuntimeError):  # a loop of links: the mkdir below names it
        root = given.absolute()
    if root in _held:
        _held[root][1] += 1
        return
    path = root / LOCK_NAME
    if not given.exists() and not given.is_symlink():
        _made.append(given.absolute())
    while True:
        try:
            given.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirUnwritable(f"{key}: cannot write {given} ({error.strerror}); "
                                   f"choose a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise RunDirInUse(
                f"{key}: {root} is in use by a training run that is still going (PID {pid}); wait for "
                f"it to end, stop it (kill {pid}), or train into another directory"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file as we locked it: lock the new one
    previous = _holder(fd)
    if previous is not None and previous != os.getpid() and not alive(previous):
        print(f"{root}: took over the lock of a run that is gone (PID {previous}, no longer running)",
              file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[root] = [fd, 1]


def release(root: str | Path) -> None:
    """Undo one ``acquire``; the last one removes the lock file and lets it go."""
    root = Path(root).expanduser().resolve()
    entry = _held.get(root)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[root]
    (root / LOCK_NAME).unlink(missing_ok=True)  # while still held: no one locks the old file
    os.close(entry[0])


@contextmanager
def holding(root: str | Path, key: str = "hydra.run.dir") -> Iterator[None]:
    """Hold ``root``'s lock for the block (on the first process of a run only)."""
    if not first_process():
        yield
        return
    acquire(root, key)
    try:
        yield
    finally:
        release(root)


def forget(root: str | Path) -> None:
    """Let go of ``root``'s lock at once, whatever was held: its directory is about to go."""
    root = Path(root).expanduser().resolve()
    if root in _held:
        _held[root][1] = 1
        release(root)


def made() -> list[Path]:
    """The run directories this process made to lock them (before Hydra wrote anything)."""
    return list(_made)


@atexit.register
def _release_all() -> None:
    for root in list(_held):
        forget(root)


def remove_leftovers(directory: Path, pattern: str = "*.tmp") -> list[Path]:
    """Remove the files matching ``pattern`` in ``directory`` that a process killed mid-write
    left (named ``<name>.<pid>.<suffix>``: those of a live process stay); returns them."""
    removed = []
    for path in directory.glob(pattern) if directory.is_dir() else ():
        pid = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 2 else ""
        if pid.isdigit() and alive(int(pid)) and int(pid) != os.getpid():
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
