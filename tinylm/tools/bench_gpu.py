"""``bench.task=gpu``: what only a CUDA GPU can show, prepared as one command.

1. ``tinylm train experiment=shakespeare_char`` (bf16) beside nanoGPT's own ``train.py
   config/train_shakespeare_char.py`` on the same card, one after the other: wall time start
   to exit, best val loss, and the time each first reached nanoGPT's reported 1.4697;
2. ``trainer.devices=1 trainer.strategy=ddp`` over NCCL (a short run that must exit 0);
3. the compiled decode step on CUDA against the eager cached one.

On a machine without a CUDA GPU it stops at once with one line saying so.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tinylm.command_configs import BenchConfig
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.generation.stream import GenerativeLM
from tinylm.tools.bench_speedrun import timed
from tinylm.tools.measures import progress

TARGET_VAL_LOSS = 1.4697  # nanoGPT's README, config/train_shakespeare_char.py on an A100
DDP_STEPS = 50  # enough for the process group to carry gradients, checkpoints and validation


def bench_gpu(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    """The three GPU measurements; ``NANOGPT_DIR`` (a nanoGPT checkout whose
    data/shakespeare_char is prepared) adds nanoGPT's run beside ours."""
    if not torch.cuda.is_available():
        raise ConfigError("bench.task: gpu needs a CUDA GPU and this machine has none "
                          "(torch.cuda.is_available() is False); run it on a machine with one")
    result: dict[str, Any] = {"task": "gpu", "gpu": torch.cuda.get_device_name(),
                              "target_val_loss": TARGET_VAL_LOSS}
    with tempfile.TemporaryDirectory(prefix="tinylm-gpu-") as out:
        result.update(_train_beside_nanogpt(config, Path(out)))
        result.update(_ddp_over_nccl(config, Path(out) / "ddp"))
    result.update(decode_timings(config, bench, torch.device("cuda")))
    return result


def _train_beside_nanogpt(config: TrainConfig, out: Path) -> dict[str, Any]:
    source = config.data.source if isinstance(config.data.source, str) else ",".join(config.data.source)
    ours = [sys.executable, "-m", "tinylm", "train", "experiment=shakespeare_char",
            "trainer.precision=bf16-mixed", f"data.source={source}", "callbacks.progress_bar.refresh_rate=0",
            f"hydra.run.dir={out}/tinylm"]
    runs = {"tinylm": (ours, Path.cwd(), r"val/loss (\d+\.\d+)")}
    nanogpt_dir = os.environ.get("NANOGPT_DIR")
    if nanogpt_dir:
        home = Path(nanogpt_dir).expanduser()
        if not (home / "data" / "shakespeare_char" / "train.bin").is_file():
            raise ConfigError(f"NANOGPT_DIR: {home} has no data/shakespeare_char/train.bin; prepare it "
                              f"there first: python data/shakespeare_char/prepare.py")
        runs["nanogpt"] = ([sys.executable, "train.py", "config/train_shakespeare_char.py",
                            f"--out_dir={out}/nanogpt"], home, r"val loss (\d+\.\d+)")
    result: dict[str, Any] = {"nanogpt": "ran beside" if nanogpt_dir else "not run: NANOGPT_DIR is not set"}
    for name, (command, cwd, pattern) in runs.items():
        progress(f"{name}: shakespeare_char on {torch.cuda.get_device_name()}")
        seconds, stdout = timed(command, cwd, name)
        losses = [float(v) for v in re.findall(pattern, stdout)]
        result[f"{name}_wall_s"] = seconds
        result[f"{name}_best_val_loss"] = min(losses) if losses else None
    result["tinylm_s_to_target"] = _seconds_to_target(out / "tinylm")
    return result


def _seconds_to_target(run: Path) -> float | None:
    """Seconds from the run's first event to its first val/loss at or below the target."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # this task only

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    if "val/loss" not in events.Tags()["scalars"]:
        return None
    values = events.Scalars("val/loss")
    start = min(e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag))
    reached = [e.wall_time for e in values if e.value <= TARGET_VAL_LOSS]
    return reached[0] - start if reached else None


def _ddp_over_nccl(config: TrainConfig, run: Path) -> dict[str, Any]:
    """A short ``trainer.strategy=ddp`` run on one GPU: Lightning's ddp over NCCL, relaunching
    ``tinylm train`` as a plain process would be on several."""
    source = config.data.source if isinstance(config.data.source, str) else ",".join(config.data.source)
    command = [sys.executable, "-m", "tinylm", "train", "experiment=shakespeare_char", "trainer.devices=1",
               "trainer.strategy=ddp", "trainer.accelerator=gpu", f"trainer.max_steps={DDP_STEPS}",
               f"trainer.val_check_interval={DDP_STEPS}", "trainer.limit_val_batches=5",
               f"data.source={source}", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run}"]
    progress("ddp over NCCL, 1 GPU")
    seconds, _ = timed(command, Path.cwd(), "ddp")  # raises unless it exits 0
    return {"ddp_nccl_available": dist.is_nccl_available(), "ddp_wall_s": seconds, "ddp_steps": DDP_STEPS}


def decode_timings(config: TrainConfig, bench: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Tokens/s of the eager cached decode step and of the compiled one on ``device`` (an
    untrained model of ``config.model``'s shape), medians of ``bench.repeats``; the compile
    time apart."""
    torch.manual_seed(0)
    model = GenerativeLM(replace(config.model, dropout=0.0), bench.vocab_size).to(device).eval()
    prompt = torch.zeros(bench.num_samples, 1, dtype=torch.long, device=device)

    def generate(compile: bool) -> torch.Tensor:
        tokens = model.generate(prompt, bench.new_tokens, temperature=1.0, top_k=bench.top_k, use_cache=True,
                                compile=compile, generator=torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return tokens

    result: dict[str, Any] = {}
    with torch.no_grad():
        start = time.perf_counter()
        generate(True)  # the first call compiles
        result["decode_compile_s"] = time.perf_counter() - start
        seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(bench.repeats):
            for name in seconds:
                start = time.perf_counter()
                generate(name == "compiled")
                seconds[name].append(time.perf_counter() - start)
    for name, measured in seconds.items():
        tokens = bench.new_tokens * bench.num_samples
        result[f"decode_{name}_tokens_per_sec"] = tokens / statistics.median(measured)
    result["decode_compiled_vs_eager"] = (result["decode_compiled_tokens_per_sec"]
                                          / result["decode_eager_tokens_per_sec"])
    return result
