"""What a run directory holds, spelled once for every reader and writer:

    <run>/.hydra/                      the composed config (Hydra)
    <run>/<run's name>/                the TensorBoard run, named as its directory (tb/ before)
    <run>/checkpoints/last.ckpt        the latest good state, to resume or sample
    <run>/checkpoints/best.ckpt        the lowest val/loss
    <run>/checkpoints/model.safetensors the final weights, with the config and vocabulary, no pickle
    <run>/checkpoints/attention.npz    the probe's attention at every record (the explorer's slider)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

BEST = "best"  # the stem Lightning's ModelCheckpoint is given
LAST = "last"
WEIGHTS = "model.safetensors"  # the final weights beside last.ckpt (tinylm.weights)
EVENT_FILES = "events.out.tfevents.*"  # what TensorBoard's writers name their files
EXPORTED_CONFIG = "config.json"  # what marks a directory tinylm export wrote (the Hugging Face layout)


@dataclass(frozen=True)
class RunDir:
    """The paths inside one run directory ``root``."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def best(self) -> Path:
        return self.checkpoints / f"{BEST}.ckpt"

    @property
    def weights(self) -> Path:
        return self.checkpoints / WEIGHTS

    @property
    def attention_history(self) -> Path:
        return self.checkpoints / "attention.npz"

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard run: a sub-directory named as the run directory, so that
        ``tensorboard --logdir <run>`` lists the run by its own name (events in the run directory
        itself would be listed as "."). A run written before, or under a name since changed,
        keeps the sub-directory its event files are in: a resume goes on in the same run."""
        written = sorted({f.parent for f in self.root.glob(f"*/{EVENT_FILES}")})
        return written[0] if written else self.root / self.root.resolve().name

    @property
    def overrides(self) -> Path:
        """The command line's overrides the run was started with (Hydra writes them)."""
        return self.root / ".hydra" / "overrides.yaml"

    @property
    def lock(self) -> Path:
        """Held by the run training here (tinylm.runlock): one run per directory."""
        return self.root / ".lock"

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is inside this run directory."""
        return Path(path).expanduser().resolve().is_relative_to(self.root.resolve())

    def resume_command(self) -> str:
        """The command that continues this run, as a user would type it: the run directory
        names its own settings (its .hydra/overrides.yaml)."""
        target = self.root if self.overrides.is_file() else self.last
        return f"tinylm train ckpt_path={shlex.quote(shown(target))}"


def run_dir(path: str | Path) -> RunDir:
    return RunDir(Path(path).expanduser())


def shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it is below it, as a user would type it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_of(ckpt: str | Path) -> RunDir | None:
    """The run directory ``ckpt`` (a run directory, or a checkpoint in its checkpoints/) belongs
    to: the one whose .hydra/overrides.yaml records its settings; None for a lone file."""
    path = Path(ckpt).expanduser()
    root = path if path.is_dir() else path.parent.parent
    run = run_dir(root)
    return run if run.overrides.is_file() else None


def checkpoint_path(ckpt: str | Path) -> Path:
    """``ckpt`` itself (a file, or a directory ``tinylm export`` wrote: it holds config.json), or
    for a run directory its checkpoints/last.ckpt."""
    path = Path(ckpt).expanduser()
    exported = (path / EXPORTED_CONFIG).is_file()
    return run_dir(path).last if path.is_dir() and not exported else path


def preferred(path: str | Path) -> Path:
    """The file to load for ``path`` (a checkpoint): the model.safetensors beside it when ``path``
    is a run's last.ckpt and that file was written after it, else ``path`` itself."""
    path = Path(path).expanduser()
    weights = path.with_name(WEIGHTS)
    if path.name == f"{LAST}.ckpt" and weights.is_file() and (
            not path.is_file() or weights.stat().st_mtime >= path.stat().st_mtime):
        return weights
    return path


MAX_NAME_CHARS = 120  # of the overrides in a run directory's name (file names hold 255 bytes)


def run_name_suffix(overrides: str) -> str:
    """``_<overrides>`` for a run directory's name, or "" for a run without overrides:
    ``${tinylm.suffix:${hydra.job.override_dirname}}`` in configs/hydra/default.yaml. A "/" in a
    value would make sub-directories: it becomes "-"."""
    name = str(overrides).replace("/", "-")
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS - 1] + "…"
    return f"_{name}" if name else ""
