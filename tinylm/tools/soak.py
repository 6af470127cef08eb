"""A soak run: train for thousands of steps with everything the config turns on (checkpoints,
TensorBoard, and whatever callbacks it enables) and watch the process's memory for growth.

Resident memory (RSS) is sampled after every training and validation batch. Its peak over a
window of steps early on (after a warm-up: allocator pools, first validation and checkpoint)
is compared with its peak over the last window. Both windows hold a validation and a
checkpoint, so they are alike; a leak shows as growth beyond the tolerance.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from tinylm.command_configs import SoakConfig, SoakRunConfig
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.tools.measures import report
from tinylm.train import fit

MB = 2**20


def rss_bytes() -> int:
    """This process's resident memory now (Linux); elsewhere its peak so far."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssMonitor(Callback):
    """The peak RSS seen during each training step (its validation and checkpoint included)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}

    def _sample(self, step: int) -> None:
        self.peak[step] = max(self.peak.get(step, 0), rss_bytes())

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._sample(trainer.global_step)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._sample(trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sample(trainer.global_step)  # after last.ckpt was written

    def window_peak(self, first: int, last: int) -> int:
        return max(rss for step, rss in self.peak.items() if first <= step <= last)


def run(config: SoakRunConfig) -> None:
    """``tinylm soak``: prints the figures; exit status 1 when memory grew."""

    result = soak(config, config.soak)
    print(report(result))
    if result["verdict"] != "ok":
        raise SystemExit(1)


def soak(config: TrainConfig, settings: SoakConfig) -> dict[str, Any]:
    """Train as ``config`` says (checked by the CLI: tinylm.preflight), measuring memory; the figures."""
    steps = config.max_steps
    if steps < settings.warmup + 2 * settings.window:
        raise ConfigError(
            f"trainer.max_steps: {steps} is too few for two windows of soak.window={settings.window} "
            f"steps after soak.warmup={settings.warmup}; raise it or shrink the windows"
        )
    monitor = RssMonitor()
    started, rss_at_start = time.perf_counter(), rss_bytes()
    trainer, _ = fit(config, extra_callbacks=[monitor])
    seconds = time.perf_counter() - started
    first = (settings.warmup + 1, settings.warmup + settings.window)
    last = (steps - settings.window + 1, steps)
    start_peak, end_peak = monitor.window_peak(*first), monitor.window_peak(*last)
    growth = (end_peak - start_peak) / MB
    # The peak over each window in turn: a leak climbs steadily, noise does not.
    trend = [monitor.window_peak(a, min(a + settings.window - 1, steps)) / MB
             for a in range(first[0], steps + 1, settings.window)]
    return {
        "steps": trainer.global_step,
        "seconds": round(seconds, 1),
        "steps_per_sec": round(trainer.global_step / seconds, 2),
        "callbacks": ", ".join(type(c).__name__ for c in trainer.callbacks),
        "rss_before_training_mb": round(rss_at_start / MB, 1),
        "rss_peak_start_mb": round(start_peak / MB, 1),
        "rss_peak_end_mb": round(end_peak / MB, 1),
        "start_window": f"steps {first[0]}-{first[1]}",
        "end_window": f"steps {last[0]}-{last[1]}",
        "rss_growth_mb": round(growth, 1),
        "rss_peak_per_window_mb": " ".join(f"{mb:.1f}" for mb in trend),
        "tolerance_mb": settings.tolerance_mb,
        "verdict": "ok" if growth <= settings.tolerance_mb else "GREW",
    }
