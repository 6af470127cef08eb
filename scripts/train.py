"""Train a character-level Transformer: ``python scripts/train.py model.heads=4``.

Configs live in ``configs/`` (root: ``train.yaml``); every key can be overridden on the
command line, and ``-m`` sweeps over comma-separated values.
"""

import sys

import hydra
from omegaconf import DictConfig

from tinylm.cli import discard_unused_run_dir, exit_on_error, resolved


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tinylm.train import train

    hydra_config = HydraConfig.get()
    overrides = list(hydra_config.overrides.task)  # this job's, in a sweep
    sweep = hydra_config.mode == RunMode.MULTIRUN
    return exit_on_error(lambda: train(resolved(cfg), overrides=overrides, sweep=sweep),
                         cleanup=discard_unused_run_dir)


if __name__ == "__main__":
    from tinylm.config import TrainConfig
    from tinylm.preflight import check_command_line
    from tinylm.train import check

    # Every job's config is checked before Hydra creates a run directory.
    exit_on_error(lambda: check_command_line(sys.argv[1:], "train", check, TrainConfig.from_dict))
    main()
