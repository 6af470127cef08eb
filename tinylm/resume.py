"""``tinylm train ckpt_path=<run dir or its checkpoint>``: continue that run as it was started.

A run directory records the command line it was started with (Hydra's .hydra/overrides.yaml).
A resume takes those settings back, so the command a stop prints works as printed; it trains
in the same directory (the same TensorBoard run, the curve continuing) unless
``hydra.run.dir=`` says otherwise. On top, a setting that does not change what is trained
(``trainer.*``, ``callbacks.*``: ``trainer.max_steps`` to train on) is taken and said; one
that changes the model, the data or the optimisation is refused in one line. A finished run is
said to be finished, and nothing is written.

A run started into a directory that holds a run of the same settings, unfinished (a job that
SLURM or submitit requeued after a stop, the same command run again), continues it without
``ckpt_path``: its checkpoints record the settings they were trained with (``run_settings``).
A directory holding a run of other settings is refused in one line.

Torch-free: it runs in the CLI before Hydra makes or touches a directory. The checkpoint's step
is read from its pickle without torch (no class it names is imported or called).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tinylm.errors import ConfigError
from tinylm.rundir import RunDir, run_dir, run_of, shown

# Settings a resumed run may change: they say how long and how it is watched, not what it
# learns. Anything else (model.*, data.*, optim.*, seed, presets) must stay the run's own.
MAY_CHANGE = ("trainer.", "callbacks.", "logger")
# Keys of a run's config that say nothing about what it learns: where it is, how it is resumed.
NOT_SETTINGS = (*MAY_CHANGE, "paths.", "ckpt_path", "ddp_timeout")
SETTINGS_KEY = "settings"  # in a checkpoint's "tinylm" record: run_settings of the run that wrote it


class RunFinished(Exception):
    """The run to resume has trained all its steps; the message says so."""


@dataclass(frozen=True)
class Resumed:
    """A resume of the run in ``root`` from ``checkpoint``; ``note`` is the line that says so."""

    root: Path
    checkpoint: Path
    note: str


def resume_arguments(arguments: Sequence[str]) -> tuple[list[str], Resumed | None]:
    """The command line ``arguments`` of ``tinylm train`` with a ``ckpt_path=`` that names a run
    (its directory, or a checkpoint in its checkpoints/) completed by that run's own overrides
    and its directory as hydra.run.dir, and what that resume is; other command lines as they
    are, and None. Raises ConfigError for a change a resume cannot take."""
    given = [a for a in arguments if _key(a) == "ckpt_path"]
    if not given or any(a in ("-m", "--multirun") for a in arguments):
        return list(arguments), None
    value = given[-1].partition("=")[2].strip("'\"")
    run = run_of(value) if value else None
    if run is None:
        return list(arguments), None  # a lone checkpoint file: the command line says everything
    target = Path(value).expanduser()
    checkpoint = run.last if target.is_dir() else target
    recorded = [o for o in _recorded(run) if _key(o) not in ("ckpt_path", "")]
    settings = {_key(o): o for o in recorded}
    flags = [a for a in arguments if a.startswith("-")]
    new = [a for a in arguments if not a.startswith("-") and _key(a) != "ckpt_path"]
    changed, moved = [], False
    for override in new:
        key = _key(override)
        before = settings.get(key)
        if before is not None and override_value(before) == override_value(override):
            continue
        if key.startswith("hydra."):
            moved = moved or key == "hydra.run.dir"
            settings[key] = override
            continue
        if not key.startswith(MAY_CHANGE):
            was = f"{key}={override_value(before)}" if before is not None else f"the default {key}"
            raise ConfigError(
                f"{key}: {shown(run.root)} was trained with {was}; a resume keeps the run's "
                f"model, data and optimisation (only trainer.* and callbacks.* may change), so "
                f"leave {key} out, or train a new run without ckpt_path"
            )
        changed.append(f"{override.lstrip('+~')} (was {override_value(before) if before else 'its default'})")
        settings[key] = override
    if not moved:
        settings["hydra.run.dir"] = f"hydra.run.dir={quoted_value(str(run.root))}"
    settings["ckpt_path"] = f"ckpt_path={quoted_value(str(checkpoint))}"
    step = checkpoint_step(checkpoint)
    where = f"resuming {shown(run.root)}" + (f" from step {step:,}" if step is not None else "")
    note = f"{where} with the settings it was started with" + (
        f"; changed: {', '.join(changed)}" if changed else "")
    return [*flags, *settings.values()], Resumed(run.root, checkpoint, note)


def check_unfinished(run_root: Path, checkpoint: Path, max_steps: int) -> None:
    """Raise RunFinished when ``checkpoint`` has trained ``max_steps`` steps already."""
    step = checkpoint_step(checkpoint)
    if step is not None and max_steps > 0 and step >= max_steps:
        trained = (f"{step:,} of trainer.max_steps={max_steps:,} steps are trained" if step == max_steps
                   else f"{step:,} steps are trained, more than trainer.max_steps={max_steps:,}")
        raise RunFinished(
            f"{shown(run_root)} is finished: {trained}, nothing to do; to train on, raise it: "
            f"tinylm train ckpt_path={shown(run_root)} trainer.max_steps={2 * step}"
        )


def run_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run's config (as plain dicts) flattened to what it learns from: ``{"model.heads": 4,
    ...}`` without the keys a resume may change, its paths and its checkpoint."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(run_settings(value, f"{name}."))
        elif not name.startswith(NOT_SETTINGS):
            flat[name] = value if value is None or isinstance(value, bool | int | float | str) else str(value)
    return flat


def continued_run(root: Path, settings: Mapping[str, Any], max_steps: int, key: str) -> Path | None:
    """The checkpoint a run into directory ``root`` with ``settings`` continues from: None when
    ``root`` holds none. Its last.ckpt, when it was trained with the same settings and is not
    finished (a requeued job); RunFinished when it is finished; ConfigError naming ``key`` (how
    the user chose the directory) when it holds a run of other settings."""
    last = run_dir(root).last
    if not last.is_file():
        return None
    state = checkpoint_state(last)
    if state is None:  # damaged: the loaders say so, and name the intact best.ckpt
        return last
    record = state.get("tinylm")
    saved = record.get(SETTINGS_KEY) if isinstance(record, dict) else None
    resume = f"tinylm train ckpt_path={shown(root)}"
    if not isinstance(saved, dict):
        raise ConfigError(f"{key}: {shown(root)} holds a run whose checkpoint does not record its "
                          f"settings; continue it with: {resume}, or choose another directory")
    differences = [f"{name}={saved.get(name, '(none)')} there, {settings.get(name, '(none)')} here"
                   for name in sorted(saved.keys() | settings.keys())
                   if saved.get(name) != settings.get(name)]
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ConfigError(f"{key}: {shown(root)} holds a run of other settings "
                          f"({'; '.join(differences[:3])}{more}); choose another directory, or continue "
                          f"that run with: {resume}")
    check_unfinished(root, last, max_steps)
    return last


def requeue_note(root: Path, checkpoint: Path) -> str:
    """The line that says a run continues one of its own settings in its directory."""
    step = checkpoint_step(checkpoint)
    at = f" from step {step:,}" if step is not None else ""
    return (f"resuming {shown(root)}{at}: it holds an unfinished run of these settings "
            f"(a requeued job continues where it stopped)")


def _recorded(run: RunDir) -> list[str]:
    try:
        values = yaml.safe_load(run.overrides.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"ckpt_path: the settings of {run.root} cannot be read from {run.overrides} "
                          f"({error}); resume with its checkpoint file and its overrides") from None
    return [str(v) for v in values]


def _key(argument: str) -> str:
    if argument.startswith("-"):
        return ""
    return argument.partition("=")[0].lstrip("+~")


def override_value(argument: str) -> Any:
    """An override's value as Hydra parses it, so that 300 and '300' or [a,b] and [a, b] agree."""
    try:
        parsed = OverridesParser.create().parse_overrides([argument])[0]
        return parsed.value()
    except Exception:  # a value Hydra cannot parse is Hydra's to report: compare the text
        return argument.partition("=")[2]


def quoted_value(path: str) -> str:
    """A path as a Hydra override value: quoted when it holds characters Hydra's grammar takes
    for syntax (a run directory named by its overrides holds "=" and ",")."""
    if all(c.isalnum() or c in "/._-~" for c in path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Skeleton(pickle.Unpickler):
    """Reads a checkpoint's pickle for its plain values: every class it names becomes a stub
    that is never imported, and its tensors stay on disk."""

    def find_class(self, module: str, name: str) -> Any:
        return collections.OrderedDict if (module, name) == ("collections", "OrderedDict") else _stub

    def persistent_load(self, pid: Any) -> None:
        return None


def _stub(*args: Any, **kwargs: Any) -> None:
    return None


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """A checkpoint's plain values (its tensors and classes left out), read without torch; None
    if it cannot be read (the loaders then say what is wrong with it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            state = _Skeleton(archive.open(name)).load()
    except Exception:  # a damaged or foreign file: its loader reports it
        return None
    return state if isinstance(state, dict) else None


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint holds, read without torch; None if it cannot be read."""
    step = (checkpoint_state(path) or {}).get("global_step")
    return step if isinstance(step, int) else None
