"""A soak run: ``python scripts/soak.py`` trains 2,000 steps with checkpoints and logging
and reports peak memory (RSS) early and late in the run; growth beyond soak.tolerance_mb
exits with status 1. Settings: configs/soak.yaml (every training key, plus soak.*).
"""

import sys

import hydra
from omegaconf import DictConfig

from tinylm.cli import discard_unused_run_dir, exit_on_error, resolved


def _split(values: dict):
    from tinylm.config import parse_section
    from tinylm.soak import SoakConfig

    values = dict(values)
    return parse_section(SoakConfig, values.pop("soak"), "soak"), values


@hydra.main(version_base="1.3", config_path="../configs", config_name="soak")
def main(cfg: DictConfig) -> None:
    from tinylm.bench import report
    from tinylm.soak import soak

    def run() -> None:
        settings, values = _split(resolved(cfg))
        result = soak(values, settings)
        print(report(result))
        if result["verdict"] != "ok":
            raise SystemExit(1)

    exit_on_error(run, cleanup=discard_unused_run_dir)


if __name__ == "__main__":
    from tinylm.config import TrainConfig
    from tinylm.preflight import check_command_line
    from tinylm.train import check

    exit_on_error(lambda: check_command_line(
        sys.argv[1:], "soak", lambda v: check(_split(v)[1]), lambda v: TrainConfig.from_dict(_split(v)[1])))
    main()
