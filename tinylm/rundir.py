"""What a run directory holds, spelled once for every reader and writer:

    <run>/.hydra/                      the composed config (Hydra)
    <run>/tb/                          the TensorBoard run
    <run>/checkpoints/last.ckpt        the latest good state, to resume or sample
    <run>/checkpoints/best.ckpt        the lowest val/loss
    <run>/checkpoints/model.safetensors the final weights, with the config and vocabulary, no pickle
    <run>/checkpoints/attention.npz    the probe's attention at every record (the explorer's slider)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BEST = "best"  # the stem Lightning's ModelCheckpoint is given
LAST = "last"
WEIGHTS = "model.safetensors"  # the final weights beside last.ckpt (tinylm.weights)
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
        return self.root / "tb"


def run_dir(path: str | Path) -> RunDir:
    return RunDir(Path(path).expanduser())


def checkpoint_path(ckpt: str | Path) -> Path:
    """``ckpt`` itself (a file, or a directory ``tinylm export`` wrote: it holds config.json), or
    for a run directory its checkpoints/last.ckpt."""
    path = Path(ckpt).expanduser()
    exported = (path / EXPORTED_CONFIG).is_file()
    return run_dir(path).last if path.is_dir() and not exported else path
