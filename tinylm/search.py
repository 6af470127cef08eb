"""``tinylm train hparams_search=<name>``: a search over settings by Hydra's Optuna sweeper
(configs/hparams_search/). Each trial is an ordinary run of the sweep; this module's Hydra
callback ends the search with its best trial's settings as a command line to rerun.

Torch-free: it runs in the ``tinylm`` process after the sweeper has written its results.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import OmegaConf

from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.resume import override_value
from tinylm.rundir import shown

RESULTS = "optimization_results.yaml"  # what the Optuna sweeper writes in the sweep directory


def searching(hydra_config: Any) -> bool:
    """Whether Hydra's config ``hydra_config`` (``config.hydra``) runs a search: its sweeper is Optuna's."""
    return "optuna" in str(OmegaConf.select(hydra_config, "sweeper._target_", default="")).lower()


def check_trial(config: TrainConfig) -> None:
    """Refuse, before the first trial, a trial that would end without a val/bpc to minimise."""
    trainer, max_steps = config.trainer, config.max_steps
    if trainer.get("limit_val_batches") in (0, 0.0):
        raise ConfigError("trainer.limit_val_batches: a search minimises each trial's best val/bpc, so "
                          "trials must validate; leave trainer.limit_val_batches out")
    every = trainer.get("val_check_interval")
    if isinstance(every, int) and 0 < max_steps < every:
        raise ConfigError(f"trainer.val_check_interval: a trial would first validate at step {every}, after "
                          f"its trainer.max_steps={max_steps}, and have no val/bpc to minimise; set "
                          f"trainer.val_check_interval={max_steps} or less")


class PrintBestTrial(HydraCallback):
    """After a search's last trial: the best val/bpc, the trial that reached it, and the command
    that trains it again (the command line's own settings, and the trial's)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            results = yaml.safe_load((sweep / RESULTS).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return  # the sweeper wrote no results (not the Optuna sweeper): nothing to report
        given = OmegaConf.to_container(config.hydra.overrides.task)
        print(best_trial_lines(sweep, results, given), flush=True)


def best_trial_lines(sweep: Path, results: Mapping[str, Any], given: Sequence[str]) -> str:
    """The closing lines of a search in ``sweep`` whose Optuna ``results`` (best_params,
    best_value) came from the command line's overrides ``given``."""
    params = {str(k): v for k, v in (results.get("best_params") or {}).items()}
    kept = [o for o in given if _key(o) not in params and _key(o) != "hparams_search"
            and not _key(o).startswith("hydra.")]
    command = shlex.join(["tinylm", "train", *kept, *(f"{k}={v}" for k, v in params.items())])
    trial = best_trial_dir(sweep, params)
    where = f" ({shown(trial)})" if trial is not None else ""
    return (f"best trial: val/bpc {float(results['best_value']):.4f}{where}\n"
            f"train it again: {command}")


def best_trial_dir(sweep: Path, params: Mapping[str, Any]) -> Path | None:
    """The trial's run directory in ``sweep`` whose recorded overrides hold ``params``."""
    for overrides in sorted(sweep.glob("*/.hydra/overrides.yaml")):
        recorded = {_key(o): override_value(o) for o in yaml.safe_load(overrides.read_text()) or []}
        if all(recorded.get(k) == v for k, v in params.items()):
            return overrides.parent.parent
    return None


def trial_name(override_dirname: str, params: Mapping[str, Any]) -> str:
    """A trial's run directory name: the searched settings of its overrides (Hydra's
    ``override_dirname``), in the search's order, numbers to 4 significant digits (the exact
    values are in its .hydra/overrides.yaml and TensorBoard's HPARAMS):
    ``${tinylm.trial:${hydra.job.override_dirname},${hydra.sweeper.params}}``."""
    values = dict(item.partition("=")[::2] for item in str(override_dirname).split(","))
    return ",".join(f"{key}={_short(values[key])}" for key in params if key in values)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")
