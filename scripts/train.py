"""Train a character-level Transformer: ``python scripts/train.py model.heads=4``.

Configs live in ``configs/`` (root: ``train.yaml``); every key can be overridden on the
command line, and ``-m`` sweeps over comma-separated values.
"""

import hydra
from omegaconf import DictConfig

from tinylm.cli import exit_on_error, resolved


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tinylm.train import train

    hydra_config = HydraConfig.get()
    overrides = list(hydra_config.overrides.task)  # this job's, in a sweep
    sweep = hydra_config.mode == RunMode.MULTIRUN
    return exit_on_error(lambda: train(resolved(cfg), overrides=overrides, sweep=sweep))


if __name__ == "__main__":
    main()
