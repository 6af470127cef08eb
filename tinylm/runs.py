"""Runs on disk: find the TensorBoard runs under some directories and read them back.

A run is a directory of TensorBoard event files (``events.out.tfevents.*``); tinylm
writes one per job, in ``<run dir>/<its name>`` (``tb`` before). Everything here comes
from those files, as TensorBoard itself reads them: the scalars, and the hyperparameters of the HPARAMS tab.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG

from tinylm.errors import TinyLMError
from tinylm.tensorboard import read_session_hparams

EVENT_FILES = "events.out.tfevents.*"

# Keep every scalar; of the bulky kinds (images, histograms ...) keep one each, unread.
SIZE_GUIDANCE = {"scalars": 0, "tensors": 1, "images": 1, "audio": 1, "histograms": 1,
                 "compressedHistograms": 1}


class RunsError(TinyLMError):
    """There are no TensorBoard runs where the user pointed."""


class Point(NamedTuple):
    step: int  # as logged; Lightning logs the values of training step n at step n - 1
    value: float
    wall_time: float  # seconds since the epoch


@dataclass
class Run:
    name: str  # the run's directory relative to the directories given, e.g. 0_model.heads=1
    path: Path  # the directory holding its event files
    hparams: dict[str, bool | float | str] = field(default_factory=dict)
    scalars: dict[str, list[Point]] = field(default_factory=dict)  # tag → points, as written
    wall_time: float = 0.0  # seconds from first to last event, summed over its event files


def find_runs(dirs: Sequence[str | Path]) -> list[Run]:
    """Every run under ``dirs`` (a run dir, a sweep dir, ``outputs/`` ...), read back.

    Names are paths relative to the directory given (relative to their common parent when
    several are given), so a sweep's runs are named as Hydra named their directories.
    """
    roots = [Path(d) for d in dirs]
    event_dirs: dict[Path, None] = {}  # ordered, and a run under two of the dirs counts once
    for root in roots:
        if not root.exists():
            raise RunsError(f"{root}: no such directory")
        if not root.is_dir():
            raise RunsError(f"{root}: not a directory; give a run dir, a sweep dir or outputs/")
        files = list(root.rglob(EVENT_FILES))
        if not files:
            raise RunsError(
                f"{root}: no TensorBoard event files ({EVENT_FILES}) in it or below; "
                f"give a run dir, a sweep dir (multirun/<date>/<time>) or outputs/"
            )
        event_dirs.update(dict.fromkeys(sorted(f.parent.resolve() for f in files)))
    resolved = [root.resolve() for root in roots]
    base = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0]
    names = {path: run_name(path, base) for path in event_dirs}
    for path, name in names.items():
        if list(names.values()).count(name) > 1:  # two event dirs in one job dir: name both
            names[path] = Path(os.path.relpath(path, base)).as_posix()
    return [read_run(path, name) for path, name in names.items()]


def run_name(event_dir: Path, base: Path) -> str:
    """The run's directory relative to ``base``: the job dir (the one with Hydra's
    ``.hydra/``) when the event files are in its logger sub-directory, else their own dir."""
    run_dir = event_dir.parent if (event_dir.parent / ".hydra").is_dir() else event_dir
    name = os.path.relpath(run_dir, base)
    return run_dir.name if name == "." or name.startswith("..") else Path(name).as_posix()


def read_run(event_dir: Path, name: str) -> Run:
    """The scalars, hyperparameters and wall time in the event files of ``event_dir``.

    A resumed run appends a new file to the same directory: the files are read in the order
    they were written, and a later file's hyperparameters win.
    """
    run = Run(name=name, path=event_dir)
    for file in sorted(event_dir.glob(EVENT_FILES), key=_written_at):
        events = EventAccumulator(str(file), size_guidance=SIZE_GUIDANCE)
        events.Reload()
        times = []
        for tag in events.Tags()["scalars"]:
            points = [Point(e.step, e.value, e.wall_time) for e in events.Scalars(tag)]
            run.scalars.setdefault(tag, []).extend(points)
            times += [p.wall_time for p in points]
        if times:
            run.wall_time += max(times) - events.FirstEventTimestamp()
        hparams = _plugin_content(events, "hparams").get(SESSION_START_INFO_TAG)
        if hparams is not None:
            run.hparams = read_session_hparams(hparams)
    return run


def _written_at(file: Path) -> tuple[int, str]:
    # events.out.tfevents.<unix time>.<host>.<pid>.<n>: the host may contain dots, field 3 cannot.
    stamp = file.name.split(".")[3]
    return (int(stamp) if stamp.isdigit() else 0, file.name)


def _plugin_content(events, plugin: str) -> dict[str, bytes]:
    try:
        return events.PluginTagToContent(plugin)
    except KeyError:  # the file has no data of this plugin
        return {}
