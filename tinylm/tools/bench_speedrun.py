"""``bench.task=speedrun``: nanoGPT's README CPU run and ``tinylm train experiment=speedrun``,
whole processes, start to exit."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tinylm.command_configs import BenchConfig
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.tools.measures import OtherWork, progress, ratio_with_load

PROGRESS_SECONDS = 15  # between progress lines of a long half
NANOGPT_DATA = ("train.bin", "val.bin", "meta.pkl")  # what its prepare.py writes, its train.py reads

# nanoGPT's README CPU run ("I only have a macbook"), as its README gives it.
NANOGPT_CPU_RUN = ("train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                   "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                   "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                   "--lr_decay_iters=2000", "--dropout=0.0")


def bench_speedrun(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    """Whole-process wall time, start to exit, of nanoGPT's README CPU run (in ``NANOGPT_DIR``,
    its data/shakespeare_char prepared) and of ``tinylm train experiment=speedrun`` on
    ``data.source``, one after the other, ``bench.repeats`` times; medians, the best val/loss
    each printed, and the load average before each run."""

    given = os.environ.get("NANOGPT_DIR")
    nanogpt_dir = Path(given).expanduser() if given else None
    if nanogpt_dir is None or not (nanogpt_dir / "train.py").is_file():
        raise ConfigError("bench.task: speedrun needs NANOGPT_DIR, a checkout of karpathy/nanoGPT "
                          "with data/shakespeare_char/train.bin, val.bin and meta.pkl")
    data = nanogpt_dir / "data" / "shakespeare_char"
    if missing := [name for name in NANOGPT_DATA if not (data / name).is_file()]:
        raise ConfigError(f"bench.task: speedrun: NANOGPT_DIR has no {', '.join(missing)} in {data}; "
                          f"prepare them there: copy tiny shakespeare to {data / 'input.txt'} and run "
                          f"python prepare.py in {data}")
    source = config.data.source if isinstance(config.data.source, str) else ",".join(config.data.source)
    runs: dict[str, list[dict[str, float]]] = {"nanogpt": [], "tinylm": []}
    with tempfile.TemporaryDirectory(prefix="tinylm-speedrun-") as out:
        # Each round writes into a directory of its own: a second run in a finished run's
        # directory would only say that it has finished.
        commands = {
            "nanogpt": (lambda n: [sys.executable, *NANOGPT_CPU_RUN, f"--out_dir={out}/nanogpt-{n}"],
                        nanogpt_dir, r"val loss (\d+\.\d+)"),
            "tinylm": (lambda n: [sys.executable, "-m", "tinylm", "train", "experiment=speedrun",
                                  f"data.source={source}", f"hydra.run.dir={out}/tinylm-{n}"],
                       Path.cwd(), r"best val/loss (\d+\.\d+)"),
        }
        for n in range(bench.repeats):
            for name, (command, cwd, pattern) in commands.items():
                progress(f"round {n + 1}/{bench.repeats}: {name}")
                load = os.getloadavg()[0]
                with OtherWork() as other:
                    seconds, stdout = timed(command(n), cwd, name)
                losses = [float(v) for v in re.findall(pattern, stdout)]
                if not losses:
                    raise RuntimeError(f"{name} printed no validation loss (looked for "
                                       f"{pattern!r}); its last lines:\n{stdout[-1500:]}")
                runs[name].append({"wall_s": seconds, "best_val_loss": min(losses), "load": load,
                                   "load_after": os.getloadavg()[0], "other_cores": other.cores})
    result: dict[str, Any] = {"task": "speedrun", "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                              "repeats": bench.repeats}
    for name, measured in runs.items():
        result[f"{name}_wall_s"] = statistics.median(r["wall_s"] for r in measured)
        result[f"{name}_best_val_loss"] = statistics.median(r["best_val_loss"] for r in measured)
        result[f"{name}_load"] = ", ".join(f"{r['load']:.2f}" for r in measured)
    result["time_ratio"] = result["tinylm_wall_s"] / result["nanogpt_wall_s"]
    result["time_ratio_rounds"] = ", ".join(
        ratio_with_load(ours["wall_s"] / theirs["wall_s"], theirs["load"], ours["load_after"],
                        _most(theirs["other_cores"], ours["other_cores"]))
        for theirs, ours in zip(runs["nanogpt"], runs["tinylm"], strict=True))
    return result


def _most(*cores: float | None) -> float | None:
    known = [c for c in cores if c is not None]
    return max(known) if known else None


def timed(command: list[str], cwd: Path, name: str) -> tuple[float, str]:
    """Run ``command`` to its exit: its wall time and its output, with a progress line on stderr
    every PROGRESS_SECONDS (its latest line of output)."""
    start = time.perf_counter()
    shown = start
    lines = []
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        for line in process.stdout:
            lines.append(line)
            if (now := time.perf_counter()) - shown >= PROGRESS_SECONDS and line.strip():
                progress(f"{name}, {now - start:.0f} s: {line.strip()[:100]}")
                shown = now
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed: {''.join(lines)[-2000:]}")
    return seconds, "".join(lines)
