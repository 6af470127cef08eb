"""Benchmarks, one JSON object on the last line of output:

    python scripts/bench.py experiment=cpu_quick data.source=PATH bench.steps=200
    python scripts/bench.py bench.task=sample model=baby bench.new_tokens=500

Settings: configs/bench.yaml (every training key, plus bench.*).
"""

import hydra
from omegaconf import DictConfig

from tinylm.cli import exit_on_error, resolved


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench")
def main(cfg: DictConfig) -> None:
    from tinylm.bench import BenchConfig, bench_sample, bench_train, report
    from tinylm.config import TrainConfig, parse_section

    def run() -> None:
        values = resolved(cfg)
        bench = parse_section(BenchConfig, values.pop("bench"), "bench")
        if bench.task == "sample":
            result = bench_sample(TrainConfig.from_dict(values).model, bench, seed=values["seed"])
        else:
            result = bench_train(values, bench)
        print(report(result))

    exit_on_error(run)


if __name__ == "__main__":
    main()
