"""What each command checks before anything heavy loads: the torch-free phase.

The CLI runs a command's check right after Hydra composed and built its typed config, and only
then imports the command's module (torch, Lightning, datasets, matplotlib: seconds). So a
missing file, a data source that cannot be had or a run that cannot fit in memory is one line
in well under a second, and leaves nothing on disk. This module, and everything it imports,
stays free of those libraries: an import-linter contract in pyproject.toml holds it to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinylm.command_configs import AttentionScriptConfig, ExportConfig, PatchConfig, SampleConfig
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.integrity import DamagedCheckpoint, refusal, verify
from tinylm.memory import check_before_torch
from tinylm.rundir import EXPORTED_CONFIG, checkpoint_path, preferred, run_dir, shown
from tinylm.sources import check_source


def check_train(config: TrainConfig, overrides: Sequence[str] = ()) -> None:
    """That ``ckpt_path`` exists, that the run fits in memory (on the CPU; a GPU's is checked
    once torch can see it), and that ``data.source`` can be had. ``overrides`` (the command
    line's) say which key to name when it does not fit."""
    if config.ckpt_path is not None and not Path(config.ckpt_path).expanduser().is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {Path(config.ckpt_path).absolute()}")
    if config.ckpt_path is not None:
        check_intact(Path(config.ckpt_path).expanduser(), "ckpt_path")
    check_before_torch(config, overrides)
    check_source(config.data)


def check_checkpoint(config: SampleConfig | AttentionScriptConfig | PatchConfig | ExportConfig,
                     overrides: Sequence[str] = ()) -> None:
    """That ``ckpt`` names a checkpoint file, or a run directory holding one (or, for the
    explorer, its record of attention over training)."""
    path = checkpoint_path(config.ckpt)
    explores_run = (isinstance(config, AttentionScriptConfig) and Path(config.out).suffix.lower() == ".html"
                    and run_dir(config.ckpt).attention_history.is_file())
    exported = (path / EXPORTED_CONFIG).is_file()  # a directory tinylm export wrote
    if not path.is_file() and not explores_run and not exported:
        raise ConfigError(f"ckpt: no checkpoint file at {path.absolute()}")
    if path.is_file() and preferred(path) == path:  # model.safetensors checks its own tensors
        check_intact(path, "ckpt")


def check_intact(path: Path, key: str) -> None:
    """That the checkpoint at ``path`` matches the checksum it was written with: a damaged file
    is refused before torch loads (the loaders check again, for callers from Python)."""
    try:
        verify(path)
    except DamagedCheckpoint as error:
        raise ConfigError(refusal(key, path, error.reason)) from None
    except OSError:
        return  # unreadable: the loader says so, with the reason


def check_export(config: ExportConfig, overrides: Sequence[str] = ()) -> None:
    """That ``ckpt`` is there and that ``out`` is a new (or empty) directory, or ``overwrite`` allows
    replacing it."""
    check_checkpoint(config, overrides)
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out.resolve()} is a file; give a directory to write the model into")
    if out.is_dir() and any(out.iterdir()) and not config.overwrite:
        raise ConfigError(f"out: {out.resolve()} already holds files; choose a new directory, or pass "
                          f"overwrite=true to replace it")


# Strategies that start their processes without re-running the script.
IN_PROCESS_LAUNCH = ("spawn", "fork", "notebook")


def check_sweep_strategy(trainer_args: dict[str, Any]) -> None:
    """Refuse DDP that re-runs the script in a sweep: each process would start the whole sweep.

    Lightning's ``ddp`` launches processes 1..N-1 by running ``sys.argv`` again, ``-m`` and all
    (lightning-hydra-template issue 393); ``ddp_spawn`` starts them inside this job.
    """
    strategy = str(trainer_args.get("strategy", "auto"))
    devices = trainer_args.get("devices", "auto")
    several = (isinstance(devices, int) and (devices > 1 or devices == -1)) or (
        isinstance(devices, list | tuple) and len(devices) > 1)
    relaunches = (strategy.startswith("ddp") and not any(k in strategy for k in IN_PROCESS_LAUNCH)) or (
        strategy == "auto" and several)  # auto picks ddp for several devices
    if relaunches:
        raise ConfigError(
            f"trainer.strategy: {strategy} with trainer.devices={devices} re-runs this script in every "
            f"process, which under -m starts the whole sweep again; use trainer.strategy=ddp_spawn"
        )


def check_resumed_checkpoint(root: Path, checkpoint: Path) -> None:
    """That the checkpoint a resume of the run in ``root`` names is there and intact."""
    if checkpoint.is_file():
        check_intact(checkpoint, "ckpt_path")
    elif checkpoint.name == "last.ckpt":
        raise ConfigError(f"ckpt_path: {shown(root)} has no checkpoint: it stopped before its first save; "
                          f"train it again, without ckpt_path")
    else:
        raise ConfigError(f"ckpt_path: no checkpoint file at {checkpoint.absolute()}; "
                          f"its run's last checkpoint: ckpt_path={shown(root)}")
